"""Meta-test: adapt on many held-out tasks, report the mean metric with a 95% interval."""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import numpy as np

from jmaml import parallel
from jmaml.core.learner import MetaLearner
from jmaml.core.step import merge_tasks, split_tasks
from jmaml.core.types import PyTree, Tasks


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its normal 95% confidence interval (1.96 standard errors)."""
    values = np.asarray(values, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged inner loop scores nan, reported as such
        if values.size < 2:
            return float(values.mean()), float("nan")
        return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


@functools.lru_cache(maxsize=8)
def _scorer(learner: MetaLearner, sample_tasks: Callable, max_steps: int, name: str, chunks: int) -> Callable:
    """The jitted per-task scores, built once per (learner, sampler, steps, metric, chunks).

    Cached so that repeated meta-tests during training (``benchmarks/time_to_accuracy.py``)
    reuse one compiled program instead of tracing a fresh lambda each time.
    """
    def score(meta_params, key, data):
        tasks, inner_key = sample_tasks(key, data), jax.random.fold_in(key, 1)
        if chunks == 1:
            return learner.evaluate(meta_params, tasks, steps=max_steps, key=inner_key)[name]
        split, ids = split_tasks(tasks, chunks)
        per_chunk = jax.lax.map(lambda c: learner.evaluate(meta_params, c[0], steps=max_steps, key=inner_key,
                                                           task_ids=c[1])[name], (split, ids))
        return merge_tasks(per_chunk)

    return jax.jit(score)


def meta_test(
    learner: MetaLearner,
    meta_params: PyTree,
    sample_tasks: Callable[[jax.Array, PyTree], Tasks],
    data: PyTree = None,
    *,
    key: jax.Array,
    num_tasks: int,
    batch: int,
    max_steps: int,
    test_steps: int,
    metric: str,
    chunks: int = 1,
) -> dict:
    """Scores ``meta_params`` on ``num_tasks`` fresh tasks after 0..``max_steps`` inner steps.

    Args:
      learner: the meta-learner.
      meta_params: its meta-parameters.
      sample_tasks: ``(key, data) -> Tasks`` with ``batch`` tasks; a
        :func:`jmaml.parallel.shard_tasks` sampler splits each batch over the devices of
        every process (with ``meta_params`` and ``data`` from :func:`jmaml.parallel.replicate`).
      data: the held-out data ``sample_tasks`` draws from (None for generated tasks).
      key: PRNG key of the meta-test tasks (fixed, so reruns score the same tasks).
      num_tasks: tasks in all; rounded up to whole batches.
      batch: tasks scored per compiled call.
      max_steps: the largest number of inner steps reported.
      test_steps: the step count whose score is the headline ``mean``.
      metric: ``"mse"`` (the loss) or the name of one of the learner's metrics.
      chunks: score each batch in this many interleaved chunks, one after the other (as
        :func:`jmaml.core.step.meta_gradient` does): the same tasks and scores, with the
        memory of one chunk. Must divide ``batch``.

    Returns:
      ``{"metric", "mean", "ci95", "tasks", "test_steps", "per_step", "per_step_ci95"}``,
      where ``per_step[k]`` is the mean after ``k`` inner steps.
    """
    score = _scorer(learner, sample_tasks, max_steps, "loss" if metric == "mse" else metric, chunks)
    keys = jax.random.split(key, -(-num_tasks // batch))
    # [tasks, steps+1]; to_host gathers scores split over the devices of several processes
    per_task = np.concatenate([parallel.to_host(score(meta_params, k, data)) for k in keys])
    per_step = [mean_ci95(per_task[:, k]) for k in range(max_steps + 1)]
    mean, ci95 = per_step[test_steps]
    return {
        "metric": metric,
        "mean": mean,
        "ci95": ci95,
        "tasks": int(per_task.shape[0]),
        "test_steps": test_steps,
        "per_step": [m for m, _ in per_step],
        "per_step_ci95": [c for _, c in per_step],
    }
