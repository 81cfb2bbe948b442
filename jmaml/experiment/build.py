"""From a config to the learner, the meta-optimizer and the (abstract) initial train state."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax

from jmaml import algorithms
from jmaml.core import schedules
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn
from jmaml.core.step import TrainState, init_state
from jmaml.errors import JmamlError
from jmaml.experiment.configs import Config
from jmaml.experiment.workloads import Workload


def learner_from_config(cfg: Config, apply_fn: ApplyFn, loss_fn: LossFn,
                        metrics: Mapping[str, MetricFn] | None = None) -> MetaLearner:
    """The meta-learner ``cfg.algorithm`` names, built from a :class:`~jmaml.experiment.configs.Config`.

    Reads ``algorithm``, ``inner_lr``, ``inner_steps`` and, per algorithm: ``first_order``
    (maml, meta_sgd, anil, maml_pp), ``head`` (anil), ``msl_anneal_steps`` and
    ``first_order_steps`` (maml_pp, per-step weights for the ``NORM_LEAVES`` leaves),
    ``reptile_optimizer`` and ``reptile_batch`` (reptile), ``proximal_lambda`` and ``cg_steps``
    (imaml).

    Raises:
      JmamlError: ``cfg.algorithm`` is not one of ``configs.ALGORITHM_NAMES``.
    """
    common = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, metrics=metrics)
    builders = {
        "maml": lambda: algorithms.maml(apply_fn, loss_fn, first_order=cfg.first_order, **common),
        "fomaml": lambda: algorithms.fomaml(apply_fn, loss_fn, **common),
        "meta_sgd": lambda: algorithms.meta_sgd(apply_fn, loss_fn, first_order=cfg.first_order, **common),
        "anil": lambda: algorithms.anil(apply_fn, loss_fn, head=cfg.head, first_order=cfg.first_order, **common),
        "maml_pp": lambda: algorithms.maml_pp(apply_fn, loss_fn, msl_anneal_steps=cfg.msl_anneal_steps,
                                   first_order_steps=cfg.first_order_steps, first_order=cfg.first_order,
                                   **common),
        "reptile": lambda: algorithms.reptile(apply_fn, loss_fn, inner_optimizer=cfg.reptile_optimizer,
                                   inner_batch=cfg.reptile_batch, **common),
        "imaml": lambda: algorithms.imaml(apply_fn, loss_fn, proximal_lambda=cfg.proximal_lambda,
                               cg_steps=cfg.cg_steps, **common),
        "pretrain": lambda: algorithms.pretrain(apply_fn, loss_fn, **common),
    }
    if cfg.algorithm not in builders:
        raise JmamlError(f"unknown algorithm {cfg.algorithm!r}; choose one of: {', '.join(builders)}")
    return builders[cfg.algorithm]()


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


def build(cfg: Config, workload: Workload) -> Setup:
    """The learner, the meta-optimizer and the initial-state constructor of ``cfg``."""
    learner = learner_from_config(cfg, workload.apply_fn, workload.loss_fn, workload.metrics)
    if cfg.remat:
        learner = dataclasses.replace(learner, remat=True)
    optimizer = schedules.meta_optimizer(cfg.meta_lr, cfg.steps, cfg.lr_schedule)
    init_key, train_key, _ = keys(cfg)
    return Setup(learner, optimizer, lambda: init_state(learner, optimizer, workload.init(init_key), train_key))
