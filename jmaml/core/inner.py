"""Inner-loop updates: optax transformations, and jmaml's own rules written as optax transformations.

The inner loop of :class:`~jmaml.core.learner.MetaLearner` takes any ``optax.GradientTransformation``:
its state is initialised on each task's starting parameters, and each inner step ``k`` runs ::

    updates, state = inner_optimizer.update(grads, state, params, meta=meta_params["inner"], step=k)
    params = optax.apply_updates(params, updates)

Plain optax optimisers ignore the two extra arguments (``optax.chain`` passes extra arguments only
to the members that accept them). jmaml's rules below are ``optax.GradientTransformationExtraArgs``
that read them:

- ``meta``: the meta-learned inner values, a dict with one entry per rule (``meta[name]``), so
  several rules in one ``optax.chain`` each find their own values;
- ``step``: the inner step index ``k`` (0-based, traced), for per-step values.

The initial meta-learned values come from the ``*_init`` function beside each rule; an algorithm
factory gives the learner an ``init_inner(params) -> {name: values}`` built from them.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmaml.core.masks import PathSpec, leaf_names, resolve
from jmaml.core.types import Params, PyTree
from jmaml.errors import JmamlError, check_positive

# The named inner optimisers a config can choose; each takes the inner learning rate.
INNER_OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    # Nichol et al. (2018), section 6: Adam with beta1 = 0 in the inner loop; its moments are per task.
    "adam": lambda lr: optax.adam(lr, b1=0.0),
}


def inner_optimizer_from(inner_optimizer: str | optax.GradientTransformation = "sgd",
                         inner_lr: float | None = None) -> optax.GradientTransformation:
    """The inner optimiser an algorithm factory's ``inner_optimizer`` and ``inner_lr`` describe.

    The rule: a name (``"sgd"``, ``"adam"``: Adam with beta1 = 0, as in Reptile) takes its learning
    rate from ``inner_lr``, which is then required; an optax transformation carries its own
    learning rate, so ``inner_lr`` must then be left out (``None``).

    Raises:
      JmamlError: an unknown name, a name without ``inner_lr``, or a transformation together
        with ``inner_lr``.
    """
    if isinstance(inner_optimizer, optax.GradientTransformation):
        if inner_lr is not None:
            raise JmamlError(
                f"inner_lr={inner_lr!r} and an optax inner_optimizer both set the inner step; give the "
                "learning rate inside the optax transformation and leave inner_lr out")
        return inner_optimizer
    if not isinstance(inner_optimizer, str) or inner_optimizer not in INNER_OPTIMIZERS:
        raise JmamlError(f"inner_optimizer must be one of {', '.join(map(repr, INNER_OPTIMIZERS))} or an "
                         f"optax GradientTransformation, got {inner_optimizer!r}")
    if inner_lr is None:
        raise JmamlError(f"inner_optimizer={inner_optimizer!r} needs inner_lr, its learning rate")
    check_positive("inner_lr", inner_lr)
    return INNER_OPTIMIZERS[inner_optimizer](inner_lr)


def _meta(meta: PyTree, name: str, rule: str) -> PyTree:
    if meta is None or name not in meta:
        raise JmamlError(f"{rule} reads its learned values from meta[{name!r}], but the meta-parameters' "
                         f"'inner' has {sorted(meta) if meta is not None else None}; build the learner "
                         f"with an init_inner that returns {{{name!r}: ...}}")
    return meta[name]


def learned_sgd(*, name: str = "lr") -> optax.GradientTransformationExtraArgs:
    """Gradient descent with a learned learning rate per parameter entry (Meta-SGD).

    The update is ``-alpha * g`` elementwise, with ``alpha = meta[name]`` shaped like the
    parameters (initial values: :func:`learned_sgd_init`).

    References:
      Li, Zhou, Chen & Li (2017). Meta-SGD: Learning to Learn Quickly for Few-Shot
      Learning. https://arxiv.org/abs/1707.09835
    """

    def update(updates, state, params=None, *, meta=None, **extra_args):
        del params, extra_args
        rates = _meta(meta, name, "learned_sgd")
        return jax.tree.map(lambda a, g: -a * g, rates, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def learned_sgd_init(params: Params, init_lr: float) -> PyTree:
    """Meta-SGD's initial rates: ``init_lr`` for every parameter entry, shaped like ``params``."""
    check_positive("inner_lr", init_lr)
    return jax.tree.map(lambda p: jnp.full_like(p, init_lr), params)


