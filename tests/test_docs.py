"""The documentation: its code examples run, and Sphinx builds it with warnings as errors."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def python_blocks(page: Path) -> list[str]:
    """The ``.. code-block:: python`` bodies of an .rst page, dedented."""
    blocks, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            body, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i][3:])
                i += 1
            blocks.append("\n".join(body))
        else:
            i += 1
    return blocks


PAGES = sorted(p for p in DOCS.glob("*.rst") if python_blocks(p))


def test_some_page_has_code():
    assert [p.name for p in PAGES] == ["new_algorithm.rst"]


@pytest.fixture
def registry():
    """The algorithm registry as it is (restored after a page registered its example in it)."""
    from jmaml.algorithms import ALGORITHMS

    saved = dict(ALGORITHMS)
    yield saved
    ALGORITHMS.clear()
    ALGORITHMS.update(saved)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_code_blocks_run_in_order(page, registry, monkeypatch):
    """Each page's blocks run in order; an algorithm a page registers meets the contract every registered
    one meets (tests/test_algorithm_contract.py), with no test edited for it."""
    import jax
    from test_algorithm_contract import check_keys_reach, check_one_step

    from jmaml.algorithms import ALGORITHMS

    namespace = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(python_blocks(page)):
        exec(compile(block, f"{page.name} block {number}", "exec"), namespace)
    added = [name for name in ALGORITHMS if name not in registry]
    with jax.enable_x64(True):
        for name in added:
            check_one_step(name)
            check_keys_reach(name, monkeypatch)
    assert added == (["penalised_maml"] if page.stem == "new_algorithm" else [])


def test_markdown_tables_in_docstrings_become_list_tables():
    spec = importlib.util.spec_from_file_location("docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert conf._cells("| ``a|b`` | c | ``x`` y |") == ["``a|b``", "c", "``x`` y"]
    lines = ["Intro.", "", "| h1 | h2 |", "|---|---|", "| ``p||q`` | r |", "", "After."]
    conf._markdown_tables(None, "module", "m", None, {}, lines)
    assert lines == ["Intro.", "", "", ".. list-table::", "   :header-rows: 1", "",
                     "   * - h1", "     - h2", "   * - ``p||q``", "     - r", "", "", "After."]


def test_sphinx_build_passes_with_warnings_as_errors(tmp_path):
    require_module("sphinx", "pip install -e '.[test]'")  # CI installs the test extra: sphinx must be there
    out = tmp_path / "html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(DOCS), str(out), "-d", str(tmp_path / "doctrees")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index", "meta_learning", "design", "new_algorithm", "api/core", "api/models"):
        assert (out / f"{page}.html").is_file(), page
    models = (out / "api" / "models.html").read_text()
    assert re.search(r'id="jmaml\.models\.nnx\.MLP"', models) and 'id="jmaml.models.functional"' in models
    assert 'id="jmaml.core.learner.MetaLearner"' in (out / "api" / "core.html").read_text()
