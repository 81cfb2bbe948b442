"""Data parallelism over the task axis: the one module of jmaml that knows devices and processes.

A meta-batch is split over every device of every process along a 1-D mesh axis ``"tasks"``;
the train state (meta-parameters, optimizer state, step, PRNG key) and the data that tasks are
drawn from are replicated. The step stays one ``jax.jit`` with explicit in/out shardings and
donation; the mean over tasks in the meta-loss becomes an all-reduce that XLA inserts. Tasks
are sampled inside the step from the replicated key and constrained to the task axis, so each
device computes its own slice, while the tasks, their per-task keys (``fold_in(key, global
task index)``) and the whole trajectory are the same on any number of devices or processes.

A user's own loop shards with two wrappers::

    mesh = parallel.make_mesh()
    sampler = parallel.shard_tasks(sample_tasks, mesh)       # tasks split over the devices
    step = parallel.shard_train_step(make_train_step(learner, optimizer, sampler), mesh)
    state = parallel.replicate(state, mesh)
    data = parallel.replicate(images, mesh)                  # uint8 stays uint8
    state, metrics = step(state, None, data)

The core (:mod:`jmaml.core`) stays device-agnostic; this module only wraps its functions.

References:
  Finn, Abbeel & Levine (2017), Model-Agnostic Meta-Learning. https://arxiv.org/abs/1703.03400
  JAX documentation, "Introduction to multi-controller JAX" and "Distributed arrays and automatic
  parallelization" (jit with shardings; GSPMD inserts the collectives).
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jmaml.errors import JmamlError

TASK_AXIS = "tasks"
DEFAULT_TIMEOUT = 300  # seconds jax.distributed waits for every process to connect


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"tasks"`` over ``devices`` (default: every device of every process).

    The axis is ``Auto`` (``jax.make_mesh`` defaults to ``Explicit`` axes, under which
    ``with_sharding_constraint`` and gathers from replicated data under ``vmap`` fail).
    """
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (TASK_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of the state and of the data: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def task_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of tasks: the leading (task) axis split over the devices, contiguously."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def nearest_multiples(value: int, factor: int) -> list[int]:
    """The positive multiples of ``factor`` nearest to ``value`` (below and above)."""
    below, above = (value // factor) * factor, -(-value // factor) * factor
    return [n for n in dict.fromkeys((below, above)) if n > 0]


def check_meta_batch(meta_batch: int, num_devices: int, *, meta_chunks: int = 1, name: str = "meta_batch") -> None:
    """Refuses a meta-batch that the devices (times ``meta_chunks``) do not split evenly.

    Every device gets ``meta_batch / num_devices`` tasks; with gradient accumulation every
    chunk of ``meta_batch / meta_chunks`` tasks must split over all devices as well.

    Raises:
      JmamlError: naming both numbers and the nearest valid sizes.
    """
    factor = num_devices * meta_chunks
    if meta_batch % factor:
        valid = " or ".join(str(n) for n in nearest_multiples(meta_batch, factor))
        over = f"{num_devices} devices" + (f" x meta_chunks={meta_chunks}" if meta_chunks > 1 else "")
        raise JmamlError(f"{name}={meta_batch} cannot be split evenly over {over}: set {name} to a multiple of "
                         f"{factor} (nearest: {valid}), or run on a device count that divides it")


def _leading_size(tasks: Any) -> int:
    return int(np.shape(jax.tree.leaves(tasks)[0])[0])


def constrain_tasks(tasks: Any, mesh: Mesh) -> Any:
    """``tasks`` (inside a jitted function) constrained to be split over the devices on their leading axis."""
    return jax.lax.with_sharding_constraint(tasks, task_sharded(mesh))


def shard_tasks(sample_tasks: Callable[[jax.Array, Any], Any], mesh: Mesh) -> Callable[[jax.Array, Any], Any]:
    """``sample_tasks`` whose meta-batch is split over the devices of ``mesh`` inside ``jit``.

    The tasks are still drawn from one key as a whole (XLA partitions the computation of the
    random numbers; with ``jax_threefry_partitionable`` they do not depend on the partition), so
    each device computes its own slice of the same tasks a single device would draw.

    Raises:
      JmamlError: at trace time, when the device count does not divide the meta-batch.
    """
    def sample(key: jax.Array, data: Any = None):
        tasks = sample_tasks(key, data)
        check_meta_batch(_leading_size(tasks), mesh.size)
        return constrain_tasks(tasks, mesh)

    return sample


def shard_train_step(train_step: Callable, mesh: Mesh, *, donate: bool = True) -> Callable:
    """``train_step(state, tasks=None, data=None)`` jitted for ``mesh``: state and data replicated,
    tasks (when passed in) split on their leading axis, state and metrics returned replicated,
    the input state donated.

    A step that samples its own tasks should be built with a :func:`shard_tasks` sampler, or
    every device computes the whole meta-batch.
    """
    rep, tasks = replicated(mesh), task_sharded(mesh)
    jitted = jax.jit(train_step, in_shardings=(rep, tasks, rep), out_shardings=rep,
                     donate_argnums=(0,) if donate else ())

    def step(state, tasks=None, data=None):
        return jitted(state, tasks, data)

    step.jitted = jitted
    return step


def shard_fn(fn: Callable, mesh: Mesh, *, donate_argnums: tuple[int, ...] = ()) -> Callable:
    """``jax.jit(fn)`` with every argument and output replicated on ``mesh`` (e.g. a chunk of
    scanned steps whose tasks are sampled inside by a :func:`shard_tasks` sampler)."""
    return jax.jit(fn, in_shardings=replicated(mesh), out_shardings=replicated(mesh), donate_argnums=donate_argnums)


def _global_array(x: Any, sharding: NamedSharding, alias: bool) -> jax.Array:
    if alias and not multi_process():
        return jax.device_put(x, sharding, may_alias=True)
    # a private host copy, the same on every process (replicated state, data loaded identically): what
    # the result is built from is never the caller's buffer, which a donating step would delete
    host = np.array(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh, *, alias: bool = False) -> Any:
    """``tree`` placed whole on every device of ``mesh`` (works across processes), dtypes kept:
    uint8 image pools stay uint8 and are converted inside the step.

    Args:
      tree: the state or the data.
      mesh: the devices.
      alias: in a single-process run, reuse ``tree``'s buffers where they already are in place
        instead of copying them (for data such as an image pool, which must not be held twice).
        Never for what a step donates (the train state): donation would delete ``tree`` too.
    """
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _global_array(x, sharding, alias), tree)


def shard(tasks: Any, mesh: Mesh) -> Any:
    """Host-side tasks (the same global batch on every process) split over the devices."""
    check_meta_batch(_leading_size(tasks), mesh.size)
    sharding = task_sharded(mesh)
    return jax.tree.map(lambda x: _global_array(x, sharding, alias=False), tasks)


def to_host(tree: Any) -> Any:
    """Each array of ``tree`` whole, as numpy, on every process.

    An array split over the devices of several processes cannot be read with ``np.asarray``
    (each process holds only its own devices' slices); it is gathered over the processes
    (``multihost_utils.process_allgather``, a collective: every process must call this in the
    same order). Arrays this process holds whole (all of a single-process run's, replicated
    ones) are read directly.
    """
    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def abstract(tree: Any, mesh: Mesh) -> Any:
    """``ShapeDtypeStruct``s of ``tree`` carrying the replicated sharding (restore targets, lowering)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.result_type(a), sharding=sharding), tree)


# --------------------------------------------------------------------------- processes

def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout: int = DEFAULT_TIMEOUT, local_device_ids: Sequence[int] | None = None) -> None:
    """Starts this process's part of a multi-process run (``jax.distributed.initialize``).

    Call it before anything touches a device. Without arguments the cluster is detected (SLURM,
    Open MPI, Cloud TPU, Kubernetes); otherwise give all three of ``coordinator`` (``HOST:PORT``
    of process 0), ``num_processes`` and ``process_id``.

    Args:
      coordinator: ``HOST:PORT`` that process 0 listens on.
      num_processes: processes in the run.
      process_id: this process's index, ``0 .. num_processes - 1``.
      timeout: seconds to wait for every process to connect.
      local_device_ids: the devices this process uses (default: all it sees, or SLURM's).

    Raises:
      JmamlError: incomplete or inconsistent arguments, no cluster detected, or the coordinator not
        reached within ``timeout`` (the message names the address).
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(k for k, v in given.items() if v is None)
        raise JmamlError(f"--distributed with an explicit coordinator needs --coordinator, --num-processes and "
                         f"--process-id together (missing: {missing.replace('_', '-')}); or give none to detect "
                         "the cluster (SLURM, Open MPI, Cloud TPU)")
    if coordinator is not None:
        if ":" not in coordinator:
            raise JmamlError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. node001:1234")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise JmamlError(f"--process-id {process_id} must be in 0..{num_processes - 1} "
                             f"(--num-processes {num_processes})")
    if timeout <= 0:
        raise JmamlError(f"the distributed start-up timeout must be positive seconds, not {timeout}")
    where = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or "the detected coordinator"
    if coordinator is not None and process_id != 0:
        # jax.distributed aborts the process (a C++ fatal error, no exception) when it cannot reach the
        # coordinator, so a process other than 0 first waits for the port itself, within the same timeout
        timeout = _wait_for_coordinator(coordinator, timeout)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, local_device_ids=local_device_ids,
                                   initialization_timeout=int(timeout))
    except ValueError as err:  # no cluster detected and no arguments
        raise JmamlError(f"--distributed found no cluster to join ({str(err).splitlines()[0]}); pass "
                         "--coordinator HOST:PORT --num-processes N --process-id I") from None
    except Exception as err:  # XlaRuntimeError: DEADLINE_EXCEEDED / UNAVAILABLE
        raise JmamlError(f"could not join the distributed run at {where} within {timeout} s "
                         f"({str(err).splitlines()[0][:200]}); check that process 0 runs there and the port is "
                         "reachable, or raise the timeout") from None


