"""Memory of one meta-gradient as the inner loop grows: jmaml (default and options) vs plain JAX.

Compiles (does not run) the meta-gradient of a named config's episode (the throughput benchmark's
workloads, :mod:`benchmarks.harness.workloads`) at several inner-step counts and reports XLA's
memory analysis of each program: temporary buffers plus arguments, outputs and generated code,
less the bytes aliased between them (``compiled.memory_analysis()``, read by the same function that
checks a run fits before it starts), which is what the device must hold at the peak. Default:
``omniglot-20w1s`` (20-way 1-shot, 5 queries, 16 tasks), 5 and 20 inner steps.

Columns: plain JAX (the harness's unrolled Python loop, XLA's convolution), jmaml's default
(``conv=auto``: im2col on CPU and GPU, XLA's convolution on TPU; the inner loop a ``lax.scan``), and
jmaml with each option: both lowerings with the loop scanned or fully unrolled, ``remat``, and
``remat`` with the meta-batch in chunks, each the named config with ``--set``-style overrides.
Prints one Markdown table, steps by implementation.

    python -m benchmarks.memory [--workload omniglot-20w1s] [--steps 5 20] [--chunks 4] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.harness.environment import describe
from benchmarks.harness.jax_impls import plain_meta_loss
from benchmarks.harness.workloads import BENCH_WORKLOADS, init_params, options, select
from jmaml import losses
from jmaml.core.step import meta_gradient
from jmaml.core.types import Tasks
from jmaml.experiment import image_model, learner_from_config, program_bytes
from jmaml.models.conv import resolve_impl


def abstract_tasks(w) -> Tasks:
    shape = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n, *w.image), jnp.float32)  # noqa: E731
    label = lambda n: jax.ShapeDtypeStruct((w.meta_batch, w.ways * n), jnp.int32)  # noqa: E731
    return Tasks(shape(w.shots), label(w.shots), shape(w.queries), label(w.queries))


def compile_program(fn, *args) -> tuple[int | None, float]:
    """Compiled memory of ``jax.jit(fn)`` (:func:`jmaml.experiment.program_bytes`) and its compile seconds."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    return program_bytes(compiled), seconds


def variants(chunks: int) -> list[str]:
    """The jmaml programs measured, as option labels (:func:`benchmarks.harness.workloads.options`)."""
    return ["default", "conv=xla", "conv=im2col, unroll=full", "conv=xla, unroll=full", "remat",
            f"remat, meta_chunks={chunks}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="omniglot-20w1s", choices=list(BENCH_WORKLOADS), metavar="CONFIG",
                        help=f"one of {', '.join(BENCH_WORKLOADS)}")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="the workload's tiny version (seconds)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="measure only these columns (plain JAX, default, conv=xla, ...)")
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
        w = dataclasses.replace(base, cfg=dataclasses.replace(base.cfg, inner_steps=steps))
        tasks = abstract_tasks(w)
        for name in columns:
            if name == "plain JAX":
                cells[steps, name] = compile_program(jax.value_and_grad(plain_meta_loss(w)), params, tasks)
            else:
                cfg = w.with_options(options(name))
                learner = learner_from_config(cfg, image_model(cfg, w.variant)[1], losses.cross_entropy)
                fn = lambda mp, t, lrn=learner, c=max(cfg.meta_chunks, 1): meta_gradient(  # noqa: E731
                    lrn, mp, t, chunks=c)
                cells[steps, name] = compile_program(fn, learner.init(params), tasks)
            print(f"{steps} steps, {name}: {cells[steps, name][0] / 2**20:.1f} MiB, "
                  f"compiled in {cells[steps, name][1]:.1f} s", file=sys.stderr, flush=True)

    env = describe()
    print(f"{re.sub(r'[0-9]+ steps?', 'K inner steps', base.title)}: XLA memory analysis of one meta-gradient "
          f"(temp + arguments + outputs + code - aliased, MiB; in brackets: relative to plain JAX), compiled for "
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
