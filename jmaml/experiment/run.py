"""One way to set up a run: :func:`prepare` a config into a :class:`Run`, then fit and meta-test it.

``jmaml train``, the benchmarks and the notebooks all go through here::

    with prepare(get_config("omniglot-5w1s"), "runs/o1") as run:   # or out=None: nothing on disk
        run.fit()                                                  # or run.fit(hooks=(my_hook,))
        result = run.meta_test()

:func:`prepare` does everything that can fail on bad input before the first step: it claims and
locks the run folder, checks the config against the devices, loads and checks the data, builds the
learner, compiles the first program and checks that it fits the device, and restores the latest
checkpoint on ``resume=True``. :meth:`Run.fit` trains through the one host loop
(:class:`jmaml.experiment.loop.Trainer`) with the hooks of :mod:`jmaml.experiment.hooks`. SIGINT and
SIGTERM stop it at the next dispatch with a checkpoint (:class:`Stopped`); a non-finite loss or
optimizer state stops it and keeps the last good checkpoint (:class:`RunFailed`).

:func:`prepare_group` sets up a group of runs that differ only in ``configs.SWEEP_KEYS`` (seeds,
rates) as one :class:`Run` over a run axis: one program trains them all, each run in its own
folder with everything a single run has. A run of the group that diverges stops alone
(:attr:`RunGroup.failures`) while the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jmaml import parallel
from jmaml.core.runs import stack_runs
from jmaml.core.step import TrainState
from jmaml.errors import JmamlError
from jmaml.evaluation import meta_test
from jmaml.experiment import checkpoint, memory, provenance, runs
from jmaml.experiment.assembly import Setup, build, keys, step_parts
from jmaml.experiment.configs import RESUMABLE_KEYS, Config, check_group, validate
from jmaml.experiment.hooks import (
    Checkpointer,
    MetricsLogger,
    Progress,
    RunsCheckpointer,
    RunsLogger,
    StopCheck,
    chunk_means,
    run_of,
    stop_signals,
)
from jmaml.experiment.loop import Clock, Diverged, Group, Hook, Trainer
from jmaml.experiment.workloads import Workload, chunking, eval_batch, make_workload, summary_line


class RunFailed(Exception):
    """The run started but could not go on (divergence, a failed checkpoint write); the message
    says what failed and what is intact."""


class Stopped(Exception):
    """A signal stopped training at a dispatch boundary after a checkpoint was saved.

    Attributes:
      signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
      step: the step saved.
      path: the run folder.
    """

    def __init__(self, signal_name: str, step: int, path: str):
        super().__init__(f"stopped by {signal_name} at step {step}: checkpoint saved in {path}; "
                         f"continue with `jmaml resume {path}`")
        self.signal_name, self.step, self.path = signal_name, step, path


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


def meta_test_of(cfg: Config, workload: Workload, learner, meta_params, mesh=None, *, step: int | None = None
                 ) -> dict:
    """The config's meta-test of ``meta_params``: mean +- 95% interval after 0..K inner steps; with a
    ``mesh``, each batch of test tasks is split over its devices (of every process) when their count
    divides the batch, and scored whole on every device otherwise. The result records the ``step``
    scored and where it ran (``"ran_on"``: backend, device kind and counts)."""
    sample, data = workload.test_tasks, workload.held_out()
    memory.release_freed()  # what training freed, before the meta-test compiles and runs
    devices = mesh.size if mesh is not None else 1
    sharded = mesh is not None and eval_batch(cfg) % mesh.size == 0
    if mesh is not None:
        meta_params = parallel.replicate(meta_params, mesh)
        data = parallel.replicate(data, mesh, alias=True) if data is not None else None
        if sharded:
            sample = parallel.shard_tasks(sample, mesh)
    result = meta_test(learner, meta_params, sample, data, key=keys(cfg)[2],
                       num_tasks=cfg.eval_tasks, batch=eval_batch(cfg),
                       max_steps=cfg.eval_max_steps, test_steps=cfg.test_inner_steps, metric=workload.metric,
                       chunks=chunking(cfg, devices)[1])
    result["step"] = step
    result["ran_on"] = {**provenance.devices(), "devices_used": devices, "tasks_split_over_devices": sharded}
    return result


def _data_fits(cfg: Config) -> None:
    """Omniglot is resized in memory (float32, then uint8 with 4 rotations): refuse a size that cannot fit."""
    if cfg.dataset == "omniglot":
        pixels = 1623 * 20 * cfg.image_size ** 2
        memory.check_fits(pixels * (4 + 4), f"Omniglot at image_size={cfg.image_size}",
                          "lower image_size (the paper uses 28)")


def _program_fits(trainer: Trainer, cfg: Config, start: int, template: Any, runs: int = 1) -> None:
    phase, n = trainer.plan(start, cfg.steps)
    group = (f"; the program trains {runs} runs at once and grows with them: train fewer in one program "
             "(fewer --seeds or --sweep values per command)") if runs > 1 else ""
    memory.check_fits(memory.program_bytes(trainer.compiled(phase, n, template)),
                      "the training program" + (f" of {runs} runs" if runs > 1 else ""),
                      f"it grows with meta_batch (now {cfg.meta_batch}) and the model size (hidden, filters); "
                      f"set remat=true (now {str(cfg.remat).lower()}) or meta_chunks=N (now {trainer.meta_chunks}) "
                      f"to cut it, or lower meta_batch{group}")


def _diverged(err: Diverged, directory: str | None, cfg: Config) -> str:
    """The error of a run that diverged: what happened, which checkpoint is intact, what to change."""
    last = checkpoint.latest_step(directory) if directory is not None else None
    kept = f"checkpoint {last} is the last good state" if last is not None else "no checkpoint was saved"
    return f"{err}; {kept}; lower inner_lr (now {cfg.inner_lr}) or meta_lr (now {cfg.meta_lr})"


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


@dataclasses.dataclass
class RunGroup:
    """The runs of a :class:`Run` over a run axis (:func:`prepare_group`).

    Attributes:
      path: the group folder (None: kept in memory).
      names: each run's name, its folder under ``path`` (``runs.run_names``).
      cfgs: each run's config.
      folders: each run's folder (None entries in memory).
      setups: each run's learner (its own rates), meta-optimizer and initial state (its own seed).
      active: which runs train; a run that diverged (in this start or an earlier one) does not.
      failures: ``{index: error}`` of the runs that diverged in this start.
    """

    path: str | None
    names: list[str]
    cfgs: list[Config]
    folders: list[Any]
    setups: list[Setup]
    active: np.ndarray
    failures: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Run:
    """A prepared run: everything checked, the first program compiled, the state placed.

    Use it as a context manager (it holds the run folder's lock and the SIGINT/SIGTERM handlers
    until it is closed), or call :meth:`close`.

    Attributes:
      cfg: the config (on resume, the one the run continues with).
      folder: the run folder (:class:`jmaml.experiment.runs.RunFolder`), or None for a run kept in
        memory (``out=None``: no logs, no checkpoints).
      workload: model, loss, samplers and the test data (the training pool is the trainer's).
      setup: learner, meta-optimizer and initial-state constructor.
      trainer: compiles and runs the dispatches, on ``trainer.mesh``.
      state: the current train state (replicated over the mesh).
      start: the step the run (re)started from.
      compile_seconds: time to compile the first program in :func:`prepare`.
      record: this start's provenance (:func:`jmaml.experiment.provenance.record`).
      progress: whether :meth:`fit` shows progress.
      train_seconds: seconds of training so far (over every start), after :meth:`fit`.
      group: the runs of a group (:func:`prepare_group`); ``cfg``, ``setup`` are then its first run's,
        ``state`` has a leading run axis and ``folder`` is None.
    """

    cfg: Config
    folder: Any
    workload: Workload
    setup: Setup
    trainer: Trainer
    state: TrainState
    start: int
    compile_seconds: float
    record: dict
    progress: bool = True
    train_seconds: float = 0.0
    group: RunGroup | None = None
    _stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack, repr=False)
    _caught: list = dataclasses.field(default_factory=list, repr=False)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Releases the run folder's lock and restores the signal handlers."""
        self._stack.close()

    @property
    def main(self) -> bool:
        """Whether this process writes the folder and the console (process 0)."""
        return parallel.is_main_process()

    def _file(self, name: str) -> str | None:
        return self.folder.file(name) if self.folder is not None else None

    def fit(self, *, hooks: Sequence[Hook] = (), should_stop: Callable[[], bool] = lambda: False) -> TrainState:
        """Meta-trains from :attr:`start` to ``cfg.steps``, then saves the final checkpoint.

        The run's own hooks (metrics log and progress, checkpoint policy, stop check) run after every
        dispatch, then ``hooks``; ``should_stop`` may end training early (a benchmark's time budget).

        In a group, each run logs and checkpoints in its own folder; a run that diverges stops alone,
        its error in :attr:`RunGroup.failures` (``failed.json`` in its folder), while the others go on.

        Raises:
          Stopped: SIGINT or SIGTERM (or a preemption notice); a checkpoint of the step reached was saved
            (of every run of a group).
          RunFailed: divergence (of a single run) or a failed checkpoint write; the last good checkpoint stays.
        """
        if self.group is not None:
            return self._fit_group(hooks, should_stop)
        cfg, main, start = self.cfg, self.main, self.start
        previous = runs.read_metrics(self.folder.path) if self.folder is not None and main else []
        clock = Clock(offset=previous[-1]["seconds"] if previous else 0.0)
        log = (runs.MetricsLog(self.folder.path, purge_step=start + 1 if start else None)
               if self.folder is not None and main else None)
        progress = Progress(cfg.steps, start, self.progress and main)
        saver = (Checkpointer(self._file(runs.CHECKPOINTS), every_steps=cfg.checkpoint_every,
                              every_minutes=cfg.checkpoint_minutes, start=start)
                 if self.folder is not None else None)
        stop = StopCheck(self._caught, start)
        own = [stop, MetricsLogger(log, progress, start, clock.seconds())]
        own += [saver] if saver is not None else []
        try:
            try:
                self.state = self.trainer.fit(self.state, cfg.steps, hooks=(*own, *hooks), clock=clock,
                                              should_stop=lambda: stop.should_stop() or should_stop())
            except Diverged as err:
                if log is not None:
                    log.write(err.step, chunk_means(err.metrics))
                raise RunFailed(_diverged(err, saver.directory if saver is not None else None, cfg)) from None
            done = int(self.state.step)
            if saver is not None and (saver.saved_step != done or not os.path.isdir(saver.directory)):
                saver.save(done, self.state)
            if self._caught:
                if saver is None:
                    raise KeyboardInterrupt
                raise Stopped(self._caught[0], done, self.folder.path)
        except checkpoint.CheckpointError as err:
            raise RunFailed(str(err)) from None
        finally:
            progress.close()
            if log is not None:
                log.close()
        self.train_seconds = clock.seconds()
        return self.state

    def _fit_group(self, hooks: Sequence[Hook], should_stop: Callable[[], bool]) -> TrainState:
        """:meth:`fit` of a group: the hooks of every run, one program."""
        cfg, group, start = self.cfg, self.group, self.start
        write = self.main and group.path is not None
        logs = [runs.MetricsLog(folder.path, purge_step=start + 1 if start else None) if write and on else None
                for folder, on in zip(group.folders, group.active)]
        first = int(np.argmax(group.active))
        previous = runs.read_metrics(group.folders[first].path) if write else []
        clock = Clock(offset=previous[-1]["seconds"] if previous else 0.0)
        progress, quiet = Progress(cfg.steps, start, self.progress and self.main), Progress(cfg.steps, start, False)
        saver = (RunsCheckpointer([folder.file(runs.CHECKPOINTS) for folder in group.folders], group.active,
                                  every_steps=cfg.checkpoint_every, every_minutes=cfg.checkpoint_minutes, start=start)
                 if group.path is not None else None)

        def diverged(index: int, step: int) -> None:
            folder = group.folders[index]
            error = _diverged(Diverged(step, {}), folder.file(runs.CHECKPOINTS) if folder is not None else None,
                              group.cfgs[index])
            group.failures[index] = f"run {group.names[index]}: {error}"
            if write:
                runs.write_json(folder.file(runs.FAILED), {"step": step, "error": group.failures[index]})

        stop = StopCheck(self._caught, start)
        loggers = RunsLogger([MetricsLogger(log, quiet, start, clock.seconds()) for log in logs],
                             MetricsLogger(None, progress, start, clock.seconds()), group.active, diverged)
        own = [stop, loggers] + ([saver] if saver is not None else [])
        try:
            self.state = self.trainer.fit(self.state, cfg.steps, hooks=(*own, *hooks), clock=clock,
                                          should_stop=lambda: stop.should_stop() or should_stop(),
                                          active=group.active.copy())
            steps = np.asarray(self.state.step)[group.active]
            done = int(steps.max()) if steps.size else start
            if saver is not None and steps.size and (
                    saver.saved_step != done or not all(os.path.isdir(saver.directories[i])
                                                        for i in np.flatnonzero(group.active))):
                saver.save(done, self.state)
            if self._caught:
                if saver is None:
                    raise KeyboardInterrupt
                raise Stopped(self._caught[0], done, group.path)
        except checkpoint.CheckpointError as err:
            raise RunFailed(str(err)) from None
        finally:
            progress.close()
            for log in logs:
                if log is not None:
                    log.close()
        self.train_seconds = clock.seconds()
        return self.state

    def meta_test(self, state: TrainState | None = None, **overrides: Any) -> Any:
        """The config's meta-test of ``state`` (default: the run's current state); of a group, a list with
        the result of each run (None for a run that diverged).

        ``overrides`` change meta-test keys of the config for this call (``eval_tasks``,
        ``eval_max_steps``, ``test_inner_steps``); the test sampler's batch stays the run's.
        The training pool is freed first when training is over.
        """
        state = self.state if state is None else state
        steps = np.asarray(state.step) if self.group is None else np.asarray(state.step)[self.group.active]
        if steps.size and int(steps.min()) >= self.cfg.steps:  # of a group: its runs that did not diverge
            self.trainer.data = None  # the training pool (host memory on the CPU) before the meta-test
        if self.group is None:
            return self._meta_test(self.cfg, self.setup, state, overrides)
        return [self._meta_test(cfg, setup, run_of(state, index), overrides) if on else None
                for index, (cfg, setup, on) in enumerate(zip(self.group.cfgs, self.group.setups, self.group.active))]

    def _meta_test(self, cfg: Config, setup: Setup, state: TrainState, overrides: dict[str, Any]) -> dict:
        cfg = validate(dataclasses.replace(cfg, **overrides)) if overrides else cfg
        return meta_test_of(cfg, self.workload, setup.learner, state.meta_params, self.trainer.mesh,
                            step=int(state.step))


def _write_start(folder, cfg: Config, workload: Workload, start: int, record: dict) -> None:
    """config.json on a new run, the metrics cut back to ``start`` on resume, data.json, and this start
    appended to run.json."""
    if start:
        runs.truncate_metrics(folder.path, start)
    else:
        runs.write_json(folder.file(runs.CONFIG), dataclasses.asdict(cfg))
    runs.write_json(folder.file(runs.DATA), {"splits": list(workload.data_summary)})
    runs.append_run_record(folder.path, {**record, "start_step": start})


def prepare(cfg: Config, out: str | None, *, resume: bool = False, progress: bool = True,
            devices: Sequence[jax.Device] | None = None, workload: Workload | None = None) -> Run:
    """Sets up a run of ``cfg`` in the run folder ``out`` (or continues it), checking everything first.

    Training uses every device of every process (:mod:`jmaml.parallel`), or ``devices``: the state
    is replicated, the sampled meta-batch split over the devices, with the same trajectory as on one
    device. In a multi-process run only process 0 writes the folder and the console output, and
    every process takes part in the checkpoints.

    Args:
      cfg: a validated config (:func:`jmaml.experiment.configs.get_config`).
      out: the run folder; None keeps the run in memory (no folder, logs or checkpoints; a signal
        then interrupts with ``KeyboardInterrupt``).
      resume: continue the run in ``out`` from its latest checkpoint.
      progress: show progress while training.
      devices: the devices to train on (default: all).
      workload: the workload to train on (default: ``make_workload(cfg)``, which loads the data),
        e.g. synthetic data of the same shapes in a benchmark.

    Raises:
      JmamlError: bad input; nothing of an earlier run is changed, and a folder this call created is
        removed.
    """
    return _prepare([cfg], out, None, resume=resume, progress=progress, devices=devices, workload=workload)


def prepare_group(cfgs: Sequence[Config], out: str | None, *, resume: bool = False, progress: bool = True,
                  devices: Sequence[jax.Device] | None = None, workload: Workload | None = None) -> Run:
    """Sets up a group of runs trained in one program: :func:`prepare` over a run axis.

    The configs may differ only in ``configs.SWEEP_KEYS`` (seed, inner_lr, meta_lr, ...): each run
    has its own initial weights and task stream (its seed) and its own traced rates, and follows the
    trajectory it would follow trained alone. Each run has its own folder ``out/<name>``
    (``runs.run_names``: ``inner_lr=0.1,seed=3``) with everything a single run has; ``out/group.json``
    lists the runs. Everything :func:`prepare` checks is checked for the whole group.

    Args:
      cfgs: the runs' validated configs.
      out: the group folder; None keeps the runs in memory.
      resume: continue the group in ``out`` from the latest checkpoint that every run that has not
        diverged holds; a run that diverged (``failed.json``) stays stopped.
      progress, devices, workload: as in :func:`prepare`.

    Raises:
      JmamlError: bad input (configs that differ in a key that changes the program, a folder in
        use, ...); nothing of an earlier group is changed, and folders this call created are removed.
    """
    cfgs = list(cfgs)
    check_group(cfgs)
    names = runs.run_names(cfgs)
    created = runs.claim_group(out, resume=resume) if out is not None and parallel.is_main_process() else False
    try:
        run = _prepare(cfgs, out, names, resume=resume, progress=progress, devices=devices, workload=workload)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if out is not None and run.main and not resume:
        runs.write_json(os.path.join(out, runs.GROUP), {"runs": names, "config": cfgs[0].name,
                                                        "varied": runs.varied_keys(cfgs)})
    return run


def _resume_steps(folders: Sequence[Any], group: bool) -> tuple[int, list[int | None], np.ndarray]:
    """Where a run or group continues: the start step, the checkpoint each run restores (None: its
    initial state) and which runs train (not those of a group that diverged before).

    A group starts from the latest step that every run still training holds (a kill between the
    saves of two runs leaves the step before in every folder: :data:`checkpoint.KEEP`).
    """
    directories = [folder.file(runs.CHECKPOINTS) for folder in folders]
    if not group:
        start = checkpoint.latest_step(directories[0])
        if start is None:
            raise JmamlError(f"{folders[0].path} holds no finished checkpoint to resume from; start a new run")
        return start, [start], np.ones(1, bool)
    active = np.array([not os.path.exists(folder.file(runs.FAILED)) for folder in folders])
    if not active.any():
        raise JmamlError("every run of the group diverged (each holds failed.json): nothing is left to train")
    held = set.intersection(*(set(checkpoint.all_steps(d)) for d, on in zip(directories, active) if on))
    if not held:
        raise JmamlError(f"the runs of the group hold no finished checkpoint in common to resume from "
                         f"({os.path.dirname(folders[0].path)}); start a new group")
    start = max(held)
    return start, [start if on else checkpoint.latest_step(d) for d, on in zip(directories, active)], active


def _prepare(cfgs: list[Config], out: str | None, names: list[str] | None, *, resume: bool, progress: bool,
             devices: Sequence[jax.Device] | None, workload: Workload | None) -> Run:
    """:func:`prepare` of one run (``names`` None: ``out`` is its folder) or of a group (``out/<name>``)."""
    if resume and out is None:
        raise JmamlError("resume needs the run folder it continues; pass out")
    main = parallel.is_main_process()
    parallel.agree("\n".join(cfg.to_json() for cfg in cfgs), "configs")
    outs = [out] if names is None else [None if out is None else os.path.join(out, name) for name in names]
    stack = contextlib.ExitStack()
    # Signals from the start: one during loading or compiling stops at step 0.
    caught = stack.enter_context(stop_signals())
    folders: list[Any] = []
    try:
        for path in outs:
            folder = None
            if path is not None:
                folder = runs.RunFolder(path, resume=resume) if main else _SharedFolder(path)
                stack.callback(folder.release)
            folders.append(folder)
        record = provenance.record()
        if main:
            print(f"training on {provenance.where(record)}", flush=True)  # stdout: stderr is for problems
        if resume:
            cfgs = [resume_config(runs.load_config(folder.path), cfg) for folder, cfg in zip(folders, cfgs)]
            if names is not None:
                check_group(cfgs)
        cfg = cfgs[0]
        mesh = parallel.make_mesh(devices)
        meta_chunks = chunking(cfg, mesh.size)[0]
        parallel.check_meta_batch(cfg.meta_batch, mesh.size, meta_chunks=meta_chunks)
        if workload is None:
            _data_fits(cfg)
            workload = make_workload(cfg)
        for summary in workload.data_summary if main else ():
            print(summary_line(summary), file=sys.stderr)
        setups = [build(each, workload) for each in cfgs]
        if names is None:
            template = setups[0].template()
        else:
            template = jax.eval_shape(lambda: stack_runs([setup.init() for setup in setups]))
        start, restore, active = 0, [None] * len(cfgs), np.ones(len(cfgs), bool)
        if resume:
            start, restore, active = _resume_steps(folders, names is not None)
        data = (parallel.replicate(workload.train_data, mesh, alias=True)
                if workload.train_data is not None else None)
        group = None
        if names is not None:
            hparams = {key: np.asarray([getattr(each, key) for each in cfgs], np.dtype(jax.numpy.result_type(float)))
                       for key in runs.varied_keys(cfgs)}
            # the parts of a run need the model and loss, not the data
            group = Group(hparams, functools.partial(step_parts, cfg, workload._replace(train_data=None,
                                                                                        test_data=None)))
        trainer = Trainer(setups[0].learner, setups[0].optimizer, workload.train_tasks, data,
                          steps_per_dispatch=cfg.log_every, meta_chunks=meta_chunks, mesh=mesh, group=group)
        # the trainer holds the training pool alone from here, so that the meta-test can free it
        del data
        workload = workload._replace(train_data=None)
        begin = time.perf_counter()
        if start < cfg.steps:
            _program_fits(trainer, cfg, start, template, runs=len(cfgs) if names is not None else 1)
        compile_seconds = time.perf_counter() - begin
        states = [setup.init() if step is None else
                  checkpoint.restore(folder.file(runs.CHECKPOINTS), parallel.abstract(setup.template(), mesh),
                                     step)[0]
                  for setup, folder, step in zip(setups, folders, restore)]
        state = parallel.replicate(states[0] if names is None else stack_runs(states), mesh)
        for folder, each, on in zip(folders, cfgs, active):
            if folder is not None and main and on:
                _write_start(folder, each, workload, start, record)
    except BaseException:
        stack.close()
        for folder in folders:
            if folder is not None and not resume:
                folder.discard()
        raise
    run_group = None if names is None else RunGroup(out, names, cfgs, folders, setups, active)
    return Run(cfg, folders[0] if names is None else None, workload, setups[0], trainer, state, start,
               compile_seconds, record, progress=progress, group=run_group, _stack=stack, _caught=caught)
