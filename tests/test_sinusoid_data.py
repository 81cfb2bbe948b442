"""The sinusoid task generator against the MAML paper's definition."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jmaml.data import sinusoid


def test_sinusoid_tasks_follow_paper_ranges():
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(0), 200, 10, 5)
    assert batch.x_support.shape == (200, 10, 1) and batch.x_query.shape == (200, 5, 1)
    x = jnp.concatenate([batch.x_support, batch.x_query], 1)
    y = jnp.concatenate([batch.y_support, batch.y_query], 1)
    assert float(x.min()) >= -5 and float(x.max()) <= 5
    assert float(jnp.abs(y).max()) <= 5
    again = sinusoid.sample_tasks(jax.random.PRNGKey(0), 200, 10, 5)
    jax.tree.map(np.testing.assert_array_equal, batch, again)


def fit_sinusoids(x, y):
    """Least-squares fit of ``y = a sin x + b cos x`` per task; returns amplitude, phase of
    ``A sin(x - phase)`` (``a = A cos phase``, ``b = -A sin phase``) and the largest residual."""
    design = np.stack([np.sin(x), np.cos(x)], axis=-1)
    coef = np.stack([np.linalg.lstsq(d, t, rcond=None)[0] for d, t in zip(design, y)])
    residual = np.abs(np.einsum("tnk,tk->tn", design, coef) - y).max()
    a, b = coef[:, 0], coef[:, 1]
    return np.hypot(a, b), np.arctan2(-b, a), residual


def test_sinusoid_tasks_are_a_sin_x_minus_phase_as_in_the_maml_paper(x64):
    """Finn et al. (2017), 5.1: amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5], y = A sin(x - phase)
    (``generate_sinusoid_batch`` of their code). A and phase are refitted exactly from each task's points, support
    and query together, so that support and query must come from the same function."""
    tasks = sinusoid.sample_tasks(jax.random.PRNGKey(0), 2000, 5, 7, dtype=jnp.float64)
    x = np.concatenate([tasks.x_support, tasks.x_query], axis=1)[..., 0]
    y = np.concatenate([tasks.y_support, tasks.y_query], axis=1)[..., 0]
    amplitude, phase, residual = fit_sinusoids(x, y)
    assert residual < 1e-10
    assert x.min() >= -5 and x.max() <= 5 and x.min() < -4.9 and x.max() > 4.9
    assert amplitude.min() >= 0.1 - 1e-9 and amplitude.max() <= 5 + 1e-9
    assert phase.min() >= -1e-9 and phase.max() <= math.pi + 1e-9
    # uniform over their ranges: the extremes are approached and the means are the midpoints
    assert amplitude.min() < 0.2 and amplitude.max() > 4.9 and phase.min() < 0.05 and phase.max() > math.pi - 0.05
    assert abs(amplitude.mean() - 2.55) < 0.1 and abs(phase.mean() - math.pi / 2) < 0.06
    # independent draws per task
    assert abs(np.corrcoef(amplitude, phase)[0, 1]) < 0.1
