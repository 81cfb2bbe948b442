"""A short meta-training run on the real Omniglot data learns far better than chance."""

import json

import pytest

from jmaml.errors import JmamlError
from jmaml.experiment.configs import get_config
from jmaml.experiment.training import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data_root")


@pytest.fixture
def cache(monkeypatch, data_root, cache_home):
    """A private default data root, and the session's private per-user cache (with the resized Omniglot)."""
    monkeypatch.setenv("JMAML_DATA_DIR", str(data_root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))


def test_short_omniglot_run_beats_chance(tmp_path, omniglot_dir, omniglot, cache):
    # A tiny conv4 (8 filters) and 4 tasks per step keep this to about a minute on 2 CPU cores.
    cfg = get_config("omniglot-5w1s", {"steps": 150, "filters": 8, "meta_batch": 4, "eval_tasks": 200,
                                       "eval_batch": 100, "eval_max_steps": 3, "log_every": 50,
                                       "data_dir": str(omniglot_dir)})
    result = train(cfg, str(tmp_path / "run"), progress=False)
    assert result["metric"] == "accuracy" and result["tasks"] == 200
    chance = 1 / cfg.ways
    assert abs(result["per_step"][0] - chance) < 0.05  # before adapting, the head has no idea
    assert result["mean"] > 2 * chance, result  # after 3 inner steps: well above 20%
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["mean"] == result["mean"]


@pytest.mark.parametrize("overrides, message", [
    ({"ways": 5000}, "ways=5000 is more than the 4800 classes"),
    ({"shots": 10, "queries": 15}, r"shots \+ queries = 10 \+ 15 = 25 is more than the 20 examples per class"),
])
def test_episode_that_the_data_cannot_fill(tmp_path, omniglot_dir, cache, overrides, message):
    cfg = get_config("omniglot-5w1s", {"data_dir": str(omniglot_dir), **overrides})
    with pytest.raises(JmamlError, match=message):
        train(cfg, str(tmp_path / "run"), progress=False)


def test_missing_data_directory(capsys, tmp_path, cache):
    from jmaml.experiment import cli

    code = cli.main(["train", "omniglot-5w1s", "--no-download", "--data-dir", str(tmp_path / "nowhere"),
                     "--out", str(tmp_path / "run"), "--steps", "1", "--set", "filters=4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"error: Omniglot folder {tmp_path / 'nowhere'} does not exist; copy background.npz" in err


def test_workload_keeps_uint8_on_the_device_and_summarises_the_data(omniglot_dir, omniglot, cache):
    import jax
    import jax.numpy as jnp

    from jmaml.experiment.workloads import make_workload, summary_line

    cfg = get_config("omniglot-5w1s", {"data_dir": str(omniglot_dir), "filters": 4, "meta_batch": 2})
    workload = make_workload(cfg)
    assert workload.train_data.dtype == jnp.uint8 and workload.train_data.shape == (4800, 20, 28, 28, 1)
    assert workload.test_data.dtype == jnp.uint8 and workload.train_data.nbytes < 80e6  # 4x under float32
    tasks = jax.jit(workload.train_tasks)(jax.random.key(0), workload.train_data)
    assert tasks.x_support.dtype == jnp.float32 and float(tasks.x_support.max()) <= 1.0
    assert [d["split"] for d in workload.data_summary] == ["train", "val", "test"]
    assert [d["cache"] for d in workload.data_summary] == ["hit"] * 3  # built by the session's fixture
    line = summary_line(workload.data_summary[0])
    assert line.startswith(f"data train: omniglot-packed {omniglot_dir}, 4800 classes, 96000 images of 28x28x1, "
                           "cache hit ")
    assert json.loads(json.dumps(workload.data_summary)) == list(workload.data_summary)  # plain JSON
