"""Where a run ran: versions, git commit, devices, processes, host, command line and time.

Every run folder keeps these records in ``run.json`` (one entry per start, so a resumed run keeps
the record of each part), the meta-test records where it ran in ``eval.json``, and the benchmarks
attach the same record to every figure.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from typing import Any

import jax

PACKAGES = ("jmaml", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the jmaml source checkout (``+dirty`` with local changes to tracked files), or
    None when jmaml is not run from a git checkout (an installed wheel)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        if not os.path.isfile(os.path.join(top, "jmaml", "experiment", "provenance.py")):
            return None  # some other repository that happens to contain an installed jmaml
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=top, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=top,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


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
