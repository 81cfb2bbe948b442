"""Omniglot in the few-shot protocol of Vinyals et al. (2016), as used by MAML.

Over the two packed files of :mod:`jmaml.data.omniglot_archive`, in three plain steps:

1. Resizing: :func:`resize_images` shrinks every drawing to ``image_size`` with an antialiasing filter
   (default ``"box"``, the exact area average: values stay in [0, 1] with no ringing and no clipping),
   and :func:`load_characters` stores the result as uint8 (0..255, ink = 255), 4x smaller than float32
   on the host and on the device; the sampled step turns them into float32 in [0, 1]. The original MAML
   script asked PIL for LANCZOS, but on mode ``"1"`` images PIL falls back to nearest neighbour, so
   its 28x28 images are binary; ``resample="nearest"`` reproduces that. The resized characters are
   cached once per (source files, image size, filter) in the per-user cache, keyed on the sha256 of
   the packed files, so a changed or corrupt source is never hidden by an old cache.
2. Protocol: :func:`split_characters` shuffles all 1623 characters with a fixed seed, keeps 1200 for
   meta-training (the last ``val_classes / 4`` of them for validation) and 423 for meta-test, rotates
   each character by 0/90/180/270 degrees into 4 classes, and checks that no character (by name or
   by its drawings) is in two splits. That step is cheap, so one cache file serves every seed and
   validation size.

:func:`load_omniglot` chains them and returns, with the splits, one summary per split of what was loaded.

References:
  Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
  induction", Science 2015. Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jmaml.data import omniglot_archive as archive
from jmaml.data.cache import Cached, cache_file, file_digest, load_or_build, split_summary
from jmaml.data.paths import PathLike, default_cache_dir
from jmaml.errors import JmamlError

NUM_CHARACTERS = 1623
NUM_TRAIN_CHARACTERS = 1200
ROTATIONS = 4
SPLIT_NAMES = ("train", "val", "test")
_CACHE_VERSION = 2  # v2: uint8 images and character names, keyed on the packed files' sha256


class OmniglotSplits(NamedTuple):
    """Meta-train / validation / meta-test classes, and what was loaded.

    Attributes:
      train: uint8 ``[classes, 20, size, size, 1]``, 0..255, ink = 255.
      val: same layout; zero classes unless ``val_classes`` was set.
      test: same layout, 1692 classes (423 characters x 4 rotations).
      summary: one dict per split (train, val, test), see :func:`jmaml.data.cache.split_summary`;
        empty when the splits were made by :func:`split_characters` alone.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    summary: tuple[dict, ...] = ()


class Characters(NamedTuple):
    """The resized characters and where they came from.

    Attributes:
      images: uint8 ``[1623, 20, size, size]``, ink = 255; background then evaluation, in file order.
      names: ``[1623]`` ``"<alphabet>/characterNN"``.
      cached: the cache they were read from or written to.
      source: the Omniglot folder.
    """

    images: np.ndarray
    names: np.ndarray
    cached: Cached
    source: Path


