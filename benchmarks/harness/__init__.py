"""Throughput harness: jmaml against plain JAX and the PyTorch peers on the named configs' episodes.

``python benchmarks/throughput.py`` calls :func:`benchmarks.harness.runner.main`. The workloads
are read from :data:`jmaml.experiment.configs.CONFIGS` (:mod:`benchmarks.harness.workloads`).
PyTorch is optional (``pip install torch``, or the ``bench`` extra); without it the PyTorch
implementations are reported as skipped.
"""

from benchmarks.harness.runner import main

__all__ = ["main"]
