"""``jmaml train`` and ``jmaml eval`` as functions: a run folder from a config, and its meta-test.

:func:`train` claims the run folder, loads and checks the data, compiles the first chunk and
checks that it fits the device, then meta-trains through the one host loop
(:mod:`jmaml.experiment.loop`) with hooks that log, checkpoint and report progress. SIGINT and
SIGTERM stop it at the next chunk boundary with a checkpoint (:class:`Stopped`); a non-finite
loss stops it without one (:class:`RunFailed`); ``resume=True`` continues from the latest
checkpoint exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from typing import Any, Iterator

import numpy as np

from jmaml import parallel
from jmaml.errors import JmamlError
from jmaml.evaluation import meta_test
from jmaml.experiment import checkpoint, memory, runs
from jmaml.experiment.build import build, keys
from jmaml.experiment.configs import RESUMABLE_KEYS, Config, validate
from jmaml.experiment.loop import Clock, Diverged, Trainer
from jmaml.experiment.workloads import Workload, chunking, eval_batch, make_workload, summary_line


class RunFailed(Exception):
    """The run started but could not go on (divergence, a failed checkpoint write); the message
    says what failed and what is intact."""


class Stopped(Exception):
    """A signal stopped training at a chunk boundary after a checkpoint was saved.

    Attributes:
      signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
      step: the step saved.
      path: the run folder.
    """

    def __init__(self, signal_name: str, step: int, path: str):
        super().__init__(f"stopped by {signal_name} at step {step}: checkpoint saved in {path}; "
                         f"continue with `jmaml resume {path}`")
        self.signal_name, self.step, self.path = signal_name, step, path


@contextlib.contextmanager
def stop_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM ask the loop to stop at its next chunk boundary (a second SIGINT
    interrupts at once). Yields the list the caught signal's name is appended to.

    Single-process only: in a ``jax.distributed`` run a Python SIGTERM handler would replace
    JAX's preemption notifier (``SCALEOUT.md``, trap 4).
    """
    caught: list[str] = []

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


def resume_config(saved: Config, requested: Config) -> Config:
    """The config to resume with: ``requested``, if it differs from ``saved`` only in keys that
    leave the trajectory as it was (``configs.RESUMABLE_KEYS``; ``steps`` unless the meta
    learning rate follows a schedule over the steps)."""
    allowed = set(RESUMABLE_KEYS) - ({"steps"} if saved.lr_schedule != "constant" else set())
    for field in dataclasses.fields(Config):
        old, new = getattr(saved, field.name), getattr(requested, field.name)
        if old != new and field.name not in allowed:
            raise JmamlError(f"--resume cannot change {field.name} (the run has {old!r}, this command "
                             f"{new!r}): it would alter the trajectory; pass another --out for a new run")
    return requested


def meta_test_of(cfg: Config, workload: Workload, learner, meta_params, mesh=None) -> dict:
    """The config's meta-test of ``meta_params``: mean +- 95% interval after 0..K inner steps; with a
    ``mesh``, each batch of test tasks is split over its devices (of every process) when their count
    divides the batch, and scored whole on every device otherwise."""
    sample, data = workload.test_tasks, workload.held_out()
    memory.release_freed()  # what training freed, before the meta-test compiles and runs
    if mesh is not None:
        meta_params = parallel.replicate(meta_params, mesh)
        data = parallel.replicate(data, mesh, alias=True) if data is not None else None
        if eval_batch(cfg) % mesh.size == 0:
            sample = parallel.shard_tasks(sample, mesh)
    return meta_test(learner, meta_params, sample, data, key=keys(cfg)[2],
                     num_tasks=cfg.eval_tasks, batch=eval_batch(cfg),
                     max_steps=cfg.eval_max_steps, test_steps=cfg.test_inner_steps, metric=workload.metric,
                     chunks=chunking(cfg, mesh.size if mesh is not None else 1)[1])


def _chunk_values(metrics: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.mean(v)) for k, v in metrics.items()}


def _data_fits(cfg: Config) -> None:
    """Omniglot is resized in memory (float32, then uint8 with 4 rotations): refuse a size that cannot fit."""
    if cfg.dataset == "omniglot":
        pixels = 1623 * 20 * cfg.image_size ** 2
        memory.check_fits(pixels * (4 + 4), f"Omniglot at image_size={cfg.image_size}",
                          "lower image_size (the paper uses 28)")


