"""From a config to the learner, the meta-optimizer and the (abstract) initial train state."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax

from jmaml import algorithms
from jmaml.core import schedules
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn
from jmaml.core.step import init_state
from jmaml.experiment.configs import Config, algorithm_keys
from jmaml.experiment.workloads import Workload


def learner_from_config(cfg: Config, apply_fn: ApplyFn, loss_fn: LossFn,
                        metrics: Mapping[str, MetricFn] | None = None) -> MetaLearner:
    """The meta-learner ``cfg.algorithm`` names, its options read from the config keys of the same
    names (``configs.algorithm_keys``: the factory's signature is the one list of them)."""
    options = {key: getattr(cfg, key) for key in algorithm_keys(cfg.algorithm)}
    if options.get("unroll") == 0:  # the config's "whole loop" is lax.scan's unroll=True
        options["unroll"] = True
    learner = algorithms.ALGORITHMS[cfg.algorithm](apply_fn, loss_fn, metrics=metrics, **options)
    return dataclasses.replace(learner, remat=True) if cfg.remat else learner


def keys(cfg: Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Independent PRNG keys for the model's init, meta-training and meta-test tasks."""
    init_key, train_key, test_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    return init_key, train_key, test_key


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run of ``cfg`` trains with.

    Attributes:
      learner: the meta-learner.
      optimizer: the meta-optimizer (Adam, constant or cosine meta learning rate).
      init: ``() -> TrainState``, the state before the first step (call it, or ``jax.eval_shape``
        it for a template that allocates nothing).
    """

    learner: MetaLearner
    optimizer: Any
    init: Any

    def template(self) -> Any:
        """The initial state's shapes and dtypes, computed abstractly."""
        return jax.eval_shape(self.init)


def step_parts(cfg: Config, workload: Workload, hparams: Mapping[str, Any] | None = None
               ) -> tuple[MetaLearner, Any]:
    """The learner and the meta-optimizer of ``cfg``, with ``hparams`` (values of
    ``configs.TRACED_KEYS``, e.g. one run's traced ``inner_lr`` inside a group's program) in place of
    the config's values."""
    if hparams:
        cfg = dataclasses.replace(cfg, **hparams)  # traced values: validated where they were concrete
    learner = learner_from_config(cfg, workload.apply_fn, workload.loss_fn, workload.metrics)
    return learner, schedules.meta_optimizer(cfg.meta_lr, cfg.steps, cfg.lr_schedule, update=cfg.meta_update)


def build(cfg: Config, workload: Workload) -> Setup:
    """The learner, the meta-optimizer and the initial-state constructor of ``cfg``."""
    learner, optimizer = step_parts(cfg, workload)
    init_key, train_key, _ = keys(cfg)
    init = workload.init  # not the workload: the setup must not keep its data alive
    return Setup(learner, optimizer, lambda: init_state(learner, optimizer, init(init_key), train_key))
