"""Timing one implementation on one workload: compile apart, warm-up, median of synchronised steps."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import traceback
from typing import Any

import jax
import numpy as np

from benchmarks.harness.base import Bench, Factory, Grads, Skipped
from benchmarks.harness.workloads import BenchWorkload, init_params, make_batches
from jmaml.core.types import Tasks


@dataclasses.dataclass
class Prepared:
    """An implementation set up on a workload, ready to be timed (:func:`set_up`).

    Attributes:
      record: what the record says of it so far (workload, implementation, options, status).
      bench: the set-up implementation; None when ``record["status"]`` is not ``"ok"``.
      inputs: the prepared input batches.
      setup_s: seconds spent building it, compilation included.
    """

    record: dict[str, Any]
    bench: Bench | None = None
    inputs: list[Tasks] = dataclasses.field(default_factory=list)
    setup_s: float = 0.0


def set_up(name: str, factory: Factory, workload: BenchWorkload, *, steps: int, warmup: int, batches: int,
           options: dict[str, Any], dtype: Any = np.float32) -> Prepared:
    """Builds ``factory`` on ``workload`` (a JAX implementation compiles its step here): the first half of
    :func:`measure`, apart so that several programs can be compiled at once (threads: XLA compiles
    without holding the GIL) before any is timed."""
    record: dict[str, Any] = {"workload": workload.name, "title": workload.title, "impl": name,
                              "steps": steps, "warmup": warmup, "meta_batch": workload.meta_batch,
                              "options": options}
    try:
        start = time.perf_counter()
        inputs = make_batches(workload, batches, dtype=dtype)
        bench = factory(workload, init_params(workload, dtype=dtype), inputs, options)
        return Prepared({**record, "status": "ok"}, bench, inputs, time.perf_counter() - start)
    except Skipped as err:
        return Prepared({**record, "status": "skipped", "reason": str(err)})
    except Exception as err:  # noqa: BLE001  one failing implementation must not stop the others
        traceback.print_exc()
        return Prepared({**record, "status": "error", "reason": f"{type(err).__name__}: {err}"})


def time_steps(prepared: Prepared, *, peak_flops: float | None) -> tuple[dict[str, Any], Grads | None]:
    """Times a :func:`set_up` implementation: the second half of :func:`measure`."""
    record, bench = prepared.record, prepared.bench
    if bench is None:
        return record, None
    steps, warmup, inputs = record["steps"], record["warmup"], prepared.inputs
    try:
        start = time.perf_counter()
        first_loss, grads = bench.step_on(inputs[0])
        first_step_s = time.perf_counter() - start
        for i in range(1, warmup):
            bench.step(i)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            bench.step(warmup + i)
            times.append(time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        return {**record, "status": "error", "reason": f"{type(err).__name__}: {err}"}, None
    median = statistics.median(times)
    flops = bench.flops
    compile_s = bench.compile_s
    runs = getattr(bench, "runs", 1)  # runs in one program: each does a meta-batch a step
    return {
        **record, "device": bench.device,
        "median_ms": 1e3 * median, "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
        "runs": runs, "tasks_per_s": runs * record["meta_batch"] / median,
        "compile_s": compile_s, "setup_s": prepared.setup_s, "first_step_s": first_step_s,
        # the figure of merit: a 100-step run, compile (or the eager first step) included
        "run_100_s": (compile_s or 0.0) + first_step_s + 99 * median,
        "flops": flops, "tflops_per_s": flops / median / 1e12 if flops else None,
        "peak_fraction": flops / median / peak_flops if flops and peak_flops else None,
        "peak_bytes": bench.peak_bytes(), "program_bytes": bench.program_bytes,
        "first_loss": first_loss, "load_avg_1min_end": os.getloadavg()[0],
    }, grads


def measure(name: str, factory: Factory, workload: BenchWorkload, *, steps: int, warmup: int, batches: int,
            options: dict[str, Any], peak_flops: float | None,
            dtype: Any = np.float32) -> tuple[dict[str, Any], Grads | None]:
    """Sets up ``factory`` on ``workload`` and times its meta-step.

    The first step also returns its meta-gradient, for :func:`gradient_error` against the
    other implementations. Every step is synchronised (the loss is read back to the host)
    before the clock is read; inputs rotate among ``batches`` prepared batches. Compilation
    (JAX) is timed on its own before the warm-up steps.

    ``dtype`` is that of the inputs and initial weights (``np.float64`` for the exact same-math
    check, under ``jax.enable_x64``); timings are taken in float32.

    Returns:
      ``(record, first meta-gradient or None)``; the record's ``status`` is ``"ok"``,
      ``"skipped"`` or ``"error"``.
    """
    prepared = set_up(name, factory, workload, steps=steps, warmup=warmup, batches=batches, options=options,
                      dtype=dtype)
    return time_steps(prepared, peak_flops=peak_flops)


def gradient_error(grads: Grads, reference: Grads) -> float:
    """Relative L2 difference of two meta-gradients over all parameters: ``||g - r|| / ||r||``.

    One norm over every leaf together, with no floor: in float32 the implementations agree to
    about 1e-5 on the benchmarked shapes. (Leaf by leaf, the conv biases ahead of BatchNorm have
    an exact gradient of zero, so theirs is rounding noise; the exact leaf-by-leaf check runs in
    float64, in tests/test_bench.py.)

    Raises:
      ValueError: the two have different parameter trees.
    """
    if jax.tree.structure(grads) != jax.tree.structure(reference):
        raise ValueError("meta-gradients have different parameter trees")
    diff = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(r, np.float64)) ** 2))
               for a, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)))
    norm = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in jax.tree.leaves(reference))
    return float(np.sqrt(diff / norm))