def _program_fits(trainer: Trainer, cfg: Config, start: int, template: Any) -> None:
    phase, n = trainer.plan(start, cfg.steps)
    memory.check_fits(memory.program_bytes(trainer.compiled(phase, n, template)), "the training program",
                      f"it grows with meta_batch (now {cfg.meta_batch}) and the model size (hidden, filters); "
                      f"set remat=true (now {str(cfg.remat).lower()}) or meta_chunks=N (now {trainer.meta_chunks}) "
                      "to cut it, or lower meta_batch")


class _SharedFolder:
    """The run folder as seen by a process other than 0 of a multi-process run: it writes nothing
    there but its part of the orbax checkpoints (process 0 claims, locks and writes the folder)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def release(self) -> None:
        pass

    def discard(self) -> None:
        pass


def train(cfg: Config, out: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Meta-trains ``cfg`` in the run folder ``out`` (or continues it), then meta-tests it.

    Training uses every device of every process (:mod:`jmaml.parallel`): the state is replicated,
    the sampled meta-batch split over the devices, with the same trajectory as on one device.
    In a multi-process run only process 0 writes the folder and the console output, and every
    process takes part in the checkpoints.

    Everything that can be wrong with the input (config, folder, data, memory) is checked
    before the first step runs.

    Returns:
      The meta-test result, also written to ``eval.json``.

    Raises:
      JmamlError: bad input; nothing of an earlier run is changed, and a folder this call
        created is removed.
      Stopped: SIGINT or SIGTERM; a checkpoint of the step reached was saved.
      RunFailed: divergence or a failed checkpoint write; the last good checkpoint stays.
    """
    main = parallel.is_main_process()
    parallel.agree(cfg.to_json(), "configs")
    # Signals from the start: one during loading or compiling stops at step 0. Single-process only: in a
    # jax.distributed run a Python handler would replace JAX's preemption notifier (SCALEOUT.md, trap 4).
    with (stop_signals() if not parallel.multi_process() else contextlib.nullcontext([])) as caught:
        folder = runs.RunFolder(out, resume=resume) if main else _SharedFolder(out)
        try:
            if resume:
                cfg = resume_config(runs.load_config(folder.path), cfg)
            mesh = parallel.make_mesh()
            meta_chunks = chunking(cfg, mesh.size)[0]
            parallel.check_meta_batch(cfg.meta_batch, mesh.size, meta_chunks=meta_chunks)
            _data_fits(cfg)
            workload = make_workload(cfg)
            for summary in workload.data_summary if main else ():
                print(summary_line(summary), file=sys.stderr)
            setup = build(cfg, workload)
            template = setup.template()
            ckpt_dir = folder.file(runs.CHECKPOINTS)
            start = 0
            if resume:
                start = checkpoint.latest_step(ckpt_dir)
                if start is None:
                    raise JmamlError(f"{folder.path} holds no finished checkpoint to resume from; start a new run")
            data = (parallel.replicate(workload.train_data, mesh, alias=True)
                    if workload.train_data is not None else None)
            trainer = Trainer(setup.learner, setup.optimizer, workload.train_tasks, data,
                              chunk=cfg.log_every, meta_chunks=meta_chunks, mesh=mesh)
            # the trainer holds the training pool alone from here, so that _run can free it
            del data
            workload = workload._replace(train_data=None)
            if start < cfg.steps:
                _program_fits(trainer, cfg, start, template)
            if resume:
                state = checkpoint.restore(ckpt_dir, parallel.abstract(template, mesh), start)[0]
            else:
                state = setup.init()
            state = parallel.replicate(state, mesh)
        except BaseException:
            folder.release() if resume else folder.discard()
            raise
        try:
            return _run(cfg, folder, workload, setup, trainer, state, start, progress and main, caught)
        finally:
            folder.release()


