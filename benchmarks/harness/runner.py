"""The command line of the throughput benchmark, ``python benchmarks/throughput.py``."""

from __future__ import annotations

import argparse
import sys

from benchmarks.harness import environment, report
from benchmarks.harness.jax_impls import JmamlBench, JmamlRunsBench, PlainJaxBench
from benchmarks.harness.measure import gradient_error, measure
from benchmarks.harness.torch_impls import TorchFuncBench, TorchLoopBench
from benchmarks.harness.workloads import BENCH_WORKLOADS, select

IMPLS = {"jmaml": JmamlBench, "jmaml_runs": JmamlRunsBench, "plain_jax": PlainJaxBench,
         "torch_loop": TorchLoopBench, "torch_func": TorchFuncBench}


class UsageError(Exception):
    """A bad command-line value; :func:`main` prints it as one ``error:`` line and exits with 2."""


def parser(prog: str = "throughput.py") -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(prog=prog, description="Meta-step throughput of jmaml, plain JAX and "
                                "the PyTorch peers on the episodes of the named configs.")
    p.add_argument("--workloads", nargs="+", choices=list(BENCH_WORKLOADS), metavar="CONFIG",
                   help=f"configs whose meta-training step is timed (default: all of {', '.join(BENCH_WORKLOADS)})")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), help="default: all")
    p.add_argument("--steps", type=int, default=None, help="timed meta-steps (default 30, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up meta-steps (default 3, quick 2)")
    p.add_argument("--batches", type=int, default=3, help="input batches the steps rotate among")
    p.add_argument("--quick", action="store_true", help="tiny shapes, a few steps: CI-sized")
    p.add_argument("--conv", choices=("auto", "xla", "im2col"), default=None,
                   help="jmaml's convolution lowering (default: the config's; auto: im2col on CPU, xla elsewhere)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="PyTorch intra-op threads on CPU (default 0: PyTorch's own choice)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the Markdown table here")
    return p


def run(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Measures every selected implementation on every selected workload."""
    steps = args.steps if args.steps is not None else (5 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    for flag, value in (("--steps", steps), ("--warmup", warmup), ("--batches", args.batches)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    env = environment.describe()
    records = []
    for workload in select(args.workloads, args.quick):
        reference = None  # the first implementation's meta-gradient on the first batch
        for name in args.impls or list(IMPLS):
            options = ({"conv": args.conv or workload.conv} if name == "jmaml" else
                       {"threads": args.torch_threads} if name.startswith("torch") else {})
            record, grads = measure(name, IMPLS[name], workload, steps=steps, warmup=warmup,
                                    batches=args.batches, options=options, peak_flops=env["peak_flops"])
            if grads is not None:
                if reference is None:
                    reference = (name, record["first_loss"], grads)
                record["check_against"] = reference[0]
                record["loss_rel_err"] = abs(record["first_loss"] - reference[1]) / abs(reference[1])
                record["grad_rel_err"] = gradient_error(grads, reference[2])
            print(report.row(record), file=sys.stderr, flush=True)
            records.append(record)
    return env, records


def main(argv: list[str] | None = None, prog: str = "throughput.py") -> int:
    """Runs the benchmark, prints the Markdown table, writes ``--json`` / ``--markdown``.

    Args:
      argv: command-line arguments (default ``sys.argv[1:]``).
      prog: program name shown in ``--help`` and errors.

    Returns:
      0; 1 when an implementation failed (skipped ones do not count); 2 on a bad option value,
      after one ``error:`` line on stderr.
    """
    args = parser(prog).parse_args(argv)
    try:
        env, records = run(args)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    table = report.markdown(env, records)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json(env, records))
    return 1 if any(r["status"] == "error" for r in records) else 0
