"""What every benchmarked implementation provides, and the registry of implementations."""

from __future__ import annotations

from typing import Any, Callable, Protocol

from benchmarks.harness.workloads import BenchWorkload
from jmaml.core.types import Tasks

# numpy meta-gradient in jmaml's parameter layout: {"conv0": {"kernel": ..., "bias": ...}, ...}
Grads = dict[str, dict[str, Any]]


class Skipped(Exception):
    """An implementation cannot run here (e.g. PyTorch is not installed); the reason is the message."""


class Bench(Protocol):
    """One implementation set up for one workload, holding its parameters and optimizer state.

    Attributes:
      compile_s: seconds spent compiling before the first step (None: nothing to compile).
      flops: floating-point operations per meta-step from the compiled program (None: unknown).
      program_bytes: memory the compiled program needs, from XLA's memory analysis (None: unknown).
      device: the device it runs on, in words.
    """

    compile_s: float | None
    flops: float | None
    program_bytes: int | None
    device: str

    def step(self, index: int) -> float:
        """Runs one meta-step (Adam update included) on prepared batch ``index`` and waits for it.

        Returns:
          The meta-loss of the step, read back from the device.
        """

    def step_on(self, tasks: Tasks) -> tuple[float, Grads]:
        """One meta-step on numpy ``tasks`` (shaped like the prepared batches).

        Returns:
          The meta-loss and the meta-gradient the step applied (jmaml's layout, numpy).
        """

    def peak_bytes(self) -> int | None:
        """Peak device memory so far, where the device reports it."""


# (workload, initial params in jmaml layout, numpy batches, options) -> Bench
Factory = Callable[[BenchWorkload, Grads, list[Tasks], dict[str, Any]], Bench]
