"""The throughput benchmark (benchmarks/): its quick mode runs, its workloads are the named configs'
episodes, and every implementation computes the same math as jmaml.

The same-math check runs in float64, leaf by leaf, where the implementations agree to about 1e-14:
a padding, BatchNorm or update-rule difference shows up orders of magnitude above the tolerance.
The PyTorch peers need torch: outside CI a missing torch skips those tests; under CI it
fails them (CI installs the CPU wheel through the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import require_module

from benchmarks.harness import runner, torch_impls
from benchmarks.harness.measure import gradient_error, measure
from benchmarks.harness.torch_impls import TorchLoopBench, _same_padding
from benchmarks.harness.workloads import BENCH_WORKLOADS, BENCHMARKED, from_config, make_batches, select
from jmaml.data.mini_imagenet import IMAGE_SHAPE
from jmaml.experiment.configs import CONFIGS
from jmaml.models import Conv4, functional

ROOT = Path(__file__).resolve().parents[1]
TORCH_IMPLS = ("torch_loop", "torch_func")


def require_torch():
    """torch, or a skip outside CI; under CI a missing torch is a failure (:func:`conftest.require_module`)."""
    return require_module("torch", "pip install -e '.[test]'")


@pytest.fixture(scope="module")
def torch_ok():
    """:func:`require_torch` as a fixture, listed first so that a skip comes before any compile."""
    return require_torch()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick float32 run on tiny Omniglot shapes: jmaml first (the reference), then the others."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--workloads", "omniglot-5w1s", "--steps", "2", "--warmup", "1",
            "--torch-threads", "1", "--json", str(out / "r.json"), "--markdown", str(out / "r.md")]
    assert runner.main(argv) == 0
    results = json.loads((out / "r.json").read_text())
    return results, (out / "r.md").read_text(), {r["impl"]: r for r in results["results"]}


def test_quick_reports(quick_run):
    results, table, by_impl = quick_run
    env = results["environment"]
    assert set(by_impl) == set(runner.IMPLS)
    for key in ("jax_device", "jax", "torch", "commit", "date"):
        assert key in env
    for name in ("jmaml", "plain_jax"):
        record = by_impl[name]
        assert record["status"] == "ok"
        assert record["median_ms"] > 0 and record["tasks_per_s"] > 0
        assert record["compile_s"] > 0 and record["flops"] > 0
        assert record["peak_fraction"] is None  # no known peak on CPU
    assert by_impl["jmaml"]["options"] == {"conv": CONFIGS["omniglot-5w1s"].conv}
    # jmaml's step over 8 stacked runs: run 0 is the run alone (same weights and inputs), every run's tasks count
    runs = by_impl["jmaml_runs"]
    assert runs["status"] == "ok" and runs["runs"] == 8 and runs["grad_rel_err"] < 1e-5
    assert runs["tasks_per_s"] == pytest.approx(8 * runs["meta_batch"] / (runs["median_ms"] / 1e3))
    assert "jmaml_runs (8 runs in one program)" in table
    assert "| Omniglot 3-way 1-shot, 2 queries, 1 step, 4 tasks" in table and env["commit"] in table


# float32, whole-gradient relative L2 error: measured 2e-6 (plain JAX) and 1e-5 (PyTorch loop)
# on these shapes; 5e-5 leaves room for other BLAS builds, and stays 20x under what a BatchNorm
# epsilon of 1e-3 instead of 1e-5 does (1e-3).
FLOAT32_GRAD = 5e-5
FLOAT32_LOSS = 1e-5


def test_float32_jax_implementations_agree(quick_run):
    _, _, by_impl = quick_run
    plain = by_impl["plain_jax"]
    assert plain["check_against"] == "jmaml"
    assert plain["loss_rel_err"] < FLOAT32_LOSS
    assert plain["grad_rel_err"] < FLOAT32_GRAD


def test_float32_torch_implementations_agree(torch_ok, quick_run):
    _, _, by_impl = quick_run
    for name in TORCH_IMPLS:
        record = by_impl[name]
        assert record["status"] == "ok", record.get("reason")
        assert record["check_against"] == "jmaml"
        assert record["loss_rel_err"] < FLOAT32_LOSS
        assert record["grad_rel_err"] < FLOAT32_GRAD


def first_step(name: str, workload, factory=None):
    """The first meta-loss and meta-gradient of implementation ``name``, in float64."""
    with jax.enable_x64(True):
        record, grads = measure(name, factory or runner.IMPLS[name], workload, steps=1, warmup=1, batches=1,
                                options={"threads": 1} if name.startswith("torch") else {}, peak_flops=None,
                                dtype=np.float64)
    assert record["status"] == "ok", record.get("reason")
    return record["first_loss"], grads


def assert_same_math(loss, grads, ref_loss, ref_grads):
    """float64 agreement leaf by leaf: 1e-9 relative, and an absolute 1e-12 of the largest entry
    for the conv biases ahead of BatchNorm, whose exact gradient is zero (their float64 value is
    rounding at 1e-17 of the gradient's norm)."""
    scale = max(float(np.abs(r).max()) for r in jax.tree.leaves(ref_grads))
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-9, atol=1e-12 * scale)


