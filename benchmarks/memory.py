"""Memory of one meta-gradient as the inner loop grows: jmaml (default and options) vs plain JAX.

Compiles (does not run) the meta-gradient of a named config's episode (the throughput benchmark's
workloads, :mod:`benchmarks.harness.workloads`) at several inner-step counts and reports XLA's
memory analysis of each program: temporary buffers plus arguments and outputs, less the bytes
aliased between them (``compiled.memory_analysis()``), which is what the device must hold at the
peak. Default: ``omniglot-20w1s`` (20-way 1-shot, 5 queries, 16 tasks), 5 and 20 inner steps.

Columns: plain JAX (the harness's unrolled Python loop, XLA's convolution), jmaml's default
(``conv=auto``: im2col on CPU, XLA's convolution elsewhere; the inner loop a ``lax.scan``), and
jmaml with each option: both lowerings with the loop scanned or fully unrolled, ``remat``, and
``remat`` with the meta-batch in chunks. Prints one Markdown table, steps by implementation.

    python benchmarks/memory.py [--workload omniglot-20w1s] [--steps 5 20] [--chunks 4] [--only NAME ...]
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
from benchmarks.harness.jax_impls import compiled_bytes, plain_meta_loss  # noqa: E402
from benchmarks.harness.workloads import WORKLOADS, init_params, select  # noqa: E402
from jmaml import algorithms, losses  # noqa: E402
from jmaml.core.step import meta_gradient  # noqa: E402
from jmaml.core.types import Tasks  # noqa: E402
from jmaml.models import Conv4, functional  # noqa: E402
from jmaml.models.conv import resolve_impl  # noqa: E402


def abstract_tasks(w) -> Tasks:
    shape = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n, *w.image), jnp.float32)  # noqa: E731
    label = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n), jnp.int32)  # noqa: E731
    return Tasks(shape(w.shots), label(w.shots), shape(w.queries), label(w.queries))


def program_bytes(fn, *args) -> tuple[int, float]:
    """Compiled memory of ``jax.jit(fn)`` (temp + arguments + outputs - aliased) and its compile seconds."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    return compiled_bytes(compiled), seconds


def variants(chunks: int) -> dict[str, tuple[str, dict, int]]:
    """Column name -> (Conv4 ``conv``, MetaLearner fields, chunks) of each jmaml program measured."""
    return {
        "jmaml default": ("auto", {}, 1),
        "conv=xla": ("xla", {}, 1),
        "conv=im2col, unroll=full": ("im2col", {"unroll": True}, 1),
        "conv=xla, unroll=full": ("xla", {"unroll": True}, 1),
        "remat": ("auto", {"remat": True}, 1),
        f"remat + {chunks} chunks": ("auto", {"remat": True}, chunks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="omniglot-20w1s", choices=list(WORKLOADS), metavar="CONFIG",
                        help=f"one of {', '.join(WORKLOADS)}")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="the workload's tiny version (seconds)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="measure only these columns (plain JAX, jmaml default, conv=xla, ...)")
    args = parser.parse_args(argv)

    base = select([args.workload], quick=args.quick)[0]
    params = jax.tree.map(jnp.asarray, init_params(base))
    columns = ["plain JAX", *variants(args.chunks)]
    if args.only:
        unknown = sorted(set(args.only) - set(columns))
        if unknown:
            parser.error(f"unknown --only column(s) {unknown}; choose from {columns}")
        columns = [c for c in columns if c in args.only]
    cells: dict[tuple[int, str], tuple[int, float]] = {}
    for steps in args.steps:
        w = dataclasses.replace(base, inner_steps=steps)
        tasks = abstract_tasks(w)
        for name in columns:
            if name == "plain JAX":
                cells[steps, name] = program_bytes(jax.value_and_grad(plain_meta_loss(w)), params, tasks)
            else:
                conv, fields, chunks = variants(args.chunks)[name]
                _, apply = functional(Conv4(w.ways, variant=w.variant, filters=w.filters, conv=conv))
                learner = dataclasses.replace(
                    algorithms.maml(apply, losses.cross_entropy, inner_lr=w.inner_lr, inner_steps=steps), **fields)
                fn = lambda mp, t, lrn=learner, c=chunks: meta_gradient(lrn, mp, t, chunks=c)  # noqa: E731
                cells[steps, name] = program_bytes(fn, learner.init(params), tasks)
            print(f"{steps} steps, {name}: {cells[steps, name][0] / 2**20:.1f} MiB, "
                  f"compiled in {cells[steps, name][1]:.1f} s", file=sys.stderr, flush=True)

    env = describe()
    print(f"{re.sub(r'[0-9]+ steps?', 'K inner steps', base.title)}: XLA memory analysis of one meta-gradient "
          f"(temp + arguments + outputs - aliased, MiB; in brackets: relative to plain JAX), compiled for "
          f"{env['jax_device']}, jax {env['jax']}, commit {env['commit']}, {env['date']}. `conv=auto` is "
          f"`{resolve_impl('auto')}` on this backend; plain JAX uses XLA's convolution.\n")
    print("| inner steps | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for steps in args.steps:
        plain = cells.get((steps, "plain JAX"), (0, 0))[0]
        row = [f"{cells[steps, c][0] / 2**20:.0f}" + (f" ({cells[steps, c][0] / plain:.2f})" if plain else "")
               for c in columns]
        print(f"| {steps} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
