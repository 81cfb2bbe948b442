"""Memory options: rematerialised inner steps and a chunked meta-batch compute the same gradient."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmaml
from jmaml import losses
from jmaml.data import sinusoid


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def mlp_problem(steps, tasks=4, support=8, width=16):
    init, apply = jmaml.functional(jmaml.MLP((width, width), 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(1), tasks, support, 8, dtype=jnp.float64)
    learner = jmaml.maml(apply, losses.mse, inner_lr=0.01, inner_steps=steps)
    return learner, learner.init(params), batch


def grads_of(learner, meta_params, batch, chunks=1):
    fn = jax.jit(lambda mp: jmaml.meta_gradient(learner, mp, batch, chunks=chunks))
    return fn(meta_params)


def test_remat_gives_the_same_meta_gradient():
    learner, meta_params, batch = mlp_problem(steps=3)
    (l1, a1), g1 = grads_of(learner, meta_params, batch)
    (l2, a2), g2 = grads_of(dataclasses.replace(learner, remat=True), meta_params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13), (l1, a1, g1), (l2, a2, g2))


def test_chunked_meta_batch_gives_the_same_meta_gradient():
    learner, meta_params, batch = mlp_problem(steps=2)
    (l1, a1), g1 = grads_of(learner, meta_params, batch)
    (l2, a2), g2 = grads_of(learner, meta_params, batch, chunks=2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13), (l1, a1, g1), (l2, a2, g2))
    with pytest.raises(jmaml.JmamlError, match="meta_chunks=3 must divide the meta-batch of 4 tasks"):
        jmaml.meta_gradient(learner, meta_params, batch, chunks=3)


def temp_bytes(learner, meta_params, batch):
    fn = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, batch)[0]))
    return fn.lower(meta_params).compile().memory_analysis().temp_size_in_bytes


def test_remat_memory_grows_slower_with_inner_steps():
    # wide layers and many support points, so that activations, not parameters, fill memory
    learner, meta_params, batch = mlp_problem(steps=16, tasks=2, support=512, width=64)
    plain = temp_bytes(learner, meta_params, batch)
    remat = temp_bytes(dataclasses.replace(learner, remat=True), meta_params, batch)
    assert remat < plain / 2, (remat, plain)
