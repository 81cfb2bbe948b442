"""The meta-training step: one pure function over explicit state, jitted by the caller."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmaml.core.learner import MetaLearner
from jmaml.core.types import Params, PyTree, Tasks
from jmaml.errors import JmamlError


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


def meta_gradient(learner: MetaLearner, meta_params: PyTree, tasks: Tasks, meta_step: Any = 0,
                  *, key: jax.Array | None = None, chunks: int = 1) -> tuple[tuple[jax.Array, dict], PyTree]:
    """``((meta_loss, aux), meta_gradient)``, optionally over the meta-batch in ``chunks``.

    With ``chunks > 1`` the tasks are split into equal chunks whose gradients are accumulated
    in a ``lax.scan``: the same result (the mean over all tasks, each task with the same key
    ``fold_in(key, i)`` as unchunked, the per-task aux in the original task order), with the
    memory of one chunk.

    The split is interleaved: chunk ``c`` holds tasks ``c, c + chunks, c + 2 * chunks, ...``
    (the task axis reshaped to ``[size // chunks, chunks]`` and transposed). When the caller
    has split the meta-batch into equal contiguous blocks (as data parallelism over the task
    axis does) and ``chunks`` divides the block size, every chunk takes an equal slice of every
    block, so each chunk is spread exactly like the whole meta-batch and no task moves between
    blocks; contiguous chunks would each lie in a subset of the blocks.

    Args:
      learner: the meta-learner.
      meta_params: its meta-parameters.
      tasks: the meta-batch.
      meta_step: the meta-training step (see :meth:`~jmaml.core.learner.MetaLearner.meta_loss`).
      key: PRNG key of the meta-batch, for minibatches (``inner_batch``).
      chunks: number of equal, interleaved chunks the meta-batch is split into.
    """
    grad_fn = jax.value_and_grad(learner.meta_loss, has_aux=True)
    if chunks == 1:
        return grad_fn(meta_params, tasks, meta_step, key=key)
    size = jnp.shape(tasks.x_support)[0]
    if size % chunks:  # split_tasks checks too; this message names the config key
        raise JmamlError(f"meta_chunks={chunks} must divide the meta-batch of {size} tasks")
    split, ids = split_tasks(tasks, chunks)

    def add_chunk(total, chunk):
        chunk, task_ids = chunk
        (loss, aux), grads = grad_fn(meta_params, chunk, meta_step, key=key, task_ids=task_ids)
        return jax.tree.map(jnp.add, total, (loss, grads)), aux

    zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, meta_params))
    (loss, grads), aux = jax.lax.scan(add_chunk, zero, (split, ids))
    return (loss / chunks, merge_tasks(aux)), jax.tree.map(lambda g: g / chunks, grads)


def split_tasks(tasks: Tasks, chunks: int) -> tuple[Tasks, jax.Array]:
    """``tasks`` in ``chunks`` interleaved chunks (``[chunks, size // chunks, ...]`` per leaf) and
    each chunk's task indices (``[chunks, size // chunks]``): chunk ``c`` holds tasks ``c,
    c + chunks, ...`` (see :func:`meta_gradient` for why interleaved)."""
    size = jnp.shape(tasks.x_support)[0]
    if size % chunks:
        raise JmamlError(f"{chunks} chunks must divide the batch of {size} tasks")
    split = jax.tree.map(lambda a: jnp.swapaxes(a.reshape(size // chunks, chunks, *a.shape[1:]), 0, 1), tasks)
    return split, jnp.arange(size).reshape(size // chunks, chunks).T


def merge_tasks(per_chunk: PyTree) -> PyTree:
    """Per-task outputs ``[chunks, size // chunks, ...]`` of :func:`split_tasks` chunks, back in task
    order (``[size, ...]``)."""
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]), per_chunk)


def make_train_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample_tasks: Callable[[jax.Array, PyTree], Tasks] | None = None,
    *,
    chunks: int = 1,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``train_step(state, tasks=None, data=None) -> (state, metrics)``.

    Each step splits ``state.key`` in three, ``next_key, sample_key, task_key =
    jax.random.split(state.key, 3)``: ``next_key`` is the new state's key, ``sample_key`` draws the
    meta-batch (when no tasks are passed in) and ``task_key`` is the meta-batch key of
    :meth:`~jmaml.core.learner.MetaLearner.meta_loss` (task ``i`` uses ``fold_in(task_key, i)``).

    Args:
      learner: the meta-learner; with derivative-order annealing, one of ``learner.at_step(t)``.
      optimizer: any optax transformation; it sees the meta-gradient of ``meta_params``.
      sample_tasks: ``(key, data) -> Tasks``; when given, a step called without tasks samples
        its own meta-batch from ``sample_key`` and the device-resident ``data`` (e.g. all
        training images), inside the compiled program. ``data`` is an argument rather than
        a closed-over constant so that it is not baked into the compiled program.
      chunks: split the meta-batch into this many chunks and accumulate their gradients
        (:func:`meta_gradient`), to fit large meta-batches in memory.

    Returns:
      The step. Its metrics are scalars: ``meta_loss`` and the task means of the learner's aux.
    """

    def train_step(state: TrainState, tasks: Tasks | None = None, data: PyTree = None):
        key, sample_key, task_key = jax.random.split(state.key, 3)
        if tasks is None:
            tasks = sample_tasks(sample_key, data)
        (loss, aux), grads = meta_gradient(learner, state.meta_params, tasks, state.step, key=task_key,
                                           chunks=chunks)
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
