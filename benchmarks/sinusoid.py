"""Sinusoid regression: MAML, Meta-SGD and the joint-training baseline, full paper-length runs.

Trains each algorithm with ``jmaml train sinusoid`` settings (70k meta-steps unless ``--steps``),
meta-tests on 1000 held-out tasks (100 query points each), and prints a Markdown table with the
MSE after one inner step, against the Meta-SGD paper's table (Li et al. 2017).

    python -m benchmarks.sinusoid [--steps N] [--shots 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.harness.environment import describe
from jmaml.experiment import get_config, train

PAPER = {  # Li et al. 2017, Table 1: MSE after one step, 40-40 MLP
    ("maml", 5): "1.13 +- 0.18", ("maml", 10): "0.85 +- 0.14", ("maml", 20): "0.71 +- 0.12",
    ("meta_sgd", 5): "0.90 +- 0.16", ("meta_sgd", 10): "0.53 +- 0.09", ("meta_sgd", 20): "0.31 +- 0.05",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=70_000)
    parser.add_argument("--shots", type=int, nargs="+", default=[10])
    parser.add_argument("--algorithms", nargs="+", default=["maml", "meta_sgd", "pretrain"])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)

    rows = []
    for shots in args.shots:
        for algorithm in args.algorithms:
            cfg = get_config("sinusoid", {"algorithm": algorithm, "shots": shots, "queries": shots,
                                          "steps": args.steps})
            with tempfile.TemporaryDirectory() as out:
                result = train(cfg, out, progress=False)
            rows.append({"algorithm": algorithm, "shots": shots, "steps": args.steps, **result})
            print(f"{algorithm} {shots}-shot: {result['mean']:.3f} +- {result['ci95']:.3f}", file=sys.stderr)

    env = describe()
    print(f"Sinusoid, {args.steps} meta-steps, meta-batch 25, one inner step of 0.01; MSE on 100 query points "
          f"of each of 1000 test tasks after 1 inner step (95% interval). Device {env['jax_device']} "
          f"({env['cpu_count']} cores, load {env['load_avg_1min_start']:.1f}), jax {env['jax']}, "
          f"python {env['python']}, commit {env['commit']}, {env['date']}.\n")
    print("| algorithm | shots | jmaml MSE, 1 step | paper (Li et al. 2017) | MSE after 0 / 2 / 5 / 10 steps "
          "| training + meta-test time |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        steps = " / ".join(f"{r['per_step'][k]:.3f}" for k in (0, 2, 5, 10))
        print(f"| {r['algorithm']} | {r['shots']} | {r['mean']:.3f} +- {r['ci95']:.3f} | "
              f"{PAPER.get((r['algorithm'], r['shots']), 'n/a')} | {steps} | {r['train_seconds']:.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
