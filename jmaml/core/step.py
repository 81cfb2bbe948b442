"""The meta-training step: one pure function over explicit state, jitted by the caller."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmaml.core.learner import MetaLearner
from jmaml.core.types import Params, PyTree, Tasks


class TrainState(NamedTuple):
    """Everything meta-training carries from one step to the next.

    Attributes:
      step: number of meta-updates done so far (int32 scalar).
      meta_params: ``{"params": ..., "inner": ...}`` from ``MetaLearner.init``.
      opt_state: the meta-optimizer's state.
      key: a raw ``uint32[2]`` PRNG key for sampling tasks inside the step.
    """

    step: jax.Array
    meta_params: PyTree
    opt_state: PyTree
    key: jax.Array


def init_state(learner: MetaLearner, optimizer: optax.GradientTransformation, params: Params,
               key: jax.Array) -> TrainState:
    """The state before the first meta-update."""
    meta_params = learner.init(params)
    return TrainState(jnp.zeros((), jnp.int32), meta_params, optimizer.init(meta_params), key)


def make_train_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample_tasks: Callable[[jax.Array, PyTree], Tasks] | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, tasks=None, data=None) -> (state, metrics)``.

    Args:
      learner: the meta-learner.
      optimizer: any optax transformation; it sees the meta-gradient of ``meta_params``.
      sample_tasks: ``(key, data) -> Tasks``; when given, a step called without tasks samples
        its own meta-batch from ``state.key`` and the device-resident ``data`` (e.g. all
        training images), inside the compiled program. ``data`` is an argument rather than
        a closed-over constant so that it is not baked into the compiled program.

    Returns:
      The step. Its metrics are scalars: ``meta_loss`` and the task means of the learner's aux.
    """

    def train_step(state: TrainState, tasks: Tasks | None = None, data: PyTree = None):
        key, sample_key = jax.random.split(state.key)
        if tasks is None:
            tasks = sample_tasks(sample_key, data)
        grad_fn = jax.value_and_grad(learner.meta_loss, has_aux=True)
        (loss, aux), grads = grad_fn(state.meta_params, tasks, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        metrics = {"meta_loss": loss, **{k: jnp.mean(v) for k, v in aux.items()}}
        return TrainState(state.step + 1, meta_params, opt_state, key), metrics

    return train_step


def scan_steps(train_step: Callable, num_steps: int
               ) -> Callable[[TrainState, PyTree], tuple[TrainState, dict]]:
    """``num_steps`` self-sampling train steps as one ``lax.scan``: one dispatch, stacked metrics.

    Returns ``many(state, data=None) -> (state, metrics)``, metrics stacked over the steps.
    """

    def many(state: TrainState, data: PyTree = None):
        return jax.lax.scan(lambda s, _: train_step(s, None, data), state, None, length=num_steps)

    return many
