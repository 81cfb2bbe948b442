"""What XLA makes of one meta-step: kernels, convolutions, and the form of the first inner forward pass.

Compiles (does not run) one jmaml meta-training step (``make_train_step`` with Adam, as ``jmaml
train`` runs it) of the ``omniglot-5w1s`` workload (:mod:`benchmarks.harness.workloads`, tiny
``--quick`` and full size) for jmaml's default and each option, on the CPU backend, and reads the
optimized HLO (``jax.jit(step).lower(state, tasks).compile().as_text()``). Counted, statically (an
instruction in a loop body counts once however often the loop runs):

- fusions: ``fusion`` instructions, each one kernel that XLA generated from several operations;
- kernels: every instruction of the computations that are run as a schedule (the entry, loop
  bodies and conditions, called computations; not fused computations nor reducers), other than
  ``parameter``, ``constant``, ``tuple``, ``get-tuple-element`` and ``bitcast``, which move no data;
- convolutions: ``convolution`` instructions anywhere (the im2col lowering has none: its patches
  multiply the kernel in ``dot`` instructions);
- the first inner forward pass: the first layer's convolution (or im2col matmul) over the tasks'
  support images at the meta-parameters. ``ordinary`` when it is one convolution over all tasks'
  images (batch ``tasks x support``, ``feature_group_count`` 1), ``grouped`` when the task axis went
  into the feature dimension (batch ``support``, ``feature_group_count`` = tasks); for im2col,
  ``one dot`` or ``batched dot`` (a ``dot`` with a task batch dimension).

    python -m benchmarks.hlo_report [--sizes quick full] [--only NAME ...] [--dump DIR]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.environment import describe
from benchmarks.harness.hlo import convolutions, counts, dims, parse
from benchmarks.harness.jax_impls import JmamlBench
from benchmarks.harness.workloads import BENCH_WORKLOADS, BenchWorkload, init_params, make_batches, options
from jmaml.models.conv import resolve_impl

# The programs compiled, by their option labels (:func:`benchmarks.harness.workloads.options`).
OPTIONS = ("default", "conv=xla", "conv=im2col", "unroll=full", "conv=xla, unroll=full", "remat",
           "precision=bf16", "conv=xla, precision=bf16")


def first_forward(module: dict[str, Any], w: BenchWorkload) -> str:
    """How the first layer's pass over the support images at the meta-parameters was compiled.

    ``ordinary (batch B, groups 1)`` or ``grouped (batch B, groups G)`` for XLA's convolution;
    ``one dot [M, F]`` or ``batched dot`` for im2col; ``not found`` otherwise.
    """
    tasks, support, channels = w.meta_batch, w.ways * w.shots, w.image[2]
    side = -(-w.image[0] // (2 if w.variant == "omniglot" else 1))
    for c in convolutions(module):
        if not c.forward or len(c.lhs) != 4 or c.size("out", "0") != side:
            continue
        batch, features = c.size("lhs", "b"), c.size("lhs", "f")
        if (batch, features, c.feature_group_count) == (tasks * support, channels, 1):
            return f"ordinary (batch {batch}, groups 1)"
        if (batch, features, c.feature_group_count) == (support, tasks * channels, tasks):
            return f"grouped (batch {batch}, groups {tasks})"
    rows = tasks * support * side * side
    for instrs in module["computations"].values():
        for name, op, type_text, operands, attrs in instrs:
            out = dims(type_text) or ()
            if op == "dot" and out and out[-1] == w.filters and module["shapes"].get(operands[1]) == (
                    9 * channels, w.filters):
                if out == (rows, w.filters):
                    return f"one dot [{rows}, {w.filters}]"
            if op == "dot" and "lhs_batch_dims" in attrs and out[:1] == (tasks,) and out[-1] == w.filters and (
                    len(out) >= 2 and out[1] * (out[2] if len(out) > 3 else 1) == support * side * side):
                return f"batched dot {list(out)}"
    return "not found"


def meta_step_hlo(w: BenchWorkload, label: str) -> str:
    """Optimized HLO text of jmaml's meta-training step on ``w`` with the options ``label`` names:
    the program the throughput benchmark times (:class:`~benchmarks.harness.jax_impls.JmamlBench`)."""
    return JmamlBench(w, init_params(w), make_batches(w, 1), options(label)).compiled.as_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="omniglot-5w1s", choices=list(BENCH_WORKLOADS), metavar="CONFIG")
    parser.add_argument("--sizes", nargs="+", choices=("quick", "full"), default=["quick", "full"])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"options to compile, of {list(OPTIONS)}")
    parser.add_argument("--dump", type=Path, help="also write each optimized HLO module into this folder")
    args = parser.parse_args(argv)
    names = args.only or list(OPTIONS)
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {unknown}; choose from {list(OPTIONS)}")

    rows = []
    for size in args.sizes:
        w = BENCH_WORKLOADS[args.workload].quick() if size == "quick" else BENCH_WORKLOADS[args.workload]
        for name in names:
            hlo = meta_step_hlo(w, name)
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{w.name}-{re.sub(r'[^a-z0-9]+', '_', name)}.hlo.txt").write_text(hlo)
            module = parse(hlo)
            rows.append((w, name, counts(module), first_forward(module, w)))
            print(f"{w.name} {name}: {rows[-1][2]}, {rows[-1][3]}", file=sys.stderr, flush=True)

    env = describe()
    print(f"One meta-training step (second-order MAML, Adam) compiled for {env['jax_device']}, jax {env['jax']}, "
          f"commit {env['commit']}, {env['date']}; optimized HLO, static counts (a loop body counts once). "
          f"`default` is conv=auto (`{resolve_impl('auto')}` on this backend), the inner loop a scan (unroll 1). "
          "Fusions: `fusion` instructions; kernels: instructions of the scheduled computations other than "
          "parameter/constant/tuple/get-tuple-element/bitcast; first inner forward: the first layer's pass "
          "over all tasks' support images at the meta-parameters.\n")
    print("| workload | option | fusions | kernels | convolutions | dots | first inner forward |\n"
          "|---|---|---|---|---|---|---|")
    for w, name, c, first in rows:
        print(f"| {w.title} | {name} | {c['fusions']} | {c['kernels']} | {c['convolutions']} | {c['dots']} | {first} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
