"""The run folder: one run per folder, its files, and JSON that strict parsers accept.

A run folder holds ``config.json``, ``run.json`` (where and with what each start of the run ran:
:mod:`jmaml.experiment.provenance`), ``metrics.jsonl`` (one JSON object per logged step),
TensorBoard events in ``tb/``, orbax checkpoints in ``checkpoints/``, ``data.json`` (what was
loaded), ``eval.json`` (the meta-test at the end of training), ``curves.png`` (its plots) and
``eval-step<N>-<tasks>.json`` (each later ``jmaml eval``). A run holds an exclusive lock on ``.lock`` while it trains.

A group of runs trained in one program (``jmaml train --seeds/--sweep``) is a folder of run folders,
one per run and named by what differs (``inner_lr=0.1,seed=3``), with ``group.json`` (the runs, and
at the end the summary over seeds per setting). A run of a group that diverged holds ``failed.json``
(the step and the error): it stops there, and a resumed group leaves it stopped.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any, Sequence

from jmaml.data.paths import atomic_write
from jmaml.errors import JmamlError
from jmaml.experiment.configs import SWEEP_KEYS, TRACED_KEYS, Config

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
CURVES = "curves.png"
DATA = "data.json"
RUN = "run.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
LOCK = ".lock"
GROUP = "group.json"
FAILED = "failed.json"


def eval_file(step: int, tasks: int) -> str:
    """The file name of a ``jmaml eval`` of checkpoint ``step`` on ``tasks`` tasks."""
    return f"eval-step{step}-{tasks}.json"


def varied_keys(cfgs: Sequence[Config]) -> list[str]:
    """The traced keys (``configs.TRACED_KEYS``) whose values differ between ``cfgs``, in that order."""
    return [key for key in TRACED_KEYS if len({getattr(cfg, key) for cfg in cfgs}) > 1]


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting(cfg: Config, keys: Sequence[str]) -> str:
    """``cfg``'s values of ``keys`` as ``key=value`` joined by commas (``""`` for no keys)."""
    return ",".join(f"{key}={_text(getattr(cfg, key))}" for key in keys)


