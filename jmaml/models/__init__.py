"""Models: flax linen modules, and the adapter that turns one into pure functions."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from jmaml.core.types import Params
from jmaml.models.conv4 import Conv4
from jmaml.models.mlp import MLP
from jmaml.models.norm import BatchStatNorm


def functional(module: nn.Module) -> tuple[Callable[[jax.Array, jax.Array], Params],
                                           Callable[[Params, jax.Array], jax.Array]]:
    """``(init(key, x) -> params, apply(params, x) -> outputs)`` for a stateless flax module.

    ``params`` is the module's ``"params"`` collection alone, so any pure
    ``apply(params, x)`` and a flax module look the same to jmaml.
    """

    def init(key: jax.Array, x: jax.Array) -> Params:
        return module.init(key, x)["params"]

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return module.apply({"params": params}, x)

    return init, apply


__all__ = ["BatchStatNorm", "Conv4", "MLP", "functional"]
