"""Where data sets and their caches live, and writing files without leaving half-written ones.

The data root is, in order: an explicit argument, the environment variable ``JMAML_DATA_DIR``,
``$XDG_CACHE_HOME/jmaml``, ``~/.cache/jmaml``. Each data set has its own sub-folder of the root
(``omniglot/``, ``mini_imagenet/``); an explicit folder or ``JMAML_DATA_DIR`` may name either the
root or the data set's own folder (:func:`find_dataset_dir`). Converted caches go to the per-user
cache (``$XDG_CACHE_HOME/jmaml/<data set>`` or ``~/.cache/jmaml/<data set>``), never into the
user's data folder unless a cache folder is passed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ENV_VAR = "JMAML_DATA_DIR"

PathLike = str | os.PathLike


def user_cache_root() -> Path:
    """The per-user cache: ``$XDG_CACHE_HOME/jmaml`` if set and non-empty, else ``~/.cache/jmaml``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jmaml"


def default_cache_dir(cache_dir: PathLike | None, dataset: str) -> Path:
    """Where a data set's converted caches go: ``cache_dir`` if given, else ``user_cache_root() / dataset``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else user_cache_root() / dataset


def default_data_root() -> Path:
    """The data root when no folder is given: ``$JMAML_DATA_DIR``, else the per-user cache.

    Returns:
      ``$JMAML_DATA_DIR`` if set and non-empty, else ``$XDG_CACHE_HOME/jmaml``, else
      ``~/.cache/jmaml``. The folder is not created.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else user_cache_root()


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


def find_dataset_dir(data_dir: PathLike | None, dataset: str, holds_data: Callable[[Path], bool]) -> Path:
    """The folder of one data set, given either the data root or the data set's own folder.

    ``data_dir`` (or, when it is None, ``$JMAML_DATA_DIR`` or the per-user default root) may name
    the data set's folder itself or a root holding it as ``<dataset>/``: the first of the two that
    ``holds_data`` accepts wins. When neither holds data, the answer is the folder itself if it is
    named ``dataset`` or was given explicitly, else ``<root>/<dataset>`` (where a download goes).

    Args:
      data_dir: an explicit folder, or None for the default root.
      dataset: the data set's sub-folder name, e.g. ``"omniglot"``.
      holds_data: ``folder -> bool``, whether the data set's files are in ``folder``.

    Returns:
      The data set's folder (not created).
    """
    explicit = data_dir is not None
    base = Path(data_dir).expanduser() if explicit else default_data_root()
    for folder in (base, base / dataset):
        if folder.is_dir() and holds_data(folder):
            return folder
    return base if explicit or base.name == dataset else base / dataset


def _user_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


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
            os.fchmod(f.fileno(), _user_file_mode())  # mkstemp makes 0600; honour the umask
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
