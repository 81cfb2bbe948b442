"""The installed package is the library and the ``jmaml`` command: no benchmark harness, no PyTorch.

Builds the wheel from a copy of the checkout (offline: no build isolation, no index) and reads it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build must not see: caches, virtualenvs, earlier build output (a stale build/ would leak in)
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                ".pytest_cache", "runs", "*.whl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = (tmp / "dist").glob("jmaml-*.whl")
    return path


def test_wheel_holds_the_library_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    listing = "\n".join(names)
    assert all(n.startswith(("jmaml/", "jmaml-")) for n in names), listing
    assert "jmaml/__init__.py" in names and "jmaml/experiment/cli.py" in names, listing
    assert not [n for n in names if "bench" in n], listing
    for name, text in sources.items():
        assert "import torch" not in text and "from torch" not in text, name
        assert "subprocess" not in text, name  # the git call of the harness stays in benchmarks/
    assert "jmaml = jmaml.experiment.cli:main" in entry_points


def test_import_jmaml_loads_no_application_dependency():
    code = ("import sys, jmaml; bad = [m for m in ('torch', 'tqdm', 'tensorboardX', 'orbax', 'matplotlib', "
            "'jmaml.experiment') if m in sys.modules]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_metrics_log_does_not_import_torch(tmp_path):
    """tensorboardX imports torch when it is installed (as in CI): a run's MetricsLog must not pay
    its 0.5 GB and 2 s, and torch must still import normally afterwards."""
    code = ("import sys, glob; from jmaml.experiment.runs import MetricsLog; "
            f"log = MetricsLog({str(tmp_path)!r}); log.write(1, {{'meta_loss': 0.5}}); log.close(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            f"assert glob.glob({str(tmp_path / '**' / 'events.out.tfevents.*')!r}, recursive=True); "
            "import torch; print(torch.__name__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch"
