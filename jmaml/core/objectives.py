"""Per-task meta-objectives: what the outer loop differentiates for one task.

An objective is ``objective(learner, meta_params, task, train_step) -> (loss, aux)``; the
meta-gradient is ``jax.grad`` of its mean over tasks. Which computation it differentiates is
what sets the meta-gradient estimator: through the unrolled inner loop (MAML, second order),
through it with inner gradients held constant (first order, via ``learner.first_order``),
or a surrogate whose gradient is the estimator (Reptile, iMAML; see ``jmaml/algorithms.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jmaml.core.types import PyTree, Tasks


def with_before(learner, meta_params: PyTree, task: Tasks, after: dict[str, jax.Array]
                ) -> dict[str, jax.Array]:
    """Per-task aux dict: query scores ``after`` adaptation, and ``*_before`` it."""
    before = learner.scores(meta_params["params"], task.x_query, task.y_query)
    aux = {f"query_{k}": v for k, v in after.items()}
    aux.update({f"query_{k}_before": v for k, v in before.items()})
    return aux


def query_loss(learner, meta_params: PyTree, task: Tasks, train_step: Any = 0
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MAML's objective: the query loss of the parameters adapted on the support set.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """
    del train_step
    params = learner.adapt(meta_params, task.x_support, task.y_support)
    after = learner.scores(params, task.x_query, task.y_query)
    return after["loss"], with_before(learner, meta_params, task, after)


def joint_loss(learner, meta_params: PyTree, task: Tasks, train_step: Any = 0
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The non-meta-learned baseline: the loss on all of a task's data, with no adaptation.

    Trained on this, the network fits the average task; it is then fine-tuned on a new
    task's support set with the learner's inner rule like any meta-learner.
    """
    del train_step
    x = jnp.concatenate([task.x_support, task.x_query])
    y = jnp.concatenate([task.y_support, task.y_query])
    loss = learner.loss_fn(learner.apply_fn(meta_params["params"], x), y)
    after = learner.scores(meta_params["params"], task.x_query, task.y_query)
    return loss, with_before(learner, meta_params, task, after)
