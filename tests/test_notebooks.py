"""Every notebook in examples/ runs top to bottom with small settings (``JMAML_NOTEBOOK_SMOKE=1``).

Each notebook runs in a fresh kernel of this interpreter (``sys.executable``) with this checkout importable;
a cell that raises fails the test. The committed outputs (from full runs) are checked to be there.
"""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import require_module, require_omniglot

nbformat = require_module("nbformat", "pip install -e '.[notebooks]'")
nbclient = require_module("nbclient", "pip install -e '.[notebooks]'")
require_module("ipykernel", "pip install -e '.[notebooks]'")
require_module("matplotlib", "pip install -e '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))
KERNEL = "jmaml-test-python"


def test_the_examples_are_there():
    assert [p.name for p in NOTEBOOKS] == ["omniglot.ipynb", "quickstart.ipynb", "your_model.ipynb"]


@pytest.fixture
def kernel(tmp_path, monkeypatch, cache_home):
    """A kernel spec running this interpreter with the checkout first on the path, in smoke mode.

    Its per-user cache is the session's (``cache_home``), so the resized Omniglot is built once per session.
    """
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JMAML_NOTEBOOK_SMOKE": "1", "XDG_CACHE_HOME": str(cache_home), "MPLBACKEND": "agg"}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jmaml test", "language": "python", "env": env}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return env


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_with_small_settings(path, kernel):
    nb = nbformat.read(path, as_version=4)
    assert any("JMAML_NOTEBOOK_SMOKE" in c.source for c in nb.cells if c.cell_type == "markdown"), \
        "the notebook must say how its small settings are chosen"
    assert all(c.outputs for c in nb.cells if c.cell_type == "code"), "commit the notebook with its outputs"
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if path.stem == "omniglot":
        kernel["JMAML_DATA_DIR"] = str(require_omniglot())
        spec = Path(os.environ["JUPYTER_PATH"]) / "kernels" / KERNEL / "kernel.json"
        spec.write_text(json.dumps({**json.loads(spec.read_text()), "env": kernel}))
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell that failed
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "smoke=True" in outputs
