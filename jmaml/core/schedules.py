"""Annealing schedules of meta-training: MAML++'s multi-step loss weights and the meta learning rate."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jmaml.errors import JmamlError, check_positive

SCHEDULES = ("constant", "cosine")
# How the meta-optimizer updates the parameters: one array at a time, or all raveled into one vector.
MetaUpdate = Literal["per_leaf", "flat"]


def msl_weights(inner_steps: int, anneal_steps: int, meta_step: Any) -> jax.Array:
    """MAML++'s multi-step loss weights: the weight of the query loss after each inner step.

    They start uniform (``1 / K`` each) and move linearly to the last step over
    ``anneal_steps`` meta-steps: every non-final weight falls by ``t / (K * anneal_steps)``, to
    at least ``0.03 / K``, and the final weight rises by ``(K - 1) t / (K * anneal_steps)``, to at
    most ``1 - (K - 1) * 0.03 / K``. From meta-step ``anneal_steps`` on (and always when
    ``anneal_steps == 0``) only the final query loss counts. The paper's schedule counts epochs;
    here ``t`` counts meta-steps.

    Args:
      inner_steps: K, the number of inner steps.
      anneal_steps: meta-steps over which the weights anneal.
      meta_step: the meta-step ``t`` (an integer or a traced scalar).

    Returns:
      A ``[K]`` vector of weights summing to one, in the default float type.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR, section 4 (multi-step
      loss optimisation); ``get_per_step_loss_importance_vector`` in their code.
      https://arxiv.org/abs/1810.09502
    """
    k, dtype = inner_steps, jnp.result_type(float)
    final = jnp.zeros((k,), dtype).at[-1].set(1.0)
    if anneal_steps <= 0 or k == 1:
        return final
    t = jnp.asarray(meta_step, dtype)
    decay = 1.0 / k / anneal_steps
    floor = 0.03 / k
    early = jnp.maximum(1.0 / k - t * decay, floor)
    last = jnp.minimum(1.0 / k + t * (k - 1) * decay, 1.0 - (k - 1) * floor)
    weights = jnp.full((k,), early).at[-1].set(last)
    return jnp.where(t < anneal_steps, weights, final)


def meta_lr_schedule(meta_lr: float, steps: int, schedule: str = "constant", *,
                     min_lr: float = 1e-5) -> optax.Schedule:
    """The meta learning rate per meta-step: constant, or cosine-annealed (MAML++).

    ``"cosine"`` decays from ``meta_lr`` to ``min_lr`` (capped at ``meta_lr``) over ``steps``
    meta-steps, like PyTorch's ``CosineAnnealingLR(T_max=steps, eta_min=min_lr)``.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR, section 4 (cosine
      annealing of meta-optimizer learning rate). https://arxiv.org/abs/1810.09502
      Loshchilov & Hutter (2017). SGDR: Stochastic Gradient Descent with Warm Restarts. ICLR.
    """
    check_positive("meta_lr", meta_lr)
    check_positive("steps", steps, integer=True)
    if schedule == "constant":
        return optax.constant_schedule(meta_lr)
    if schedule == "cosine":
        ratio = min_lr / meta_lr  # traced for one run of a group (jmaml.core.runs): no Python value to compare
        alpha = jnp.minimum(ratio, 1.0) if isinstance(ratio, jax.core.Tracer) else min(ratio, 1.0)
        return optax.cosine_decay_schedule(meta_lr, steps, alpha=alpha)
    raise JmamlError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def meta_optimizer(meta_lr: float, steps: int, schedule: str = "constant", *,
                   min_lr: float = 1e-5, update: MetaUpdate = "per_leaf") -> optax.GradientTransformation:
    """Adam over the meta-parameters with the learning rate of :func:`meta_lr_schedule`.

    Args:
      meta_lr, steps, schedule, min_lr: as :func:`meta_lr_schedule`.
      update: ``"per_leaf"``: Adam on each parameter array. ``"flat"``: Adam on all parameters
        raveled into one vector (``optax.flatten``; its moments are then vectors too), one fused
        update instead of one per leaf: the same arithmetic, fewer kernels on an accelerator.

    References:
      Kingma & Ba (2015). Adam: A Method for Stochastic Optimization. ICLR.
    """
    adam = optax.adam(meta_lr_schedule(meta_lr, steps, schedule, min_lr=min_lr))
    return optax.flatten(adam) if update == "flat" else adam
