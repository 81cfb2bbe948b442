"""benchmarks/scaling.py: its quick mode runs the sharded train step on 1 and 2 simulated CPU devices
and reports the all-reduce bytes the compiled step really contains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.scaling ARGV`` from the repository root, as the README runs it."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "benchmarks.scaling", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_run(tmp_path):
    out = tmp_path / "scaling.json"
    proc = run("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["results"]
    assert result["simulated"] and "functional check" in proc.stdout and result["environment"]["commit"] in proc.stdout
    assert sorted((r["mode"], r["devices"]) for r in rows) == [("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2)]
    for r in rows:
        assert r["finite"] and r["median_ms"] > 0 and r["tasks_per_s"] > 0
        assert r["gradient_bytes"] == 4 * (16 + 16 + 16 * 16 + 16 + 16 + 1)  # MLP 1-16-16-1, float32
        assert r["other_collective_bytes"] == 0  # no gather of the tasks or the data
        assert r["meta_batch"] == (4 if r["mode"] == "strong" else 2 * r["devices"])
        if r["devices"] == 1:
            assert r["all_reduce_ops"] == r["all_reduce_bytes"] == 0
        else:
            # Every meta-parameter's partial sum over a device's tasks must be summed over the devices at
            # least once (>= 1x). XLA:CPU reduces the gradient of each use of the meta-parameters on its
            # own (MetaLearner.over_tasks closes over them: the direct path and the inner loop's, 2.86x for
            # this MLP; see RESULTS.md); 3x or more would mean a further gradient-sized reduction.
            assert r["gradient_bytes"] <= r["all_reduce_bytes"] < 3 * r["gradient_bytes"]


def test_meta_batch_the_devices_do_not_split():
    proc = run("--quick", "--devices", "1", "3", "--set", "meta_batch=4")
    assert proc.returncode == 2
    assert "error: meta_batch=4 cannot be split evenly over 3 devices" in proc.stderr
    assert "nearest: 3 or 6" in proc.stderr
