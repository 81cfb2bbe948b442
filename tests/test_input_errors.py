"""Inputs the model or the meta-batch cannot take are one clear error each, before anything runs."""


import jax
import jax.numpy as jnp
import pytest
from family_helpers import mlp_problem

import jmaml
from jmaml import losses

pytestmark = pytest.mark.usefixtures("x64")


def test_wrong_input_shape_for_the_model_is_one_clear_error():
    init, apply = jmaml.functional(jmaml.Conv4(5, filters=2))
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.4, inner_steps=1)
    meta_params = learner.init(init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
    x = jnp.zeros((2, 5, 84, 84, 3))  # miniImageNet-shaped images for an Omniglot-shaped model
    y = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(jmaml.JmamlError, match=r"the model cannot take this task's inputs of shape "
                                               r"\(5, 84, 84, 3\) \(examples, ...\): .*make the data's shape"):
        learner.meta_loss(meta_params, jmaml.Tasks(x, y, x, y))


def test_mismatched_tasks_are_one_clear_error():
    learner, meta_params, batch = mlp_problem()
    bad = batch._replace(y_query=batch.y_query[:, :3])
    with pytest.raises(jmaml.JmamlError, match=r"x_query has 7 examples per task but y_query has 3"):
        learner.meta_loss(meta_params, bad)
    bad = batch._replace(x_query=batch.x_query[:2])
    with pytest.raises(jmaml.JmamlError, match="same leading task axis"):
        learner.meta_loss(meta_params, bad)
    with pytest.raises(jmaml.JmamlError, match="inner_lr must be a positive number, got 0"):
        jmaml.maml(learner.apply_fn, losses.mse, inner_lr=0, inner_steps=1)
    with pytest.raises(jmaml.JmamlError, match="inner_steps must be a positive integer, got 0"):
        jmaml.maml(learner.apply_fn, losses.mse, inner_lr=0.1, inner_steps=0)