# Omniglot 20w1s quick: two inner steps, stride-2 convolutions with XLA's one-sided SAME padding;
# miniImageNet 5w5s quick: stride 1, max-pooling, the NHWC flattening of the head.
SAME_MATH = ["omniglot-20w1s", "mini-5w5s"]


@pytest.fixture(scope="module")
def jmaml_float64():
    """jmaml's first float64 meta-step on each same-math workload (the reference)."""
    return {name: first_step("jmaml", BENCH_WORKLOADS[name].quick()) for name in SAME_MATH}


@pytest.mark.parametrize("workload", SAME_MATH)
def test_float64_plain_jax_same_math(workload, jmaml_float64):
    assert_same_math(*first_step("plain_jax", BENCH_WORKLOADS[workload].quick()), *jmaml_float64[workload])


@pytest.mark.parametrize("impl", TORCH_IMPLS)
@pytest.mark.parametrize("workload", SAME_MATH)
def test_float64_torch_same_math(torch_ok, workload, impl, jmaml_float64):
    assert_same_math(*first_step(impl, BENCH_WORKLOADS[workload].quick()), *jmaml_float64[workload])


def test_same_math_check_catches_symmetric_padding(torch_ok, monkeypatch, jmaml_float64):
    """The check fails for a PyTorch Conv4 with ``padding=1`` (one pixel each side) where XLA's SAME
    pads stride-2 convolutions of even inputs on the high side only."""
    workload = BENCH_WORKLOADS["omniglot-20w1s"].quick()
    assert _same_padding(workload.image[0], 2) == (0, 1)  # this workload does exercise the difference
    monkeypatch.setattr(torch_impls, "_same_padding", lambda size, stride, kernel=3: (1, 1))
    loss, grads = first_step("torch_loop", workload)
    ref_loss, ref_grads = jmaml_float64["omniglot-20w1s"]
    with pytest.raises(AssertionError):
        assert_same_math(loss, grads, ref_loss, ref_grads)
    assert gradient_error(grads, ref_grads) > 1e-3


def test_torch_missing_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    workload = BENCH_WORKLOADS["omniglot-5w1s"].quick()
    record, grads = measure("torch_loop", TorchLoopBench, workload, steps=1, warmup=1, batches=1,
                            options={}, peak_flops=None)
    assert record["status"] == "skipped" and "not installed" in record["reason"] and grads is None


def test_same_padding_matches_xla():
    # XLA's SAME: output ceil(n / s), the odd extra pixel at the high end
    assert _same_padding(28, 2) == (0, 1)
    assert _same_padding(7, 2) == (1, 1)
    assert _same_padding(84, 1) == (1, 1)


