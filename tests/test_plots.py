"""Plots of run folders: two real sinusoid runs overlaid into one PNG, and one JmamlError for bad input."""

import json
import os
import shutil
import sys

import pytest
from conftest import require_module
from PIL import Image

from jmaml.errors import JmamlError
from jmaml.experiment import plots

require_module("matplotlib", "pip install -e '.[plot]'")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished tiny sinusoid runs that differ in algorithm and inner learning rate."""
    from jmaml.experiment.configs import get_config
    from jmaml.experiment.training import train

    root = tmp_path_factory.mktemp("runs")
    small = {"steps": 10, "log_every": 5, "eval_tasks": 20, "eval_batch": 10, "eval_max_steps": 3}
    paths = []
    for name, extra in (("maml", {}), ("fomaml", {"algorithm": "fomaml", "inner_lr": 0.02})):
        train(get_config("sinusoid", {**small, **extra}), str(root / name), progress=False)
        paths.append(str(root / name))
    return paths


def test_two_runs_make_one_png_with_both_curves_and_a_legend(two_runs, tmp_path):
    out = plots.plot_runs(two_runs, str(tmp_path / "curves.png"))
    assert out == str(tmp_path / "curves.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < os.path.getsize(out) < 2_000_000
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1500, 850)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left

    loaded = plots.load_runs(two_runs)
    fig = plots.figure(loaded)
    steps_ax, query_ax, test_ax, seconds_ax, _, legend_ax = fig.axes
    assert [r.label for r in loaded] == ["sinusoid maml, inner_lr=0.01", "sinusoid fomaml, inner_lr=0.02"]
    legend = [t.get_text() for t in legend_ax.get_legend().get_texts()]
    assert legend[:2] == [r.label for r in loaded]
    for run, line in zip(loaded, steps_ax.get_lines()):  # each run's meta-loss curve is its metrics.jsonl
        assert list(line.get_xdata()) == [5, 10]
        assert list(line.get_ydata()) == [m["meta_loss"] for m in run.metrics]
    for run, line in zip(loaded, seconds_ax.get_lines()):
        assert list(line.get_xdata()) == [m["seconds"] for m in run.metrics]
    assert len(query_ax.get_lines()) == 4  # after and before adaptation, per run
    curves = [line for line in test_ax.get_lines() if len(line.get_xdata()) > 1]
    assert [list(c.get_ydata()) for c in curves] == [r.eval["per_step"] for r in loaded]
    assert len(test_ax.collections) == 2  # the two 95% bands


def test_labels_name_only_the_keys_that_differ():
    a = {"name": "omniglot_5w1s", "algorithm": "maml", "inner_lr": 0.4, "seed": 0, "data_dir": "/x", "hidden": [40]}
    b = {**a, "algorithm": "anil", "seed": 1, "data_dir": "/y"}
    assert plots.labels([a, b]) == ["omniglot_5w1s maml, seed=0", "omniglot_5w1s anil, seed=1"]
    assert plots.labels([a]) == ["omniglot_5w1s maml"]


def test_identical_configs_are_told_apart_by_folder(two_runs, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(two_runs[0], copy)
    labels = [r.label for r in plots.load_runs([two_runs[0], str(copy)])]
    assert labels == ["sinusoid maml (maml)", "sinusoid maml (again)"]


def test_a_run_still_training_plots_without_eval_and_half_line(two_runs, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(two_runs[0], run)
    (run / "eval.json").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 15, "meta_lo')
    loaded = plots.load_run(str(run))
    assert loaded.eval is None and [m["step"] for m in loaded.metrics] == [5, 10]
    assert os.path.getsize(plots.plot_runs([str(run)], str(tmp_path / "live.png"))) > 10_000


def bad_inputs(run, tmp_path):
    not_run = tmp_path / "not_a_run"
    not_run.mkdir()
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()
    shutil.copy(os.path.join(run, "config.json"), no_metrics / "config.json")
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "metrics.jsonl").write_text("not json\n")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = str(tmp_path / "out.png")
    return {
        "not a run": (([str(not_run)], out), "not a jmaml run folder"),
        "missing folder": (([str(tmp_path / "missing")], out), "not a jmaml run folder"),
        "no metrics": (([str(no_metrics)], out), "no metrics.jsonl"),
        "broken metrics": (([str(broken)], out), "line 1 is not a JSON object"),
        "no runs": (([], out), "at least one run"),
        "missing out folder": (([run], str(tmp_path / "nope" / "c.png")), "does not exist or is not writable"),
        "out under a file": (([run], str(a_file / "c.png")), "does not exist or is not writable"),
        "out is a folder": (([run], str(tmp_path) + "/x.png/"), "give another output file|is a folder"),
        "extension": (([run], str(tmp_path / "c.jpg")), r"must end in \.png"),
    }


def test_bad_input_gives_one_jmaml_error(two_runs, tmp_path):
    (tmp_path / "x.png").mkdir()
    for case, ((run_dirs, out), message) in bad_inputs(two_runs[0], tmp_path).items():
        with pytest.raises(JmamlError, match=message):
            plots.plot_runs(run_dirs, out)
    assert not (tmp_path / "out.png").exists()


def test_missing_matplotlib_names_the_extra(two_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(JmamlError, match=r"pip install 'jmaml\[plot\]'"):
        plots.plot_runs(two_runs, str(tmp_path / "c.png"))


def test_eval_json_shape_is_what_train_writes(two_runs):
    with open(os.path.join(two_runs[0], "eval.json")) as f:
        result = json.load(f)
    assert {"metric", "per_step", "per_step_ci95", "test_steps"} <= set(result)
    assert len(result["per_step"]) == len(result["per_step_ci95"]) == 4  # eval_max_steps=3: steps 0..3
