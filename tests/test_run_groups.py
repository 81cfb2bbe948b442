"""Groups of runs in one program (``jmaml train --seeds ... --sweep ...``, ``prepare_group``): each run is its own,
in its own folder, with the trajectory it has trained alone; a group resumes, stops and fails run by run."""

import dataclasses
import json
import os
import signal

import jax
import numpy as np
import pytest
from test_runs import jmaml, saved_steps, start, wait_for

from jmaml.errors import JmamlError
from jmaml.experiment import checkpoint, cli, memory, plots, runs, training
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import get_config
from jmaml.experiment.run import Stopped, prepare_group
from jmaml.experiment.workloads import make_workload

TINY = ["--no-progress", "--set", "hidden=8", "--set", "meta_batch=4", "--set", "eval_tasks=10",
        "--set", "eval_batch=10", "--set", "eval_max_steps=2"]
FILES = {"config.json", "run.json", "data.json", "metrics.jsonl", "tb", "checkpoints", "eval.json"}


def final_state(run):
    """The latest checkpoint of a run folder and its step."""
    cfg = runs.load_config(str(run))
    return checkpoint.restore(str(run / "checkpoints"), build(cfg, make_workload(cfg)).template())


def assert_same_states(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if tolerance:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def losses(run):
    return [(row["step"], row["meta_loss"]) for row in runs.read_metrics(str(run))]


# MAML++: its host-side switch from first to second order at step 6, its multi-step loss annealed over 5 steps
MAML_PP = ["train", "sinusoid", "--steps", "12", "--set", "algorithm=maml_pp", "--set", "inner_steps=2",
           "--set", "msl_anneal_steps=5", "--set", "first_order_steps=6", "--set", "log_every=2",
           "--set", "checkpoint_every=6", *TINY]


def train_alone(tmp_path, seed, **values):
    """The run of seed ``seed`` with ``values`` set, trained alone by ``jmaml train``."""
    out = tmp_path / ("alone-" + ",".join(f"{k}={v}" for k, v in values.items()) + f",seed={seed}")
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    assert cli.main([*MAML_PP, "--seed", str(seed), *sets, "--out", str(out)]) == 0
    return out


@pytest.mark.usefixtures("x64")
def test_each_run_of_a_group_equals_the_run_alone(tmp_path, capsys, monkeypatch):
    """float64 (sinusoid follows JAX's default float type), MAML++: every run of a 2 seeds x 2 meta_lr x 2 inner_lr
    group ends where it ends trained alone (checked for the last run, whose seed and rates all differ from the
    first's), with the same config, log and meta-test."""
    monkeypatch.setattr(training, "_plot", lambda path: None)  # curves.png: not what this test checks
    code = cli.main([*MAML_PP, "--seeds", "0-1", "--sweep", "meta_lr=0.001,0.003", "--sweep", "inner_lr=0.01,0.03",
                     "--out", str(tmp_path / "group")])
    out = capsys.readouterr().out
    assert code == 0
    names = [f"inner_lr={lr},meta_lr={mlr},seed={seed}" for mlr in ("0.001", "0.003") for lr in ("0.01", "0.03")
             for seed in (0, 1)]
    assert sorted(os.listdir(tmp_path / "group")) == sorted(names + ["group.json"])
    summary = json.loads((tmp_path / "group" / "group.json").read_text())
    assert [(row["setting"], row["seeds"]) for row in summary["settings"]] == [
        (f"inner_lr={lr},meta_lr={mlr}", [0, 1]) for mlr in ("0.001", "0.003") for lr in ("0.01", "0.03")]
    assert "inner_lr=0.03,meta_lr=0.003      2" in out
    for seed, meta_lr, inner_lr in ((1, "0.003", "0.03"),):  # the last run: every value its own (one compile)
        alone = train_alone(tmp_path, seed, meta_lr=meta_lr, inner_lr=inner_lr)
        together = tmp_path / "group" / f"inner_lr={inner_lr},meta_lr={meta_lr},seed={seed}"
        assert runs.load_config(str(alone)) == runs.load_config(str(together))
        assert FILES <= set(os.listdir(together))
        (a, step_a), (b, step_b) = final_state(alone), final_state(together)
        assert step_a == step_b == 12 and {str(leaf.dtype) for leaf in jax.tree.leaves(b.meta_params)} == {"float64"}
        assert_same_states(a, b, rtol=1e-12, atol=1e-14)
        (steps_a, loss_a), (steps_b, loss_b) = zip(*losses(alone)), zip(*losses(together))
        assert steps_a == steps_b == tuple(range(2, 13, 2))
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-12)
        eval_a, eval_b = (json.loads((run / "eval.json").read_text()) for run in (alone, together))
        np.testing.assert_allclose(eval_a["per_step"], eval_b["per_step"], rtol=1e-10)


