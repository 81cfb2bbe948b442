"""Checkpoints of the whole training state with orbax."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jmaml.errors import JmamlError


def _manager(directory: str, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(os.path.abspath(directory),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))


def save(directory: str, step: int, state: Any) -> None:
    """Saves ``state`` (any pytree of arrays, e.g. a ``TrainState``) as step ``step``.

    Orbax writes to a temporary folder and renames it when complete, so an interrupted
    save never leaves a checkpoint that looks finished.
    """
    with _manager(directory) as manager:
        manager.save(int(step), args=ocp.args.StandardSave(state))
        manager.wait_until_finished()


def restore(directory: str, like: Any, step: int | None = None) -> Any:
    """Restores the checkpoint at ``step`` (default: the latest) into the structure of ``like``.

    Args:
      directory: the folder given to :func:`save`.
      like: a pytree with the same structure, shapes and dtypes (values unused).
      step: which step; the latest when None.
    """
    if not os.path.isdir(directory):
        raise JmamlError(f"no checkpoint folder at {directory}: train there first with `jmaml train`")
    with _manager(directory, max_to_keep=None) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise JmamlError(f"{directory} holds no finished checkpoint")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
