"""Selecting parameter leaves by path: the head of ANIL, the normalisation leaves of MAML++.

A :data:`PathSpec` says which leaves of a parameter pytree belong to a part of the network:

- a string: a regular expression searched (``re.search``) in each leaf's ``'/'``-joined path,
  e.g. ``"head"`` selects ``head/kernel`` and ``head/bias`` of a flax model;
- a callable: ``fn(path: str) -> bool`` on the same ``'/'``-joined path;
- a pytree of booleans with the parameters' structure, or a prefix of it (``{"body": False,
  "head": True}`` covers every leaf below each key).

Specs are resolved against the parameters themselves (:func:`resolve`), so a rule built from a
spec needs no parameters until ``init``/``step`` see them; resolution is pure Python on the
tree structure and adds nothing to a traced program.
"""

from __future__ import annotations

import re
from typing import Callable, Union

import jax

from jmaml.core.types import Params, PyTree
from jmaml.errors import JmamlError

PathSpec = Union[str, Callable[[str], bool], PyTree]


def leaf_names(params: Params) -> list[tuple[str, ...]]:
    """The path of every leaf of ``params`` as a tuple of key names, in flattening order."""
    return [tuple(jax.tree_util.keystr((key,), simple=True) for key in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def leaf_paths(params: Params) -> list[str]:
    """The ``'/'``-joined path of every leaf of ``params``, in flattening order."""
    return ["/".join(names) for names in leaf_names(params)]


def resolve(spec: PathSpec, params: Params, *, name: str, some: bool = False, not_all: bool = False
            ) -> PyTree:
    """A pytree of Python booleans shaped like ``params``: the leaves ``spec`` selects.

    Args:
      spec: a regular expression, a path predicate or a boolean mask pytree.
      params: the parameters whose leaves are selected.
      name: what the spec is called in error messages (``"head"``).
      some: require that at least one leaf is selected.
      not_all: require that at least one leaf is left out.

    Raises:
      JmamlError: the mask does not match the parameters, or the spec selects no leaf (with
        ``some``) or every leaf (with ``not_all``).
    """
    treedef = jax.tree.structure(params)
    paths = leaf_paths(params)
    if isinstance(spec, str):
        pattern = re.compile(spec)
        flags = [pattern.search(p) is not None for p in paths]
    elif callable(spec):
        flags = [bool(spec(p)) for p in paths]
    else:
        try:
            full = jax.tree.map(lambda flag, sub: jax.tree.map(lambda _: bool(flag), sub), spec, params)
        except ValueError:
            raise JmamlError(f"{name} mask must have the parameters' structure {treedef} (or a prefix "
                             f"of it), got {jax.tree.structure(spec)}") from None
        flags = jax.tree.leaves(full)
    if some and not any(flags):
        raise JmamlError(f"{name} {_describe(spec)} selects no parameter; parameter paths are: "
                         f"{', '.join(paths)}")
    if not_all and all(flags):
        raise JmamlError(f"{name} {_describe(spec)} selects every parameter ({', '.join(paths)}); "
                         "it must leave some of the network out")
    return jax.tree.unflatten(treedef, flags)


def _describe(spec: PathSpec) -> str:
    if isinstance(spec, str):
        return repr(spec)
    return getattr(spec, "__name__", "predicate") if callable(spec) else "mask"
