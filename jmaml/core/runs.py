"""Many runs in one program: train states stacked on a leading run axis, one ``vmap`` over it.

Seeds and hyper-parameter settings that do not change shapes (``inner_lr``, ``meta_lr``,
``proximal_lambda``, ...) train together in one jitted step: each run keeps its own parameters,
optimizer state and PRNG key (so its own task stream), and follows the trajectory it would follow
trained alone. On an accelerator the runs fill the device that one small run leaves idle::

    hparams = {"inner_lr": jnp.array([0.01, 0.03]), "meta_lr": jnp.array([1e-3, 1e-3])}
    def build(h):  # one run's train step, from its hyper-parameters (traced scalars)
        learner = jmaml.maml(apply, loss, inner_lr=h["inner_lr"], inner_steps=1)
        return jmaml.make_train_step(learner, optax.adam(h["meta_lr"]), sample)
    states = stack_runs([jmaml.init_state(learner_i, optimizer_i, params_i, key_i) for ...])
    step = jax.jit(make_runs_step(build))
    states, metrics = step(states, hparams, None, data)  # metrics: one value per run
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmaml.core.step import TrainState
from jmaml.core.types import PyTree, Tasks
from jmaml.errors import JmamlError

TrainStep = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


def stack_runs(trees: Sequence[PyTree]) -> PyTree:
    """The pytrees of several runs (same structure and shapes) as one, with a leading run axis.

    Raises:
      JmamlError: no runs, or runs whose trees or leaf shapes differ.
    """
    if not trees:
        raise JmamlError("stack_runs needs at least one run")
    structure = jax.tree.structure(trees[0])
    for i, tree in enumerate(trees[1:], 1):
        if jax.tree.structure(tree) != structure:
            raise JmamlError(f"run {i} has another pytree than run 0: {jax.tree.structure(tree)} vs {structure}")
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(trees[0])):
            if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
                raise JmamlError(f"run {i} has a leaf of shape {jnp.shape(a)} {jnp.result_type(a)} where run 0 has "
                                 f"{jnp.shape(b)} {jnp.result_type(b)}: runs in one program must have the same shapes")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_runs(tree: PyTree) -> list[PyTree]:
    """The inverse of :func:`stack_runs`: one pytree per run."""
    runs = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(runs)]


def check_hyperparameters(hparams: Mapping[str, Any], runs: int) -> None:
    """Each hyper-parameter is a number per run, shape ``[runs]``, and (where it is concrete) finite.

    Raises:
      JmamlError: a value of another shape, or one that is not finite.
    """
    for name, value in hparams.items():
        if jnp.shape(value) != (runs,):
            raise JmamlError(f"hyper-parameter {name!r} needs one value per run, shape ({runs},), "
                             f"got {jnp.shape(value)}")
        if not isinstance(value, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(value, float))):
            raise JmamlError(f"hyper-parameter {name!r} must be finite in every run, got {np.asarray(value).tolist()}")


def make_runs_step(build: Callable[[Mapping[str, jax.Array]], TrainStep]) -> Callable[..., tuple[TrainState, dict]]:
    """Builds ``runs_step(states, hparams, tasks=None, data=None) -> (states, metrics)``: the train
    step of every run at once.

    Args:
      build: ``build(h) -> train_step`` for one run whose hyper-parameters are ``h`` (a dict of
        scalars, traced inside the ``vmap``), e.g. a ``make_train_step`` of a learner and an
        optimizer built from ``h``. Everything it builds must have the same shapes for every run.

    The returned step takes ``states`` stacked by :func:`stack_runs`, ``hparams`` as
    ``{name: [runs] array}``, ``tasks`` with a leading run axis (or None: each run samples its own
    meta-batch from its own key, see :func:`~jmaml.core.step.make_train_step`) and ``data`` shared by
    all runs (e.g. the training images, held once). Each run's metrics come out on the run axis.
    """

    def one(state: TrainState, h: Mapping[str, jax.Array], tasks: Tasks | None, data: PyTree):
        return build(h)(state, tasks, data)

    def runs_step(states: TrainState, hparams: Mapping[str, Any], tasks: Tasks | None = None, data: PyTree = None):
        runs = jnp.shape(states.step)[0] if jnp.ndim(states.step) else None
        if runs is None:
            raise JmamlError("runs_step takes states stacked on a run axis (stack_runs), got one run's state")
        check_hyperparameters(hparams, runs)
        return jax.vmap(one, in_axes=(0, 0, None if tasks is None else 0, None))(states, dict(hparams), tasks, data)

    return runs_step
