"""Omniglot in the few-shot protocol of Vinyals et al. (2016), as used by MAML.

Three stages, each a plain function:

1. Raw data: the two packed files ``background.npz`` and ``evaluation.npz`` (1623 characters x 20
   drawings, 105x105, ``images_packed`` bits with ink = 1; layout in ``shared/data/omniglot/README.md``)
   in a data folder. :func:`read_packed` checks their sha256 and layout. When they are missing,
   :func:`fetch_omniglot` downloads the official archives and :func:`convert_omniglot_zip` turns each
   into the same packed format.
2. Resizing: :func:`resize_images` shrinks every drawing to ``image_size`` with an antialiasing filter
   (default ``"box"``, the exact area average: values stay in [0, 1] with no ringing and no clipping).
   The original MAML script asked PIL for LANCZOS, but on mode ``"1"`` images PIL falls back to nearest
   neighbour, so its 28x28 images are binary; ``resample="nearest"`` reproduces that. The resized
   characters are cached once per (image size, filter) in the cache folder.
3. Protocol: :func:`split_characters` shuffles all 1623 characters with a fixed seed, keeps 1200 for
   meta-training (the last ``val_classes / 4`` of them for validation) and 423 for meta-test, and
   rotates each character by 0/90/180/270 degrees into 4 classes. That step is cheap, so one cache
   file serves every seed and validation size.

:func:`load_omniglot` chains the three.

References:
  Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
  induction", Science 2015. Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jmaml.data.paths import PathLike, atomic_write, resolve_data_dir, save_npz_atomic
from jmaml.errors import JmamlError

SPLITS = ("background", "evaluation")
URLS = {
    "background": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "evaluation": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
# sha256 of the packed files as distributed, and of their ``images_packed.tobytes()`` (stable
# across rebuilds, e.g. by convert_omniglot_zip, whose zip timestamps change the file hash).
FILE_SHA256 = {
    "background": "3ce1377cc6056eda5f10f6cab572b8865dd1536659ecfd4d433463280a98fbc4",
    "evaluation": "7de84bf01f44681f853bec636f7e99d6120324908b3f42c6cc562925704dd0ed",
}
CONTENT_SHA256 = {
    "background": "fa99ab70a348e2f9f02e33f6c9beb789eb1241418acf7ebc2f703301815bf452",
    "evaluation": "5bdcd30aa88e9096667576ae13f63e07dfe325d8711bf643359338d5dcd36144",
}
COUNTS = {"background": (30, 964), "evaluation": (20, 659)}  # (alphabets, characters)
IMAGE_SIZE = 105
DRAWINGS = 20
NUM_CHARACTERS = 1623
NUM_TRAIN_CHARACTERS = 1200
ROTATIONS = 4
KEYS = ("images_packed", "image_shape", "alphabet", "alphabets", "character", "char_in_alphabet",
        "drawing", "orig_id", "split")
_CACHE_VERSION = 1
_MEMBER = re.compile(r"^images_(background|evaluation)/([^/]+)/character(\d{2})/(\d{4})_(\d{2})\.png$")


class OmniglotSplits(NamedTuple):
    """Meta-train / validation / meta-test classes.

    Attributes:
      train: float32 ``[classes, 20, size, size, 1]``, values in [0, 1], ink = 1.
      val: same layout; zero classes unless ``val_classes`` was set.
      test: same layout, 1692 classes (423 characters x 4 rotations).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_packed(path: PathLike, split: str | None = None, *, verify: bool = True) -> np.ndarray:
    """Read one packed Omniglot file and unpack it.

    Args:
      path: ``background.npz`` or ``evaluation.npz`` (layout in the data README).
      split: ``"background"`` or ``"evaluation"``; default from the file name.
      verify: check the sha256 (of the file, or else of ``images_packed``) and the official counts.
        Without it only the layout is checked (for small archives built in tests).

    Returns:
      uint8 ``[characters, 20, H, W]``, 1 = ink, in the file's row order.

    Raises:
      JmamlError: the file is missing, unreadable, has the wrong keys or shapes, or fails the checksum.

    References:
      Lake et al., Science 2015 (the data).
    """
    path = Path(path)
    split = split or path.stem
    if not path.is_file():
        raise JmamlError(f"Omniglot file {path} is missing; rerun with download=True or copy it from "
                         "shared/data/omniglot")
    file_sha = _sha256_file(path) if verify else None
    fix = (f"delete {path} and rerun with download=True to rebuild it from the official archive, "
           "or copy a fresh one from shared/data/omniglot")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = sorted(set(KEYS) - set(d.files))
            if missing:
                raise JmamlError(f"{path}: not a packed Omniglot file, keys {missing} are missing; {fix}")
            arrays = {k: d[k] for k in KEYS}
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
        if isinstance(e, JmamlError):
            raise
        raise JmamlError(f"{path}: cannot read it as .npz ({e}); {fix}") from e
    packed = arrays["images_packed"]
    if verify and file_sha != FILE_SHA256.get(split):
        content_sha = hashlib.sha256(np.ascontiguousarray(packed).tobytes()).hexdigest()
        if split not in CONTENT_SHA256 or content_sha != CONTENT_SHA256[split]:
            raise JmamlError(
                f"{path}: sha256 mismatch for Omniglot {split}: expected file {FILE_SHA256.get(split)} "
                f"or images_packed content {CONTENT_SHA256.get(split)}, got file {file_sha} and content "
                f"{content_sha}; {fix}")
    return _unpack(path, split, arrays, verify, fix)


