"""Reptile: the meta-gradient is theta - phi_K, with SGD or Adam inner loops and minibatches."""

import jax
import jax.numpy as jnp
import optax
import pytest
from family_helpers import assert_trees_close, mlp_apply, mlp_init, mse, random_tasks, sq_loss, task

import jmaml

LR, STEPS, BATCH = 0.1, 4, 2


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def explicit_phi(theta, t, optimizer):
    """phi_K by a Python loop: minibatches of BATCH examples cycling through the support set."""
    n = t.x_support.shape[0]
    phi, m2 = theta, jax.tree.map(jnp.zeros_like, theta)
    for k in range(STEPS):
        idx = [(k * BATCH + j) % n for j in range(BATCH)]
        g = jax.grad(sq_loss)(phi, t.x_support[jnp.array(idx)], t.y_support[jnp.array(idx)])
        if optimizer == "sgd":
            phi = jax.tree.map(lambda p, gg: p - LR * gg, phi, g)
        else:  # Adam with beta1 = 0: the first moment is the gradient itself
            b2, eps = 0.999, 1e-8
            m2 = jax.tree.map(lambda v, gg: b2 * v + (1 - b2) * gg ** 2, m2, g)
            correction = 1 - b2 ** (k + 1)
            phi = jax.tree.map(lambda p, gg, v: p - LR * gg / (jnp.sqrt(v / correction) + eps), phi, g, m2)
    return phi


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_meta_gradient_is_theta_minus_phi(optimizer):
    learner = jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_optimizer=optimizer,
                            inner_batch=BATCH)
    meta = learner.init(mlp_init(0))
    tasks = random_tasks(1)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta)["params"]

    def expected(theta):
        phis = [explicit_phi(theta, task(tasks, i), optimizer) for i in range(tasks.x_support.shape[0])]
        return jax.tree.map(lambda th, *ps: jnp.mean(jnp.stack([th - p for p in ps]), axis=0), theta, *phis)

    assert_trees_close(grads, jax.jit(expected)(meta["params"]))


def test_outer_sgd_step_of_one_moves_theta_to_phi():
    learner = jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_batch=BATCH)
    tasks = random_tasks(1, tasks=1)
    opt = optax.sgd(1.0)
    state = jmaml.init_state(learner, opt, mlp_init(0), jax.random.PRNGKey(0))
    new, metrics = jax.jit(jmaml.make_train_step(learner, opt))(state, tasks)
    phi = jax.jit(explicit_phi, static_argnums=2)(state.meta_params["params"], task(tasks, 0), "sgd")
    assert_trees_close(new.meta_params["params"], phi)
    assert metrics["query_loss"] < metrics["query_loss_before"] + 1.0  # metrics are reported


def test_unknown_inner_optimizer_is_an_error():
    with pytest.raises(jmaml.JmamlError, match=r"^inner_optimizer must be 'sgd', 'adam' or an optax "
                                               r"optimiser, "
                                               r"got 'rmsprop'$"):
        jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_optimizer="rmsprop")


def test_negative_inner_batch_is_an_error():
    with pytest.raises(jmaml.JmamlError, match=r"^inner_batch must be a non-negative integer, got -1$"):
        jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_batch=-1)
