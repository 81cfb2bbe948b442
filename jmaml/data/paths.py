"""Where data sets live, and writing into that folder without leaving half-written files.

The data root is, in order: an explicit argument, the environment variable ``JMAML_DATA_DIR``,
``$XDG_CACHE_HOME/jmaml``, ``~/.cache/jmaml``. Each data set has its own sub-folder of the root
(``omniglot/``, ``mini_imagenet/``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ENV_VAR = "JMAML_DATA_DIR"

PathLike = str | os.PathLike


def default_data_root() -> Path:
    """The data root when no folder is given: ``$JMAML_DATA_DIR``, else the per-user cache.

    Returns:
      ``$JMAML_DATA_DIR`` if set and non-empty, else ``$XDG_CACHE_HOME/jmaml``, else
      ``~/.cache/jmaml``. The folder is not created.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jmaml"


def resolve_data_dir(data_dir: PathLike | None = None, dataset: str | None = None) -> Path:
    """The folder of one data set.

    Args:
      data_dir: an explicit folder; used as is (it is the data set's own folder).
      dataset: sub-folder name under the default root, used only when ``data_dir`` is None.

    Returns:
      ``data_dir`` if given, else ``default_data_root() / dataset`` (or the root itself).
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    root = default_data_root()
    return root / dataset if dataset else root


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[object]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    is left untouched, so a reader never sees a half-written file.

    Args:
      path: the final file name. Its folder is created if missing.
      mode: ``open`` mode for the temporary file, ``"wb"`` or ``"w"``.

    Yields:
      The open file object to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save_npz_atomic(path: PathLike, arrays: dict[str, np.ndarray], *, compress: bool = False) -> Path:
    """Write ``arrays`` to an ``.npz`` file atomically (see :func:`atomic_write`).

    Args:
      path: the final file name (kept exactly; no ``.npz`` is appended).
      arrays: name -> array.
      compress: use ``np.savez_compressed`` instead of ``np.savez``.

    Returns:
      ``path`` as a ``Path``.
    """
    save = np.savez_compressed if compress else np.savez
    with atomic_write(path) as f:
        save(f, **arrays)
    return Path(path)