def _unpack(path: Path, split: str, a: dict[str, np.ndarray], verify: bool, fix: str) -> np.ndarray:
    """Check the layout of a packed file's arrays and unpack the images."""
    h, w = (int(v) for v in a["image_shape"]) if a["image_shape"].shape == (2,) else (0, 0)
    n = a["images_packed"].shape[0]
    c = n // DRAWINGS
    problems = []
    if h <= 0 or w <= 0:
        problems.append(f"image_shape {a['image_shape'].tolist()}")
    if a["images_packed"].dtype != np.uint8 or a["images_packed"].shape != (n, -(-h * w // 8)):
        problems.append(f"images_packed {a['images_packed'].dtype}{list(a['images_packed'].shape)}")
    for k in ("alphabet", "character", "char_in_alphabet", "drawing", "orig_id"):
        if a[k].shape != (n,):
            problems.append(f"{k} shape {list(a[k].shape)} (expected [{n}])")
    if str(a["split"]) != split:
        problems.append(f"split {str(a['split'])!r} (expected {split!r})")
    if verify:
        n_alpha, n_char = COUNTS.get(split, (-1, -1))
        if (c, len(a["alphabets"]), (h, w)) != (n_char, n_alpha, (IMAGE_SIZE, IMAGE_SIZE)):
            problems.append(f"{c} characters / {len(a['alphabets'])} alphabets / {h}x{w} images "
                            f"(expected {n_char} / {n_alpha} / 105x105)")
    if not problems and (
        n == 0 or n % DRAWINGS
        or not np.array_equal(a["character"], np.repeat(np.arange(c), DRAWINGS))
        or not np.array_equal(a["drawing"], np.tile(np.arange(1, DRAWINGS + 1), c))
    ):
        problems.append(f"rows are not {DRAWINGS} drawings per character in order")
    if problems:
        raise JmamlError(f"{path}: bad Omniglot layout: {'; '.join(problems)}; {fix}")
    images = np.unpackbits(a["images_packed"], axis=1, count=h * w)
    return images.reshape(c, DRAWINGS, h, w)


def convert_omniglot_zip(zip_path: PathLike, out_path: PathLike, split: str | None = None) -> Path:
    """Convert an official Omniglot archive into the packed ``.npz`` format, written atomically.

    The archive must hold ``images_<split>/<Alphabet>/characterNN/XXXX_NN.png`` with drawings
    ``_01`` to ``_20`` of each character (black strokes on white, as distributed). Files outside that
    pattern that are not PNGs (``__MACOSX``, ``.DS_Store``) are ignored.

    Args:
      zip_path: ``images_background.zip`` or ``images_evaluation.zip``.
      out_path: the ``.npz`` to write (same keys as the packed files; ink = 1).
      split: expected split; default from the archive's top folder.

    Returns:
      ``out_path``.

    Raises:
      JmamlError: the archive is corrupt or truncated, or its members do not follow the official
        structure. Nothing is written then.

    References:
      Lake et al., Science 2015 (github.com/brendenlake/omniglot).
    """
    zip_path, out_path = Path(zip_path), Path(out_path)
    fix = f"delete {zip_path} and download it again from {URLS.get(split or '', URLS['background'])}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            split, chars = _index_members(zf, zip_path, split, fix)
            arrays = _decode_members(zf, zip_path, split, chars, fix)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise JmamlError(f"{zip_path}: corrupt or truncated Omniglot archive ({e}); {fix}") from e
    save_npz_atomic(out_path, arrays, compress=True)
    return out_path


def _index_members(zf: zipfile.ZipFile, zip_path: Path, split: str | None, fix: str):
    """Map (alphabet, character number) -> {drawing: (orig_id, member)}, checking the structure."""
    chars: dict[tuple[str, int], dict[int, tuple[int, str]]] = {}
    found_splits, bad = set(), []
    for info in zf.infolist():
        name = info.filename
        if info.is_dir() or name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("."):
            continue
        m = _MEMBER.match(name)
        if not m:
            if name.lower().endswith(".png"):
                bad.append(name)
            continue
        found_splits.add(m[1])
        chars.setdefault((m[2], int(m[3])), {})[int(m[5])] = (int(m[4]), name)
    want = f"images_{split or '<split>'}/<Alphabet>/characterNN/XXXX_NN.png"
    if bad:
        raise JmamlError(f"{zip_path}: unexpected members such as {bad[0]!r} (expected {want}); {fix}")
    if not chars:
        raise JmamlError(f"{zip_path}: no member matches {want}; {fix}")
    if len(found_splits) != 1 or (split is not None and found_splits != {split}):
        raise JmamlError(f"{zip_path}: top folder(s) {sorted('images_' + s for s in found_splits)}, "
                         f"expected images_{split or 'background or images_evaluation'}; {fix}")
    split = found_splits.pop()
    for (alphabet, num), drawings in sorted(chars.items()):
        ids = {oid for oid, _ in drawings.values()}
        if sorted(drawings) != list(range(1, DRAWINGS + 1)) or len(ids) != 1:
            raise JmamlError(
                f"{zip_path}: images_{split}/{alphabet}/character{num:02d} has drawings "
                f"{sorted(drawings)} with ids {sorted(ids)} (expected _01.._{DRAWINGS} of one id); {fix}")
    for alphabet in {a for a, _ in chars}:
        nums = sorted(n for a, n in chars if a == alphabet)
        if nums != list(range(1, len(nums) + 1)):
            raise JmamlError(f"{zip_path}: images_{split}/{alphabet} has characters {nums} "
                             f"(expected character01..character{len(nums):02d}); {fix}")
    return split, chars


def _decode_members(zf: zipfile.ZipFile, zip_path: Path, split: str, chars, fix: str):
    """Decode every PNG (ink = dark pixels) and build the packed arrays."""
    alphabets = sorted({a for a, _ in chars})
    order = sorted(chars, key=lambda k: (alphabets.index(k[0]), k[1]))
    images, meta = [], []
    for ci, (alphabet, num) in enumerate(order):
        for drawing in range(1, DRAWINGS + 1):
            oid, name = chars[(alphabet, num)][drawing]
            try:
                with Image.open(io.BytesIO(zf.read(name))) as im:
                    ink = np.asarray(im.convert("L")) < 128
            except (Image.UnidentifiedImageError, SyntaxError, ValueError) as e:
                raise JmamlError(f"{zip_path}: member {name} is not a readable PNG ({e}); {fix}") from e
            if images and ink.shape != images[0].shape:
                raise JmamlError(f"{zip_path}: {name} is {ink.shape[1]}x{ink.shape[0]}, the others "
                                 f"{images[0].shape[1]}x{images[0].shape[0]}; {fix}")
            images.append(ink)
            meta.append((alphabets.index(alphabet), ci, num, drawing, oid))
    h, w = images[0].shape
    meta = np.asarray(meta, dtype=np.int16)
    return {
        "images_packed": np.packbits(np.stack(images).reshape(len(images), h * w), axis=1),
        "image_shape": np.asarray([h, w], dtype=np.int16),
        "alphabet": meta[:, 0], "alphabets": np.asarray(alphabets), "character": meta[:, 1],
        "char_in_alphabet": meta[:, 2], "drawing": meta[:, 3], "orig_id": meta[:, 4],
        "split": np.asarray(split, dtype="<U10"),
    }


def _download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically; a truncated transfer leaves nothing behind."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, atomic_write(dest) as f:
            shutil.copyfileobj(r, f, 1 << 20)
            expected = r.headers.get("Content-Length")
            if expected is not None and f.tell() != int(expected):
                raise JmamlError(f"download of {url} was truncated ({f.tell()} of {expected} bytes); "
                                 "rerun to try again")
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, JmamlError):
            raise
        raise JmamlError(
            f"could not download {url} ({e}). Without network, fetch {URLS['background']} and "
            f"{URLS['evaluation']} by hand into {dest.parent} (or copy background.npz and "
            f"evaluation.npz there, or point JMAML_DATA_DIR at a folder holding omniglot/) and rerun"
        ) from e
    return dest


def fetch_omniglot(data_dir: PathLike | None = None, *, download: bool = True,
                   urls: dict[str, str] | None = None) -> dict[str, Path]:
    """Make sure ``background.npz`` and ``evaluation.npz`` exist in the Omniglot folder.

    Missing files are built from ``images_<split>.zip`` in the same folder, downloading the archive
    first if it is not there. A downloaded archive that turns out corrupt is deleted again.

    Args:
      data_dir: the Omniglot folder; default ``resolve_data_dir(None, "omniglot")``.
      download: allow downloading; if False, missing files raise.
      urls: split -> archive URL, default :data:`URLS` (tests pass ``file://`` URLs).

    Returns:
      split -> path of the packed file (not yet verified; see :func:`read_packed`).

    Raises:
      JmamlError: files are missing and may not or cannot be downloaded or converted.

    References:
      Lake et al., Science 2015.
    """
    folder = resolve_data_dir(data_dir, "omniglot")
    urls = {**URLS, **(urls or {})}
    paths = {s: folder / f"{s}.npz" for s in SPLITS}
    missing = [s for s in SPLITS if not paths[s].is_file()]
    if missing and not download:
        what = "does not exist" if not folder.is_dir() else "lacks " + " and ".join(
            f"{s}.npz" for s in missing)
        raise JmamlError(f"Omniglot folder {folder} {what}; copy background.npz and evaluation.npz "
                         "there (see shared/data/omniglot/README.md), set JMAML_DATA_DIR, or allow the "
                         "download (download=True; on the command line, drop --no-download)")
    for split in missing:
        archive = folder / f"images_{split}.zip"
        fetched = not archive.is_file()
        if fetched:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise JmamlError(f"cannot create the Omniglot folder {folder} ({e}); pass a writable "
                                 "data_dir or set JMAML_DATA_DIR") from e
            _download(urls[split], archive)
        try:
            convert_omniglot_zip(archive, paths[split], split)
        except JmamlError:
            if fetched:
                archive.unlink(missing_ok=True)
            raise
    return paths


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


def load_characters(data_dir: PathLike | None = None, *, image_size: int = 28, resample: str = "box",
                    cache_dir: PathLike | None = None, download: bool = True) -> np.ndarray:
    """All 1623 characters, resized, background then evaluation in file order; cached.

    Args:
      data_dir: the Omniglot folder with the packed files; default ``resolve_data_dir(None, "omniglot")``.
      image_size: output height and width.
      resample: PIL filter name (see :func:`resize_images`).
      cache_dir: where the resized array is cached; default the default Omniglot folder
        (``$JMAML_DATA_DIR/omniglot`` or the per-user cache), so a read-only ``data_dir`` works.
      download: allow downloading missing packed files.

    Returns:
      float32 ``[1623, 20, image_size, image_size]`` in [0, 1], ink = 1.

    Raises:
      JmamlError: see :func:`fetch_omniglot` and :func:`read_packed`.

    References:
      Lake et al., Science 2015.
    """
    image_size = _check_int("image_size", image_size, 1)
    _resample_filter(resample)
    cache = resolve_data_dir(cache_dir, "omniglot") / (
        f"omniglot_{image_size}px_{resample.lower()}_v{_CACHE_VERSION}.npz")
    shape = (NUM_CHARACTERS, DRAWINGS, image_size, image_size)
    # An explicit data folder must hold the data even when a resized cache exists: a wrong
    # --data-dir is reported, not silently replaced by whatever the cache holds.
    paths = fetch_omniglot(data_dir, download=download) if data_dir is not None else None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as d:
                images = d["images"]
            if images.shape == shape and images.dtype == np.float32:
                return images
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError, EOFError):
            pass
        warnings.warn(f"ignoring unreadable Omniglot cache {cache}; rebuilding it", stacklevel=2)
    paths = paths or fetch_omniglot(data_dir, download=download)
    raw = np.concatenate([read_packed(paths[s], s) for s in SPLITS])
    images = resize_images(raw, image_size, resample)
    try:
        save_npz_atomic(cache, {"images": images})
    except OSError as e:
        warnings.warn(f"could not write the Omniglot cache {cache} ({e}); continuing without it",
                      stacklevel=2)
    return images


