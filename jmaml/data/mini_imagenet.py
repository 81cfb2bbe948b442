"""miniImageNet, the Ravi & Larochelle (2017) split: 64 / 16 / 20 classes of 600 images, 84x84x3.

There is no free download: users bring one of the two common formats, in one folder:

(a) ``"csv"``: ``images/`` with ``train.csv``, ``val.csv``, ``test.csv`` (columns ``filename,label``);
    images that are not 84x84 are resized with PIL's LANCZOS filter, and the load summary says how
    many and from which sizes;
(b) ``"pickle"``: ``mini-imagenet-cache-{train,val,test}.pkl``: a pickled dict with ``image_data``
    (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (``{label: [indices]}``). Unpickling can run code:
    only load files you trust.

A folder holding both is refused unless ``data_format`` picks one. Before anything is converted, all
three splits are checked (present, readable CSV with existing images, non-empty untruncated pickle,
counts); the classes of the three splits must be disjoint. Each split is converted once into a
compact uint8 ``.npz`` cache in the per-user cache, named after its source and keyed on a digest of
it (the pickle's or CSV's bytes, and the image files' names, sizes and modification times), and
loaded as uint8 ``[classes, images_per_class, 84, 84, 3]``, classes sorted by label, images in the
source's order. Images stay uint8 up to the device; the sampled step converts them to float.

References:
  Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017;
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from jmaml.data.cache import cache_file, file_digest, load_or_build, split_summary, stat_digest
from jmaml.data.paths import PathLike, default_cache_dir, find_dataset_dir
from jmaml.errors import JmamlError

SPLITS = ("train", "val", "test")
FORMATS = ("csv", "pickle")
CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGES_PER_CLASS = 600
IMAGE_SHAPE = (84, 84, 3)
_CACHE_VERSION = 2  # v2: content-keyed, with the labels and the resized-image counts
_HOWTO = ("miniImageNet has no free download; put the Ravi & Larochelle split there as "
          "mini-imagenet-cache-{s}.pkl, or as {s}.csv (filename,label) plus an images/ folder")


class MiniImageNetSplits(NamedTuple):
    """Meta-train / validation / meta-test classes, and what was loaded.

    Attributes:
      train: uint8 ``[classes, images_per_class, 84, 84, 3]`` (None if not kept, see
        :func:`load_mini_imagenet`); likewise ``val`` and ``test``.
      summary: one dict per split (train, val, test), see :func:`jmaml.data.cache.split_summary`.
      sources: each split's checked :class:`Source`; :func:`load_source` reads a split that was not
        kept, later, from the same cache (e.g. the meta-test split once training is done).
    """

    train: Any
    val: Any
    test: Any
    summary: tuple[dict, ...] = ()
    sources: dict[str, Source] | None = None


class LoadedSplit(NamedTuple):
    """One split: uint8 ``images [classes, images_per_class, 84, 84, 3]``, ``labels [classes]``, ``summary``."""

    images: np.ndarray
    labels: np.ndarray
    summary: dict


class Source(NamedTuple):
    """One split's source, checked but not yet read (see :func:`check_source`).

    Attributes:
      split: ``"train"``, ``"val"`` or ``"test"``.
      format: ``"csv"`` or ``"pickle"``.
      path: the CSV or pickle file.
      digest: sha256 of what the cache is built from.
      labels: the class labels, sorted (CSV only; None for a pickle until it is read).
      files: the image files, class-major in label order (CSV only).
    """

    split: str
    format: str
    path: Path
    digest: str
    labels: list[str] | None = None
    files: list[Path] | None = None


def _source_path(folder: Path, split: str, fmt: str) -> Path:
    return folder / (f"mini-imagenet-cache-{split}.pkl" if fmt == "pickle" else f"{split}.csv")


def _holds_mini(folder: Path) -> bool:
    return any(_source_path(folder, s, f).is_file() for s in SPLITS for f in FORMATS)


def mini_imagenet_dir(data_dir: PathLike | None = None) -> Path:
    """The miniImageNet folder: ``data_dir`` (or ``$JMAML_DATA_DIR``) itself or its ``mini_imagenet/``.

    See :func:`~jmaml.data.paths.find_dataset_dir`.
    """
    return find_dataset_dir(data_dir, "mini_imagenet", _holds_mini)


def choose_format(folder: Path, data_format: str | None = None) -> str:
    """The format of a miniImageNet folder: ``data_format`` if given, else the one whose files are there.

    Raises:
      JmamlError: an unknown ``data_format``; a folder holding both formats' files with no
        ``data_format`` (naming both); a missing folder or one holding neither.
    """
    if data_format is not None and data_format not in FORMATS:
        raise JmamlError(f"unknown miniImageNet data_format {data_format!r}; use one of {', '.join(FORMATS)}")
    if not folder.is_dir():
        raise JmamlError(f"miniImageNet folder {folder} does not exist; {_HOWTO.format(s='<split>')}")
    present = {f: [p.name for s in SPLITS if (p := _source_path(folder, s, f)).is_file()] for f in FORMATS}
    if data_format is not None:
        return data_format
    if present["csv"] and present["pickle"]:
        raise JmamlError(
            f"miniImageNet folder {folder} holds both the CSV layout ({', '.join(present['csv'])}) and the "
            f"pickles ({', '.join(present['pickle'])}); remove one, or choose with data_format='csv' or "
            "data_format='pickle' (on the command line, --set data_format=...)")
    for fmt in FORMATS:
        if present[fmt]:
            return fmt
    return "csv"  # neither: check_source reports the missing files of each split


def _read_csv(csv_path: Path) -> dict[str, list[str]]:
    """label -> file names, from a ``filename,label`` CSV (header optional)."""
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
    return by_label


def _check_counts(source: Path, split: str, classes: int, per_class: int, strict: bool) -> None:
    want = (CLASSES[split], IMAGES_PER_CLASS)
    if strict and (classes, per_class) != want:
        raise JmamlError(
            f"{source}: {split} has {classes} classes x {per_class} images, the Ravi & Larochelle split "
            f"has {want[0]} x {want[1]}; pass strict=False to use other data")


def check_source(split: str, folder: Path, fmt: str, *, strict: bool = True) -> Source:
    """Check one split's source without decoding any image or unpickling anything.

    CSV: the file is readable, has two columns, equal counts per class, and every image exists.
    Pickle: the file is non-empty and ends with pickle's STOP opcode (not truncated).

    Raises:
      JmamlError: the split's file is missing or broken, or (``strict``) its CSV counts are wrong.
    """
    path = _source_path(folder, split, fmt)
    if not path.is_file():
        other = _source_path(folder, split, "csv" if fmt == "pickle" else "pickle")
        raise JmamlError(f"miniImageNet folder {folder} has no {path.name} (the {split} split, {fmt} format)"
                         f"{f'; {other.name} is there: choose data_format' if other.is_file() else ''}; "
                         f"{_HOWTO.format(s=split)}")
    if fmt == "pickle":
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(size - 1, 0))
            last = f.read(1)
        if size == 0 or last != b".":
            raise JmamlError(f"{path}: {'empty' if size == 0 else 'truncated (no pickle STOP at the end)'}; "
                             "replace the file")
        return Source(split, fmt, path, file_digest([path], extra=f"mini_imagenet v{_CACHE_VERSION} pickle"))
    by_label = _read_csv(path)
    labels = sorted(by_label)
    _check_equal_counts(path, labels, [len(by_label[k]) for k in labels])
    _check_counts(path, split, len(labels), len(by_label[labels[0]]), strict)
    image_dir = folder / "images"
    files = [image_dir / name for k in labels for name in by_label[k]]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise JmamlError(f"{path}: {len(missing)} of {len(files)} images are missing from "
                         f"{image_dir}, e.g. {missing[0].name}")
    digest = file_digest([path], extra=f"mini_imagenet v{_CACHE_VERSION} csv {stat_digest(files)}")
    return Source(split, fmt, path, digest, labels, files)


def check_disjoint(labels: dict[str, Any]) -> None:
    """Check that no class label is in two splits.

    Args:
      labels: split -> its class labels (None: not known yet, skipped).

    Raises:
      JmamlError: naming a shared class and the two splits.
    """
    seen: dict[str, str] = {}
    for split, names in labels.items():
        for name in [] if names is None else [str(n) for n in names]:
            if seen.get(name, split) != split:
                shared = sorted(set(map(str, labels[seen[name]])) & set(map(str, names)))
                raise JmamlError(
                    f"miniImageNet splits overlap: class {name} is in both {seen[name]} and {split} "
                    f"({len(shared)} shared classes); the training, validation and test classes must be "
                    "disjoint, or meta-test accuracy measures memory, not few-shot learning")
            seen.setdefault(name, split)


def check_sources(data_dir: PathLike | None = None, *, data_format: str | None = None,
                  strict: bool = True) -> dict[str, Source]:
    """Check all three splits (format, presence, readability, counts, disjoint CSV classes) up front.

    Nothing is converted or loaded: this is what a run does first, so that a missing or broken split,
    the validation split included, is reported in a second rather than after converting the others.

    Args:
      data_dir: the miniImageNet folder or a data root holding ``mini_imagenet/``.
      data_format: ``"csv"`` or ``"pickle"``; needed only when the folder holds both.
      strict: require the Ravi & Larochelle counts (checked here for CSVs, at load for pickles).

    Returns:
      split -> :class:`Source`.

    Raises:
      JmamlError: one message listing every split's problem, or an overlap.
    """
    folder = mini_imagenet_dir(data_dir)
    fmt = choose_format(folder, data_format)
    sources, problems = {}, []
    for split in SPLITS:
        try:
            sources[split] = check_source(split, folder, fmt, strict=strict)
        except JmamlError as e:
            problems.append(str(e))
    if problems:
        raise JmamlError("; ".join(problems) if len(problems) == 1 else
                         f"{len(problems)} miniImageNet splits are missing or broken: " + " | ".join(problems))
    check_disjoint({s: src.labels for s, src in sources.items()})
    return sources


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


def _read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """The image as uint8 ``[84, 84, 3]``, and its original ``"WxH"`` if it had to be resized."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size == IMAGE_SHAPE[1::-1]:
                return np.asarray(im, dtype=np.uint8), None
            size = f"{im.size[0]}x{im.size[1]}"
            return np.asarray(im.resize(IMAGE_SHAPE[1::-1], Image.Resampling.LANCZOS), dtype=np.uint8), size
    except (OSError, SyntaxError, ValueError) as e:
        raise JmamlError(f"{path}: cannot read the image ({e}); replace it") from e


