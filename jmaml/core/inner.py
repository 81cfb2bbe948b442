"""Inner-update rules: how one inner step turns a support gradient into new parameters.

A rule is a pair of pure functions, like an optax transformation:

- ``init(params) -> hyper``: the rule's own meta-parameters (learned inner learning rates),
  meta-trained with the model's parameters; ``{}`` for a fixed rule.
- ``step(hyper, params, grads, k) -> params``: the parameters after inner step ``k`` (0-based).

Rules hold no state between inner steps, so the inner loop stays a pure scan over steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmaml.core.types import Params, PyTree
from jmaml.errors import JmamlError


class InnerRule(NamedTuple):
    """How the inner loop moves parameters along a support gradient.

    Attributes:
      init: ``params -> hyper``, the rule's meta-learned hyper-parameters (``{}`` if none).
      step: ``(hyper, params, grads, k) -> params`` for inner step ``k``.
    """

    init: Callable[[Params], PyTree]
    step: Callable[[PyTree, Params, Params, jax.Array], Params]


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


def frozen(rule: InnerRule, adapt_mask: PyTree) -> InnerRule:
    """Restricts ``rule`` to the leaves where ``adapt_mask`` is True; others never move.

    Frozen leaves are passed through untouched (not multiplied by zero), so no inner
    gradient of theirs is ever used and XLA drops its computation. The rule's
    hyper-parameters still cover every leaf, which keeps ``hyper`` shaped like params.
    """

    def step(hyper, params, grads, k):
        moved = rule.step(hyper, params, grads, k)
        return jax.tree.map(lambda keep, new, old: new if keep else old, adapt_mask, moved, params)

    return InnerRule(init=rule.init, step=step)
