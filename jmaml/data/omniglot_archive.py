"""Omniglot's files: the packed ``background.npz`` / ``evaluation.npz``, and the official archives they come from.

The two packed files (1623 characters x 20 drawings, 105x105, ``images_packed`` bits with ink = 1;
layout in ``shared/data/omniglot/README.md``) live in one Omniglot folder. :func:`read_packed` checks
their sha256 and layout; :func:`character_names` reads which character each row is. When they are
missing, :func:`fetch_omniglot` downloads the official archives and :func:`convert_omniglot_zip` turns
each into the same packed format. The few-shot protocol over these files is :mod:`jmaml.data.omniglot`.

References:
  Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
  induction", Science 2015.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from jmaml.data.paths import PathLike, atomic_write, find_dataset_dir, save_npz_atomic
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
KEYS = ("images_packed", "image_shape", "alphabet", "alphabets", "character", "char_in_alphabet",
        "drawing", "orig_id", "split")
_MEMBER = re.compile(r"^images_(background|evaluation)/([^/]+)/character(\d{2})/(\d{4})_(\d{2})\.png$")


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


def holds_omniglot(folder: Path) -> bool:
    """Whether ``folder`` holds a packed Omniglot file or an official archive."""
    return any((folder / f"{s}.npz").is_file() or (folder / f"images_{s}.zip").is_file() for s in SPLITS)


def omniglot_dir(data_dir: PathLike | None = None) -> Path:
    """The Omniglot folder: ``data_dir`` (or ``$JMAML_DATA_DIR``) itself or its ``omniglot/``.

    Both the argument and the environment variable may name either the data root or the Omniglot
    folder; see :func:`~jmaml.data.paths.find_dataset_dir`.
    """
    return find_dataset_dir(data_dir, "omniglot", holds_omniglot)


def character_names(path: PathLike) -> np.ndarray:
    """``"<alphabet>/characterNN"`` of each character (row group) of a packed file, in row order.

    Raises:
      JmamlError: the file cannot be read or lacks the metadata keys.
    """
    try:
        with np.load(path, allow_pickle=False) as d:
            alphabets, alphabet, number = d["alphabets"], d["alphabet"], d["char_in_alphabet"]
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError) as e:
        raise JmamlError(f"{path}: cannot read the character names ({e})") from e
    rows = slice(0, len(alphabet), DRAWINGS)
    return np.asarray([f"{alphabets[a]}/character{n:02d}" for a, n in zip(alphabet[rows], number[rows])])


def fetch_omniglot(data_dir: PathLike | None = None, *, download: bool = True,
                   urls: dict[str, str] | None = None) -> dict[str, Path]:
    """Make sure ``background.npz`` and ``evaluation.npz`` exist in the Omniglot folder.

    Missing files are built from ``images_<split>.zip`` in the same folder, downloading the archive
    first if it is not there. A downloaded archive that turns out corrupt is deleted again.

    Args:
      data_dir: the Omniglot folder or a data root holding ``omniglot/`` (see :func:`omniglot_dir`);
        default ``$JMAML_DATA_DIR`` (either kind) or ``~/.cache/jmaml/omniglot``.
      download: allow downloading; if False, missing files raise.
      urls: split -> archive URL, default :data:`URLS` (tests pass ``file://`` URLs).

    Returns:
      split -> path of the packed file (not yet verified; see :func:`read_packed`).

    Raises:
      JmamlError: files are missing and may not or cannot be downloaded or converted.

    References:
      Lake et al., Science 2015.
    """
    folder = omniglot_dir(data_dir)
    urls = {**URLS, **(urls or {})}
    paths = {s: folder / f"{s}.npz" for s in SPLITS}
    missing = [s for s in SPLITS if not paths[s].is_file()]
    if missing and not download:
        what = "does not exist" if not folder.is_dir() else "lacks " + " and ".join(
            f"{s}.npz" for s in missing)
        raise JmamlError(f"Omniglot folder {folder} {what}; copy background.npz and evaluation.npz "
                         "there or into an omniglot/ folder inside it (see shared/data/omniglot/README.md), "
                         "set JMAML_DATA_DIR, or allow the download (download=True; on the command line, "
                         "drop --no-download)")
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
