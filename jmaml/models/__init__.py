"""Models: flax linen and NNX modules, and the adapter that turns either into pure functions.

The linen modules (:class:`MLP`, :class:`Conv4`, :class:`BatchStatNorm`) are exported here; their
flax NNX twins, with the same parameter paths, live in :mod:`jmaml.models.nnx`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
from flax import nnx as flax_nnx

from jmaml.core.types import Params
from jmaml.errors import JmamlError
from jmaml.models import nnx
from jmaml.models.conv4 import Conv4
from jmaml.models.mlp import MLP
from jmaml.models.norm import BatchStatNorm


def functional(module: nn.Module | flax_nnx.Module
               ) -> tuple[Callable[[jax.Array, jax.Array], Params], Callable[[Params, jax.Array], jax.Array]]:
    """``(init(key, x) -> params, apply(params, x) -> outputs)`` for a flax linen or NNX module.

    ``params``, the meta-parameters jmaml differentiates and adapts, is a plain nested dict of
    arrays keyed by the module's attribute (or submodule) names, so any pure
    ``apply(params, x)`` and a flax module look the same to jmaml and masks by path
    (``"head"``) work for both kinds.

    - A linen module: ``params`` is its ``"params"`` collection; ``init`` is ``module.init``.
    - An NNX module is split once into its graph definition, its :class:`flax.nnx.Param` state
      (``params``) and any other state (e.g. the running averages of :class:`flax.nnx.BatchNorm`).
      An NNX module already holds weights drawn from the ``rngs`` it was built with, so ``init``
      returns those and ignores ``key`` and ``x`` (taken only so both kinds share a signature);
      build the module with other ``rngs`` for other initial weights. ``apply`` merges a fresh copy
      of the module from ``params`` and the other state on every call, so the module passed here is
      never changed; whatever the call writes into the copy (running averages, RNG counters) is
      dropped. An :class:`flax.nnx.BatchNorm` must therefore normalise with the batch's statistics
      (``use_running_average=False``, its default), which is what MAML does.

    Args:
      module: a ``flax.linen.Module`` or a ``flax.nnx.Module``.

    Returns:
      The pair ``(init, apply)``.

    Raises:
      JmamlError: ``module`` is neither a linen nor an NNX module.
    """
    if isinstance(module, nn.Module):
        def init(key: jax.Array, x: jax.Array) -> Params:
            return module.init(key, x)["params"]

        def apply(params: Params, x: jax.Array) -> jax.Array:
            return module.apply({"params": params}, x)

        return init, apply
    if isinstance(module, flax_nnx.Module):
        graphdef, param_state, other_state = flax_nnx.split(module, flax_nnx.Param, ...)
        initial = flax_nnx.to_pure_dict(param_state)
        # Plain arrays, so each merge builds new Variables inside the caller's trace.
        other = flax_nnx.to_pure_dict(other_state)

        def init_nnx(key: jax.Array, x: jax.Array) -> Params:
            del key, x
            return jax.tree.map(lambda leaf: leaf, initial)  # fresh dicts; arrays are immutable

        def apply_nnx(params: Params, x: jax.Array) -> jax.Array:
            return flax_nnx.merge(graphdef, params, other)(x)

        return init_nnx, apply_nnx
    raise JmamlError(f"jmaml.functional takes a flax linen or NNX module, got {type(module).__name__}; "
                     "for a plain function, pass apply(params, x) to the algorithm directly")


__all__ = ["BatchStatNorm", "Conv4", "MLP", "functional", "nnx"]
