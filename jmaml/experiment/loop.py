"""The one host loop of meta-training: compiled dispatches of steps, hooks between them, a stop check.

``jmaml train`` and the benchmarks drive training through :meth:`Trainer.fit`. It runs the
jitted train step ``steps_per_dispatch`` steps at a time (one ``scan_steps`` program per dispatch),
aligned to multiples of ``steps_per_dispatch`` so that a resumed run executes exactly the programs
of an uninterrupted one, switches learners once for derivative-order annealing
(``learner.at_step``), stops with :class:`Diverged` on a non-finite meta-loss, meta-parameter or
optimizer state, and after every dispatch calls the hooks, which log, checkpoint or evaluate
(:mod:`jmaml.experiment.hooks`). A :class:`Clock` measures training time; a hook that evaluates
can pause it.

With a :class:`Group`, one program trains several runs stacked on a leading run axis
(:func:`jmaml.core.runs.make_runs_step`), each with its own traced hyper-parameters. A run whose
meta-loss or state stops being finite is frozen inside the program at its last finite step and stops
alone: the dispatch reports it in the metric ``"finite"`` (one flag per step and run) and the others
go on.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmaml import parallel
from jmaml.core.learner import MetaLearner
from jmaml.core.runs import make_runs_step
from jmaml.core.step import TrainState, make_train_step, scan_steps
from jmaml.core.types import PyTree, Tasks
from jmaml.experiment import memory


class Clock:
    """Seconds of training since the start, less the time spent in :meth:`paused` blocks."""

    def __init__(self, offset: float = 0.0):
        self._start = time.perf_counter() - offset
        self._paused = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self._start - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training time (e.g. an evaluation)."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - begin


class Diverged(Exception):
    """The meta-loss or the meta-parameters stopped being finite.

    Attributes:
      step: the first meta-step (1-based, as logged) whose meta-loss was not finite, or the
        dispatch's last step when only the parameters were.
      metrics: the dispatch's per-step metrics, for the log.
    """

    def __init__(self, step: int, metrics: dict[str, np.ndarray]):
        super().__init__(f"training diverged at step {step}: the meta-loss or the meta-parameters are "
                         "no longer finite")
        self.step = step
        self.metrics = metrics


class Hook(Protocol):
    """Called after every dispatch with the step reached, the state, the dispatch's metrics (one row per
    step) and the training clock."""

    def __call__(self, step: int, state: TrainState, metrics: dict[str, np.ndarray], clock: Clock) -> None:
        ...


def _all_finite(tree: PyTree) -> jax.Array:
    """Whether every floating leaf is finite (e.g. Adam's second moment overflows to inf while the
    parameters still look fine)."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


FINITE = "finite"  # the per-step, per-run flag a group's dispatch adds to its metrics


class Group(NamedTuple):
    """Several runs trained in one program.

    Attributes:
      hparams: ``{key: [runs] array}``, each run's value of every traced hyper-parameter that differs
        between the runs (``configs.TRACED_KEYS``); empty when only the seeds differ.
      parts: ``parts(h) -> (learner, optimizer)`` of one run whose hyper-parameters are ``h`` (traced).
    """

    hparams: Mapping[str, np.ndarray]
    parts: Callable[[Mapping[str, jax.Array]], tuple[MetaLearner, optax.GradientTransformation]]


