"""Converted-data caches keyed on the content of their source: one load-or-build helper for every data set.

A cache file is named after its source and a digest of it (e.g. ``train.csv-<digest>.npz``), so a
source that changes (new bytes, new image files, even with old file dates) gets a new cache, and
a cache is never served for a source it was not built from. The digest covers the source files'
bytes (:func:`file_digest`) and, for folders of many images, their names, sizes and modification
times (:func:`stat_digest`).
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jmaml.data.paths import save_npz_atomic

DIGEST_CHARS = 16  # hex characters of the digest in a cache file's name


def file_digest(paths: Iterable[Path], *, extra: str = "") -> str:
    """sha256 over the names and bytes of ``paths`` (in order) and ``extra``.

    Args:
      paths: files to hash, read in 1 MiB blocks.
      extra: text mixed into the digest (e.g. the conversion's parameters).

    Returns:
      The hex digest.
    """
    h = hashlib.sha256(extra.encode())
    for path in paths:
        h.update(f"\0{Path(path).name}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def stat_digest(paths: Iterable[Path], *, extra: str = "") -> str:
    """sha256 over the names, sizes and modification times (ns) of ``paths`` and ``extra``.

    Cheap for tens of thousands of image files; a file replaced by one of the same name, size and
    modification time is not seen (hash the bytes with :func:`file_digest` for that).
    """
    h = hashlib.sha256(extra.encode())
    for path in paths:
        st = Path(path).stat()
        h.update(f"\0{Path(path).name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_file(cache_dir: Path, source: str, digest: str) -> Path:
    """``<cache_dir>/<source>-<first DIGEST_CHARS of digest>.npz``."""
    return Path(cache_dir) / f"{source}-{digest[:DIGEST_CHARS]}.npz"


class Cached(NamedTuple):
    """Arrays from a cache, and where they came from.

    Attributes:
      arrays: name -> array.
      path: the cache file.
      status: ``"hit"`` (read from ``path``), ``"built"`` (converted and written to ``path``) or
        ``"unsaved"`` (converted, but ``path`` could not be written).
    """

    arrays: dict[str, np.ndarray]
    path: Path
    status: str


def load_or_build(path: Path, keys: Sequence[str], build: Callable[[], dict[str, np.ndarray]], *,
                  what: str) -> Cached:
    """Read ``keys`` from the ``.npz`` cache at ``path``, or build them, write the cache and return them.

    An unreadable or incomplete cache is rebuilt (with a warning); a cache that cannot be written
    (read-only folder, full disk) is skipped with a warning and the built arrays are returned.
    Nothing half-written is ever left at ``path`` (see :func:`~jmaml.data.paths.save_npz_atomic`).

    Args:
      path: the cache file, named by :func:`cache_file` from its source's digest.
      keys: the arrays the cache must hold.
      build: ``() -> {name: array}`` with at least ``keys``; may raise (then nothing is written).
      what: the data set, for messages (e.g. ``"Omniglot"``).

    Returns:
      :class:`Cached`.
    """
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as d:
                arrays = {k: d[k] for k in keys}
            return Cached(arrays, path, "hit")
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError):
            warnings.warn(f"ignoring unreadable {what} cache {path}; rebuilding it", stacklevel=2)
    arrays = build()
    try:
        save_npz_atomic(path, arrays)
    except OSError as e:
        warnings.warn(f"could not write the {what} cache {path} ({e}); continuing without it", stacklevel=2)
        return Cached(arrays, path, "unsaved")
    return Cached(arrays, path, "built")


def split_summary(split: str, fmt: str, shape: Sequence[int], source: Path | str, cached: Cached | None,
                  resized: dict[str, int] | None = None) -> dict:
    """What was loaded for one split, as a plain JSON-ready dict (one line of a run's data summary).

    Args:
      split: ``"train"``, ``"val"`` or ``"test"``.
      fmt: the source format, e.g. ``"csv"``, ``"pickle"``, ``"omniglot-packed"``.
      shape: ``[classes, images_per_class, *image_shape]`` of the split.
      source: the file or folder it came from.
      cached: the cache it was read from or written to (None: no cache).
      resized: ``"WxH" -> count`` of source images that were not at the target size and were resized.

    Returns:
      ``{"split", "format", "source", "classes", "images", "image_size", "cache", "cache_path",
      "resized"}``; ``cache`` is ``"hit"``, ``"built"``, ``"unsaved"`` or ``"none"``, ``image_size`` reads
      like ``"84x84x3"``, ``resized`` is ``{"count": n, "sizes": {"WxH": count}}``.
    """
    resized = {str(k): int(v) for k, v in (resized or {}).items()}
    return {"split": split, "format": fmt, "source": str(source), "classes": int(shape[0]),
            "images": int(shape[0]) * int(shape[1]), "image_size": "x".join(str(int(s)) for s in shape[2:]),
            "cache": cached.status if cached else "none", "cache_path": str(cached.path) if cached else "",
            "resized": {"count": sum(resized.values()), "sizes": resized}}
