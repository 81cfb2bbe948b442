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
    data = np.load(out)
    params = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("param:")}
    return data["losses"], params, data["test"], json.loads(str(data["info"]))


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


def test_sinusoid_4_devices_equal_1(tmp_path):
    one = run_worker(tmp_path, "sinusoid", 1)
    many = run_worker(tmp_path, "sinusoid", 4)
    assert_sharded(many[3], 4)
    assert one[3]["task_spec"] == "P()"
    assert_same_run(one, many)
    chunked = run_worker(tmp_path, "sinusoid", 4, "--meta-chunks", "2")
    assert_same_run(one, chunked)


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
