"""``jmaml data``: put a data set where training finds it, check it, convert it, say where it is.

- ``jmaml data omniglot [--data-dir D] [--from FOLDER]``: the packed ``background.npz`` /
  ``evaluation.npz`` in the Omniglot folder (``D``, ``$JMAML_DATA_DIR`` or the per-user cache), built
  from the official ``images_background.zip`` / ``images_evaluation.zip`` found in ``FOLDER`` or
  downloaded, then checked by sha256 (:func:`jmaml.data.omniglot_archive.read_packed`).
- ``jmaml data mini-imagenet --from FOLDER_OR_PICKLES [--data-dir D]``: the user's Ravi & Larochelle
  split (``images/`` + ``train.csv``/``val.csv``/``test.csv``, or the three
  ``mini-imagenet-cache-{train,val,test}.pkl``), copied into ``D``'s miniImageNet folder when ``D``
  is given, checked and converted once into the per-user uint8 cache
  (:func:`jmaml.data.mini_imagenet.load_mini_imagenet`).

Every problem is one :class:`~jmaml.errors.JmamlError` that names the missing file and the layout
expected; ``jmaml.experiment.cli.main`` prints it as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from jmaml.data import mini_imagenet as mi
from jmaml.data import omniglot_archive as og
from jmaml.errors import JmamlError

OMNIGLOT_LAYOUT = ("the official archives images_background.zip and images_evaluation.zip "
                   "(github.com/brendenlake/omniglot, folder python/)")
MINI_LAYOUT = ("either images/ with train.csv, val.csv and test.csv (columns filename,label), or "
               "mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl and mini-imagenet-cache-test.pkl")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``jmaml data omniglot | mini-imagenet`` on the CLI's subparsers."""
    data = sub.add_parser("data", help="download or convert a data set and report where it is")
    which = data.add_subparsers(dest="dataset", required=True)
    omniglot = which.add_parser("omniglot", help="download (or take the official zips), check and convert Omniglot")
    omniglot.add_argument("--data-dir", help="data folder (default: $JMAML_DATA_DIR or the user cache)")
    omniglot.add_argument("--from", dest="source", metavar="FOLDER",
                          help="folder holding images_background.zip and images_evaluation.zip (no download)")
    mini = which.add_parser("mini-imagenet", help="check and convert your miniImageNet files")
    mini.add_argument("--from", dest="source", nargs="+", required=True, metavar="FOLDER_OR_PICKLES",
                      help=f"a folder holding {MINI_LAYOUT}; or the three pickle files")
    mini.add_argument("--data-dir", help="copy the files into this data folder first (default: use them in place)")
    mini.add_argument("--format", dest="data_format", choices=mi.FORMATS,
                      help="which format to use when the folder holds both")


def run(args: argparse.Namespace) -> None:
    """Dispatches ``jmaml data`` to the data set's function and prints its report."""
    if args.dataset == "omniglot":
        print(omniglot(args.data_dir, args.source))
    else:
        print(mini_imagenet(args.source, args.data_dir, data_format=args.data_format))


def omniglot(data_dir: str | None = None, source: str | None = None, *, verify: bool = True) -> str:
    """Make the packed Omniglot files exist in the Omniglot folder, check them, and report.

    Args:
      data_dir: the data root or Omniglot folder (default ``$JMAML_DATA_DIR`` or the per-user cache).
      source: a folder with the official zips to convert instead of downloading them.
      verify: check the sha256 and the official counts (off only for small test archives).

    Returns:
      The report: each split's file, characters and image size, and how to point training at it.

    Raises:
      JmamlError: a zip is missing from ``source``, corrupt or malformed, the download failed, or a
        packed file fails its check.

    References:
      Lake, Salakhutdinov & Tenenbaum (2015), Science (the data).
    """
    folder = og.omniglot_dir(data_dir)
    paths = {s: folder / f"{s}.npz" for s in og.SPLITS}
    todo = [s for s in og.SPLITS if not paths[s].is_file()]
    done = {s: "already there" for s in og.SPLITS if s not in todo}
    if source is not None and todo:
        src = Path(source).expanduser()
        if not src.is_dir():
            raise JmamlError(f"--from {src}: no such folder; it must hold {OMNIGLOT_LAYOUT}")
        missing = [f"images_{s}.zip" for s in todo if not (src / f"images_{s}.zip").is_file()]
        if missing:
            raise JmamlError(f"--from {src} has no {' and no '.join(missing)}; the folder must hold {OMNIGLOT_LAYOUT}")
        for split in todo:
            og.convert_omniglot_zip(src / f"images_{split}.zip", paths[split], split)
            done[split] = f"converted from {src / f'images_{split}.zip'}"
    elif todo:
        og.fetch_omniglot(folder, download=True)
        done.update({s: "downloaded and converted" for s in todo})
    lines = [f"Omniglot is in {folder.resolve()}"]
    for split in og.SPLITS:
        images = og.read_packed(paths[split], split, verify=verify)
        check = "sha256 ok" if verify else "layout ok"
        lines.append(f"  {split}.npz: {images.shape[0]} characters x {images.shape[1]} drawings, "
                     f"{images.shape[2]}x{images.shape[3]}, {check} ({done[split]})")
    lines.append(f"train with: jmaml train omniglot-5w1s --data-dir {folder.resolve()}  "
                 f"(or export JMAML_DATA_DIR={folder.resolve()})")
    return "\n".join(lines)


