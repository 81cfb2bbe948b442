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
ALIGN = 64  # bytes: XLA's CPU client uses a host array that starts on such a boundary in place, uncopied
_READ_CHUNK = 16 * 2 ** 20  # bytes read from a cache member at a time


def aligned_empty(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a 64-byte boundary.

    ``jax.device_put`` on the CPU uses such an array in place; from numpy's default allocation
    (16-byte aligned) it makes a copy, which for miniImageNet doubles the data's memory while it is
    placed.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """``keys`` of the ``.npz`` at ``path``, each read straight into an :func:`aligned_empty` array.

    Unlike ``np.load`` this never holds a member twice (no intermediate bytes object), and the
    arrays can go to a CPU device without a copy. Object arrays are refused, as with
    ``allow_pickle=False``.

    Raises:
      KeyError, ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError: a missing member or a
        damaged file.
    """
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for key in keys:
            with archive.open(f"{key}.npy") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                if dtype.hasobject:
                    raise ValueError(f"{path}: member {key} holds Python objects")
                array = aligned_empty(shape[::-1] if fortran else shape, dtype)
                view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
                while done < len(view):
                    got = f.readinto(view[done:done + _READ_CHUNK])
                    if not got:
                        raise EOFError(f"{path}: member {key} is truncated")
                    done += got
                arrays[key] = array.T if fortran else array
    return arrays


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
            return Cached(read_npz(path, keys), path, "hit")
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError):
            warnings.warn(f"ignoring unreadable {what} cache {path}; rebuilding it", stacklevel=2)
    arrays = build()
    try:
        save_npz_atomic(path, arrays)
    except OSError as e:
        warnings.warn(f"could not write the {what} cache {path} ({e}); continuing without it", stacklevel=2)
        return Cached(arrays, path, "unsaved")
    del arrays  # read back instead: aligned arrays (see read_npz), and never two copies at once
    return Cached(read_npz(path, keys), path, "built")


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