def _run(cfg: Config, folder: runs.RunFolder, workload: Workload, setup, trainer: Trainer, state, start: int,
         progress: bool, caught: list[str]) -> dict:
    ckpt_dir = folder.file(runs.CHECKPOINTS)
    main = parallel.is_main_process()
    if main:
        if start:
            runs.truncate_metrics(folder.path, start)
        else:
            runs.write_json(folder.file(runs.CONFIG), dataclasses.asdict(cfg))
        runs.write_json(folder.file(runs.DATA), {"splits": list(workload.data_summary)})
    previous = runs.read_metrics(folder.path) if main else []
    clock = Clock(offset=previous[-1]["seconds"] if previous else 0.0)
    log = runs.MetricsLog(folder.path, purge_step=start + 1 if start else None) if main else _NoLog()
    bar = Progress(cfg.steps, start, progress)
    saved = {"step": start, "time": time.monotonic()}

    def log_hook(step, state, metrics, clock):
        seconds = clock.seconds()
        values = {**_chunk_values(metrics), "seconds": seconds,
                  "steps_per_second": (step - start) / max(seconds - clock_start, 1e-9)}
        log.write(step, values)
        bar.update(step, values)

    def checkpoint_hook(step, state, metrics, clock):
        by_steps = cfg.checkpoint_every and step // cfg.checkpoint_every > saved["step"] // cfg.checkpoint_every
        by_time = cfg.checkpoint_minutes and time.monotonic() - saved["time"] >= 60 * cfg.checkpoint_minutes
        if by_steps or by_time:
            save(step, state)

    def save(step, state):
        checkpoint.save(ckpt_dir, step, state)
        saved.update(step=step, time=time.monotonic())

    reached = {"step": start}

    def step_hook(step, state, metrics, clock):
        reached["step"] = step

    checked = {"step": 0}

    def should_stop():
        if parallel.multi_process():  # every process passes every step to the sync point, after each chunk
            if parallel.reached_preemption(reached["step"], since=checked["step"]):
                caught.append("SIGTERM")
            checked["step"] = reached["step"]
        return bool(caught)

    clock_start = clock.seconds()
    try:
        try:
            state = trainer.fit(state, cfg.steps, hooks=(step_hook, log_hook, checkpoint_hook),
                                should_stop=should_stop, clock=clock)
        except Diverged as err:
            log.write(err.step, _chunk_values(err.metrics))
            last = checkpoint.latest_step(ckpt_dir)
            kept = f"checkpoint {last} is the last good state" if last is not None else "no checkpoint was saved"
            raise RunFailed(f"{err}; {kept}; lower inner_lr (now {cfg.inner_lr}) or meta_lr "
                            f"(now {cfg.meta_lr})") from None
        done = int(state.step)
        if saved["step"] != done or not os.path.isdir(ckpt_dir):
            save(done, state)
        if caught:
            raise Stopped(caught[0], done, folder.path)
    except checkpoint.CheckpointError as err:
        raise RunFailed(str(err)) from None
    finally:
        bar.close()
        log.close()
    trainer.data = None  # the training pool (host memory on the CPU) is freed before the meta-test
    result = meta_test_of(cfg, workload, setup.learner, state.meta_params, trainer.mesh)
    result["train_seconds"] = clock.seconds()
    if main:
        runs.write_json(folder.file(runs.EVAL), result)
        _plot(folder.path)
    return result


class _NoLog:
    """The metrics log of a process other than 0: writes nothing."""

    def write(self, step: int, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _plot(path: str) -> None:
    """``curves.png`` in the run folder, when matplotlib (the ``plot`` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    from jmaml.experiment.plots import plot_runs

    plot_runs([path], os.path.join(path, runs.CURVES))


def meta_test_checkpoint(path: str, overrides: dict | None = None) -> dict:
    """The meta-test of the latest checkpoint of the run in ``path`` (nothing is written).

    ``overrides`` may change the meta-test (``eval_tasks``) and where the data is
    (``data_dir``). The result names the checkpoint step it scored (``"checkpoint_step"``).
    """
    cfg = runs.load_config(path)
    if overrides:
        cfg = validate(dataclasses.replace(cfg, **overrides))
    workload = make_workload(cfg)
    setup = build(cfg, workload)
    state, step = checkpoint.restore(os.path.join(path, runs.CHECKPOINTS), setup.template())
    result = meta_test_of(cfg, workload, setup.learner, state.meta_params)
    result["checkpoint_step"] = step
    return result
