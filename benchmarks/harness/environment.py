"""Where a figure was measured: device, library versions, git commit, date, load, peak FLOP/s."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

import jax

from jmaml.experiment import git_commit as checkout_commit

# Dense float32 peak (no tensor cores / TF32) in FLOP/s, by a substring of the device kind.
PEAK_FLOPS = {
    "H200": 67e12,
    "H100": 67e12,  # SXM; the PCIe card does 51 TFLOP/s
    "A100": 19.5e12,
    "L4": 30.3e12,
    "A10G": 31.2e12,
    "V100": 15.7e12,
    "T4": 8.1e12,
}


def peak_flops(device_kind: str) -> float | None:
    """Float32 peak of a known accelerator; None on CPU and unknown devices."""
    if jax.default_backend() == "cpu":
        return None
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def git_commit() -> str:
    """The checkout's commit (:func:`jmaml.experiment.git_commit`) with ``+dirty`` when
    tracked files have local changes, or ``unknown`` outside a checkout."""
    commit = checkout_commit()
    if commit is None:
        return "unknown"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return commit
    return commit + ("+dirty" if dirty else "")


def describe() -> dict:
    """Environment record attached to every result."""
    device = jax.devices()[0]
    kind = device.device_kind
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "jax_device": device.platform if kind == device.platform else f"{device.platform} {kind}",
        "jax_device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "torch": torch_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_1min_start": load,
        "peak_flops": peak_flops(device.device_kind),
    }
