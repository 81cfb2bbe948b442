"""jmaml's benchmarks: scripts run from the repository root, and the throughput harness they share.

Not part of the installed package (the wheel holds ``jmaml`` only): the PyTorch peers, the
plain-JAX baseline and the ``git`` call that records the commit live here.

    python benchmarks/throughput.py [--quick] [--workloads omniglot-5w1s ...]
    python benchmarks/memory.py [--workload omniglot-20w1s]
    python benchmarks/time_to_accuracy.py [--config omniglot-5w1s]
    python benchmarks/sinusoid.py [--steps N]
"""