def _from_csv(source: Source) -> tuple[np.ndarray, np.ndarray, Counter]:
    """``(images [C, N, 84, 84, 3] uint8, labels [C], {"WxH": resized count})`` of a checked CSV source."""
    images = np.empty((len(source.files), *IMAGE_SHAPE), np.uint8)

    def read(i: int) -> str | None:
        images[i], size = _read_image(source.files[i])
        return size

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        resized = Counter(size for size in pool.map(read, range(len(source.files))) if size is not None)
    return images.reshape(len(source.labels), -1, *IMAGE_SHAPE), np.asarray(source.labels), resized


def _check_split(images: np.ndarray, split: str, source: Path, strict: bool) -> None:
    if images.ndim != 5 or images.shape[2:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise JmamlError(f"{source}: {split} images are {images.dtype}{list(images.shape)}, expected "
                         f"uint8 [{CLASSES[split]}, {IMAGES_PER_CLASS}, {', '.join(map(str, IMAGE_SHAPE))}]")
    _check_counts(source, split, images.shape[0], images.shape[1], strict)


def load_source(source: Source, *, strict: bool = True, cache_dir: PathLike | None = None) -> LoadedSplit:
    """Load one checked split from its cache, or convert it and write the cache.

    The cache is ``<cache_dir>/mini_imagenet-<source file>-<digest>.npz``.

    Args:
      source: from :func:`check_source` or :func:`check_sources`.
      strict: require the Ravi & Larochelle counts.
      cache_dir: folder of the converted cache; default the per-user cache
        (``$XDG_CACHE_HOME/jmaml/mini_imagenet`` or ``~/.cache/jmaml/mini_imagenet``).

    Returns:
      :class:`LoadedSplit`.

    Raises:
      JmamlError: malformed data or wrong counts.
    """
    cache = cache_file(default_cache_dir(cache_dir, "mini_imagenet"), f"mini_imagenet-{source.path.name}",
                       source.digest)

    def build() -> dict[str, np.ndarray]:
        if source.format == "pickle":
            images, labels, resized = *_from_pickle(source.path), Counter()
        else:
            images, labels, resized = _from_csv(source)
        _check_split(images, source.split, source.path, strict)
        return {"images": images, "labels": labels, "resized_sizes": np.asarray(list(resized), dtype=str),
                "resized_counts": np.asarray(list(resized.values()), dtype=np.int64)}

    keys = ("images", "labels", "resized_sizes", "resized_counts")
    cached = load_or_build(cache, keys, build, what="miniImageNet")
    a = cached.arrays
    _check_split(a["images"], source.split, source.path, strict)
    resized = dict(zip(a["resized_sizes"].tolist(), a["resized_counts"].tolist()))
    summary = split_summary(source.split, source.format, a["images"].shape, source.path, cached, resized)
    return LoadedSplit(a["images"], a["labels"], summary)


def load_mini_imagenet_split(split: str, data_dir: PathLike | None = None, *, data_format: str | None = None,
                             strict: bool = True, cache_dir: PathLike | None = None) -> LoadedSplit:
    """Load one miniImageNet split (checking only that split), converting it into the cache on first use.

    Args:
      split: ``"train"``, ``"val"`` or ``"test"``.
      data_dir: the miniImageNet folder holding the pickle files or the CSVs and ``images/``, or a data
        root holding ``mini_imagenet/``; default ``$JMAML_DATA_DIR`` (either kind) or
        ``~/.cache/jmaml/mini_imagenet``.
      data_format: ``"csv"`` or ``"pickle"``; needed only when the folder holds both.
      strict: require the Ravi & Larochelle counts (64/16/20 classes x 600 images); with False any
        number of classes and images per class (equal across classes) is accepted.
      cache_dir: folder of the converted cache; default the per-user cache.

    Returns:
      :class:`LoadedSplit` with uint8 images, classes sorted by label.

    Raises:
      JmamlError: missing or malformed data, wrong counts or shapes, or bad arguments.

    References:
      Ravi & Larochelle, ICLR 2017; Vinyals et al., NeurIPS 2016.
    """
    if split not in SPLITS:
        raise JmamlError(f"unknown miniImageNet split {split!r}; use one of {', '.join(SPLITS)}")
    folder = mini_imagenet_dir(data_dir)
    source = check_source(split, folder, choose_format(folder, data_format), strict=strict)
    return load_source(source, strict=strict, cache_dir=cache_dir)


def load_mini_imagenet(data_dir: PathLike | None = None, *, data_format: str | None = None, strict: bool = True,
                       cache_dir: PathLike | None = None, keep: tuple[str, ...] = SPLITS,
                       place: Callable[[np.ndarray], Any] | None = None) -> MiniImageNetSplits:
    """Check all three splits, then load them, with one summary per split.

    Every split is checked first (:func:`check_sources`), then converted or read from its cache; splits
    not in ``keep`` are read only for their summary and the overlap check and then released, and each
    kept split is passed through ``place`` as soon as it is read (e.g. ``jax.device_put``), so the host
    holds one split at a time.

    Args:
      data_dir: the miniImageNet folder or a data root holding ``mini_imagenet/``.
      data_format: ``"csv"`` or ``"pickle"``; needed only when the folder holds both.
      strict: require the Ravi & Larochelle counts.
      cache_dir: folder of the converted caches; default the per-user cache.
      keep: the splits whose images are returned; the others are None.
      place: applied to each kept split's uint8 images (default: returned as numpy).

    Returns:
      :class:`MiniImageNetSplits`.

    Raises:
      JmamlError: as :func:`check_sources` and :func:`load_source`; overlapping classes.

    References:
      Ravi & Larochelle, ICLR 2017.
    """
    sources = check_sources(data_dir, data_format=data_format, strict=strict)
    out, labels, summary = {}, {}, []
    for split in sorted(SPLITS, key=lambda s: s in keep):  # released splits first: less held at once
        loaded = load_source(sources[split], strict=strict, cache_dir=cache_dir)
        labels[split] = loaded.labels
        check_disjoint(labels)
        out[split] = (place or (lambda x: x))(loaded.images) if split in keep else None
        summary.append(loaded.summary)
        del loaded
    summary.sort(key=lambda d: SPLITS.index(d["split"]))
    return MiniImageNetSplits(out["train"], out["val"], out["test"], tuple(summary), sources)
