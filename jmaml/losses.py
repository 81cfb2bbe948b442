"""Losses and metrics with the ``fn(outputs, targets) -> scalar`` signature jmaml expects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error over every entry."""
    return jnp.mean(jnp.square(outputs - targets))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [n, classes]`` against integer ``labels [n]``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose largest logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
