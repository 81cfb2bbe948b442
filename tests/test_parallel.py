"""Data parallelism over the task axis (jmaml.parallel) on simulated CPU devices.

Each run is a fresh subprocess (``tests/parallel_worker.py``) whose device count is set in its
environment before jax is imported. Tolerances (float32): meta-losses rtol 1e-5, parameters
rtol 1e-5 / atol 1e-6 (measured: about 5e-7 and 1e-7). The conv biases of Conv4 feed a
batch-statistics norm, so their true meta-gradient is exactly zero and Adam turns float
rounding noise into updates of up to meta_lr per step (measured differences up to 0.011): they are
compared with atol 20 * meta_lr only; everything else is compared tightly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jmaml import parallel
from jmaml.errors import JmamlError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")


def run_worker(tmp_path, workload: str, devices: int, *extra: str, timeout: int = 600):
    out = tmp_path / f"{workload}-{devices}-{'-'.join(extra) or 'plain'}.npz"
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, WORKER, workload, str(out), *extra], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_result(out)


def load_result(out):
    data = np.load(out)
    params = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("param:")}
    return data["losses"], params, data["test"], json.loads(str(data["info"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def assert_same_run(one, many, *, noise_leaves=()):
    losses1, params1, test1, _ = one
    losses4, params4, test4, _ = many
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
    np.testing.assert_allclose(test4, test1, rtol=1e-5)
    assert params1.keys() == params4.keys()
    for name in params1:
        if name in noise_leaves:
            np.testing.assert_allclose(params4[name], params1[name], atol=20 * 1e-3)
        else:
            np.testing.assert_allclose(params4[name], params1[name], rtol=1e-5, atol=1e-6, err_msg=name)


def assert_sharded(info, devices):
    assert info["devices"] == devices
    assert info["task_spec"] == "P('tasks',)"      # the sampled tasks' sharding inside jit
    assert info["distinct_shards"] == devices       # each device holds a different slice
    assert info["all_reduce"]                       # XLA inserted the gradient all-reduce
    assert info["task_values"] == pytest.approx(info["sharded_values"])  # the same tasks as unsharded
    # the tasks of each meta_loss call (each chunk, with meta_chunks > 1) split over every device, and no
    # collective in the step but the gradient all-reduce: no task moved between devices (a contiguous
    # chunking of the sharded meta-batch compiles to an all-gather here)
    assert info["chunk_shardings"] == [["P('tasks',)", devices]]
    assert info["collectives"] == ["all-reduce"]
    # the meta-test (evaluation.meta_test): its tasks split over every device inside the compiled scorer
    assert info["test_shardings"] == [["P('tasks',)", devices]]
    assert [spec for spec, _ in info["fetched"]] == ["P('tasks',)"]


def test_sinusoid_4_devices_equal_1(tmp_path):
    """Training and meta-test (``test``: evaluation.meta_test's per-step means) on 4 devices equal 1 device,
    also with meta_chunks=2, whose chunks each span all 4 devices."""
    one = run_worker(tmp_path, "sinusoid", 1)
    many = run_worker(tmp_path, "sinusoid", 4)
    assert_sharded(many[3], 4)
    assert one[3]["task_spec"] == "P()" and one[3]["test_shardings"] == [["P()", 1]]
    assert_same_run(one, many)
    chunked = run_worker(tmp_path, "sinusoid", 4, "--meta-chunks", "2")
    assert_sharded(chunked[3], 4)
    assert_same_run(one, chunked)


def test_two_processes_meta_test_gathers_sharded_scores(tmp_path):
    """2 processes x 2 devices (jax.distributed) against 1 device, with meta_chunks=2: the chunks and the
    meta-test tasks are split over all 4 devices of both processes, and meta_test's per-task scores, which
    span the other process's devices, are gathered (parallel.to_host) to the same result."""
    one = run_worker(tmp_path, "sinusoid", 1, "--steps", "2")
    port = free_port()
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    out = tmp_path / "two-processes.npz"
    procs = [subprocess.Popen([sys.executable, WORKER, "sinusoid", str(out), "--steps", "2", "--meta-chunks", "2",
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n\n".join(err[-2500:] for err in errors)
    two = load_result(out)
    info = two[3]
    assert info["processes"] == 2 and info["devices"] == 4
    assert info["chunk_shardings"] == info["test_shardings"] == [["P('tasks',)", 4]]
    assert info["collectives"] == ["all-reduce"]
    assert info["fetched"] == [["P('tasks',)", False]]  # not readable by np.asarray alone
    assert_same_run(one, two)


def test_omniglot_like_4_devices_equal_1(tmp_path):
    one = run_worker(tmp_path, "omniglot", 1)
    many = run_worker(tmp_path, "omniglot", 4)
    assert_sharded(many[3], 4)
    noise = {f"['params']['conv{i}']['bias']" for i in range(4)}
    assert noise <= one[1].keys()
    assert_same_run(one, many, noise_leaves=noise)


def test_meta_batch_not_divisible_names_both_numbers_and_nearest():
    with pytest.raises(JmamlError, match=r"meta_batch=10 cannot be split evenly over 4 devices.*nearest: 8 or 12"):
        parallel.check_meta_batch(10, 4)
    with pytest.raises(JmamlError, match=r"meta_batch=4 .* 4 devices x meta_chunks=2.*multiple of 8 \(nearest: 8\)"):
        parallel.check_meta_batch(4, 4, meta_chunks=2)
    parallel.check_meta_batch(8, 4, meta_chunks=2)
    assert parallel.nearest_multiples(3, 4) == [4]


def test_initialize_refuses_incomplete_arguments():
    with pytest.raises(JmamlError, match="missing: num-processes, process-id"):
        parallel.initialize("localhost:1234")
    with pytest.raises(JmamlError, match="HOST:PORT"):
        parallel.initialize("localhost", 2, 0)
    with pytest.raises(JmamlError, match=r"--process-id 2 must be in 0\.\.1"):
        parallel.initialize("localhost:1", 2, 2)


def test_replicate_copies_the_state_and_may_alias_the_data():
    """The state replicate places is a copy, so a step that donates it leaves the caller's arrays alive;
    with ``alias=True`` (image pools) an array already in place on the CPU is used as it is, not copied."""
    import jax
    import jax.numpy as jnp

    mesh = parallel.make_mesh()
    state = {"w": jnp.arange(4.0), "key": jax.random.key_data(jax.random.key(0))}
    placed = parallel.replicate(state, mesh)
    step = jax.jit(lambda s: jax.tree.map(lambda a: a + 1, s), donate_argnums=0)
    jax.block_until_ready(step(placed))
    np.testing.assert_array_equal(state["w"], np.arange(4.0))  # still readable after the donation
    pool = jnp.zeros((8, 3), jnp.uint8)
    assert parallel.replicate(pool, mesh, alias=True).unsafe_buffer_pointer() == pool.unsafe_buffer_pointer()


def test_shard_splits_host_tasks_over_the_devices():
    """``parallel.shard`` places a host-side batch on the task axis, values unchanged."""
    mesh = parallel.make_mesh()
    tasks = {"x": np.arange(8.0).reshape(4, 2)}
    placed = parallel.shard(tasks, mesh)
    assert placed["x"].sharding == parallel.task_sharded(mesh)
    np.testing.assert_array_equal(placed["x"], tasks["x"])
