"""miniImageNet, the Ravi & Larochelle (2017) split: 64 / 16 / 20 classes of 600 images, 84x84x3.

There is no free download: users bring one of the two common formats, in one folder:

(a) ``images/`` with ``train.csv``, ``val.csv``, ``test.csv`` (columns ``filename,label``); images
    that are not 84x84 are resized with PIL's LANCZOS filter;
(b) ``mini-imagenet-cache-{train,val,test}.pkl``: a pickled dict with ``image_data`` (uint8
    ``[N, 84, 84, 3]``) and ``class_dict`` (``{label: [indices]}``). Unpickling can run code: only
    load files you trust.

Each split is converted once into a compact uint8 ``.npz`` cache (written atomically) and loaded as
``[classes, images_per_class, 84, 84, 3]``, classes sorted by label, images in the source's order.

References:
  Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017;
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jmaml.data.paths import PathLike, resolve_data_dir, save_npz_atomic
from jmaml.errors import JmamlError

SPLITS = ("train", "val", "test")
CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
IMAGE_SHAPE = (84, 84, 3)
_CACHE_VERSION = 1
_HOWTO = ("miniImageNet has no free download; put the Ravi & Larochelle split there as "
          "mini-imagenet-cache-{s}.pkl, or as {s}.csv (filename,label) plus an images/ folder")


class MiniImageNetSplits(NamedTuple):
    """Meta-train / validation / meta-test classes, ``[classes, images_per_class, 84, 84, 3]`` each."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _from_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images [C, N, 84, 84, 3] uint8, labels [C])`` from a ``mini-imagenet-cache-*.pkl``."""
    try:
        with open(path, "rb") as f:
            try:
                d = pickle.load(f)
            except UnicodeDecodeError:  # written by Python 2
                f.seek(0)
                d = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError,
            TypeError, ValueError) as e:
        raise JmamlError(f"{path}: cannot unpickle it ({type(e).__name__}: {e}); replace the file") from e
    if isinstance(d, dict):
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if not isinstance(d, dict) or not {"image_data", "class_dict"} <= set(d):
        got = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise JmamlError(f"{path}: expected a dict with image_data and class_dict, got {got}")
    data, class_dict = np.asarray(d["image_data"]), d["class_dict"]
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != IMAGE_SHAPE:
        raise JmamlError(f"{path}: image_data is {data.dtype}{list(data.shape)}, expected uint8 "
                         f"[N, {', '.join(map(str, IMAGE_SHAPE))}]")
    labels = sorted(class_dict, key=lambda k: k.decode() if isinstance(k, bytes) else str(k))
    index = [np.asarray(class_dict[k], dtype=np.int64).reshape(-1) for k in labels]
    _check_equal_counts(path, [str(k) for k in labels], [len(i) for i in index])
    flat = np.concatenate(index) if index else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= len(data) or len(np.unique(flat)) != flat.size):
        raise JmamlError(f"{path}: class_dict indices must be distinct and within 0..{len(data) - 1}")
    images = data[flat].reshape(len(labels), -1, *IMAGE_SHAPE)
    return images, np.asarray([k.decode() if isinstance(k, bytes) else str(k) for k in labels])