def run_names(cfgs: Sequence[Config]) -> list[str]:
    """The folder name of each run of a group: what differs between the runs, then its seed
    (``inner_lr=0.1,seed=3``).

    Raises:
      JmamlError: two runs with the same name (the same setting and seed twice).
    """
    keys = varied_keys(cfgs) + ["seed"]
    names = [setting(cfg, keys) for cfg in cfgs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise JmamlError(f"the group trains {twice[0]} twice: give each value of {', '.join(SWEEP_KEYS)} once")
    return names


def claim_group(path: str, *, resume: bool) -> bool:
    """Creates the group folder ``path`` if needed (True when this call created it).

    Raises:
      JmamlError: a new group where one is (``group.json`` exists), or a resume where none is.
    """
    path = os.path.abspath(path)
    has = os.path.isfile(os.path.join(path, GROUP))
    if resume and not has:
        raise JmamlError(f"{path} holds no group of runs to resume (no {GROUP}); start one with "
                         "`jmaml train CONFIG --seeds ... --out DIR`")
    if not resume and has:
        raise JmamlError(f"{path} already holds a group of runs ({GROUP} exists): resume it with "
                         "`jmaml resume DIR`, pass another --out, or delete that folder first")
    if os.path.isfile(os.path.join(path, CONFIG)):
        raise JmamlError(f"{path} holds a single run ({CONFIG} exists), not a group: pass another --out")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise JmamlError(f"cannot write to output directory {path}: {err.strerror}; pass a writable --out") from None
    return created


class RunFolder:
    """A run folder claimed by this process: created if needed and exclusively locked.

    Attributes:
      path: the absolute folder.
      created: this process created the folder (so :meth:`discard` may remove it).
    """

    def __init__(self, path: str, *, resume: bool = False):
        self.path = os.path.abspath(path)
        self.created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
            self._lock = open(os.path.join(self.path, LOCK), "a")
        except OSError as err:
            raise JmamlError(f"cannot write to output directory {self.path}: {err.strerror}; "
                             "pass a writable --out") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise JmamlError(f"{self.path} is in use by another jmaml run (it holds the lock on {LOCK}); "
                             "wait for it to finish or pass another --out") from None
        try:
            self._check(resume)
        except JmamlError:
            self.release()
            raise

    def _check(self, resume: bool) -> None:
        has = {name: os.path.exists(self.file(name)) for name in (CONFIG, METRICS, CHECKPOINTS)}
        if resume:
            if not has[CONFIG]:
                raise JmamlError(f"{self.path} holds no run to resume (no {CONFIG}); start one with `jmaml train`")
        elif has[CONFIG]:
            raise JmamlError(f"{self.path} already holds a run ({CONFIG} exists): resume it with --resume, "
                             "pass another --out, or delete that folder first")
        elif has[METRICS] or has[CHECKPOINTS]:
            raise JmamlError(f"{self.path} holds {METRICS if has[METRICS] else CHECKPOINTS} but no {CONFIG}: "
                             "it is the remains of another run; pass another --out or delete that folder first")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def release(self) -> None:
        """Drops the lock."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def discard(self) -> None:
        """Releases the folder and removes it if this process created it (a run that never started)."""
        self.release()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)


def json_safe(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float replaced by None, and the dotted paths replaced.

    Strict JSON has no NaN or Infinity; a reader finds them listed under ``"nonfinite"``.
    """
    found: list[str] = []

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            found.append(path)
            return None
        return value

    return walk(obj, ""), found


def dumps(obj: dict[str, Any], **kwargs: Any) -> str:
    """Strict JSON of a dict; non-finite floats become null and are listed under ``"nonfinite"``."""
    clean, found = json_safe(obj)
    if found:
        clean["nonfinite"] = found
    return json.dumps(clean, allow_nan=False, **kwargs)


def write_json(path: str, obj: dict[str, Any]) -> None:
    """Writes ``obj`` as strict JSON atomically (:func:`jmaml.data.paths.atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(dumps(obj, indent=2) + "\n")


def load_config(path: str) -> Config:
    """The config a run folder was trained with."""
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise JmamlError(f"{path} is not a jmaml run folder (no {CONFIG}); give the --out of `jmaml train`")
    with open(file) as f:
        text = f.read()
    try:
        return Config.from_json(text)
    except json.JSONDecodeError as err:
        raise JmamlError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); fix or restore it") from None


def append_run_record(path: str, entry: dict[str, Any]) -> None:
    """Appends one start's provenance to the run folder's ``run.json`` (``{"starts": [...]}``): a
    resumed run keeps the record of every earlier start."""
    file = os.path.join(path, RUN)
    starts = []
    if os.path.isfile(file):
        with open(file) as f:
            try:
                starts = json.load(f).get("starts", [])
            except json.JSONDecodeError as err:
                raise JmamlError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); "
                                 "fix or remove it") from None
    write_json(file, {"starts": [*starts, entry]})


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The complete lines of a run's ``metrics.jsonl`` (a torn last line is skipped)."""
    rows = []
    try:
        with open(os.path.join(path, METRICS)) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return rows


def truncate_metrics(path: str, step: int) -> None:
    """Keeps the metrics lines up to ``step`` (the checkpoint a run resumes from), each once."""
    rows = [row for row in read_metrics(path) if row.get("step", 0) <= step]
    with atomic_write(os.path.join(path, METRICS), "w") as f:
        f.writelines(dumps(row) + "\n" for row in rows)


def _summary_writer() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX's writer imports torch whenever it is installed, only to accept torch tensors;
    in a JAX run that costs about 0.5 GB of memory and 2 s for nothing (the scalars written here
    are floats). Unless the process has imported torch already, the import is made to see none.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # importing it now raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard.

    Each line goes out in one ``write`` on an append-only descriptor, so a line is whole or
    absent as far as the file system allows; a torn line from a full disk is skipped on read.

    Args:
      path: the run folder.
      purge_step: on resume, the first step after the checkpoint; TensorBoard hides events of
        the interrupted run from that step on.
    """

    def __init__(self, path: str, purge_step: int | None = None):
        SummaryWriter = _summary_writer()
        self._fd = os.open(os.path.join(path, METRICS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._tb = SummaryWriter(os.path.join(path, TENSORBOARD), purge_step=purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        os.write(self._fd, (dumps({"step": step, **values}) + "\n").encode())
        for name, value in values.items():
            if math.isfinite(value):  # a diverged step is in metrics.jsonl as null
                self._tb.add_scalar(name, value, step)
        self._tb.flush()

    def close(self) -> None:
        os.close(self._fd)
        self._tb.close()
