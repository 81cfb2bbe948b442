"""Will it fit? The compiled program's memory against the device's, checked before anything runs."""

from __future__ import annotations

import ctypes
import os
from typing import Any

import jax

from jmaml.errors import JmamlError

GiB = 2 ** 30


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Memory a program can use on ``device``: the accelerator's limit, or the host's available RAM."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def program_bytes(compiled: Any) -> int | None:
    """Arguments, outputs and temporaries of a compiled program, less what donation aliases."""
    try:
        stats = compiled.memory_analysis()
        return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                   - stats.alias_size_in_bytes + stats.generated_code_size_in_bytes)
    except Exception:  # noqa: BLE001  not every backend reports it
        return None


def check_fits(need: int | None, what: str, drivers: str) -> None:
    """Raises one JmamlError when ``need`` bytes exceed the device's available memory.

    Args:
      need: bytes the program or data needs (None: unknown, not checked).
      what: what needs it, for the message (``"the training program"``).
      drivers: the config keys that drive the figure and how to change them.
    """
    have = available_bytes()
    if need is None or have is None or need <= have:
        return
    device = jax.local_devices()[0]
    raise JmamlError(f"{what} needs {need / GiB:.1f} GiB but {device.platform} device {device.id} has "
                     f"{have / GiB:.1f} GiB available; {drivers}")


def release_freed() -> None:
    """Hands the memory this process has freed back to the operating system (glibc's ``malloc_trim``).

    XLA's compiler frees most of what it allocates (several hundred MB for a second-order conv
    net on the CPU), but glibc keeps freed pages in its arenas, so they stay in the run's resident
    memory while the next program runs. A no-op where the C library is not glibc.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the C library the process already runs on
    except (OSError, AttributeError):  # one without malloc_trim (musl, macOS) or no symbol table to search
        pass
