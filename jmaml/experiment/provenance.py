"""Where a run ran: versions, git commit, devices, processes, host, command line and time.

Every run folder keeps these records in ``run.json`` (one entry per start, so a resumed run keeps
the record of each part), the meta-test records where it ran in ``eval.json``, and the benchmarks
attach the same record to every figure.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

import jax

PACKAGES = ("jmaml", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_dir(top: Path) -> Path | None:
    """The git directory of a checkout: ``top/.git``, or where a worktree's ``.git`` file points."""
    dot_git = top / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        line = dot_git.read_text().strip()
        if line.startswith("gitdir:"):
            return (top / line[len("gitdir:"):].strip()).resolve()
    return None


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    """The commit a ref names: its loose file, else its line in ``packed-refs`` (in the common
    directory of a worktree)."""
    common = git_dir / "commondir"
    roots = [git_dir] + ([(git_dir / common.read_text().strip()).resolve()] if common.is_file() else [])
    for root in roots:
        loose = root / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = root / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    return None


def checkout_commit(top: Path) -> str | None:
    """The commit checked out in the git work tree at ``top`` (12 hex digits), or None when ``top``
    is not one. Read from the git directory's files (``HEAD``, the ref it names, ``packed-refs``)
    without running git: the library starts no processes."""
    git_dir = _git_dir(top)
    if git_dir is None:
        return None
    try:
        head = (git_dir / "HEAD").read_text().strip()
        commit = _resolve_ref(git_dir, head[len("ref:"):].strip()) if head.startswith("ref:") else head
    except OSError:
        return None
    return commit[:12] if commit and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def git_commit() -> str | None:
    """The commit of the jmaml source checkout, or None when jmaml does not run from a git checkout
    (an installed wheel). Whether the work tree has local changes is not known here; the
    benchmarks' record adds it."""
    top = Path(__file__).resolve().parents[2]
    return checkout_commit(top) if (top / "jmaml" / "experiment" / "provenance.py").is_file() else None


def devices() -> dict[str, Any]:
    """The backend, device kind and counts this process computes on."""
    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(), "process_count": jax.process_count()}


def record() -> dict[str, Any]:
    """One provenance entry: versions (None for a package not installed), commit, devices, host, the
    command line and the time (UTC)."""
    return {
        "versions": {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}},
        "commit": git_commit(),
        **devices(),
        "host": socket.gethostname(),
        "command": list(sys.argv),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def where(entry: dict[str, Any]) -> str:
    """E.g. ``4 cpu devices in 1 process, jax 0.10.2``."""
    n, p = entry["device_count"], entry["process_count"]
    kind = entry["backend"] if entry["device_kind"].lower() == entry["backend"] else entry["device_kind"]
    return (f"{n} {kind} device{'s' if n != 1 else ''} in {p} process{'es' if p != 1 else ''}, "
            f"jax {entry['versions']['jax']}")
