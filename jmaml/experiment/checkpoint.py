"""Orbax checkpoints of the whole training state, with a checksum and a shape record.

Each checkpoint step holds the state (``StandardSave``) and a small JSON record: the step, the
SHA-256 of every array's bytes and each leaf's path, shape and dtype. Orbax writes to a
temporary folder and renames it when complete, so an interrupted save never looks finished;
leftover temporary folders are removed when the manager opens. Restoring checks the record
first (a config that no longer builds the saved shapes is named leaf by leaf) and the checksum
after (a flipped bit is an error, not a silent ``nan``).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jmaml.errors import JmamlError

KEEP = 2  # checkpoints kept during training: the latest and the one before it


class CheckpointError(Exception):
    """A checkpoint could not be written (a full disk, a read-only folder); the message says which
    step failed and which one is intact."""


def _leaf_records(tree: Any) -> list[tuple[str, list[int], str]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(jax.tree_util.keystr(path), list(np.shape(leaf)), str(np.dtype(leaf.dtype))) for path, leaf in leaves]


def checksum(tree: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in flattening order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()


def manager(directory: str, *, read_only: bool = False) -> ocp.CheckpointManager:
    """The orbax manager of a run's checkpoint folder (keeps :data:`KEEP` steps)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else KEEP, read_only=read_only,
                                           cleanup_tmp_directories=not read_only, create=not read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def latest_step(directory: str) -> int | None:
    """The latest complete checkpoint step in ``directory``, or None."""
    if not os.path.isdir(directory):
        return None
    with manager(directory, read_only=True) as mgr:
        return mgr.latest_step()


def all_steps(directory: str) -> list[int]:
    """The complete checkpoint steps in ``directory``, ascending."""
    if not os.path.isdir(directory):
        return []
    with manager(directory, read_only=True) as mgr:
        return sorted(mgr.all_steps())


def save(directory: str, step: int, state: Any) -> None:
    """Saves ``state`` (a ``TrainState``) as checkpoint ``step``.

    Raises:
      CheckpointError: the write failed; the previous checkpoint is intact.
    """
    record = {"step": int(step), "sha256": checksum(state), "leaves": _leaf_records(state)}
    try:
        with manager(directory) as mgr:
            mgr.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        record=ocp.args.JsonSave(record)), force=True)
            mgr.wait_until_finished()
    except Exception as err:  # orbax surfaces OSError wrapped in several types
        for leftover in glob.glob(os.path.join(glob.escape(os.path.abspath(directory)), f"{int(step)}.*tmp*")):
            shutil.rmtree(leftover, ignore_errors=True)  # the half-written step, never taken as complete
        previous = latest_step(directory)
        intact = f"checkpoint {previous} is intact" if previous is not None else "no checkpoint was saved before"
        raise CheckpointError(f"could not save checkpoint {step} in {directory}: {_first_line(err)}; "
                              f"{intact}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for cause in (err.__cause__, err.__context__):  # the OSError under orbax's wrappers says most
        if isinstance(cause, OSError):
            text = f"{cause.strerror or cause} ({cause.filename})" if cause.filename else str(cause)
    return text.splitlines()[0] if text else type(err).__name__


def restore(directory: str, template: Any, step: int | None = None) -> tuple[Any, int]:
    """Restores checkpoint ``step`` (default: the latest) into the structure of ``template``.

    Args:
      directory: the run's checkpoint folder.
      template: a pytree of ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` of the state's
        construction) or of arrays with the expected shapes; nothing is computed from it.
      step: which step; the latest when None.

    Returns:
      ``(state, step)``.

    Raises:
      JmamlError: no checkpoint, a config whose shapes differ from the saved ones (the first
        mismatching leaf is named), an unreadable or corrupt checkpoint (checksum mismatch).
    """
    if not os.path.isdir(directory):
        raise JmamlError(f"no checkpoint folder at {directory}: train there first with `jmaml train`")
    with manager(directory, read_only=True) as mgr:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise JmamlError(f"{directory} holds no finished checkpoint")
        where = f"checkpoint {step} in {directory}"
        try:
            record = mgr.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
        except Exception as err:
            raise JmamlError(f"{where} cannot be read ({_first_line(err)}): it is damaged") from None
        _check_shapes(record["leaves"], _leaf_records(template), where)
        # the target's sharding (the template's, else the first local device) lets a checkpoint saved on
        # another device or process count restore here
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                                               sharding=getattr(a, "sharding", None) or default),
                                template)
        try:
            state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:
            raise JmamlError(f"{where} cannot be read ({_first_line(err)}): it is damaged") from None
    if checksum(state) != record["sha256"]:
        raise JmamlError(f"{where} is corrupt: its arrays do not match the checksum saved with them; "
                         "restore an earlier checkpoint or retrain")
    return state, int(step)


def _check_shapes(saved: list, expected: list, where: str) -> None:
    saved = {path: (tuple(shape), dtype) for path, shape, dtype in saved}
    expected = {path: (tuple(shape), dtype) for path, shape, dtype in expected}
    for path in expected:
        if path not in saved:
            raise JmamlError(f"{where} has no parameter {path}, which the config builds: config.json no longer "
                             "matches the checkpoint")
        if saved[path] != expected[path]:
            raise JmamlError(f"{where} holds {path} with shape {saved[path][0]} {saved[path][1]} but the config "
                             f"builds shape {expected[path][0]} {expected[path][1]}: config.json no longer "
                             "matches the checkpoint")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise JmamlError(f"{where} holds {extra[0]}, which the config does not build: config.json no longer "
                         "matches the checkpoint")
