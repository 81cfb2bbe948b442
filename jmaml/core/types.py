"""Pytrees shared by every part of jmaml."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

PyTree = Any
Params = PyTree


class Tasks(NamedTuple):
    """A batch of few-shot tasks, every array with a leading task axis.

    Attributes:
      x_support: inputs the inner loop adapts on, ``[tasks, n_support, ...]``.
      y_support: their targets, ``[tasks, n_support, ...]``.
      x_query: inputs the adapted parameters are scored on, ``[tasks, n_query, ...]``.
      y_query: their targets, ``[tasks, n_query, ...]``.
    """

    x_support: jax.Array
    y_support: jax.Array
    x_query: jax.Array
    y_query: jax.Array
