"""Batch normalisation with the current batch's statistics only, as MAML uses it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_stat_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """Normalise ``x`` over every axis but the last with its own mean and (biased) variance.

    The math shared by the linen and the NNX :class:`BatchStatNorm`.
    """
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias


class BatchStatNorm(nn.Module):
    """Normalises with the statistics of the batch it is given, at train and test time.

    MAML's original code keeps no running averages: every forward pass, also at meta-test,
    normalises with the mean and variance of the current (per-task) batch, which makes the
    meta-test transductive. Only the scale and bias are parameters, so the module is a pure
    ``apply(params, x)`` with no mutable state.

    Attributes:
      epsilon: added to the variance.

    References:
      Ioffe & Szegedy (2015). Batch Normalization. ICML. https://arxiv.org/abs/1502.03167
      Finn, Abbeel & Levine (2017), MAML's reference code (``normalize`` with batch stats).
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), x.dtype)
        return batch_stat_norm(x, scale, bias, self.epsilon)