def _wait_for_coordinator(coordinator: str, timeout: float) -> int:
    """Waits until something accepts TCP connections at ``coordinator`` (``HOST:PORT``).

    Returns:
      The whole seconds left of ``timeout`` (at least 1), for ``jax.distributed.initialize``.

    Raises:
      JmamlError: nothing listens there within ``timeout`` seconds (the message names the address).
    """
    host, port = coordinator.rsplit(":", 1)
    host = host.strip("[]")  # [::1]:1234
    try:
        port = int(port)
    except ValueError:
        raise JmamlError(f"--coordinator {coordinator!r} must be HOST:PORT with a numeric port, e.g. "
                         "node001:1234") from None
    deadline = time.monotonic() + timeout
    reason = "no answer"
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1)):
                return max(1, math.ceil(deadline - time.monotonic()))
        except OSError as err:
            reason = err.strerror or str(err) or type(err).__name__
        if time.monotonic() + 0.2 >= deadline:
            raise JmamlError(f"could not reach the coordinator at {coordinator} within {timeout:g} s ({reason}): "
                             "start process 0 there first (it listens on that port), check the host name, port "
                             "and firewall, or raise --distributed-timeout")
        time.sleep(0.2)


def process_index() -> int:
    """This process's index (0 in a single-process run)."""
    return jax.process_index()


