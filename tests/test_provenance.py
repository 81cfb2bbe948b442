"""The commit a run records is the one git reports, read from the git directory without running git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import requirement_missing

from jmaml.experiment import provenance

ROOT = Path(__file__).resolve().parents[1]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    if shutil.which("git") is None:
        requirement_missing("git is not installed")
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a").write_text("a")
    _git(tmp_path, "add", "a")
    _git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_loose_and_packed_refs_and_detached_head(repo):
    assert provenance.checkout_commit(repo) == _git(repo, "rev-parse", "--short=12", "HEAD")
    (repo / "a").write_text("b")
    _git(repo, "commit", "-q", "-am", "two")
    _git(repo, "pack-refs", "--all")  # refs/heads/main now lives in packed-refs only
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert provenance.checkout_commit(repo) == _git(repo, "rev-parse", "--short=12", "HEAD")
    _git(repo, "checkout", "-q", "HEAD~1")
    assert provenance.checkout_commit(repo) == _git(repo, "rev-parse", "--short=12", "HEAD")


def test_a_worktree_reads_its_own_head(repo, tmp_path_factory):
    (repo / "a").write_text("c")
    _git(repo, "commit", "-q", "-am", "three")
    other = tmp_path_factory.mktemp("wt") / "other"
    _git(repo, "worktree", "add", "-q", "-b", "side", str(other), "HEAD~1")
    _git(repo, "pack-refs", "--all")
    assert provenance.checkout_commit(other) == _git(other, "rev-parse", "--short=12", "HEAD")
    assert provenance.checkout_commit(other) != provenance.checkout_commit(repo)


def test_not_a_checkout(tmp_path):
    assert provenance.checkout_commit(tmp_path) is None


def test_this_checkout():
    if not (ROOT / ".git").exists():
        requirement_missing("not run from a git checkout")
    assert provenance.git_commit() == _git(ROOT, "rev-parse", "--short=12", "HEAD")
