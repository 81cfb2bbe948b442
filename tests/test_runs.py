"""Runs that never lose work: exact resume, signals, divergence, one run per folder, clean failures."""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import requirement_missing
from family_helpers import mlp_apply, mlp_init

from jmaml import losses, maml
from jmaml.core.step import TrainState, init_state
from jmaml.data import sinusoid
from jmaml.errors import JmamlError
from jmaml.experiment import checkpoint, cli, runs
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import DATASETS
from jmaml.experiment.loop import Diverged, Trainer
from jmaml.experiment.workloads import make_workload

# A small sinusoid run: fast steps, several chunks and checkpoints.
SMALL = ["--set", "hidden=16,16", "--set", "meta_batch=5", "--set", "log_every=50", "--set", "eval_tasks=50",
         "--set", "eval_batch=50", "--set", "eval_max_steps=2", "--no-progress"]


def jmaml(*argv, **kwargs):
    """Runs the installed command as a user would: a separate process."""
    return subprocess.run([sys.executable, "-m", "jmaml", *argv], capture_output=True, text=True, timeout=300,
                          **kwargs)


def start(*argv):
    return subprocess.Popen([sys.executable, "-m", "jmaml", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended before the test could interrupt it: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def saved_steps(run):
    folder = run / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def final_state(run):
    cfg = runs.load_config(str(run))
    return checkpoint.restore(str(run / "checkpoints"), build(cfg, make_workload(cfg)).template())


def metric_steps(run):
    return [row["step"] for row in runs.read_metrics(str(run))]


def test_sigkill_then_resume_equals_a_straight_run(tmp_path):
    steps = ["--steps", "3000", "--set", "checkpoint_every=250"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert jmaml("train", "sinusoid", "--out", str(straight), *steps, *SMALL).returncode == 0

    proc = start("train", "sinusoid", "--out", str(killed), *steps, *SMALL)
    wait_for(lambda: saved_steps(killed) and saved_steps(killed)[-1] >= 500, proc)
    proc.kill()
    proc.wait()
    assert saved_steps(killed)[-1] < 3000

    done = jmaml("resume", str(killed), "--no-progress")
    assert done.returncode == 0, done.stderr
    (a, step_a), (b, step_b) = final_state(straight), final_state(killed)
    assert step_a == step_b == 3000
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise
    assert metric_steps(killed) == list(range(50, 3001, 50))  # every step once
    eval_a, eval_b = (json.loads((run / "eval.json").read_text()) for run in (straight, killed))
    assert eval_a["per_step"] == eval_b["per_step"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_the_run_resumes(tmp_path, sig):
    run = tmp_path / "run"
    proc = start("train", "sinusoid", "--out", str(run), "--steps", "200000", *SMALL[:-1])
    wait_for(lambda: len(metric_steps(run)) >= 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_STOPPED, err
    step = saved_steps(run)[-1]
    assert 100 <= step < 200000
    last = err.strip().splitlines()[-1]
    assert last == (f"stopped by {sig.name} at step {step}: checkpoint saved in {run}; "
                    f"continue with `jmaml resume {run}`")
    assert "Traceback" not in err and "\r" not in err
    assert "step 100/200000  meta_loss" in err  # a batch log: plain lines, no bar redraws
    assert metric_steps(run) == list(range(50, step + 1, 50))

    done = jmaml("resume", str(run), "--steps", str(step + 100), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert metric_steps(run) == list(range(50, step + 101, 50))
    assert saved_steps(run)[-1] == step + 100


def test_divergence_stops_with_the_last_good_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    code = cli.main(["train", "sinusoid", "--out", str(run), "--steps", "100", "--set", "meta_lr=1.5",
                     "--set", "log_every=1", "--set", "checkpoint_every=1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    assert err.count("\n") == 1 and err.startswith("error: training diverged at step ")
    step = int(err.split("at step ")[1].split(":")[0])
    last = saved_steps(run)[-1]
    assert 1 <= last < step and f"checkpoint {last} is the last good state" in err
    state, restored = final_state(run)
    assert restored == last and all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))
    rows = [json.loads(line, parse_constant=pytest.fail) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, step + 1))  # the diverged step is logged, strict JSON
    assert not (run / "eval.json").exists()


def trainer_on_sinusoid(optimizer: optax.GradientTransformation) -> tuple[Trainer, TrainState]:
    """A tiny MAML learner on sinusoid tasks (x in R^1 through family_helpers' MLP), four meta-steps per dispatch,
    and its initial state under ``optimizer``."""
    learner = maml(mlp_apply, losses.mse, inner_lr=0.01, inner_steps=1)
    sample = functools.partial(sinusoid.sample_tasks, meta_batch=2, shots=5, queries=5)
    trainer = Trainer(learner, optimizer, lambda key, data: sample(key), None, steps_per_dispatch=4)
    return trainer, init_state(learner, optimizer, mlp_init(0, d_in=1), jax.random.PRNGKey(0))


def nan_update_at(step: int) -> optax.GradientTransformation:
    """Passes updates through, except meta-step ``step``'s (1-based), which it makes NaN: the meta-parameters
    are NaN after that step, so the meta-loss is first NaN at step ``step + 1``."""
    def update(updates, count, params=None):
        return jax.tree.map(lambda u: jnp.where(count + 1 == step, jnp.nan, u), updates), count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


def test_divergence_inside_a_dispatch_names_its_step():
    """Dispatches of 4 steps: the update of step 6 is NaN, so step 7's meta-loss is the first non-finite one,
    the third row of the second dispatch (not its first or last step, nor the dispatch's own index)."""
    trainer, state = trainer_on_sinusoid(optax.chain(optax.sgd(1e-3), nan_update_at(6)))
    with pytest.raises(Diverged, match="^training diverged at step 7: ") as caught:
        trainer.fit(state, 12)
    assert caught.value.step == 7
    assert np.isfinite(caught.value.metrics["meta_loss"]).tolist() == [True, True, False, False]


def test_a_non_finite_optimizer_state_alone_stops_the_run():
    """Adam's second moment is inf and everything else finite: Adam's update ``m / (sqrt(inf) + eps)`` is 0, so
    the meta-parameters and every meta-loss stay finite, and only the optimizer state shows the divergence; the
    dispatch's last step is named (the state is checked once per dispatch)."""
    trainer, state = trainer_on_sinusoid(optax.adam(1e-3))
    adam, rest = state.opt_state
    state = state._replace(opt_state=(adam._replace(nu=jax.tree.map(lambda v: jnp.full_like(v, jnp.inf), adam.nu)),
                                      rest))
    with pytest.raises(Diverged) as caught:
        trainer.fit(state, 8)
    assert caught.value.step == 4 and np.isfinite(caught.value.metrics["meta_loss"]).all()


def test_non_finite_rates_are_refused(capsys, tmp_path):
    code = cli.main(["train", "sinusoid", "--out", str(tmp_path / "run"), "--set", "inner_lr=inf"])
    assert code == 2 and "inner_lr must be a finite number, got inf" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_two_runs_into_one_folder(tmp_path):
    run = tmp_path / "run"
    first = start("train", "sinusoid", "--out", str(run), "--steps", "200000", *SMALL)
    wait_for(lambda: (run / "config.json").exists(), first)
    second = jmaml("train", "sinusoid", "--out", str(run), "--steps", "10", *SMALL)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2
    assert second.stderr == (f"error: {run} is in use by another jmaml run (it holds the lock on .lock); "
                             "wait for it to finish or pass another --out\n")
    assert first.returncode == cli.EXIT_STOPPED
    assert json.loads((run / "config.json").read_text())["steps"] == 200000


def test_remains_of_a_run_without_config_are_refused(capsys, tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    code = cli.main(["train", "sinusoid", "--out", str(tmp_path)])
    assert code == 2 and "holds checkpoints but no config.json" in capsys.readouterr().err
    assert os.listdir(tmp_path / "checkpoints") == ["7"]


def test_resume_refuses_a_changed_trajectory(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "sinusoid", "--out", str(run), "--steps", "20", "--set", "log_every=10",
                     "--set", "eval_tasks=10", "--no-progress"]) == 0
    capsys.readouterr()
    code = cli.main(["train", "sinusoid", "--out", str(run), "--resume", "--steps", "40", "--set", "log_every=10",
                     "--set", "eval_tasks=10", "--set", "inner_lr=0.02", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume cannot change inner_lr (the run has 0.01, this command 0.02)" in err
    assert metric_steps(run) == [10, 20]


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KiB tmpfs: enough to start a run, too small to keep checkpointing."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        requirement_missing("cannot mount a tmpfs here (needs root); the full-disk path is untested on this machine")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_mid_run_is_one_error_line(small_disk):
    run = small_disk / "run"
    done = jmaml("train", "sinusoid", "--out", str(run), "--steps", "100000", "--set", "checkpoint_every=100",
                 *SMALL)
    assert done.returncode == cli.EXIT_FAILED, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not save checkpoint "), done.stderr
    assert "is intact" in lines[0]
    for line in (run / "metrics.jsonl").read_text().splitlines()[:-1]:
        json.loads(line)  # whole lines (a torn last one is skipped on read)
    assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]
    intact = saved_steps(run)[-1]
    assert final_state(run)[1] == intact


def test_eval_says_what_it_scored_and_keeps_eval_json(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "sinusoid", "--out", str(run), "--steps", "30", "--set", "log_every=10",
                     "--set", "eval_tasks=20", "--set", "eval_batch=10", "--no-progress"]) == 0
    capsys.readouterr()
    trained = (run / "eval.json").read_text()
    assert cli.main(["eval", str(run), "--tasks", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint step 30 of {run}\nmeta-test over 10 tasks")
    assert json.loads((run / "eval-step30-10.json").read_text())["checkpoint_step"] == 30
    assert (run / "eval.json").read_text() == trained
    assert oct((run / "eval-step30-10.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_eval_after_editing_the_config_names_the_shape(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "sinusoid", "--out", str(run), "--steps", "10", "--set", "log_every=10",
                     "--set", "eval_tasks=10", "--no-progress"]) == 0
    capsys.readouterr()
    cfg = json.loads((run / "config.json").read_text())
    cfg["hidden"] = [60, 40]
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ".meta_params['params']['Dense_0']['bias'] with shape (40,) float32 but the config builds " \
           "shape (60,) float32: config.json no longer matches the checkpoint" in err

    (run / "config.json").write_text("{not json")
    assert cli.main(["eval", str(run)]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err


def test_a_flipped_byte_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "sinusoid", "--out", str(run), "--steps", "10", "--set", "log_every=10",
                     "--set", "eval_tasks=10", "--no-progress"]) == 0
    capsys.readouterr()
    files = [os.path.join(d, f) for d, _, fs in os.walk(run / "checkpoints" / "10" / "state") for f in fs]
    biggest = max(files, key=os.path.getsize)
    data = bytearray(open(biggest, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(biggest, "wb").write(bytes(data))
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint 10 in" in err
    assert "is corrupt" in err or "is damaged" in err


def test_checksum_covers_every_value_path_and_dtype():
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.int32(4)}}
    changed_value = {"a": state["a"].copy(), "b": state["b"]}
    changed_value["a"][1, 2] = np.nextafter(np.float32(5), np.float32(6))  # the smallest change of one entry
    assert checkpoint.checksum(state) == checkpoint.checksum(jax.tree.map(np.copy, state))
    for other in (changed_value, {"a2": state["a"], "b": state["b"]}, {**state, "a": state["a"].astype(np.float64)}):
        assert checkpoint.checksum(other) != checkpoint.checksum(state)


def test_arrays_changed_behind_the_checksum_are_refused(tmp_path):
    """A checkpoint whose arrays orbax reads without complaint (a valid save of other values, in place of the
    saved ones) but whose checksum record is the original's: refused as corrupt, not restored."""
    state = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "step": np.int32(7)}
    checkpoint.save(str(tmp_path / "good"), 7, state)
    checkpoint.save(str(tmp_path / "other"), 7, {**state, "w": state["w"] * 2})
    restored, step = checkpoint.restore(str(tmp_path / "good"), state)
    np.testing.assert_array_equal(restored["w"], state["w"])
    shutil.rmtree(tmp_path / "good" / "7" / "state")
    shutil.copytree(tmp_path / "other" / "7" / "state", tmp_path / "good" / "7" / "state")
    corrupt = r"^checkpoint 7 in .*good is corrupt: its arrays do not match the checksum saved with them"
    with pytest.raises(JmamlError, match=corrupt):
        checkpoint.restore(str(tmp_path / "good"), state)


def test_a_program_too_large_for_memory_is_refused_before_running(capsys, tmp_path):
    code = cli.main(["train", "sinusoid", "--out", str(tmp_path / "run"), "--set", "hidden=60000,60000"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "error: the training program needs " in err and " GiB but cpu device 0 has " in err
    assert "meta_batch (now 25)" in err and "remat=true" in err and "meta_chunks=N" in err
    assert not (tmp_path / "run").exists()


def test_inapplicable_keys_are_refused(capsys):
    assert cli.main(["train", "omniglot-5w1s", "--set", "eval_queries=50"]) == 2
    assert ("eval_queries has no effect on omniglot data (it applies to sinusoid); the dataset keys that apply "
            f"to omniglot are: {', '.join(DATASETS['omniglot'])}") in capsys.readouterr().err
    assert "image_size" in DATASETS["omniglot"] and "eval_queries" not in DATASETS["omniglot"]
    assert cli.main(["train", "sinusoid", "--set", "cg_steps=3"]) == 2
    assert "cg_steps has no effect with algorithm=maml (it applies to imaml)" in capsys.readouterr().err


def test_copy_of_a_run_folder_resumes(tmp_path):
    """A run folder is self-contained: moved elsewhere, it resumes."""
    run = tmp_path / "run"
    assert jmaml("train", "sinusoid", "--out", str(run), "--steps", "100", *SMALL).returncode == 0
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    done = jmaml("resume", str(moved), "--steps", "150", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert metric_steps(moved) == [50, 100, 150]


def test_relative_data_dir_survives_a_cd(capsys, tmp_path, monkeypatch, omniglot_dir, cache_home):
    """--data-dir is stored absolute, so `jmaml eval` works from another folder. The folder may be reached
    through a symbolic link (a checkout whose ../shared is one): the stored path is the working directory's
    physical one, so it is compared as the same folder, not as the same string."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.chdir(omniglot_dir.parent)
    run = tmp_path / "run"
    assert cli.main(["train", "omniglot-5w1s", "--out", str(run), "--data-dir", omniglot_dir.name, "--steps", "2",
                     "--set", "filters=4", "--set", "meta_batch=2", "--set", "log_every=2", "--set", "eval_tasks=4",
                     "--set", "eval_batch=4", "--set", "eval_max_steps=3", "--no-progress"]) == 0
    stored = Path(json.loads((run / "config.json").read_text())["data_dir"])
    assert stored.is_absolute() and stored.resolve() == omniglot_dir.resolve(), stored
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", str(run)]) == 0
    assert "checkpoint step 2" in capsys.readouterr().out
