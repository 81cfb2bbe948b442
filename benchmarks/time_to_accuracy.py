"""Time to accuracy: meta-train a config and meta-test it at given seconds of training.

Training runs as ``jmaml train`` runs it, prepared by :func:`jmaml.experiment.prepare` (without a
run folder) and trained by :meth:`Run.fit <jmaml.experiment.run.Run.fit>`. A hook evaluates inside
``clock.paused()`` at the first dispatch boundary past each mark, so training time excludes the
evaluations; the one-off compilation of the training program happens in ``prepare``, before the
clock starts, and is reported on its own. The default is Omniglot 5-way 1-shot with the paper's settings,
evaluated on 600 test tasks (95% interval) at 15, 30 and 60 s.

    python -m benchmarks.time_to_accuracy [--config omniglot-5w1s] [--at 15 30 60] [--eval-tasks 600] \\
        [--data-dir D] [--set k=v ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from benchmarks.harness.environment import describe
from jmaml.experiment import get_config, parse_overrides, prepare


def run(config: str, marks: list[float], eval_tasks: int, overrides: dict) -> dict:
    """Trains ``config`` until the last mark (seconds of training) and meta-tests at each mark.

    Returns:
      ``{"config", "compile_s", "rows": [{"mark", "seconds", "step", "mean", "ci95", "tasks"}]}``.
    """
    cfg = get_config(config, overrides)
    pending, rows = sorted(marks), []
    # the workload's test sampler draws eval_batch tasks per call: meta_test rounds up to whole batches
    test = {"eval_tasks": eval_tasks, "eval_max_steps": cfg.test_inner_steps}
    with prepare(cfg, None, progress=False) as prepared:
        metric = prepared.workload.metric

        def evaluate(step, state, metrics, clock):
            seconds = clock.seconds()
            if pending and seconds >= pending[0]:
                with clock.paused():
                    result = prepared.meta_test(state, **test)
                while pending and seconds >= pending[0]:
                    rows.append({"mark": pending.pop(0), "seconds": seconds, "step": step, "mean": result["mean"],
                                 "ci95": result["ci95"], "tasks": eval_tasks, "metric": metric})
                    print(f"{seconds:8.1f} s  step {step:6d}  {metric} {show(rows[-1])}", file=sys.stderr,
                          flush=True)

        prepared.fit(hooks=(evaluate,), should_stop=lambda: not pending)
    return {"config": dataclasses.asdict(cfg), "compile_s": prepared.compile_seconds, "rows": rows}


def show(row: dict) -> str:
    """Accuracy in percent, a loss as it is, with its 95% interval."""
    if row["metric"] == "accuracy":
        return f"{100 * row['mean']:.2f} +- {100 * row['ci95']:.2f}%"
    return f"{row['mean']:.4f} +- {row['ci95']:.4f}"


def markdown(result: dict) -> str:
    lines = [f"Compile {result['compile_s']:.1f} s (not counted).", "",
             "| mark s | training s | meta-steps | test metric (95% interval) |", "|---|---|---|---|"]
    lines += [f"| {r['mark']:g} | {r['seconds']:.1f} | {r['step']} | {show(r)} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="omniglot-5w1s")
    parser.add_argument("--at", type=float, nargs="+", default=[15.0, 30.0, 60.0],
                        help="seconds of training at which to meta-test")
    parser.add_argument("--eval-tasks", type=int, default=600, help="test tasks per evaluation")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    result = {"environment": describe(), **run(args.config, args.at, args.eval_tasks, overrides)}
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
