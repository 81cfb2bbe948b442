"""Reptile: the meta-gradient is theta - phi_K, with SGD or Adam inner loops and shuffled minibatches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks, sq_loss, task

import jmaml

LR, STEPS, BATCH = 0.1, 4, 2

pytestmark = pytest.mark.usefixtures("x64")


def stream(task_key, n, steps, batch):
    """The minibatch indices of each step, as documented on ``MetaLearner.inner_batch`` (and as
    ``_mini_batches`` of openai/supervised-reptile): passes over the support set, pass ``p`` the
    permutation drawn from ``fold_in(task_key, p)``, cut into consecutive batches."""
    passes = -(-steps * batch // n)
    order = np.concatenate([np.asarray(jax.random.permutation(jax.random.fold_in(task_key, p), n))
                            for p in range(passes)])
    return [order[k * batch:(k + 1) * batch] for k in range(steps)]


def explicit_phi(theta, t, optimizer, task_key):
    """phi_K by a Python loop over the shuffled minibatches of :func:`stream`."""
    phi, m2 = theta, jax.tree.map(jnp.zeros_like, theta)
    for k, idx in enumerate(stream(task_key, t.x_support.shape[0], STEPS, BATCH)):
        g = jax.grad(sq_loss)(phi, t.x_support[idx], t.y_support[idx])
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
    tasks, key = random_tasks(1), jax.random.PRNGKey(5)
    grads = jax.jit(jax.grad(lambda mp, k: learner.meta_loss(mp, tasks, key=k)[0]))(meta, key)["params"]
    phis = [explicit_phi(meta["params"], task(tasks, i), optimizer, jax.random.fold_in(key, i))
            for i in range(tasks.x_support.shape[0])]
    expected = jax.tree.map(lambda th, *ps: jnp.mean(jnp.stack([th - p for p in ps]), axis=0), meta["params"], *phis)
    chex.assert_trees_all_close(grads, expected, rtol=1e-9, atol=1e-12)


def test_minibatches_of_a_class_major_support_set_mix_classes():
    """5-way 5-shot, stored class-major: a batch of 10 in stored order holds two classes only."""
    ways, shots, batch, steps = 5, 5, 10, 6
    n = ways * shots
    labels = np.repeat(np.arange(ways), shots)  # class-major: 0 0 0 0 0 1 1 ...
    # one weight per example (one-hot inputs), so a step moves exactly the weights of its batch
    apply = lambda p, x: x @ p["w"]  # noqa: E731
    learner = jmaml.reptile(apply, mse, inner_lr=LR, inner_steps=steps, inner_batch=batch)
    meta = learner.init({"w": jnp.zeros((n, 1))})
    x, y = jnp.eye(n), jnp.ones((n, 1))
    task_key = jax.random.PRNGKey(3)
    _, path = learner.inner_loop(meta, x, y, observe=lambda p: p["w"][:, 0], key=task_key)
    path = np.concatenate([np.zeros((1, n)), np.asarray(path)])
    used = [np.flatnonzero(path[k + 1] != path[k]) for k in range(steps)]
    want = stream(task_key, n, steps, batch)
    for k in range(steps):
        np.testing.assert_array_equal(used[k], np.unique(want[k]))
        assert len(set(labels[used[k]])) > 2, (k, labels[used[k]])
    # each pass over the support set visits every example once, in a fresh order
    first, second = np.concatenate(want)[:n], np.concatenate(want)[n:2 * n]
    assert sorted(first) == sorted(second) == list(range(n)) and list(first) != list(second)


def test_minibatches_need_a_key():
    learner = jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_batch=BATCH)
    with pytest.raises(jmaml.JmamlError, match=r"^inner_batch=2 draws minibatches from a per-task PRNG key; "
                                               r"pass key="):
        learner.meta_loss(learner.init(mlp_init(0)), random_tasks(1))


def test_outer_sgd_step_of_one_moves_theta_to_phi():
    learner = jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_batch=BATCH)
    tasks = random_tasks(1, tasks=1)
    opt = optax.sgd(1.0)
    state = jmaml.init_state(learner, opt, mlp_init(0), jax.random.PRNGKey(0))
    new, metrics = jax.jit(jmaml.make_train_step(learner, opt))(state, tasks)
    task_key = jax.random.fold_in(jax.random.split(state.key, 3)[2], 0)  # as make_train_step documents
    theta, t = state.meta_params["params"], task(tasks, 0)
    phi = explicit_phi(theta, t, "sgd", task_key)
    chex.assert_trees_all_close(new.meta_params["params"], phi, rtol=1e-9, atol=1e-12)
    chex.assert_trees_all_close(new.key, jax.random.split(state.key, 3)[0])
    # the reported metrics are the query losses at theta and at phi_K
    chex.assert_trees_all_close(metrics["query_loss_before"], sq_loss(theta, t.x_query, t.y_query), rtol=1e-12)
    chex.assert_trees_all_close(metrics["query_loss"], sq_loss(phi, t.x_query, t.y_query), rtol=1e-12)
    chex.assert_trees_all_close(metrics["meta_loss"], 0.5 * sum(
        jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(phi))), rtol=1e-12)


def test_unknown_inner_optimizer_is_an_error():
    with pytest.raises(jmaml.JmamlError, match=r"^inner_optimizer must be one of 'sgd', 'adam' or an optax "
                                               r"GradientTransformation, got 'rmsprop'$"):
        jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_optimizer="rmsprop")


def test_negative_inner_batch_is_an_error():
    with pytest.raises(jmaml.JmamlError, match=r"^inner_batch must be a non-negative integer, got -1$"):
        jmaml.reptile(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, inner_batch=-1)
