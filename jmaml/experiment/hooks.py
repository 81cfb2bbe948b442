"""The hooks a run trains with: metrics log, progress, checkpoint policy, and the stop check.

Each is a :class:`jmaml.experiment.loop.Hook`, called by :meth:`Trainer.fit
<jmaml.experiment.loop.Trainer.fit>` after every dispatch with the step reached, the state, that
dispatch's per-step metrics and the training clock. :func:`stop_signals` and :class:`StopCheck`
decide when training stops early (SIGINT, SIGTERM, or a preemption notice in a multi-process run).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from jmaml import parallel
from jmaml.core.step import TrainState
from jmaml.experiment import checkpoint
from jmaml.experiment.loop import FINITE, Clock


def chunk_means(metrics: dict[str, np.ndarray]) -> dict[str, float]:
    """The mean of each metric over the steps of one dispatch."""
    return {k: float(np.mean(v)) for k, v in metrics.items()}


class Progress:
    """A progress bar on a terminal or in a notebook (``tqdm.auto``), one plain line per log
    interval in a batch log, nothing when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool):
        interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
        self.total, self.lines, self.bar = total, enabled and not interactive, None
        if enabled and interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5)

    def update(self, step: int, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(meta_loss=f"{values['meta_loss']:.4f}")
        elif self.lines:
            print(f"step {step}/{self.total}  meta_loss {values['meta_loss']:.4f}  "
                  f"{values['steps_per_second']:.1f} steps/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLogger:
    """Writes each dispatch's mean metrics, the training seconds and the step rate to a log (a
    :class:`jmaml.experiment.runs.MetricsLog`, or None) and to a :class:`Progress`.

    Args:
      log: has ``write(step, values)``; None writes nothing (a process other than 0, a run without
        a folder).
      progress: the progress display.
      start: the step training (re)started from, for the step rate.
      clock_start: the clock's seconds at that step.
    """

    def __init__(self, log, progress: Progress, start: int, clock_start: float):
        self.log, self.progress, self.start, self.clock_start = log, progress, start, clock_start

    def __call__(self, step: int, state: TrainState, metrics: dict[str, np.ndarray], clock: Clock) -> None:
        seconds = clock.seconds()
        values = {**chunk_means(metrics), "seconds": seconds,
                  "steps_per_second": (step - self.start) / max(seconds - self.clock_start, 1e-9)}
        if self.log is not None:
            self.log.write(step, values)
        self.progress.update(step, values)


class Checkpointer:
    """The checkpoint policy: saves whenever a multiple of ``every_steps`` was passed, or
    ``every_minutes`` went by since the last save (0 turns either off).

    Attributes:
      directory: the orbax checkpoint folder.
      saved_step: the step of the last save (the start step before any).
    """

    def __init__(self, directory: str, *, every_steps: int, every_minutes: float, start: int):
        self.directory, self.every_steps, self.every_minutes = directory, every_steps, every_minutes
        self.saved_step, self._saved_time = start, time.monotonic()

    def __call__(self, step: int, state: TrainState, metrics: dict[str, np.ndarray], clock: Clock) -> None:
        by_steps = self.every_steps and step // self.every_steps > self.saved_step // self.every_steps
        by_time = self.every_minutes and time.monotonic() - self._saved_time >= 60 * self.every_minutes
        if by_steps or by_time:
            self.save(step, state)

    def save(self, step: int, state: TrainState) -> None:
        """Saves ``state`` as checkpoint ``step`` (complete or absent: :func:`checkpoint.save`)."""
        self._write(step, state)
        self.saved_step, self._saved_time = step, time.monotonic()

    def _write(self, step: int, state: TrainState) -> None:
        checkpoint.save(self.directory, step, state)


def run_of(states: TrainState, index: int) -> TrainState:
    """Run ``index``'s state of states stacked on a run axis."""
    return jax.tree.map(lambda leaf: leaf[index], states)


class RunsCheckpointer(Checkpointer):
    """The checkpoint policy of a group of runs in one program: one decision for all, then each active
    run's state saved in its own folder.

    Args:
      directories: each run's checkpoint folder.
      active: which runs still train (shared with :class:`RunsLogger`, which clears a diverged run's
        flag: its folder keeps its last good checkpoint).
    """

    def __init__(self, directories: Sequence[str], active: np.ndarray, *, every_steps: int, every_minutes: float,
                 start: int):
        super().__init__(directories[0], every_steps=every_steps, every_minutes=every_minutes, start=start)
        self.directories, self.active = list(directories), active

    def _write(self, step: int, state: TrainState) -> None:
        for index in np.flatnonzero(self.active):
            checkpoint.save(self.directories[index], step, run_of(state, index))


class RunsLogger:
    """A group's metrics: each active run's rows go to its own :class:`MetricsLogger`, the mean over the
    active runs to the progress display.

    A run whose :data:`~jmaml.experiment.loop.FINITE` flag drops in a dispatch logs the means of that
    dispatch's rows up to the bad step, at that step, and stops: its ``active`` flag is cleared and
    ``diverged(index, step)`` called.

    Args:
      loggers: one per run (their own progress displays disabled).
      group: the progress of the whole group (a :class:`MetricsLogger` without a log).
      active: which runs still train; updated here.
      diverged: called once for each run that stops.
    """

    def __init__(self, loggers: Sequence[MetricsLogger], group: MetricsLogger, active: np.ndarray,
                 diverged: Callable[[int, int], None]):
        self.loggers, self.group, self.active, self.diverged = list(loggers), group, active, diverged

    def __call__(self, step: int, state: TrainState, metrics: dict[str, np.ndarray], clock: Clock) -> None:
        finite = metrics[FINITE]
        rows = {key: value for key, value in metrics.items() if key != FINITE}
        for index in np.flatnonzero(self.active):
            own = {key: value[:, index] for key, value in rows.items()}
            if finite[:, index].all():
                self.loggers[index](step, state, own, clock)
                continue
            bad = int(np.argmin(finite[:, index]))
            at = step - len(finite) + 1 + bad
            if self.loggers[index].log is not None:
                self.loggers[index].log.write(at, chunk_means({key: value[:bad + 1] for key, value in own.items()}))
            self.active[index] = False
            self.diverged(int(index), at)
        if self.active.any():
            self.group(step, state, {"meta_loss": rows["meta_loss"][:, self.active].mean(axis=1)}, clock)


class StopCheck:
    """Whether training should stop after a dispatch: a caught signal, or, in a multi-process run,
    JAX's preemption notice (:func:`jmaml.parallel.reached_preemption`, which every process must
    reach with every step it passed; this hook records them).

    Args:
      caught: the names of caught signals (:func:`stop_signals`); a preemption notice appends
        ``"SIGTERM"``.
      start: the step training (re)started from.
    """

    def __init__(self, caught: list[str], start: int):
        self.caught, self.reached, self._checked = caught, start, 0

    def __call__(self, step: int, state: TrainState, metrics: dict[str, np.ndarray], clock: Clock) -> None:
        self.reached = step

    def should_stop(self) -> bool:
        if parallel.multi_process():  # every process passes every step to the sync point, after each dispatch
            if parallel.reached_preemption(self.reached, since=self._checked):
                self.caught.append("SIGTERM")
            self._checked = self.reached
        return bool(self.caught)


@contextlib.contextmanager
def stop_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM ask the loop to stop at its next dispatch boundary (a second SIGINT
    interrupts at once). Yields the list the caught signal's name is appended to.

    Single-process only: in a ``jax.distributed`` run a Python SIGTERM handler would replace JAX's
    preemption notifier, which :class:`StopCheck` asks instead; there this yields a list that
    only :class:`StopCheck` appends to.
    """
    caught: list[str] = []
    if parallel.multi_process():
        yield caught
        return

    def handler(signum, frame):
        if caught and signum == signal.SIGINT:
            raise KeyboardInterrupt
        caught.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
