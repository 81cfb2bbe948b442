"""Inner-update rules: how one inner step turns a support gradient into new parameters.

A rule is a pair of pure functions, like an optax transformation:

- ``init(params) -> hyper``: the rule's own meta-parameters (learned inner learning rates),
  meta-trained with the model's parameters; ``{}`` for a fixed rule.
- ``step(hyper, params, grads, k) -> params``: the parameters after inner step ``k`` (0-based).

Most rules hold no state between inner steps. A rule that does (an optax optimiser's moments,
the anchor of a proximal term) also has ``init_state(params) -> state``, called on each task's
starting parameters, and its ``step`` takes and returns the state:
``step(hyper, params, grads, k, state) -> (params, state)``. The inner loop carries the state
through its scan; :func:`apply_step` calls either kind.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jmaml.core.masks import PathSpec, leaf_names, resolve
from jmaml.core.types import Params, PyTree
from jmaml.errors import JmamlError


class InnerRule(NamedTuple):
    """How the inner loop moves parameters along a support gradient.

    Attributes:
      init: ``params -> hyper``, the rule's meta-learned hyper-parameters (``{}`` if none).
      step: ``(hyper, params, grads, k) -> params`` for inner step ``k``; for a rule with state,
        ``(hyper, params, grads, k, state) -> (params, state)``.
      init_state: ``params -> state``, the per-task state at the start of the inner loop, or
        ``None`` for a rule without state.
    """

    init: Callable[[Params], PyTree]
    step: Callable[..., Params | tuple[Params, PyTree]]
    init_state: Callable[[Params], PyTree] | None = None


def apply_step(rule: InnerRule, hyper: PyTree, params: Params, grads: Params, k: jax.Array,
               state: PyTree = None) -> tuple[Params, PyTree]:
    """One inner step of any rule: ``(params, state)`` after step ``k`` (state ``None`` if none)."""
    if rule.init_state is None:
        return rule.step(hyper, params, grads, k), state
    return rule.step(hyper, params, grads, k, state)


def _wrap(rule: InnerRule, init: Callable, step: Callable) -> InnerRule:
    """A rule around ``rule``, with its state: ``step(hyper, params, grads, k, state) -> (params,
    state)`` as written, or called with ``state=None`` when ``rule`` has no state."""
    if rule.init_state is None:
        return InnerRule(init, lambda hyper, params, grads, k: step(hyper, params, grads, k, None)[0])
    return InnerRule(init, step, rule.init_state)


def check_positive(name: str, value: float | int, *, integer: bool = False) -> None:
    """Raises a JmamlError unless ``value`` is a positive number (or integer)."""
    kind = "integer" if integer else "number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        raise JmamlError(f"{name} must be a positive {kind}, got {value!r}")


def sgd(inner_lr: float) -> InnerRule:
    """Plain gradient descent with one fixed learning rate: ``phi - inner_lr * g``.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """
    check_positive("inner_lr", inner_lr)

    def step(hyper, params, grads, k):
        del hyper, k
        return jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)

    return InnerRule(init=lambda params: {}, step=step)


def learned_sgd(init_lr: float) -> InnerRule:
    """Gradient descent with a learned learning rate per parameter entry (Meta-SGD).

    ``hyper`` is a pytree shaped like the parameters, initialised to ``init_lr``:
    ``phi - alpha * g`` elementwise.

    References:
      Li, Zhou, Chen & Li (2017). Meta-SGD: Learning to Learn Quickly for Few-Shot
      Learning. https://arxiv.org/abs/1707.09835
    """
    check_positive("inner_lr", init_lr)

    def init(params):
        return jax.tree.map(lambda p: jnp.full_like(p, init_lr), params)

    def step(alpha, params, grads, k):
        del k
        return jax.tree.map(lambda p, a, g: p - a * g, params, alpha, grads)

    return InnerRule(init=init, step=step)


def per_step_sgd(init_lr: float, steps: int) -> InnerRule:
    """Learned learning rate per parameter tensor (layer) and per inner step (MAML++ LSLR).

    ``hyper`` holds, for every leaf of the parameters, a vector of ``steps`` rates.
    Step ``k`` uses entry ``min(k, steps - 1)``, so a meta-test with more inner steps
    than meta-training keeps the last learned rate.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR.
      https://arxiv.org/abs/1810.09502
    """
    check_positive("inner_lr", init_lr)
    check_positive("inner_steps", steps, integer=True)

    def init(params):
        return jax.tree.map(lambda p: jnp.full((steps,), init_lr, p.dtype), params)

    def step(rates, params, grads, k):
        index = jnp.minimum(k, steps - 1)
        return jax.tree.map(lambda p, r, g: p - r[index] * g, params, rates, grads)

    return InnerRule(init=init, step=step)


def frozen(rule: InnerRule, adapt_mask: PathSpec, *, name: str = "adapt_mask",
           partial: bool = False) -> InnerRule:
    """Restricts ``rule`` to the leaves ``adapt_mask`` selects; the others never move.

    Frozen leaves are passed through untouched (not multiplied by zero), so no inner
    gradient of theirs is ever used and XLA drops its computation. The rule's
    hyper-parameters still cover every leaf, which keeps ``hyper`` shaped like params.

    Args:
      rule: the rule for the adapted leaves.
      adapt_mask: a :data:`~jmaml.core.masks.PathSpec` (boolean pytree, path regex or path
        predicate), resolved against the parameters in ``init`` and ``step``.
      name: what the mask is called in error messages.
      partial: raise a JmamlError (in ``init``) if the mask selects no leaf or every leaf.
    """

    def init(params):
        resolve(adapt_mask, params, name=name, some=partial, not_all=partial)
        return rule.init(params)

    def step(hyper, params, grads, k, state):
        moved, state = apply_step(rule, hyper, params, grads, k, state)
        keep = resolve(adapt_mask, params, name=name)
        return jax.tree.map(lambda a, new, old: new if a else old, keep, moved, params), state

    return _wrap(rule, init, step)


def per_step_values(rule: InnerRule, select: PathSpec, steps: int, *, name: str = "per_step_bn"
                    ) -> InnerRule:
    """Gives the selected leaves a learned value per inner step instead of an inner update.

    After inner step ``k`` each selected leaf is set to its learned value for that step,
    entry ``min(k, steps - 1)`` of a table initialised with ``steps`` copies of the leaf; before
    the first step it is the meta-parameter itself. MAML++ uses it for per-step BatchNorm scale
    and bias: the support forward pass of step ``k`` and the query pass after it see their own
    normalisation weights, with no change to the model. Selecting no leaf is allowed (a model
    without normalisation); selecting every leaf is a JmamlError, since nothing would adapt.

    ``hyper`` is ``{"rule": rule's hyper, "values": tables}``, where ``tables`` nests dicts by the
    selected leaves' key names, each a ``[steps, *leaf.shape]`` array (e.g.
    ``{"norm0": {"scale": ..., "bias": ...}}``; ``{}`` when nothing is selected).

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR, section 4
      ("per-step batch normalization weights and biases"). https://arxiv.org/abs/1810.09502
    """
    check_positive("inner_steps", steps, integer=True)

    def selected(params):
        flags = jax.tree.leaves(resolve(select, params, name=name, not_all=True))
        return [names if keep else None for names, keep in zip(leaf_names(params), flags)]

    def init(params):
        tables = {}
        for names, p in zip(selected(params), jax.tree.leaves(params)):
            if names is not None:
                node = functools.reduce(lambda d, key: d.setdefault(key, {}), names[:-1], tables)
                node[names[-1]] = jnp.broadcast_to(p, (steps,) + jnp.shape(p))
        return {"rule": rule.init(params), "values": tables}

    def step(hyper, params, grads, k, state):
        moved, state = apply_step(rule, hyper["rule"], params, grads, k, state)
        leaves, treedef = jax.tree.flatten(moved)
        index = jnp.minimum(k, steps - 1)
        table = lambda names: functools.reduce(lambda d, key: d[key], names, hyper["values"])  # noqa: E731
        leaves = [leaf if names is None else table(names)[index]
                  for leaf, names in zip(leaves, selected(params))]
        return jax.tree.unflatten(treedef, leaves), state

    return _wrap(rule, init, step)


def proximal(rule: InnerRule, lam: float) -> InnerRule:
    """Adds the gradient of ``lam / 2 * ||phi - phi_0||^2`` to every inner gradient (iMAML).

    ``phi_0`` (the meta-parameters the inner loop starts from) is kept as the rule's state, so
    the inner loop minimises the support loss plus a proximal term that keeps the adapted
    parameters near the meta-parameters.

    References:
      Rajeswaran, Finn, Kakade & Levine (2019). Meta-Learning with Implicit Gradients.
      NeurIPS. https://arxiv.org/abs/1909.04630
    """
    check_positive("proximal_lambda", lam)

    def init_state(params):
        inner = rule.init_state(params) if rule.init_state is not None else None
        return {"anchor": params, "rule": inner}

    def step(hyper, params, grads, k, state):
        grads = jax.tree.map(lambda g, p, a: g + lam * (p - a), grads, params, state["anchor"])
        params, inner = apply_step(rule, hyper, params, grads, k, state["rule"])
        return params, {"anchor": state["anchor"], "rule": inner}

    return InnerRule(rule.init, step, init_state)


def from_optax(optimizer: optax.GradientTransformation) -> InnerRule:
    """Any optax optimiser as an inner rule; its state (e.g. Adam's moments) is per task.

    For example Reptile's inner Adam: ``from_optax(optax.adam(lr, b1=0.0))``. The optimiser has
    no meta-learned hyper-parameters (``hyper`` is ``{}``).

    References:
      Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms, section 6
      (Adam with beta1 = 0 in the inner loop). https://arxiv.org/abs/1803.02999
    """

    def step(hyper, params, grads, k, state):
        del hyper, k
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return InnerRule(lambda params: {}, step, optimizer.init)