def is_main_process() -> bool:
    """Whether this process writes logs, metrics and reports (process 0)."""
    return jax.process_index() == 0


def multi_process() -> bool:
    """Whether the run spans several processes."""
    return jax.process_count() > 1


def reached_preemption(step: int, since: int | None = None) -> bool:
    """Whether every process has agreed to stop now, after a SIGTERM to any of them.

    JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``) must see
    *every* step: once a process gets SIGTERM, the processes agree on the step after the
    furthest one any of them has passed, and only a call with exactly that step returns True.
    Passing only the steps at chunk boundaries (10, 20, ...) would miss it (11) and the run
    would never stop. So after a chunk that took the run from ``since`` to ``step``, this passes
    each step in ``since + 1 .. step`` in order; since every process runs the same chunks, all
    of them return True at the end of the same chunk. Call it on every process after every
    chunk, with no Python SIGTERM handler installed (it would replace JAX's). A resumed run
    passes ``since=0`` once, so that a SIGTERM during start-up (when JAX's counter is still 0)
    is not missed either. Always False in a single-process run.

    Args:
      step: the step just reached.
      since: the step passed to the previous call (default ``step - 1``: only ``step``).
    """
    if not multi_process():
        return False
    from jax.experimental import multihost_utils

    reached = False
    for s in range(step if since is None else since + 1, step + 1):
        reached = bool(multihost_utils.reached_preemption_sync_point(s)) or reached
    return reached


def agree(value: str, what: str) -> None:
    """Stops with one error when the processes disagree on ``value`` (e.g. the config), instead of
    hanging in a collective later."""
    if not multi_process():
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.uint32)
    try:
        multihost_utils.assert_equal(digest, fail_message=what)
    except AssertionError:
        raise JmamlError(f"the processes were started with different {what}: start every process with the same "
                         "command") from None
