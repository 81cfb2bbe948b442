"""Memory of one meta-gradient as the inner loop grows: jmaml (scan, remat, chunks) vs plain JAX.

Compiles (does not run) the meta-gradient of a named config's episode (the throughput benchmark's
workloads, :mod:`benchmarks.harness.workloads`) at several inner-step counts and reports XLA's
memory analysis of each program: temporary buffers plus arguments and outputs, which is what the
device must hold at the peak. Default: ``omniglot-20w1s`` (20-way 1-shot, 5 queries, 16 tasks).

    python benchmarks/memory.py [--workload omniglot-20w1s] [--steps 5 10 20] [--chunks 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # the repository root, for benchmarks.harness
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.harness.environment import describe  # noqa: E402
from benchmarks.harness.jax_impls import plain_meta_loss  # noqa: E402
from benchmarks.harness.workloads import WORKLOADS, init_params, select  # noqa: E402
from jmaml import algorithms, losses  # noqa: E402
from jmaml.core.step import meta_gradient  # noqa: E402
from jmaml.core.types import Tasks  # noqa: E402
from jmaml.models import Conv4, functional  # noqa: E402


def abstract_tasks(w) -> Tasks:
    shape = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n, *w.image), jnp.float32)  # noqa: E731
    label = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n), jnp.int32)  # noqa: E731
    return Tasks(shape(w.shots), label(w.shots), shape(w.queries), label(w.queries))


def program_bytes(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="omniglot-20w1s", choices=list(WORKLOADS), metavar="CONFIG",
                        help=f"one of {', '.join(WORKLOADS)}")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--conv", default="auto", choices=("auto", "xla", "im2col"),
                        help="jmaml's convolution lowering (auto: im2col on CPU, xla elsewhere)")
    parser.add_argument("--no-plain", action="store_true", help="skip plain JAX (slow to compile)")
    args = parser.parse_args(argv)

    base = select([args.workload], quick=False)[0]
    params = jax.tree.map(jnp.asarray, init_params(base))
    _, apply = functional(Conv4(base.ways, variant=base.variant, filters=base.filters, conv=args.conv))
    rows = []
    for steps in args.steps:
        w = dataclasses.replace(base, inner_steps=steps)
        tasks = abstract_tasks(w)
        learner = algorithms.maml(apply, losses.cross_entropy, inner_lr=w.inner_lr, inner_steps=steps)
        meta_params = learner.init(params)
        variants = {
            f"jmaml (lax.scan, conv={args.conv})": (learner, 1),
            "jmaml, remat": (dataclasses.replace(learner, remat=True), 1),
            f"jmaml, remat + {args.chunks} chunks": (dataclasses.replace(learner, remat=True), args.chunks),
        }
        for name, (lrn, chunks) in variants.items():
            fn = lambda mp, t, lrn=lrn, chunks=chunks: meta_gradient(lrn, mp, t, chunks=chunks)  # noqa: E731
            rows.append((steps, name, *program_bytes(fn, meta_params, tasks)))
            print(rows[-1], file=sys.stderr, flush=True)
        if not args.no_plain:
            rows.append((steps, "plain JAX (unrolled loop)",
                         *program_bytes(jax.value_and_grad(plain_meta_loss(w)), params, tasks)))
            print(rows[-1], file=sys.stderr, flush=True)

    env = describe()
    print(f"{re.sub(r'[0-9]+ steps?', 'K inner steps', base.title)}: XLA memory analysis of one meta-gradient "
          f"(temp + arguments + outputs), compiled for {env['jax_device']}, jax {env['jax']}, commit "
          f"{env['commit']}, {env['date']}.\n")
    print("| inner steps | implementation | program memory | compile s |\n|---|---|---|---|")
    for steps, name, size, seconds in rows:
        print(f"| {steps} | {name} | {size / 2**20:.0f} MiB | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
