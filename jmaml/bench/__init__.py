"""Throughput benchmark: jmaml against plain JAX and the PyTorch peers on the MAML workloads.

Run it as ``python benchmarks/throughput.py`` or ``jmaml bench`` (both call
:func:`jmaml.bench.runner.main`). PyTorch is optional (the ``bench`` extra); without it the
PyTorch implementations are reported as skipped.
"""

from jmaml.bench.runner import main

__all__ = ["main"]
