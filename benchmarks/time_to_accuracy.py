"""Time to accuracy: meta-train a config and log meta-test accuracy against training wall-clock.

Training time excludes the evaluations (the clock stops while they run) and the one-off
compilation, which is reported on its own. The default is Omniglot 5-way 1-shot with the paper's
settings; shorten it for a CPU with ``--set`` (e.g. ``--set meta_batch=8``) and ``--budget``.

    python benchmarks/time_to_accuracy.py [--config omniglot-5w1s] [--budget 600] \\
        [--eval-every 30] [--eval-tasks 200] [--final-tasks 600] [--data-dir D] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # the repository root, for benchmarks.harness
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402

from benchmarks.harness.environment import describe  # noqa: E402
from jmaml.core.step import make_train_step, scan_steps  # noqa: E402
from jmaml.experiment.configs import get_config, parse_overrides  # noqa: E402
from jmaml.experiment.train import build, evaluate_run  # noqa: E402
from jmaml.experiment.workloads import make_workload  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="omniglot-5w1s")
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds (excluding evaluation)")
    parser.add_argument("--eval-every", type=float, default=30.0, help="training seconds between evaluations")
    parser.add_argument("--eval-tasks", type=int, default=200, help="test tasks per intermediate evaluation")
    parser.add_argument("--final-tasks", type=int, default=600, help="test tasks of the final evaluation")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the log here")
    args = parser.parse_args(argv)

    overrides = parse_overrides(args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    cfg = get_config(args.config, overrides)
    workload = make_workload(cfg)
    learner, optimizer, state = build(cfg, workload)
    chunk = jax.jit(scan_steps(make_train_step(learner, optimizer, workload.train_tasks), cfg.log_every),
                    donate_argnums=0)

    def show(mean, ci95):  # accuracy in percent, a loss as it is
        if workload.metric == "accuracy":
            return f"{100 * mean:.2f} +- {100 * ci95:.2f}%"
        return f"{mean:.4f} +- {ci95:.4f}"

    def accuracy(meta_params, tasks):
        test = dataclasses.replace(cfg, eval_tasks=tasks, eval_max_steps=cfg.test_inner_steps)
        return evaluate_run(test, workload, learner, meta_params)

    start = time.perf_counter()
    chunk = chunk.lower(state, workload.train_data).compile()
    compile_seconds = time.perf_counter() - start
    rows, trained, done, next_eval = [], 0.0, 0, 0.0
    while trained < args.budget and done < cfg.steps:
        start = time.perf_counter()
        state, _ = chunk(state, workload.train_data)
        jax.block_until_ready(state)
        trained += time.perf_counter() - start
        done += cfg.log_every
        if trained >= next_eval or trained >= args.budget or done >= cfg.steps:
            result = accuracy(state.meta_params, args.eval_tasks)
            rows.append({"seconds": trained, "step": done, "mean": result["mean"], "ci95": result["ci95"]})
            print(f"{trained:8.1f} s  step {done:6d}  {workload.metric} {show(result['mean'], result['ci95'])}",
                  file=sys.stderr, flush=True)
            next_eval = trained + args.eval_every
    final = accuracy(state.meta_params, args.final_tasks)

    env = describe()
    print(f"{cfg.name}: {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'paper settings'}; "
          f"device {env['jax_device']} ({env['cpu_count']} cores), jax {env['jax']}, commit {env['commit']}, "
          f"{env['date']}. Compile {compile_seconds:.1f} s (not counted). Test {workload.metric} after "
          f"{cfg.test_inner_steps} inner steps on {args.eval_tasks} test tasks (95% interval).\n")
    print(f"| training s | meta-steps | test {workload.metric} |\n|---|---|---|")
    for r in rows:
        print(f"| {r['seconds']:.0f} | {r['step']} | {show(r['mean'], r['ci95'])} |")
    print(f"\nFinal: {show(final['mean'], final['ci95'])} over {final['tasks']} test tasks "
          f"after {done} meta-steps and {trained:.0f} s of training.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "config": dataclasses.asdict(cfg), "compile_seconds": compile_seconds,
                       "log": rows, "final": final}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
