"""From a config to the pieces of an experiment: model, loss, metrics and task samplers."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmaml import losses
from jmaml.configs import Config
from jmaml.core.learner import ApplyFn, LossFn, MetricFn
from jmaml.core.types import Params, Tasks
from jmaml.data import sinusoid
from jmaml.models import MLP, functional


class Workload(NamedTuple):
    """Everything data- and model-specific that meta-training and meta-test need.

    Attributes:
      init: ``key -> params`` of the model.
      apply_fn: ``apply(params, x) -> outputs``.
      loss_fn: ``loss(outputs, y) -> scalar``.
      metrics: extra per-task metrics.
      metric: the headline meta-test metric, ``"mse"`` or ``"accuracy"``.
      train_tasks: ``key -> Tasks`` with ``meta_batch`` meta-training tasks.
      test_tasks: ``key -> Tasks`` with ``eval_batch`` held-out tasks.
    """

    init: Callable[[jax.Array], Params]
    apply_fn: ApplyFn
    loss_fn: LossFn
    metrics: dict[str, MetricFn]
    metric: str
    train_tasks: Callable[[jax.Array], Tasks]
    test_tasks: Callable[[jax.Array], Tasks]


def sinusoid_workload(cfg: Config) -> Workload:
    """Sinusoid regression with the paper's MLP; meta-test tasks score ``eval_queries`` points."""
    init, apply = functional(MLP(tuple(cfg.hidden), 1))
    eval_batch = min(cfg.eval_batch, cfg.eval_tasks)
    return Workload(
        init=lambda key: init(key, jnp.zeros((1, 1))),
        apply_fn=apply,
        loss_fn=losses.mse,
        metrics={},
        metric="mse",
        train_tasks=functools.partial(sinusoid.sample_tasks, meta_batch=cfg.meta_batch, shots=cfg.shots,
                                      queries=cfg.queries),
        test_tasks=functools.partial(sinusoid.sample_tasks, meta_batch=eval_batch, shots=cfg.shots,
                                     queries=cfg.eval_queries),
    )


def make_workload(cfg: Config) -> Workload:
    """The workload of ``cfg.dataset``; loads (and checks) its data first."""
    return {"sinusoid": sinusoid_workload}[cfg.dataset](cfg)
