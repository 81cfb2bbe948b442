"""Sinusoid regression tasks, sampled with ``jax.random`` on the device."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jmaml.core.types import Tasks
from jmaml.errors import check_positive

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def sample_tasks(key: jax.Array, meta_batch: int, shots: int, queries: int,
                 dtype: jnp.dtype = jnp.float32) -> Tasks:
    """Samples ``meta_batch`` tasks ``y = A sin(x - phase)``.

    Amplitude ~ U[0.1, 5], phase ~ U[0, pi], inputs ~ U[-5, 5] (the MAML paper's ranges).

    Args:
      key: a PRNG key.
      meta_batch: number of tasks.
      shots: support points per task (K).
      queries: query points per task.
      dtype: floating dtype of the arrays.

    Returns:
      ``Tasks`` with ``x``/``y`` arrays shaped ``[meta_batch, shots|queries, 1]``.

    References:
      Finn, Abbeel & Levine (2017), section 5.1. https://arxiv.org/abs/1703.03400
    """
    for name, value in (("meta_batch", meta_batch), ("shots", shots), ("queries", queries)):
        check_positive(name, value, integer=True)
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amplitude = jax.random.uniform(k_amp, (meta_batch, 1, 1), dtype, *AMPLITUDE)
    phase = jax.random.uniform(k_phase, (meta_batch, 1, 1), dtype, *PHASE)
    x = jax.random.uniform(k_x, (meta_batch, shots + queries, 1), dtype, *X_RANGE)
    y = amplitude * jnp.sin(x - phase)
    return Tasks(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
