"""The pretrain baseline against explicit loops, in float64."""


import chex
import jax
import jax.numpy as jnp
import pytest
from family_helpers import explicit_adapt, mlp_problem

import jmaml
from jmaml import losses

pytestmark = pytest.mark.usefixtures("x64")


def test_pretrain_objective_and_fine_tuning_equal_explicit_loops():
    """pretrain: per task, the mean loss over support and query together at theta (no adaptation);
    at meta-test, plain SGD fine-tuning on the support set."""
    learner, meta_params, batch = mlp_problem(steps=2)
    pre = jmaml.pretrain(learner.apply_fn, losses.mse, inner_lr=0.05, inner_steps=2)

    def hand(params):
        per_task = []
        for t in range(batch.x_support.shape[0]):
            out = jnp.concatenate([learner.apply_fn(params, batch.x_support[t]),
                                   learner.apply_fn(params, batch.x_query[t])])
            y = jnp.concatenate([batch.y_support[t], batch.y_query[t]])
            per_task.append(jnp.sum((out - y) ** 2) / y.size)
        return sum(per_task) / len(per_task)

    (loss, aux), grads = jax.value_and_grad(pre.meta_loss, has_aux=True)(meta_params, batch)
    want, want_grads = jax.value_and_grad(hand)(meta_params["params"])
    chex.assert_trees_all_close(loss, want, rtol=1e-12)
    chex.assert_trees_all_close(grads["params"], want_grads, rtol=1e-10, atol=1e-13)
    chex.assert_trees_all_close(aux["query_loss"], aux["query_loss_before"])  # no adaptation in training
    scores = pre.evaluate(meta_params, batch, steps=2)["loss"][:, 2]
    for t in range(batch.x_support.shape[0]):
        phi = explicit_adapt(learner.apply_fn, losses.mse, meta_params["params"], batch.x_support[t],
                             batch.y_support[t], 0.05, 2)
        chex.assert_trees_all_close(scores[t], losses.mse(learner.apply_fn(phi, batch.x_query[t]), batch.y_query[t]),
                                    rtol=1e-12)
