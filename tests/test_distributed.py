"""Multi-process runs through jax.distributed on one CPU machine, each process a fresh
``python -m jmaml train`` (a tiny sinusoid config): 2 processes x 2 simulated devices against 1
process x 4 devices; SIGTERM to one of two processes, then a resume on 1 process x 2 devices; an
unreachable coordinator; processes started with different configs.

Tolerances (float32): meta-losses rtol 1e-5, parameters rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from jmaml.experiment import checkpoint, runs
from jmaml.experiment.assembly import build
from jmaml.experiment.workloads import make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--steps", "20", "--no-progress", "--set", "meta_batch=8", "--set", "hidden=16,16", "--set", "log_every=5",
        "--set", "checkpoint_every=10", "--set", "eval_tasks=8", "--set", "eval_batch=8",
        "--set", "eval_max_steps=1"]


STOPPED = 3  # jmaml.experiment.cli.EXIT_STOPPED
BAD_INPUT = 2  # jmaml.experiment.cli.EXIT_BAD_INPUT


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


def distributed(port: int, process_id: int, timeout: int = 60) -> list[str]:
    return ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(process_id),
            "--distributed-timeout", str(timeout)]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


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


# Chunks of 10 steps, no periodic checkpoint (the one in the folder is the one saved at the stop),
# and more steps than the run can reach: JAX's notifier polls about once a second, so a SIGTERM after
# the first logged chunk stops it a few chunks later on any machine, and the comparisons then train
# only a few chunks past the stop (``steps`` may change on resume).
PREEMPT = ["--set", "log_every=10", "--set", "checkpoint_every=0"]
NEVER = 100_000
MORE = 30  # steps trained after the stop, by the resumed run


def test_sigterm_to_one_process_stops_both_and_resumes_elsewhere(tmp_path):
    run, reference = tmp_path / "run", tmp_path / "reference"
    port = free_port()
    procs = [start(run, 2, *PREEMPT, "--steps", str(NEVER), *distributed(port, i)) for i in range(2)]
    deadline = time.monotonic() + 300
    while not runs.read_metrics(str(run)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no first metrics row"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # not process 0, which hosts the coordinator and writes the folder
    results = finish(procs, timeout=120)  # a run that never stops fails here
    assert [rc for rc, _, _ in results] == [STOPPED, STOPPED], "\n\n".join(err[-2500:] for _, _, err in results)
    stops = [[line for line in err.splitlines() if line.startswith("stopped by SIGTERM at step ")]
             for _, _, err in results]
    assert all(len(lines) == 1 for lines in stops), stops
    stop = [int(lines[0].split("at step ")[1].split(":")[0]) for lines in stops]
    assert stop[0] == stop[1] and stop[0] % 10 == 0 and stop[0] >= 10, stop  # a chunk boundary, not before 10
    stop = stop[0]
    ckpts = str(run / runs.CHECKPOINTS)
    assert checkpoint.latest_step(ckpts) == stop
    assert sorted(os.listdir(ckpts)) == [str(stop)]  # one checkpoint, complete (no orbax temporary folder)
    assert runs.read_metrics(str(run))[-1]["step"] == stop

    end = stop + MORE
    # the resume on 1 process x 2 devices, and alongside it the uninterrupted run on 1 x 2
    results = finish([start(run, 2, *PREEMPT, "--steps", str(end), "--resume"),
                      start(reference, 2, *PREEMPT, "--steps", str(end))])
    assert [rc for rc, _, _ in results] == [0, 0], "\n\n".join(err[-2500:] for _, _, err in results)
    step1, params1 = final_params(reference)
    step2, params2 = final_params(run)
    assert step1 == step2 == end
    for name in params1:
        np.testing.assert_allclose(params2[name], params1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    rows1, rows2 = runs.read_metrics(str(reference)), runs.read_metrics(str(run))
    assert [row["step"] for row in rows2] == [row["step"] for row in rows1] == list(range(10, end + 1, 10))
    np.testing.assert_allclose([row["meta_loss"] for row in rows2], [row["meta_loss"] for row in rows1], rtol=1e-5)


def test_unreachable_coordinator_is_one_error_naming_it(tmp_path):
    port = free_port()  # nobody listens there
    began = time.monotonic()
    [(rc, out, err)] = finish([start(tmp_path / "run", 2, *distributed(port, 1, timeout=5))], timeout=120)
    seconds = time.monotonic() - began
    assert rc == BAD_INPUT, err[-3000:]
    [line] = error_lines(err)
    assert f"localhost:{port}" in line and "within 5 s" in line and "--distributed-timeout" in line, line
    assert seconds < 60, seconds  # 5 s of waiting plus start-up
    assert not (tmp_path / "run").exists()


def test_processes_with_different_configs_stop_with_one_error(tmp_path):
    port = free_port()
    procs = [start(tmp_path / "run", 2, *distributed(port, i), *(["--set", "inner_lr=0.02"] if i else []))
             for i in range(2)]
    results = finish(procs, timeout=120)  # kills both and fails on a hang
    assert [rc for rc, _, _ in results] == [BAD_INPUT, BAD_INPUT], "\n\n".join(e[-2500:] for _, _, e in results)
    for _, _, err in results:
        [line] = error_lines(err)
        assert "different configs" in line, line
    assert not glob.glob(str(tmp_path / "run" / runs.CHECKPOINTS / "*"))
