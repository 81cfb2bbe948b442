"""Tiny pure-JAX models and tasks shared by the MAML-family tests (test_meta_sgd, test_anil, ...).

Random test data comes from NumPy: nothing to compile, so the tests spend their time on the
programs they check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jmaml import Tasks


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