def _where_runs(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` for the runs where ``ok`` (shape ``[runs]``), ``old`` for the others."""
    return jax.tree.map(lambda a, b: jnp.where(ok.reshape(ok.shape + (1,) * (a.ndim - 1)), a, b), new, old)


def scan_group_steps(runs_step: Callable, num_steps: int) -> Callable:
    """``num_steps`` steps of every run as one ``lax.scan``, each run frozen from its first non-finite step.

    Returns ``many(states, data, hparams, active) -> (states, metrics)``: ``active`` (``[runs]`` bool) says
    which runs train; a run stays active while its meta-loss, meta-parameters and optimizer state are
    finite, and keeps its last finite state from the step it is not. ``metrics`` holds one row per step
    and run, with :data:`FINITE` the run's activity after each step.
    """

    def many(states: TrainState, data: PyTree, hparams: Mapping[str, jax.Array], active: jax.Array):
        def one(carry, _):
            states, active = carry
            new, metrics = runs_step(states, hparams, None, data)
            finite = jax.vmap(_all_finite)((new.meta_params, new.opt_state))
            ok = active & jnp.isfinite(metrics["meta_loss"]) & finite
            return (_where_runs(ok, new, states), ok), {**metrics, FINITE: ok}

        (states, _), metrics = jax.lax.scan(one, (states, active), None, length=num_steps)
        return states, metrics

    return many


class Trainer:
    """Compiles and caches the dispatch programs of one run, or of a :class:`Group` of runs.

    Args:
      learner: the meta-learner (``at_step`` picks the phase learner per step).
      optimizer: the meta-optimizer.
      sample_tasks: ``(key, data) -> Tasks``, sampled inside the step.
      data: what ``sample_tasks`` draws from, an argument of every dispatch (not baked in).
      steps_per_dispatch: meta-steps per compiled program call (``log_every`` in a config).
      meta_chunks: split of the meta-batch for gradient accumulation.
      mesh: the devices to train on (:func:`jmaml.parallel.make_mesh`): the state and ``data`` are
        replicated there (the caller places them with :func:`jmaml.parallel.replicate`) and the
        sampled tasks split over the devices. None: the default device, unsharded.
      group: train several runs in one program; ``learner`` is then the first run's (its phases, which
        every run shares) and the states have a leading run axis.
    """

    def __init__(self, learner: MetaLearner, optimizer: optax.GradientTransformation,
                 sample_tasks: Callable[[jax.Array, PyTree], Tasks], data: PyTree, *, steps_per_dispatch: int,
                 meta_chunks: int = 1, mesh: jax.sharding.Mesh | None = None, group: Group | None = None):
        if mesh is not None:
            sample_tasks = parallel.shard_tasks(sample_tasks, mesh)
        self.learner, self.optimizer, self.sample_tasks, self.data = learner, optimizer, sample_tasks, data
        self.mesh, self.group = mesh, group
        self.steps_per_dispatch, self.meta_chunks = steps_per_dispatch, meta_chunks
        self._compiled: dict[tuple[Any, int], Any] = {}

    def plan(self, done: int, steps: int) -> tuple[MetaLearner, int]:
        """The phase learner and the length of the dispatch that starts at step ``done``."""
        n = min(self.steps_per_dispatch - done % self.steps_per_dispatch, steps - done)
        first_order_steps = self.learner.first_order_steps
        if done < first_order_steps:
            n = min(n, first_order_steps - done)
        return self.learner.at_step(done), n

    def compiled(self, phase: MetaLearner, n: int, state: Any):
        """The compiled ``n``-step program of ``phase`` for states shaped like ``state`` (abstract or
        concrete); compiled once, ahead of time, so its memory can be checked before it runs."""
        if (phase, n) not in self._compiled:
            if self.group is None:
                step = make_train_step(phase, self.optimizer, self.sample_tasks, chunks=self.meta_chunks)

                def chunk_fn(state, data):
                    state, metrics = scan_steps(step, n)(state, data)
                    return state, metrics, _all_finite((state.meta_params, state.opt_state))

                args = (self.data,)
            else:
                chunk_fn = scan_group_steps(make_runs_step(self._run_step(phase)), n)
                runs = jnp.shape(state.step)[0]
                args = (self.data, self.group.hparams, jax.ShapeDtypeStruct((runs,), jnp.bool_))
            if self.mesh is None:
                abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), state)
                jitted = jax.jit(chunk_fn, donate_argnums=0)
            else:
                abstract = parallel.abstract(state, self.mesh)
                jitted = parallel.shard_fn(chunk_fn, self.mesh, donate_argnums=(0,))
            lowered = jitted.lower(abstract, *args)
            self._compiled[phase, n] = lowered.compile()
            memory.release_freed()  # the compiler's freed memory, before the program runs
        return self._compiled[phase, n]

    def _run_step(self, phase: MetaLearner) -> Callable:
        """``build(h) -> train_step`` of one run of the group in ``phase`` (a phase of :attr:`learner`)."""
        phase_step = 0 if phase is self.learner.at_step(0) else self.learner.first_order_steps

        def build(h):
            learner, optimizer = self.group.parts(h)
            return make_train_step(learner.at_step(phase_step), optimizer, self.sample_tasks, chunks=self.meta_chunks)

        return build

    def fit(self, state: TrainState, steps: int, *, hooks: tuple[Hook, ...] = (),
            should_stop: Callable[[], bool] = lambda: False, clock: Clock | None = None,
            active: np.ndarray | None = None) -> TrainState:
        """Trains from ``state.step`` to ``steps`` (or until ``should_stop()`` after a dispatch).

        With a group, ``active`` (default: all) says which runs train; the step reached is that of the
        active runs, and training ends early when none is left. A run that diverges is not an error
        here: it is frozen, and the hooks see it in the metric :data:`FINITE`.

        Raises:
          Diverged: (one run) a dispatch produced a non-finite meta-loss or meta-parameters; ``state`` was
            donated, so the last good state is the last one a hook saved.
        """
        clock = clock or Clock()
        if self.group is not None:
            active = np.ones(jnp.shape(state.step), bool) if active is None else np.asarray(active, bool)
            done = int(np.max(np.asarray(state.step)[active])) if active.any() else steps
        else:
            done = int(state.step)
        while done < steps and not should_stop():
            phase, n = self.plan(done, steps)
            if self.group is None:
                state, metrics, finite = self.compiled(phase, n, state)(state, self.data)
            else:
                state, metrics = self.compiled(phase, n, state)(state, self.data, self.group.hparams, active)
            metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
            if self.group is None:
                bad = np.flatnonzero(~np.isfinite(metrics["meta_loss"]))
                if bad.size or not bool(finite):
                    raise Diverged(done + 1 + int(bad[0]) if bad.size else done + n, metrics)
            done += n
            for hook in hooks:
                hook(done, state, metrics, clock)
            if self.group is not None:
                active = metrics[FINITE][-1]
                if not active.any():
                    break
        return state
