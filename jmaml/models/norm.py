"""Batch normalisation with the current batch's statistics only, as MAML uses it."""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

# How the batch statistics are computed: "two_pass" (the mean, then the mean squared deviation from
# it) or "one_pass" (the mean and the mean square from one read of the input; variance = E[x^2] - E[x]^2).
NormStats = Literal["two_pass", "one_pass"]


def batch_stat_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                    stats: NormStats = "two_pass") -> jax.Array:
    """Normalise ``x`` over every axis but the last with its own mean and (biased) variance.

    The math shared by the linen and the NNX :class:`BatchStatNorm`.

    Args:
      x: the batch, features last.
      scale, bias: per feature.
      epsilon: added to the variance.
      stats: ``"two_pass"``: the variance as the mean squared deviation from the mean, which reads
        ``x`` after the mean is known. ``"one_pass"``: both reductions (sum and sum of squares) read
        ``x`` once, so XLA can compute them in one kernel, and the second-order backward pass has
        fewer reductions; the same value in exact arithmetic, but in float32 ``E[x^2] - E[x]^2``
        loses precision when a feature's mean is large against its spread (clamped at 0).

    References:
      Welford (1962) and Chan, Golub & LeVeque (1983) on the cancellation of the one-pass
      variance. Launches per meta-step on the GPU: ``benchmarks/gpu_program.py``.
    """
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    if stats == "one_pass":
        var = jnp.maximum(jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean), 0.0)
    else:
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
      stats: how the statistics are computed, ``"two_pass"`` or ``"one_pass"`` (:func:`batch_stat_norm`).

    References:
      Ioffe & Szegedy (2015). Batch Normalization. ICML. https://arxiv.org/abs/1502.03167
      Finn, Abbeel & Levine (2017), MAML's reference code (``normalize`` with batch stats).
    """

    epsilon: float = 1e-5
    stats: NormStats = "two_pass"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), x.dtype)
        return batch_stat_norm(x, scale, bias, self.epsilon, self.stats)