def _resize_matrix(n_in: int, n_out: int, resample: Image.Resampling) -> np.ndarray:
    """The ``[n_out, n_in]`` matrix of PIL's 1-D resampling filter (PIL resizes separably)."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    return np.asarray(eye.resize((n_out, n_in), resample)).T.copy()


def _resample_filter(resample: str) -> Image.Resampling:
    try:
        return Image.Resampling[resample.upper()]
    except KeyError:
        names = ", ".join(m.name.lower() for m in Image.Resampling)
        raise JmamlError(f"unknown resample filter {resample!r}; use one of {names}") from None


def resize_images(images: np.ndarray, size: int, resample: str = "box", chunk: int = 2048) -> np.ndarray:
    """Resize square-or-not grey images to ``size x size`` with a PIL filter, as two matmuls.

    Equal (to float32 rounding) to ``Image.fromarray(x, "F").resize((size, size), filter)`` per image,
    but about 10x faster.

    Args:
      images: ``[..., H, W]``, any numeric dtype (0/1 ink for Omniglot).
      size: output height and width.
      resample: PIL filter name: ``"box"`` (default), ``"lanczos"``, ``"bilinear"``, ``"nearest"``, ...
      chunk: images per matmul (bounds the float32 temporary).

    Returns:
      float32 ``[..., size, size]``, clipped to the input's [min, max] range of [0, 1].
    """
    filt = _resample_filter(resample)
    *lead, h, w = images.shape
    rv, rh = _resize_matrix(h, size, filt), _resize_matrix(w, size, filt)
    flat = images.reshape(-1, h, w)
    out = np.empty((flat.shape[0], size, size), np.float32)
    for i in range(0, flat.shape[0], chunk):
        out[i:i + chunk] = rv @ (flat[i:i + chunk].astype(np.float32) @ rh.T)
    np.clip(out, 0.0, 1.0, out=out)  # only LANCZOS/BICUBIC overshoot
    return out.reshape(*lead, size, size)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise JmamlError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Quantise float images in [0, 1] to uint8 0..255 (round to nearest)."""
    return np.rint(np.clip(images, 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def load_characters(data_dir: PathLike | None = None, *, image_size: int = 28, resample: str = "box",
                    cache_dir: PathLike | None = None, download: bool = True) -> Characters:
    """All 1623 characters, resized and quantised to uint8, background then evaluation; cached.

    The cache is named ``omniglot-<size>px-<filter>-<digest>.npz``, the digest being the sha256 of
    both packed files (and the cache version), so editing, corrupting or replacing a packed file
    (whatever its dates) makes a new cache, built from, and so checked against, the new file.

    Args:
      data_dir: the Omniglot folder or a data root holding ``omniglot/``; default ``$JMAML_DATA_DIR``
        (either kind) or ``~/.cache/jmaml/omniglot``.
      image_size: output height and width.
      resample: PIL filter name (see :func:`resize_images`).
      cache_dir: folder of the resized cache; default the per-user cache
        (``$XDG_CACHE_HOME/jmaml/omniglot`` or ``~/.cache/jmaml/omniglot``).
      download: allow downloading missing packed files.

    Returns:
      :class:`Characters`.

    Raises:
      JmamlError: see :func:`~jmaml.data.omniglot_archive.fetch_omniglot` and
        :func:`~jmaml.data.omniglot_archive.read_packed`.

    References:
      Lake et al., Science 2015.
    """
    image_size = _check_int("image_size", image_size, 1)
    _resample_filter(resample)
    folder = archive.omniglot_dir(data_dir)
    paths = archive.fetch_omniglot(folder, download=download)
    files = [paths[s] for s in archive.SPLITS]
    digest = file_digest(files, extra=f"omniglot v{_CACHE_VERSION} {image_size} {resample.lower()}")
    cache = cache_file(default_cache_dir(cache_dir, "omniglot"),
                       f"omniglot-{image_size}px-{resample.lower()}", digest)

    def build() -> dict[str, np.ndarray]:
        raw = np.concatenate([archive.read_packed(paths[s], s) for s in archive.SPLITS])
        names = np.concatenate([archive.character_names(paths[s]) for s in archive.SPLITS])
        return {"images": to_uint8(resize_images(raw, image_size, resample)), "names": names}

    cached = load_or_build(cache, ("images", "names"), build, what="Omniglot")
    images, names = cached.arrays["images"], cached.arrays["names"]
    shape = (NUM_CHARACTERS, archive.DRAWINGS, image_size, image_size)
    if images.shape != shape or images.dtype != np.uint8 or names.shape != (NUM_CHARACTERS,):
        raise JmamlError(f"Omniglot cache {cache} holds images {images.dtype}{list(images.shape)}, expected "
                         f"uint8{list(shape)}; delete it and rerun")
    return Characters(images, names, cached, folder)


def _check_split_args(seed: object, val_classes: object) -> tuple[int, int]:
    n_train = NUM_TRAIN_CHARACTERS * ROTATIONS
    val_classes = _check_int("val_classes", val_classes, 0)
    if val_classes % ROTATIONS or val_classes >= n_train:
        raise JmamlError(f"val_classes must be a multiple of {ROTATIONS} (the rotations of one character "
                         f"stay together) below {n_train}, got {val_classes}")
    return _check_int("seed", seed, 0), val_classes


def check_disjoint_characters(characters: np.ndarray, parts: tuple[np.ndarray, ...],
                              names: np.ndarray | None = None) -> None:
    """Check that no character is in two splits, by name and by its drawings.

    Args:
      characters: ``[characters, drawings, ...]``.
      parts: character indices of each split (train, val, test).
      names: optional ``[characters]`` names; two characters of one name, or with the same drawings,
        in two splits are an error.

    Raises:
      JmamlError: naming a shared character and the two splits.
    """
    seen: dict[object, tuple[str, int]] = {}
    for split, part in zip(SPLIT_NAMES, parts):
        for i in part.tolist():
            keys = [("drawings", hashlib.sha1(np.ascontiguousarray(characters[i]).tobytes()).digest())]
            if names is not None:
                keys.append(("name", str(names[i])))
            for kind, key in keys:
                other = seen.get((kind, key))
                if other is not None and other[0] != split:
                    def label(j):
                        return f"character {names[j]} (#{j})" if names is not None else f"character #{j}"
                    how = "the same name" if kind == "name" else "identical drawings"
                    raise JmamlError(
                        f"Omniglot splits overlap: {label(other[1])} in {other[0]} and {label(i)} in {split} "
                        f"have {how}; the training, validation and test characters must be disjoint. Check "
                        "that background.npz and evaluation.npz are the official files (not copies of "
                        "each other)")
                seen.setdefault((kind, key), (split, i))


def split_characters(characters: np.ndarray, *, seed: int = 0, val_classes: int = 0,
                     names: np.ndarray | None = None) -> OmniglotSplits:
    """Shuffle characters, split 1200 / rest, and rotate each into 4 classes.

    Characters are permuted with ``np.random.default_rng(seed)``; the first 1200 are meta-training
    (of which the last ``val_classes // 4`` become validation) and the rest meta-test. Class
    ``4 * i + k`` of a split is its ``i``-th character rotated by ``k * 90`` degrees counter-clockwise
    (``np.rot90``), so the rotations of one character never straddle two splits.

    Args:
      characters: ``[1623, 20, H, W]`` (e.g. ``load_characters().images``).
      seed: seed of the character shuffle.
      val_classes: validation classes, a multiple of 4 below 4800 (0 = no validation split).
      names: optional ``[1623]`` character names, for the overlap check's message.

    Returns:
      :class:`OmniglotSplits` of ``[classes, 20, H, W, 1]`` arrays with the dtype of ``characters``
      (and no summary).

    Raises:
      JmamlError: bad ``val_classes`` or ``seed``, a ``characters`` array of the wrong shape, or a
        character (by name or drawings) in two splits.

    References:
      Vinyals et al., NeurIPS 2016 (1200/423 split, rotations); Finn et al., ICML 2017.
    """
    seed, val_classes = _check_split_args(seed, val_classes)
    if characters.ndim != 4 or characters.shape[0] != NUM_CHARACTERS:
        raise JmamlError(f"expected characters [{NUM_CHARACTERS}, drawings, H, W], got {characters.shape}")
    perm = np.random.default_rng(seed).permutation(NUM_CHARACTERS)
    n_val = val_classes // ROTATIONS
    cut = NUM_TRAIN_CHARACTERS - n_val
    parts = (perm[:cut], perm[cut:NUM_TRAIN_CHARACTERS], perm[NUM_TRAIN_CHARACTERS:])
    check_disjoint_characters(characters, parts, names)
    return OmniglotSplits(*(_rotate(characters[p]) for p in parts))


def _rotate(chars: np.ndarray) -> np.ndarray:
    """``[C, D, H, W]`` -> ``[4C, D, H, W, 1]``, class ``4i + k`` = character ``i`` rotated ``k * 90``."""
    c, d, h, w = chars.shape
    out = np.empty((c, ROTATIONS, d, h, w, 1), chars.dtype)
    for k in range(ROTATIONS):
        out[:, k, ..., 0] = np.rot90(chars, k, axes=(2, 3))
    return out.reshape(c * ROTATIONS, d, h, w, 1)


def load_omniglot(data_dir: PathLike | None = None, *, image_size: int = 28, seed: int = 0,
                  val_classes: int = 0, resample: str = "box", cache_dir: PathLike | None = None,
                  download: bool = True) -> OmniglotSplits:
    """Omniglot in the MAML / Vinyals et al. protocol: 4800 train and 1692 test classes, uint8.

    Args:
      data_dir: the Omniglot folder holding ``background.npz`` and ``evaluation.npz`` (e.g.
        ``shared/data/omniglot``) or a data root holding ``omniglot/``; default ``$JMAML_DATA_DIR``
        (either kind) or ``~/.cache/jmaml/omniglot``.
      image_size: output height and width (28 in the paper).
      seed: seed of the character shuffle.
      val_classes: validation classes carved from the training characters (multiple of 4).
      resample: resize filter, ``"box"`` (default), ``"lanczos"``, ``"nearest"``, ...
      cache_dir: folder of the resized cache (default the per-user cache, see :func:`load_characters`).
      download: download and convert the official archives when the packed files are missing.

    Returns:
      :class:`OmniglotSplits` of uint8 ``[classes, 20, image_size, image_size, 1]`` (ink = 255), with
      one summary per split.

    Raises:
      JmamlError: missing or corrupt data, overlapping splits, failed download, or bad arguments.

    References:
      Lake et al., Science 2015; Vinyals et al., NeurIPS 2016; Finn et al., ICML 2017.
    """
    _check_split_args(seed, val_classes)  # fail before the slow part
    chars = load_characters(data_dir, image_size=image_size, resample=resample, cache_dir=cache_dir,
                            download=download)
    splits = split_characters(chars.images, seed=seed, val_classes=val_classes, names=chars.names)
    summary = tuple(split_summary(name, "omniglot-packed", images.shape, chars.source, chars.cached)
                    for name, images in zip(SPLIT_NAMES, splits))
    return splits._replace(summary=summary)