def test_workloads_are_the_named_configs():
    """Each benchmark workload is its config's meta-training episode, field by field, and its model
    has the parameters of the Conv4 that ``jmaml train CONFIG`` builds."""
    assert tuple(BENCH_WORKLOADS) == BENCHMARKED == ("omniglot-5w1s", "omniglot-20w1s", "mini-5w1s", "mini-5w5s")
    for name, w in BENCH_WORKLOADS.items():
        cfg = CONFIGS[name]
        assert w.name == cfg.name == name
        for key in ("ways", "shots", "queries", "inner_steps", "inner_lr", "meta_batch", "meta_lr", "conv"):
            assert getattr(w, key) == getattr(cfg, key), (name, key)
        assert w.variant == cfg.dataset
        assert w.image == ((cfg.image_size, cfg.image_size, 1) if cfg.dataset == "omniglot" else IMAGE_SHAPE)
        image = jax.ShapeDtypeStruct((1, *w.image), np.float32)
        init, _ = functional(Conv4(cfg.ways, variant=cfg.dataset, filters=cfg.filters or None, conv=cfg.conv))
        expected = jax.eval_shape(init, jax.random.PRNGKey(0), image)
        init, _ = functional(Conv4(w.ways, variant=w.variant, filters=w.filters))  # as init_params builds it
        chex.assert_trees_all_equal_shapes(jax.eval_shape(init, jax.random.PRNGKey(0), image), expected)
    # the two drifts of the old hand-written table
    assert BENCH_WORKLOADS["omniglot-20w1s"].queries == 5 and BENCH_WORKLOADS["mini-5w5s"].meta_batch == 2
    assert BENCH_WORKLOADS["omniglot-5w1s"].filters == 64 and BENCH_WORKLOADS["mini-5w1s"].filters == 32


def test_from_config_rejects_other_programs():
    with pytest.raises(ValueError, match="algorithm"):
        from_config(dataclasses.replace(CONFIGS["omniglot-5w1s"], algorithm="reptile"))
    with pytest.raises(ValueError, match="dataset"):
        from_config(CONFIGS["sinusoid"])


def test_quick_workloads_and_inputs():
    assert [w.name for w in select(None, quick=False)] == list(BENCH_WORKLOADS)
    w = select(["mini-5w5s"], quick=True)[0]
    assert w.name == "mini-5w5s-quick" and w.shots == 5 and w.variant == "mini_imagenet"
    tasks = make_batches(w, 2)[1]
    assert tasks.x_support.shape == (w.meta_batch, w.ways * w.shots, *w.image)
    assert tasks.y_query.shape == (w.meta_batch, w.ways * w.queries)
    np.testing.assert_array_equal(tasks.y_support[0], np.repeat(np.arange(w.ways), w.shots))
    with pytest.raises(ValueError, match="unknown workload"):
        select(["nope"], quick=True)


def test_gradient_error_values():
    ref = {"conv0": {"kernel": np.arange(1.0, 7.0).reshape(2, 3), "bias": np.zeros(3)},
           "head": {"kernel": np.full((3, 2), -2.0), "bias": np.array([0.5, 1.0])}}
    norm = np.sqrt(sum(k ** 2 for k in range(1, 7)) + 6 * 4.0 + 0.25 + 1.0)
    np.testing.assert_allclose(gradient_error(jax.tree.map(lambda a: 1.5 * a, ref), ref), 0.5, rtol=1e-12)
    moved = jax.tree.map(np.copy, ref)
    moved["conv0"]["bias"][1] = 0.25  # a difference in a leaf whose reference is zero counts in full
    np.testing.assert_allclose(gradient_error(moved, ref), 0.25 / norm, rtol=1e-12)
    with pytest.raises(ValueError, match="different parameter trees"):
        gradient_error({"head": ref["head"]}, ref)