def per_step_sgd(steps: int, *, name: str = "lslr") -> optax.GradientTransformationExtraArgs:
    """Learned learning rate per parameter tensor (layer) and per inner step (MAML++ LSLR).

    ``meta[name]`` holds, for every leaf of the parameters, a vector of ``steps`` rates; inner
    step ``k`` updates by ``-rate[min(k, steps - 1)] * g``, so a meta-test with more inner steps
    than meta-training keeps the last learned rate (initial values: :func:`per_step_sgd_init`).

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR.
      https://arxiv.org/abs/1810.09502
    """
    check_positive("inner_steps", steps, integer=True)

    def update(updates, state, params=None, *, meta=None, step=0, **extra_args):
        del params, extra_args
        index = jnp.minimum(step, steps - 1)
        rates = _meta(meta, name, "per_step_sgd")
        return jax.tree.map(lambda r, g: -r[index] * g, rates, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def per_step_sgd_init(params: Params, init_lr: float, steps: int) -> PyTree:
    """LSLR's initial rates: a ``[steps]`` vector of ``init_lr`` for every leaf of ``params``."""
    check_positive("inner_lr", init_lr)
    check_positive("inner_steps", steps, integer=True)
    return jax.tree.map(lambda p: jnp.full((steps,), init_lr, p.dtype), params)


def _selected(select: PathSpec, params: Params, name: str) -> list[tuple[str, ...] | None]:
    flags = jax.tree.leaves(resolve(select, params, name=name, not_all=True))
    return [names if keep else None for names, keep in zip(leaf_names(params), flags)]


def per_step_values(select: PathSpec, steps: int, *, name: str = "per_step_bn"
                    ) -> optax.GradientTransformationExtraArgs:
    """Gives the selected leaves a learned value per inner step instead of an inner update.

    Chain it after the rule that moves the other leaves. After inner step ``k`` each selected
    leaf equals its learned value for that step, entry ``min(k, steps - 1)`` of its table in
    ``meta[name]`` (the update is ``value - param``); before the first step it is the
    meta-parameter itself. MAML++ uses it for per-step BatchNorm scale and bias: the support
    forward pass of step ``k`` and the query pass after it see their own normalisation weights,
    with no change to the model. Selecting no leaf is allowed (a model without normalisation).

    ``meta[name]`` nests dicts by the selected leaves' key names, each a ``[steps, *leaf.shape]``
    array (e.g. ``{"norm0": {"scale": ..., "bias": ...}}``; ``{}`` when nothing is selected);
    initial values: :func:`per_step_values_init`.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR, section 4
      ("per-step batch normalization weights and biases"). https://arxiv.org/abs/1810.09502
    """
    check_positive("inner_steps", steps, integer=True)

    def update(updates, state, params=None, *, meta=None, step=0, **extra_args):
        del extra_args
        if params is None:
            raise JmamlError("per_step_values needs the parameters: call update(updates, state, params, ...)")
        tables = _meta(meta, name, "per_step_values")
        index = jnp.minimum(step, steps - 1)
        table = lambda names: functools.reduce(lambda d, key: d[key], names, tables)  # noqa: E731
        leaves, treedef = jax.tree.flatten(updates)
        leaves = [u if names is None else table(names)[index] - p
                  for u, p, names in zip(leaves, jax.tree.leaves(params), _selected(select, params, name))]
        return jax.tree.unflatten(treedef, leaves), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def per_step_values_init(params: Params, select: PathSpec, steps: int, *, name: str = "per_step_bn") -> PyTree:
    """Per-step tables of the leaves ``select`` picks, each ``steps`` copies of the leaf.

    Raises:
      JmamlError: ``select`` picks every leaf (nothing would adapt), or a mask of the wrong structure.
    """
    check_positive("inner_steps", steps, integer=True)
    tables: dict[str, Any] = {}
    for names, p in zip(_selected(select, params, name), jax.tree.leaves(params)):
        if names is not None:
            node = functools.reduce(lambda d, key: d.setdefault(key, {}), names[:-1], tables)
            node[names[-1]] = jnp.broadcast_to(p, (steps,) + jnp.shape(p))
    return tables


def adapt_only(select: PathSpec, *, name: str = "adapt") -> optax.GradientTransformationExtraArgs:
    """Freezes every leaf that ``select`` leaves out: its update is zero, never its raw gradient.

    ``optax.freeze`` of the complement of ``select`` (``optax.masked(optax.set_to_zero(), ...)``),
    with the mask resolved from a :data:`~jmaml.core.masks.PathSpec` on the parameters' paths.
    Chain it after the optimiser of the adapted leaves (ANIL's head). The frozen leaves' inner
    gradients are then unused, and XLA drops their computation.

    References:
      Raghu, Raghu, Bengio & Vinyals (2020). Rapid Learning or Feature Reuse? Towards
      Understanding the Effectiveness of MAML. ICLR. https://arxiv.org/abs/1909.09157
    """
    frozen = lambda tree: jax.tree.map(lambda keep: not keep, resolve(select, tree, name=name))  # noqa: E731
    return optax.masked(optax.set_to_zero(), frozen)


class ProximalState(NamedTuple):
    """State of :func:`proximal`: ``anchor``, the parameters the inner loop started from (phi_0)."""

    anchor: Params


def proximal(lam: float) -> optax.GradientTransformation:
    """Adds ``lam * (phi - phi_0)``, the gradient of ``lam / 2 * ||phi - phi_0||^2`` (iMAML).

    ``phi_0`` (the meta-parameters the inner loop starts from) is the state, set by ``init``.
    Chain it before the optimiser: ``optax.chain(proximal(lam), optax.sgd(lr))`` descends on the
    support loss plus a proximal term that keeps the adapted parameters near the meta-parameters.

    References:
      Rajeswaran, Finn, Kakade & Levine (2019). Meta-Learning with Implicit Gradients.
      NeurIPS. https://arxiv.org/abs/1909.04630
    """
    check_positive("proximal_lambda", lam)

    def update(updates, state, params=None):
        if params is None:
            raise JmamlError("proximal needs the parameters: call update(updates, state, params)")
        return jax.tree.map(lambda g, p, a: g + lam * (p - a), updates, params, state.anchor), state

    return optax.GradientTransformation(ProximalState, update)
