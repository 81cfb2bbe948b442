"""The throughput benchmark: its quick mode runs, and every implementation computes the same math."""

from __future__ import annotations

import json
import sys

import pytest

from jmaml.bench import runner
from jmaml.bench.measure import gradient_error, measure
from jmaml.bench.torch_impls import TorchLoopBench, _same_padding
from jmaml.bench.workloads import WORKLOADS, init_params, make_batches, select



@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run on tiny Omniglot shapes: jmaml first (the reference), then the others."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--workloads", "omniglot_5w1s", "--steps", "2", "--warmup", "1",
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
    assert "| Omniglot 3-way 1-shot" in table and env["commit"] in table


def test_jax_implementations_agree(quick_run):
    _, _, by_impl = quick_run
    plain = by_impl["plain_jax"]
    assert plain["check_against"] == "jmaml"
    assert plain["loss_diff"] < 1e-5
    assert plain["grad_rel_err"] < 1e-3


def test_torch_implementations_agree(quick_run):
    pytest.importorskip("torch")
    _, _, by_impl = quick_run
    for name in ("torch_loop", "torch_func"):
        record = by_impl[name]
        assert record["status"] == "ok", record.get("reason")
        assert record["loss_diff"] < 1e-5
        assert record["grad_rel_err"] < 1e-3


def test_torch_missing_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    workload = WORKLOADS["omniglot_5w1s"].quick()
    record, grads = measure("torch_loop", TorchLoopBench, workload, steps=1, warmup=1, batches=1,
                            options={}, peak_flops=None)
    assert record["status"] == "skipped" and "not installed" in record["reason"] and grads is None


def test_same_padding_matches_xla():
    # XLA's SAME: output ceil(n / s), the odd extra pixel at the high end
    assert _same_padding(28, 2) == (0, 1)
    assert _same_padding(7, 2) == (1, 1)
    assert _same_padding(84, 1) == (1, 1)


def test_workloads_and_inputs():
    full = select(None, quick=False)
    assert [w.name for w in full] == list(WORKLOADS)
    assert WORKLOADS["omniglot_5w1s"].title == "Omniglot 5-way 1-shot, 1 step, 32 tasks"
    w = WORKLOADS["mini_imagenet_5w5s"].quick()
    tasks = make_batches(w, 2)[1]
    assert tasks.x_support.shape == (w.meta_batch, w.ways * w.shots, *w.image)
    assert tasks.y_query.shape == (w.meta_batch, w.ways * w.queries)
    params = init_params(w)
    assert gradient_error(params, params) == 0.0
    with pytest.raises(ValueError, match="unknown workload"):
        select(["nope"], quick=True)
