"""The command line: bad input fails with one clear line before compiling; a real run end to end."""

import json
import os

import jax
import numpy as np
import pytest

from jmaml.experiment import cli


@pytest.fixture
def no_compile(monkeypatch):
    """Makes any jax.jit call fail, proving that an error came before compilation."""
    import jmaml.experiment.training  # noqa: F401  (modules that jit at import time are loaded first)

    def refuse(*args, **kwargs):
        raise AssertionError("jax.jit was called before the input was validated")

    monkeypatch.setattr(jax, "jit", refuse)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["train", "sinuosid"], "unknown config 'sinuosid'; choose one of: sinusoid"),
    (["train", "sinusoid", "--set", "inner_lr=0"], "inner_lr must be positive, got 0.0"),
    (["train", "sinusoid", "--set", "inner_lr=-0.1"], "inner_lr must be positive, got -0.1"),
    (["train", "sinusoid", "--set", "inner_steps=0"], "inner_steps must be a positive integer, got 0"),
    (["train", "sinusoid", "--set", "inner_lrr=0.1"], "unknown config key 'inner_lrr'; valid keys:"),
    (["train", "sinusoid", "--set", "inner_lr"], "--set takes key=value, got 'inner_lr'"),
    (["train", "sinusoid", "--set", "meta_batch=many"], "config key 'meta_batch' needs an integer, got 'many'"),
    (["train", "sinusoid", "--set", "algorithm=mamI"], "unknown algorithm 'mamI'; choose one of: maml,"),
    (["train", "sinusoid", "--steps", "0"], "steps must be a positive integer, got 0"),
    (["train", "sinusoid", "--set", "meta_chunks=-1"], "meta_chunks must be a non-negative integer, got -1"),
    (["train", "sinusoid", "--set", "meta_chunks=3"], "meta_chunks (3) must divide meta_batch (25), or be 0 (auto)"),
    (["eval", "/nonexistent/run"], "/nonexistent/run is not a jmaml run folder (no config.json)"),
])
def test_bad_input_is_one_clear_line_before_compiling(capsys, no_compile, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1, err
    assert out == ""


def test_unwritable_output_directory(capsys, no_compile, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, "train", "sinusoid", "--out", str(blocker / "run"))
    assert code == 2 and "cannot write to output directory" in err and "pass a writable --out" in err
    assert err.count("\n") == 1


def test_refuses_to_overwrite_a_run(capsys, no_compile, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, _, err = run_cli(capsys, "train", "sinusoid", "--out", str(tmp_path))
    assert code == 2 and "already holds a run" in err
    assert (tmp_path / "config.json").read_text() == "{}"


def test_train_then_eval_sinusoid(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "sinusoid", "--steps", "400", "--out", str(out), "--no-progress",
                              "--set", "eval_tasks=200", "--set", "log_every=100")
    assert code == 0, stdout
    assert "meta-test over 200 tasks, mse after 1 inner steps" in stdout

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [100, 200, 300, 400]
    assert lines[-1]["meta_loss"] < lines[0]["meta_loss"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))

    result = json.loads((out / "eval.json").read_text())
    assert result["metric"] == "mse" and result["tasks"] == 200 and len(result["per_step"]) == 11
    assert result["mean"] == result["per_step"][1] and result["ci95"] > 0
    assert result["per_step"][1] < result["per_step"][0]  # one inner step helps

    code, stdout, _ = run_cli(capsys, "eval", str(out))
    assert code == 0
    again = json.loads((out / "eval.json").read_text())
    np.testing.assert_allclose(again["per_step"], result["per_step"], rtol=1e-5)


def test_config_roundtrip():
    from jmaml.experiment.configs import CONFIGS, Config

    for cfg in CONFIGS.values():
        assert Config.from_json(cfg.to_json()) == cfg


def test_periodic_checkpoints_keep_the_latest(capsys, tmp_path, monkeypatch):
    from jmaml.experiment import checkpoint

    written = []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda directory, step, state: (written.append(step),
                                                                            save(directory, step, state)))
    out = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", "sinusoid", "--steps", "9", "--out", str(out), "--no-progress",
                         "--set", "log_every=2", "--set", "checkpoint_every=2", "--set", "eval_tasks=10",
                         "--set", "hidden=8")
    assert code == 0
    assert written == [2, 4, 6, 8, 9] and len(written) > checkpoint.KEEP  # four periodic ones and the final one
    kept = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == written[-checkpoint.KEEP:]