def _source_folder(source: list[str]) -> Path:
    """The folder of the user's miniImageNet files: the one folder given, or that of the three pickles."""
    paths = [Path(p).expanduser() for p in source]
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise JmamlError(f"--from {missing[0]}: no such file or folder; give a folder holding {MINI_LAYOUT}")
    expected = {mi._source_path(Path(), s, "pickle").name for s in mi.SPLITS}
    names = {p.name for p in paths}
    if names != expected or len(paths) != 3 or len({p.parent.resolve() for p in paths}) != 1:
        raise JmamlError(f"--from {' '.join(map(str, paths))}: give one folder, or the three pickle files "
                         f"{', '.join(sorted(expected))} from one folder; missing: "
                         f"{', '.join(sorted(expected - names)) or 'none (they are in different folders)'}")
    return paths[0].parent


def _copy_into(src: Path, dest: Path, data_format: str | None) -> None:
    """Copies the chosen format's files (and ``images/`` for CSVs) from ``src`` into ``dest``."""
    fmt = mi.choose_format(src, data_format)
    mi.check_sources(src, data_format=fmt, strict=False)  # name a missing file before copying anything
    dest.mkdir(parents=True, exist_ok=True)
    for split in mi.SPLITS:
        shutil.copy2(mi._source_path(src, split, fmt), dest)
    if fmt == "csv":
        shutil.copytree(src / "images", dest / "images", dirs_exist_ok=True)


def mini_imagenet(source: list[str], data_dir: str | None = None, *, data_format: str | None = None,
                  strict: bool = True) -> str:
    """Check the user's miniImageNet files, convert them into the cache, and report.

    Args:
      source: one folder holding the CSV layout or the pickles, or the three pickle files.
      data_dir: a data root or miniImageNet folder to copy the files into first; None: use them in place.
      data_format: ``"csv"`` or ``"pickle"`` when the folder holds both.
      strict: require the Ravi & Larochelle counts (64 / 16 / 20 classes x 600 images).

    Returns:
      The report: each split's classes, images and cache file, and how to point training at the data.

    Raises:
      JmamlError: a missing file (named, with the expected layout), malformed data, wrong counts.

    References:
      Ravi & Larochelle (2017), Optimization as a Model for Few-Shot Learning, ICLR.
    """
    folder = _source_folder(source)
    if not mi._holds_mini(folder):
        raise JmamlError(f"--from {folder} holds no miniImageNet file; it must hold {MINI_LAYOUT}")
    if data_dir is not None:
        dest = mi.mini_imagenet_dir(data_dir)
        if dest.resolve() != folder.resolve():
            _copy_into(folder, dest, data_format)
            folder = dest
    splits = mi.load_mini_imagenet(folder, data_format=data_format, strict=strict, keep=())
    lines = [f"miniImageNet is in {folder.resolve()}"]
    for s in splits.summary:
        resized = f", {s['resized']['count']} images resized" if s["resized"]["count"] else ""
        lines.append(f"  {s['split']}: {s['classes']} classes, {s['images']} images {s['image_size']} "
                     f"({s['format']}{resized}); cache {s['cache']}: {s['cache_path']}")
    lines.append(f"train with: jmaml train mini-5w1s --data-dir {folder.resolve()}"
                 + (f" --set data_format={data_format}" if data_format else ""))
    return "\n".join(lines)