def test_a_diverging_run_stops_alone(tmp_path, capsys, monkeypatch):
    """float32 MAML++ without the phase switch, where meta_lr=0.5 diverges at step 4: that run stops with one error
    line naming it, keeps its last good checkpoint (step 2) and gets no meta-test; the other run of the group
    trains to the end and is meta-tested. Resumed for more steps, the group trains the other run on and names the
    stopped one again."""
    monkeypatch.setattr(training, "_plot", lambda path: None)
    group = tmp_path / "group"
    code = cli.main([*MAML_PP, "--set", "first_order_steps=0", "--set", "checkpoint_every=2", "--seeds", "0",
                     "--sweep", "meta_lr=0.001,0.5", "--out", str(group)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED
    (line,) = err.splitlines()
    failed, good = group / "meta_lr=0.5,seed=0", group / "meta_lr=0.001,seed=0"
    assert line.startswith("error: run meta_lr=0.5,seed=0: training diverged at step 4: ")
    assert line.endswith("; checkpoint 2 is the last good state; lower inner_lr (now 0.01) or meta_lr (now 0.5)")
    assert json.loads((failed / "failed.json").read_text()) == {"step": 4, "error": line.removeprefix("error: ")}
    assert saved_steps(failed) == [2] and [step for step, _ in losses(failed)] == [2, 4]  # the diverged step logged
    state, _ = final_state(failed)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))
    assert not (failed / "eval.json").exists()
    assert saved_steps(good)[-1] == 12 and [step for step, _ in losses(good)] == list(range(2, 13, 2))
    assert json.loads((good / "eval.json").read_text())["step"] == 12
    summary = json.loads((group / "group.json").read_text())
    assert list(summary["failed"]) == ["meta_lr=0.5,seed=0"]
    assert [(row["setting"], row["runs"]) for row in summary["settings"]] == [
        ("meta_lr=0.001", ["meta_lr=0.001,seed=0"]), ("meta_lr=0.5", [])]

    assert cli.main(["resume", str(group), "--steps", "14", "--no-progress"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == err
    assert saved_steps(good)[-1] == 14 and saved_steps(failed) == [2] and losses(failed)[-1][0] == 4


GROUP = ["train", "sinusoid", "--seeds", "0-3", "--sweep", "inner_lr=0.01,0.02", "--steps", "400",
         "--set", "checkpoint_every=100", "--set", "log_every=20", *TINY]
NAMES = [f"inner_lr={lr},seed={seed}" for lr in ("0.01", "0.02") for seed in range(4)]


def test_a_group_as_a_process_writes_a_folder_per_run_and_resumes_after_kill_9_as_if_never_stopped(tmp_path):
    """``jmaml train --seeds 0-3 --sweep inner_lr=...``: 8 run folders, group.json and the table over seeds; the
    same group killed (SIGKILL) mid-run and resumed with ``jmaml resume`` ends bitwise where the uninterrupted one
    does, every step logged once; ``jmaml plot`` draws the group with bands over seeds."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = jmaml(*GROUP, "--out", str(straight))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "meta-test of the group, mse after 1 inner steps, over seeds:"
    assert lines[2].split() == ["setting", "seeds", "mean", "std", "95%", "(seeds)", "95%", "(tasks)"]
    assert [line.split()[:2] for line in lines[3:5]] == [["inner_lr=0.01", "4"], ["inner_lr=0.02", "4"]]
    assert lines[-1] == f"8 runs saved in {straight}"
    assert sorted(os.listdir(straight)) == sorted(NAMES + ["group.json"])
    summary = json.loads((straight / "group.json").read_text())
    assert summary["runs"] == NAMES and summary["varied"] == ["inner_lr"] and summary["failed"] == {}
    for row, lr in zip(summary["settings"], ("0.01", "0.02")):
        evals = [json.loads((straight / name / "eval.json").read_text())["mean"] for name in row["runs"]]
        assert row["setting"] == f"inner_lr={lr}" and row["seeds"] == [0, 1, 2, 3]
        assert row["mean"] == pytest.approx(np.mean(evals)) and row["std"] == pytest.approx(np.std(evals, ddof=1))
        assert f"{row['mean']:.4f}" in lines[3 + (lr == "0.02")]
    for name in NAMES:
        assert FILES <= set(os.listdir(straight / name))
        assert runs.load_config(str(straight / name)).seed == int(name[-1])

    proc = start(*GROUP, "--out", str(killed))
    wait_for(lambda: all(saved_steps(killed / name) and saved_steps(killed / name)[-1] >= 200 for name in NAMES),
             proc)
    proc.kill()
    proc.wait()
    assert min(saved_steps(killed / name)[-1] for name in NAMES) < 400
    done = jmaml("resume", str(killed), "--no-progress")
    assert done.returncode == 0, done.stderr
    for name in NAMES:
        (a, step_a), (b, step_b) = final_state(straight / name), final_state(killed / name)
        assert step_a == step_b == 400
        assert_same_states(a, b)  # bitwise
        assert [step for step, _ in losses(killed / name)] == list(range(20, 401, 20))  # every step once
        assert losses(killed / name) == losses(straight / name)
    again = json.loads((killed / "group.json").read_text())
    assert again["settings"] == summary["settings"]

    pytest.importorskip("matplotlib")
    code = cli.main(["plot", str(straight), "--out", str(tmp_path / "bands.png")])
    assert code == 0 and (tmp_path / "bands.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bands = plots.seed_bands(plots.load_runs(plots.expand_groups([str(straight)])))
    assert [band.label for band in bands] == [f"sinusoid maml, inner_lr={lr} (4 seeds)" for lr in ("0.01", "0.02")]


def test_a_sweep_of_a_key_that_changes_shapes_is_one_error_line(tmp_path):
    done = jmaml("train", "sinusoid", "--seeds", "0-1", "--sweep", "inner_lr=0.1,0.2", "--sweep", "hidden=8,16",
                 "--sweep", "inner_steps=1,2", "--out", "group", cwd=tmp_path)
    assert done.returncode == cli.EXIT_BAD_INPUT and done.stdout == ""
    assert done.stderr == ("error: hidden, inner_steps cannot be swept in one program (it changes the program's shapes "
                           "or structure); the keys that can be swept in one program are: seed (--seeds), inner_lr, "
                           "meta_lr, proximal_lambda; train other values with separate `jmaml train` commands\n")
    assert os.listdir(tmp_path) == []


def small_group(steps=1000):
    return [get_config("sinusoid", {"seed": seed, "inner_lr": lr, "steps": steps, "hidden": (8,), "meta_batch": 4,
                                    "log_every": 5, "eval_tasks": 10, "eval_max_steps": 1})
            for seed in (0, 1) for lr in (0.01, 0.02)]


def test_sigterm_saves_every_run_of_the_group(tmp_path):
    """SIGTERM stops the group at the next dispatch with a checkpoint of that step in every run's folder."""
    def signal_once(step, state, metrics, clock):
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    with prepare_group(small_group(), str(tmp_path / "group"), progress=False) as run:
        with pytest.raises(Stopped) as stopped:
            run.fit(hooks=(signal_once,))
    assert stopped.value.signal_name == "SIGTERM" and stopped.value.step == 10
    assert str(stopped.value).endswith(f"continue with `jmaml resume {tmp_path / 'group'}`")
    for name in runs.run_names(small_group()):
        assert saved_steps(tmp_path / "group" / name) == [10]
        assert [step for step, _ in losses(tmp_path / "group" / name)] == [5, 10]


def test_groups_that_cannot_be_one_program_or_cannot_fit_are_refused_first(tmp_path, monkeypatch):
    """Configs that differ in a key that changes the program, or a group too large for the memory (the message
    names --seeds), are refused before the first step and leave no folder behind."""
    other = small_group()[:1] + [dataclasses.replace(small_group()[1], hidden=(16,))]
    with pytest.raises(JmamlError, match="^hidden cannot be swept in one program"):
        prepare_group(other, str(tmp_path / "group"))
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    with pytest.raises(JmamlError, match=r"the training program of 4 runs needs .*fewer --seeds or --sweep values"):
        prepare_group(small_group(), str(tmp_path / "group"), progress=False)
    assert os.listdir(tmp_path) == []
