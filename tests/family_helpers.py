"""Tiny pure-JAX models and tasks shared by the MAML-family tests (test_meta_sgd, test_anil, ...).

Random test data comes from NumPy: nothing to compile, so the tests spend their time on the
programs they check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jmaml
from jmaml import Tasks, losses
from jmaml.data import sinusoid


def normal(seed, *shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def uniform(seed, tree, low, high):
    """A pytree shaped like ``tree`` (arrays or ``jax.ShapeDtypeStruct``) with entries uniform in
    ``[low, high)``, in the default float type."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.uniform(low, high, jnp.shape(leaf))), tree)


def mlp_init(seed, d_in=2, hidden=5, d_out=1):
    """A one-hidden-layer tanh MLP, ``{"body": {w, b}, "head": {w, b}}``, with non-zero biases."""
    return {"body": {"w": normal(seed, d_in, hidden, scale=d_in ** -0.5),
                     "b": normal(seed + 1, hidden, scale=0.1)},
            "head": {"w": normal(seed + 2, hidden, d_out, scale=hidden ** -0.5),
                     "b": normal(seed + 3, d_out, scale=0.1)}}


def mlp_apply(params, x):
    h = jnp.tanh(x @ params["body"]["w"] + params["body"]["b"])
    return h @ params["head"]["w"] + params["head"]["b"]


def mse(outputs, targets):
    return jnp.mean(jnp.square(outputs - targets))


def random_tasks(seed, tasks=2, support=5, query=7, d_in=2, d_out=1):
    return Tasks(normal(seed, tasks, support, d_in), normal(seed + 1, tasks, support, d_out),
                 normal(seed + 2, tasks, query, d_in), normal(seed + 3, tasks, query, d_out))


def task(tasks: Tasks, i: int) -> Tasks:
    """Task ``i`` of a batch, without the task axis."""
    return Tasks(*(a[i] for a in tasks))


def sq_loss(params, x, y):
    return mse(mlp_apply(params, x), y)


def directional_fd(f, params, direction, eps=1e-6):
    """Central finite difference of scalar ``f`` at ``params`` along ``direction``."""
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


def random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def mlp_problem(steps=2, tasks=3):
    init, apply = jmaml.functional(jmaml.MLP((8, 8), 1))
    params = to64(init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(1), tasks, 5, 7, dtype=jnp.float64)
    learner = jmaml.maml(apply, losses.mse, inner_lr=0.05, inner_steps=steps)
    return learner, learner.init(params), batch


def conv_problem(steps=1, tasks=2, ways=3):
    init, apply = jmaml.functional(jmaml.Conv4(ways, filters=3))
    params = to64(init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    kx, ky = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(kx, (tasks, 2 * ways, 8, 8, 1), jnp.float64)
    y = jnp.tile(jnp.arange(ways), (tasks, 2))
    batch = jmaml.Tasks(x[:, :ways], y[:, :ways], x[:, ways:], y[:, ways:])
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.3, inner_steps=steps,
                         metrics={"accuracy": losses.accuracy})
    return learner, learner.init(params), batch


def explicit_adapt(apply_fn, loss_fn, params, x, y, lr, steps):
    """The inner loop written out by hand, one Python iteration per step."""
    for _ in range(steps):
        grads = jax.grad(lambda p: loss_fn(apply_fn(p, x), y))(params)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params