def run_script(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.MODULE ARGS`` from the repository root, as the README runs them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the root is on the path with -m
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", ["throughput", "memory", "time_to_accuracy", "sinusoid"])
def test_scripts_run_from_the_repository_root(script):
    done = run_script(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_throughput_steps_zero_is_one_error_line():
    done = run_script("throughput", "--quick", "--steps", "0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["throughput.py: error: --steps must be at least 1, got 0"]


@pytest.mark.parametrize("flag", ["--warmup", "--batches"])
def test_throughput_bad_counts(flag, capsys):
    assert runner.main(["--quick", flag, "-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"throughput.py: error: {flag} must be at least 1, got -1"]


def test_device_suite_quick_writes_json_and_markdown(tmp_path):
    """``python -m benchmarks.device_suite --quick`` (restricted to jmaml's default, its highest-precision twin,
    plain JAX and the time-to-accuracy run) writes both result files with the runs' figures. Plain JAX's
    meta-gradient, from its own implementation, is measured against jmaml default's (the reference, whose error
    against itself is 0 by construction): float32 rounding apart (not exactly 0, which would mean a run compared
    with itself), within FLOAT32_GRAD."""
    proc = run_script("device_suite", "--quick", "--out", str(tmp_path), "--only", "jmaml default", "plain_jax",
                      "time to accuracy")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (json_path,), (md_path,) = tmp_path.glob("*.json"), tmp_path.glob("*.md")
    assert json_path.stem == md_path.stem and json_path.stem.endswith("-cpu")
    data = json.loads(json_path.read_text())
    assert {"jax", "commit", "xla_flags", "driver", "suite_wall_s"} <= set(data["environment"])
    default, highest, plain, tta = data["results"]
    assert [r["spec"]["variant"] for r in (default, highest, plain)] == [
        "default", "default, matmul precision highest", "plain_jax"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in (default, highest, plain))
    # one process compiled the three programs: the record says so through its wall time, shared by all
    assert default["process_wall_s"] == highest["process_wall_s"] == plain["process_wall_s"]
    # on the CPU the matmul precision changes nothing: jmaml at highest equals jmaml's default
    assert highest["grad_rel_err"] == 0.0 and highest["grad_err_vs_highest"] == 0.0
    # plain JAX is another implementation of the same math
    assert 0.0 < plain["grad_rel_err"] < FLOAT32_GRAD and plain["grad_err_vs_highest"] == plain["grad_rel_err"]
    assert tta["status"] == "ok" and [row["mark"] for row in tta["rows"]] == [0.5, 1.0, 2.0]
    assert all(row["seconds"] >= row["mark"] for row in tta["rows"])
    md = md_path.read_text()
    assert "| omniglot-5w1s | default |" in md and "## Time to accuracy: sinusoid (ok)" in md


def test_device_suite_plan_fits_one_device_call(capsys):
    """The full suite on a GPU: every benchmarked workload has jmaml's default, its highest-precision twin,
    plain JAX, torch.func and each jmaml option that differs from the default there (``conv=im2col`` is the
    GPU's default, so it is not timed twice), the launch-reducing options together with keys
    of its dataset only (``pool`` on miniImageNet); the PyTorch loop and the XLA flag sets run on
    omniglot-5w1s only; and the estimated time up to the time-to-accuracy run fits the 7-minute budget."""
    from benchmarks import device_suite

    groups = device_suite.plan(quick=False, gpu=True)
    labels = [run["label"] for group in groups for run in group["runs"]]
    assert len(labels) == len(set(labels))
    for name in BENCHMARKED:
        for variant in ("jmaml default", "jmaml default, matmul precision highest", "plain_jax plain_jax",
                        "torch_func torch_func", "jmaml conv=xla", "jmaml precision=bf16"):
            assert f"{name} {variant}" in labels
        assert f"{name} jmaml conv=im2col" not in labels
        reducers = "unroll=full, norm_stats=one_pass, meta_update=flat"
        assert f"{name} jmaml {reducers}{', pool=reshape' if name.startswith('mini') else ''}" in labels
    assert [label for label in labels if "torch_loop" in label] == ["omniglot-5w1s torch_loop torch_loop"]
    flagged = [g for g in groups if g.get("xla_flags")]
    assert len(flagged) == len(device_suite.XLA_FLAG_SETS)
    assert all(run["workload"] == "omniglot-5w1s" for g in flagged for run in g["runs"])
    assert groups.index(flagged[-1]) < next(i for i, g in enumerate(groups) if g["kind"] == "tta")
    must = device_suite.print_plan(groups, compile_threads=4, budget_s=device_suite.BUDGET_S)
    assert must <= device_suite.BUDGET_S
    assert "estimated on an H100/H200" in capsys.readouterr().out