def _check_equal_counts(source: Path, labels: list[str], counts: list[int]) -> None:
    if not counts:
        raise JmamlError(f"{source}: no classes found")
    if len(set(counts)) != 1:
        worst = int(np.argmin(counts))
        raise JmamlError(f"{source}: classes have different numbers of images ({min(counts)} to "
                         f"{max(counts)}, e.g. {labels[worst]} has {counts[worst]}); every class needs "
                         "the same number")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != IMAGE_SHAPE[1::-1]:
                im = im.resize(IMAGE_SHAPE[1::-1], Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise JmamlError(f"{path}: cannot read the image ({e}); replace it") from e


def _from_csv(csv_path: Path, image_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images [C, N, 84, 84, 3] uint8, labels [C])`` from a ``filename,label`` CSV and its images."""
    try:
        with open(csv_path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise JmamlError(f"{csv_path}: cannot read it ({e})") from e
    if rows and [c.strip().lower() for c in rows[0]] == ["filename", "label"]:
        rows = rows[1:]
    if any(len(r) != 2 for r in rows):
        bad = next(r for r in rows if len(r) != 2)
        raise JmamlError(f"{csv_path}: expected two columns filename,label, got row {bad}")
    by_label: dict[str, list[str]] = {}
    for name, label in rows:
        by_label.setdefault(label.strip(), []).append(name.strip())
    labels = sorted(by_label)
    _check_equal_counts(csv_path, labels, [len(by_label[k]) for k in labels])
    files = [image_dir / name for k in labels for name in by_label[k]]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise JmamlError(f"{csv_path}: {len(missing)} of {len(files)} images are missing from "
                         f"{image_dir}, e.g. {missing[0].name}")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = np.stack(list(pool.map(_read_image, files)))
    return images.reshape(len(labels), -1, *IMAGE_SHAPE), np.asarray(labels)


def _check_split(images: np.ndarray, split: str, source: Path, strict: bool) -> None:
    want = (CLASSES[split], IMAGES_PER_CLASS, *IMAGE_SHAPE)
    if images.ndim != 5 or images.shape[2:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise JmamlError(f"{source}: {split} images are {images.dtype}{list(images.shape)}, expected "
                         f"uint8 {list(want)}")
    if strict and images.shape[:2] != want[:2]:
        raise JmamlError(
            f"{source}: {split} has {images.shape[0]} classes x {images.shape[1]} images, the Ravi & "
            f"Larochelle split has {want[0]} x {want[1]}; pass strict=False to use other data")


def _cache_path(cache_dir: Path, data_dir: Path, split: str) -> Path:
    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return cache_dir / f"mini_imagenet_{split}_{tag}_v{_CACHE_VERSION}.npz"


def load_mini_imagenet_split(split: str, data_dir: PathLike | None = None, *, dtype: str = "uint8",
                             strict: bool = True, cache_dir: PathLike | None = None) -> np.ndarray:
    """Load one miniImageNet split, converting it into the cache on first use.

    The cache (``mini_imagenet_<split>_<folder hash>_v1.npz`` in ``cache_dir``) is rebuilt when the
    source file is newer than it.

    Args:
      split: ``"train"``, ``"val"`` or ``"test"``.
      data_dir: folder holding the pickle files or the CSVs and ``images/``; default
        ``$JMAML_DATA_DIR/mini_imagenet`` or ``~/.cache/jmaml/mini_imagenet``.
      dtype: ``"uint8"`` (0..255, 4x smaller) or ``"float32"`` (scaled to [0, 1]).
      strict: require the Ravi & Larochelle counts (64/16/20 classes x 600 images); with False any
        number of classes and images per class (equal across classes) is accepted.
      cache_dir: folder of the converted cache; default the default ``mini_imagenet`` folder.

    Returns:
      ``[classes, images_per_class, 84, 84, 3]`` of ``dtype``; classes sorted by label.

    Raises:
      JmamlError: missing or malformed data, wrong counts or shapes, or bad arguments.

    References:
      Ravi & Larochelle, ICLR 2017; Vinyals et al., NeurIPS 2016.
    """
    if split not in SPLITS:
        raise JmamlError(f"unknown miniImageNet split {split!r}; use one of {', '.join(SPLITS)}")
    if dtype not in ("uint8", "float32"):
        raise JmamlError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    folder = resolve_data_dir(data_dir, "mini_imagenet")
    pkl, csv_path = folder / f"mini-imagenet-cache-{split}.pkl", folder / f"{split}.csv"
    source = pkl if pkl.is_file() else csv_path if csv_path.is_file() else None
    cache = _cache_path(resolve_data_dir(cache_dir, "mini_imagenet"), folder, split)
    images = None
    if cache.is_file() and (source is None or source.stat().st_mtime <= cache.stat().st_mtime):
        try:
            with np.load(cache, allow_pickle=False) as d:
                images = d["images"]
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError):
            warnings.warn(f"ignoring unreadable miniImageNet cache {cache}; rebuilding it", stacklevel=2)
    if images is None:
        if source is None:
            what = "does not exist" if not folder.is_dir() else f"has no {pkl.name} and no {csv_path.name}"
            raise JmamlError(f"miniImageNet folder {folder} {what}; {_HOWTO.format(s=split)}")
        images, labels = _from_pickle(pkl) if source == pkl else _from_csv(csv_path, folder / "images")
        _check_split(images, split, source, strict)
        try:
            save_npz_atomic(cache, {"images": images, "labels": labels})
        except OSError as e:
            warnings.warn(f"could not write the miniImageNet cache {cache} ({e}); continuing", stacklevel=2)
    _check_split(images, split, cache if source is None else source, strict)
    if dtype == "float32":
        images = images.astype(np.float32)
        images *= np.float32(1 / 255)
    return images


def load_mini_imagenet(data_dir: PathLike | None = None, *, dtype: str = "uint8", strict: bool = True,
                       cache_dir: PathLike | None = None) -> MiniImageNetSplits:
    """Load the three miniImageNet splits (see :func:`load_mini_imagenet_split`).

    Args:
      data_dir: folder holding the pickle files or the CSVs and ``images/``.
      dtype: ``"uint8"`` or ``"float32"`` (float32 of all three splits takes about 5 GB).
      strict: require the Ravi & Larochelle counts.
      cache_dir: folder of the converted cache.

    Returns:
      :class:`MiniImageNetSplits`.

    Raises:
      JmamlError: as :func:`load_mini_imagenet_split`.

    References:
      Ravi & Larochelle, ICLR 2017.
    """
    return MiniImageNetSplits(*(load_mini_imagenet_split(s, data_dir, dtype=dtype, strict=strict,
                                                         cache_dir=cache_dir) for s in SPLITS))