def _check_split_args(seed: object, val_classes: object) -> tuple[int, int]:
    n_train = NUM_TRAIN_CHARACTERS * ROTATIONS
    val_classes = _check_int("val_classes", val_classes, 0)
    if val_classes % ROTATIONS or val_classes >= n_train:
        raise JmamlError(f"val_classes must be a multiple of {ROTATIONS} (the rotations of one character "
                         f"stay together) below {n_train}, got {val_classes}")
    return _check_int("seed", seed, 0), val_classes


def split_characters(characters: np.ndarray, *, seed: int = 0, val_classes: int = 0) -> OmniglotSplits:
    """Shuffle characters, split 1200 / rest, and rotate each into 4 classes.

    Characters are permuted with ``np.random.default_rng(seed)``; the first 1200 are meta-training
    (of which the last ``val_classes // 4`` become validation) and the rest meta-test. Class
    ``4 * i + k`` of a split is its ``i``-th character rotated by ``k * 90`` degrees counter-clockwise
    (``np.rot90``), so the rotations of one character never straddle two splits.

    Args:
      characters: ``[1623, 20, H, W]`` (e.g. from :func:`load_characters`).
      seed: seed of the character shuffle.
      val_classes: validation classes, a multiple of 4 below 4800 (0 = no validation split).

    Returns:
      :class:`OmniglotSplits` of ``[classes, 20, H, W, 1]`` arrays with the dtype of ``characters``.

    Raises:
      JmamlError: bad ``val_classes`` or ``seed``, or a ``characters`` array of the wrong shape.

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
    """Omniglot in the MAML / Vinyals et al. protocol: 4800 train and 1692 test classes.

    Args:
      data_dir: the Omniglot folder holding ``background.npz`` and ``evaluation.npz`` (e.g.
        ``shared/data/omniglot``); default ``$JMAML_DATA_DIR/omniglot`` or ``~/.cache/jmaml/omniglot``.
      image_size: output height and width (28 in the paper).
      seed: seed of the character shuffle.
      val_classes: validation classes carved from the training characters (multiple of 4).
      resample: resize filter, ``"box"`` (default), ``"lanczos"``, ``"nearest"``, ...
      cache_dir: folder of the resized cache (default as ``data_dir``'s default).
      download: download and convert the official archives when the packed files are missing.

    Returns:
      :class:`OmniglotSplits` of float32 ``[classes, 20, image_size, image_size, 1]`` in [0, 1].

    Raises:
      JmamlError: missing or corrupt data, failed download, or bad arguments.

    References:
      Lake et al., Science 2015; Vinyals et al., NeurIPS 2016; Finn et al., ICML 2017.
    """
    _check_split_args(seed, val_classes)  # fail before the slow part
    chars = load_characters(data_dir, image_size=image_size, resample=resample, cache_dir=cache_dir,
                            download=download)
    return split_characters(chars, seed=seed, val_classes=val_classes)
