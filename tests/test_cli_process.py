"""The command line as the user runs it: ``python -m jmaml`` (and the installed ``jmaml`` script) as a
process, its exit status, stdout and stderr."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import require_module, requirement_missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "jmaml"
WORKER = ROOT / "tests" / "parallel_worker.py"
# the script's cases are always collected: without the script they skip, and fail under CI (see run)
LAUNCHERS = [pytest.param([sys.executable, "-m", "jmaml"], id="python-m-jmaml"),
             pytest.param([str(SCRIPT)], id="jmaml-script")]


def run(launcher, *args, cwd, env=None):
    """Runs the command with this checkout's ``jmaml`` first on the path; returns (code, stdout, stderr)."""
    if launcher == [str(SCRIPT)] and not SCRIPT.is_file():
        requirement_missing(f"the jmaml script is not installed beside {sys.executable} (pip install -e .)")
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sinusoid run trained by ``python -m jmaml train``."""
    where = tmp_path_factory.mktemp("cli")
    code, out, err = run(LAUNCHERS[0].values[0], "train", "sinusoid", "--steps", "4", "--out", "run", "--no-progress",
                         "--set", "log_every=2", "--set", "hidden=8", "--set", "meta_batch=4", "--set", "eval_tasks=10",
                         "--set", "eval_max_steps=2", cwd=where)
    return where, code, out, err


def test_train_prints_the_meta_test_and_saves_the_run(trained):
    where, code, out, err = trained
    assert code == 0, err
    assert "error" not in err
    lines = out.splitlines()
    assert lines[0] == f"training on 1 cpu device in 1 process, jax {jax.__version__}"
    assert lines[1].startswith("meta-test over 10 tasks, mse after 1 inner steps: ")
    assert lines[-1] == f"run saved in {where / 'run'}"
    steps = [json.loads(line)["step"] for line in (where / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    result = json.loads((where / "run" / "eval.json").read_text())
    assert result["tasks"] == 10 and f"{result['mean']:.4f}" in lines[1]
    assert result["step"] == 4 and result["ran_on"]["device_count"] == 1
    (start,) = json.loads((where / "run" / "run.json").read_text())["starts"]
    assert start["start_step"] == 0 and start["versions"]["jax"] == jax.__version__ and start["command"][1] == "train"


def test_eval_of_the_run(trained):
    where, code, _, _ = trained
    assert code == 0
    code, out, err = run(LAUNCHERS[0].values[0], "eval", "run", "--tasks", "10", cwd=where)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"checkpoint step 4 of {where / 'run'}"
    assert lines[1].startswith("meta-test over 10 tasks, mse after 1 inner steps: ")
    written = lines[-1].removeprefix("written to ")
    assert lines[-1].startswith("written to ") and Path(written).is_file()
    again = json.loads(Path(written).read_text())
    saved = json.loads((where / "run" / "eval.json").read_text())
    assert again["tasks"] == saved["tasks"] and again["per_step"] == pytest.approx(saved["per_step"], rel=1e-5)


def test_plot_of_the_run(trained):
    require_module("matplotlib", "pip install -e '.[plot]'")
    where, code, _, _ = trained
    assert code == 0
    code, out, err = run(LAUNCHERS[0].values[0], "plot", "run", "--out", "curves.png", cwd=where)
    assert code == 0, err
    assert out == f"written to {where / 'curves.png'}\n"
    assert (where / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD_INPUT = [
    (["train", "sinuosid"], "error: unknown config 'sinuosid'; choose one of: sinusoid, "),
    (["train", "sinusoid", "--set", "meta_batch=many"], "error: config key 'meta_batch' needs an integer, got 'many'"),
    (["eval", "not-a-run"], "error: not-a-run is not a jmaml run folder (no config.json)"),
]
# python -m jmaml on every bad input; the installed script (when there is one) on the first
CASES = [pytest.param(LAUNCHERS[0].values[0], *case, id=f"python-m-{i}") for i, case in enumerate(BAD_INPUT)]
CASES += [pytest.param(launcher.values[0], *BAD_INPUT[0], id="script") for launcher in LAUNCHERS[1:]]


@pytest.mark.parametrize("launcher, args, message", CASES)
def test_bad_input_exits_2_with_one_error_line(tmp_path, launcher, args, message):
    code, out, err = run(launcher, *args, cwd=tmp_path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(message), err
    assert os.listdir(tmp_path) == []  # nothing was written


def test_run_folder_records_where_each_start_ran(tmp_path):
    """A run started on 4 simulated CPU devices and resumed on 1 keeps both starts in run.json, each with its
    device count, and the console's first line says where it trains. The 4-device start is the command run by
    tests/parallel_worker.py, which records how XLA placed the tasks sampled inside the compiled programs: in
    the training dispatches and the meta-test each device holds a quarter of the 4 tasks, not all of them."""
    tiny = ["--no-progress", "--set", "hidden=4", "--set", "meta_batch=4", "--set", "eval_tasks=4",
            "--set", "eval_batch=4", "--set", "eval_max_steps=1", "--set", "log_every=2"]
    spy = [sys.executable, str(WORKER), "jmaml", str(tmp_path / "shardings.json")]
    # no compilation cache: a cached program would not call the worker's sharding callbacks
    code, out, err = run(spy, "train", "sinusoid", "--steps", "2", "--out", "run", *tiny, cwd=tmp_path,
                         env={"JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": ""})
    assert code == 0, err
    assert out.splitlines()[0] == f"training on 4 cpu devices in 1 process, jax {jax.__version__}"
    shardings = json.loads((tmp_path / "shardings.json").read_text())
    assert shardings["train"] == shardings["test"] == [["P('tasks',)", 4, 1, 4]], shardings
    code, out, err = run(LAUNCHERS[0].values[0], "resume", "run", "--steps", "4", "--no-progress", cwd=tmp_path,
                         env={"JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"})
    assert code == 0, err
    assert out.splitlines()[0] == f"training on 1 cpu device in 1 process, jax {jax.__version__}"
    starts = json.loads((tmp_path / "run" / "run.json").read_text())["starts"]
    assert [(s["start_step"], s["device_count"], s["process_count"]) for s in starts] == [(0, 4, 1), (2, 1, 1)]
    assert starts[1]["command"][1:3] == ["resume", "run"]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["step"] == 4 and result["ran_on"]["device_count"] == 1
