"""The run folder: config.json, metrics.jsonl, TensorBoard events, checkpoints, eval.json."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from jmaml.experiment.configs import Config
from jmaml.data.paths import atomic_write
from jmaml.errors import JmamlError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"


def create(path: str) -> str:
    """Makes ``path`` a new, writable run folder; refuses one that already holds a run."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, CONFIG)):
        raise JmamlError(f"{path} already holds a run (config.json exists): pass another --out, "
                         "or delete that folder first")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise JmamlError(f"cannot write to output directory {path}: {err.strerror}; "
                         "pass a writable --out") from None
    return path


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (:func:`jmaml.data.paths.atomic_write`)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def load_config(path: str) -> Config:
    """The config a run folder was trained with."""
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise JmamlError(f"{path} is not a jmaml run folder (no {CONFIG}); give the --out of `jmaml train`")
    with open(file) as f:
        return Config.from_json(f.read())


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, path: str):
        from tensorboardX import SummaryWriter

        self._file = open(os.path.join(path, METRICS), "a")
        self._tb = SummaryWriter(os.path.join(path, TENSORBOARD))

    def write(self, step: int, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()
