"""Per-task meta-objectives: what the outer loop differentiates for one task.

An objective is ``objective(learner, meta_params, task, meta_step, key) -> (loss, aux)``; the
meta-gradient is ``jax.grad`` of its mean over tasks. Which computation it differentiates is
what sets the meta-gradient estimator: through the unrolled inner loop (MAML, second order),
through it with inner gradients held constant (first order, via ``learner.first_order``),
or a surrogate whose gradient is the estimator (Reptile, iMAML; see ``jmaml/algorithms.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jmaml.core.implicit import implicit_adapt
from jmaml.core.learner import Objective
from jmaml.core.schedules import msl_weights
from jmaml.core.types import PyTree, Tasks


def with_before(learner, meta_params: PyTree, task: Tasks, after: dict[str, jax.Array]
                ) -> dict[str, jax.Array]:
    """Per-task aux dict: query scores ``after`` adaptation, and ``*_before`` it."""
    before = learner.scores(meta_params["params"], task.x_query, task.y_query)
    aux = {f"query_{k}": v for k, v in after.items()}
    aux.update({f"query_{k}_before": v for k, v in before.items()})
    return aux


def query_loss(learner, meta_params: PyTree, task: Tasks, meta_step: Any = 0,
               key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MAML's objective: the query loss of the parameters adapted on the support set.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """
    del meta_step
    params = learner.adapt(meta_params, task.x_support, task.y_support, key=key)
    after = learner.scores(params, task.x_query, task.y_query)
    return after["loss"], with_before(learner, meta_params, task, after)


def joint_loss(learner, meta_params: PyTree, task: Tasks, meta_step: Any = 0,
               key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The non-meta-learned baseline: the loss on all of a task's data, with no adaptation.

    Trained on this, the network fits the average task; it is then fine-tuned on a new
    task's support set with the learner's inner rule like any meta-learner.
    """
    del meta_step, key
    x = jnp.concatenate([task.x_support, task.x_query])
    y = jnp.concatenate([task.y_support, task.y_query])
    loss = learner.loss_fn(learner.apply_fn(meta_params["params"], x), y)
    after = learner.scores(meta_params["params"], task.x_query, task.y_query)
    return loss, with_before(learner, meta_params, task, after)


def multi_step_loss(anneal_steps: int) -> Objective:
    """MAML++'s multi-step loss: query losses after every inner step, weighted by :func:`msl_weights`.

    The weights move from uniform to the last step over ``anneal_steps`` meta-steps (the
    ``meta_step`` argument); from then on, and for ``anneal_steps == 0``, this is
    :func:`query_loss`.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR, section 4.
      https://arxiv.org/abs/1810.09502
    """

    def objective(learner, meta_params, task, meta_step=0, key=None):
        observe = lambda p: learner.scores(p, task.x_query, task.y_query)  # noqa: E731
        _, per_step = learner.inner_loop(meta_params, task.x_support, task.y_support, observe=observe,
                                         key=key)
        weights = msl_weights(learner.inner_steps, anneal_steps, meta_step)
        loss = jnp.sum(weights.astype(per_step["loss"].dtype) * per_step["loss"])
        after = jax.tree.map(lambda v: v[-1], per_step)
        return loss, with_before(learner, meta_params, task, after)

    return objective


def reptile_loss(learner, meta_params: PyTree, task: Tasks, meta_step: Any = 0,
                 key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reptile's surrogate ``0.5 ||theta - stop_gradient(phi_K)||^2``: its gradient is ``theta - phi_K``.

    ``phi_K`` is adapted on the support set with nothing differentiated through the inner
    loop; averaged over tasks, the gradient is Reptile's meta-gradient, so any optax optimiser
    can take the outer step (SGD with rate epsilon gives ``theta + epsilon (phi_K - theta)``).
    The learned hyper-parameters of the rule, if any, get no gradient.

    References:
      Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms.
      https://arxiv.org/abs/1803.02999
    """
    del meta_step
    theta = meta_params["params"]
    phi = learner.adapt(lax.stop_gradient(meta_params), task.x_support, task.y_support, key=key)
    loss = 0.5 * sum(jnp.sum(jnp.square(t - p)) for t, p in zip(jax.tree.leaves(theta), jax.tree.leaves(phi)))
    after = learner.scores(phi, task.x_query, task.y_query)
    return loss, with_before(learner, meta_params, task, after)


def implicit_loss(lam: float, cg_steps: int) -> Objective:
    """iMAML's objective: the query loss at the proximal solution, differentiated implicitly.

    The learner's inner loop must solve the proximal problem (``optax.chain(inner.proximal(lam), optimiser)``);
    the meta-gradient is ``(I + H / lam)^{-1} grad L_q(phi)`` by ``cg_steps`` iterations of
    conjugate gradient (:func:`jmaml.core.implicit.implicit_adapt`).

    References:
      Rajeswaran, Finn, Kakade & Levine (2019). Meta-Learning with Implicit Gradients.
      NeurIPS. https://arxiv.org/abs/1909.04630
    """

    def objective(learner, meta_params, task, meta_step=0, key=None):
        del meta_step
        support_loss = lambda p, x, y: learner.loss_fn(learner.apply_fn(p, x), y)  # noqa: E731
        inner = learner.adapt if key is None else functools.partial(learner.adapt, key=key)
        adapt = implicit_adapt(inner, support_loss, lam, cg_steps)
        after = learner.scores(adapt(meta_params, task.x_support, task.y_support), task.x_query, task.y_query)
        return after["loss"], with_before(learner, meta_params, task, after)

    return objective
