"""Peak memory (max RSS) of a short ``jmaml train mini-5w1s`` run on a full-size miniImageNet stand-in.

Generates the Ravi & Larochelle shapes (64 / 16 / 20 classes x 600 images, 84x84x3, uint8 noise) in
the pickle format and/or the ``images/`` + CSV format into a temporary folder, then runs
``jmaml train mini-5w1s --steps 5`` under ``/usr/bin/time -v`` twice per format: once with an empty
cache (conversion included) and once with the cache built. The per-user cache is redirected into the
temporary folder (``XDG_CACHE_HOME``), so nothing is left behind. Run it on a quiet machine: the
figure goes into RESULTS.md (the target is at most 2.5 GB).

Usage::

    python -m benchmarks.mini_memory [--format pickle|csv|both] [--steps 5] [--keep DIR] \\
        [--set eval_tasks=100 ...]

Generating the CSV layout writes 60,000 PNG files (about 1.3 GB, a minute or two); the pickles
about 1.1 GB.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SPLITS = {"train": 64, "val": 16, "test": 20}
PER_CLASS = 600


def _labels(split: str, n: int) -> list[str]:
    offset = {"train": 0, "val": 100, "test": 200}[split]
    return [f"n{offset + i:08d}" for i in range(n)]


def write_pickles(folder: Path, seed: int = 0) -> None:
    """``mini-imagenet-cache-<split>.pkl`` with ``image_data`` and ``class_dict``, one split in memory at a time."""
    rng = np.random.default_rng(seed)
    for split, classes in SPLITS.items():
        data = rng.integers(0, 256, (classes * PER_CLASS, 84, 84, 3), dtype=np.uint8)
        class_dict = {lab: list(range(c * PER_CLASS, (c + 1) * PER_CLASS))
                      for c, lab in enumerate(_labels(split, classes))}
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)
        del data


def write_csv(folder: Path, seed: int = 0) -> None:
    """``<split>.csv`` (filename,label) and the PNGs in ``images/``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split, classes in SPLITS.items():
        rows = ["filename,label"]
        for label in _labels(split, classes):
            for i in range(PER_CLASS):
                name = f"{label}{i:08d}.png"
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(
                    folder / "images" / name, compress_level=1)
                rows.append(f"{name},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def max_rss_mb(data_dir: Path, out: Path, cache_home: Path, steps: int, sets: list[str]) -> tuple[float, int]:
    """Run ``jmaml train mini-5w1s`` under ``/usr/bin/time -v``; return (max RSS in MB, exit code)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "jmaml", "train", "mini-5w1s", "--steps", str(steps),
           "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode or not m:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    return (int(m[1]) / 1024 if m else float("nan")), proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=["pickle", "csv", "both"], default="pickle")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder instead of a temp one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to jmaml train, e.g. --set eval_tasks=100")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/time").is_file():
        print("error: /usr/bin/time is needed (apt-get install time)", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="jmaml_mini_memory_"))
    formats = ["pickle", "csv"] if args.format == "both" else [args.format]
    failed = 0
    try:
        for fmt in formats:
            data = root / fmt
            if not data.is_dir():
                data.mkdir(parents=True)
                print(f"generating the full-size {fmt} stand-in in {data} ...", flush=True)
                (write_pickles if fmt == "pickle" else write_csv)(data)
            cache_home = root / f"cache-{fmt}"
            shutil.rmtree(cache_home, ignore_errors=True)
            for phase in ("cold cache (converts)", "warm cache"):
                out = root / f"run-{fmt}-{'cold' if phase.startswith('cold') else 'warm'}"
                shutil.rmtree(out, ignore_errors=True)
                rss, code = max_rss_mb(data, out, cache_home, args.steps, args.set)
                failed |= code != 0
                print(f"mini-5w1s {args.steps} steps, {fmt} format, {phase}: max RSS {rss:.0f} MB"
                      f"{'' if code == 0 else f' (exit {code})'}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
