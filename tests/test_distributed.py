"""Multi-process runs through jax.distributed on one CPU machine: 2 processes x 2 simulated devices
against 1 process x 4 devices, each a fresh ``python -m jmaml train`` (a tiny sinusoid config).

Tolerances (float32): meta-losses rtol 1e-5, parameters rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from jmaml.experiment import checkpoint, runs
from jmaml.experiment.build import build
from jmaml.experiment.workloads import make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--steps", "20", "--no-progress", "--set", "meta_batch=8", "--set", "hidden=16,16", "--set", "log_every=5",
        "--set", "checkpoint_every=10", "--set", "eval_tasks=8", "--set", "eval_batch=8",
        "--set", "eval_max_steps=1"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def start(out, devices: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "jmaml", "train", "sinusoid", "--out", str(out), *ARGS, *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=300):
    """Waits for every process; on a timeout kills them all (SIGTERM, then SIGKILL) so none hangs the suite."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outputs)]


def final_params(path):
    cfg = runs.load_config(path)
    state, step = checkpoint.restore(os.path.join(path, runs.CHECKPOINTS), build(cfg, make_workload(cfg)).template())
    return step, {jax.tree_util.keystr(k): np.asarray(v)
                  for k, v in jax.tree_util.tree_flatten_with_path(state.meta_params)[0]}


def test_two_processes_equal_one(tmp_path):
    single = tmp_path / "single"
    [(rc, out, err)] = finish([start(single, 4)])
    assert rc == 0, err[-3000:]
    multi = tmp_path / "multi"
    port = free_port()
    procs = [start(multi, 2, "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                   "--distributed-timeout", "60") for i in range(2)]
    results = finish(procs)
    assert [rc for rc, _, _ in results] == [0, 0], "\n\n".join(err[-2500:] for _, _, err in results)
    # console output from process 0 only (gloo's own "[Gloo] Rank k is connected" lines aside)
    printed = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for _, out, _ in results]
    assert "meta-test" in results[0][1] and printed[1] == []
    step1, params1 = final_params(single)
    step2, params2 = final_params(multi)
    assert step1 == step2 == 20
    for name in params1:
        np.testing.assert_allclose(params2[name], params1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    losses1 = [row["meta_loss"] for row in runs.read_metrics(str(single))]
    losses2 = [row["meta_loss"] for row in runs.read_metrics(str(multi))]
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    assert len(losses2) == 4  # one row per logged chunk, written once (by process 0)
    ev1, ev2 = (json.loads((p / runs.EVAL).read_text()) for p in (single, multi))
    np.testing.assert_allclose(ev2["per_step"], ev1["per_step"], rtol=1e-5)
