"""jmaml's benchmarks: modules run from the repository root, and the harness they share.

Not part of the installed package (the wheel holds ``jmaml`` only): the PyTorch peers, the
plain-JAX baseline and the ``git`` call that records the commit live here.

    python -m benchmarks.throughput [--quick] [--workloads omniglot-5w1s ...]
    python -m benchmarks.memory [--workload omniglot-20w1s]
    python -m benchmarks.hlo_report [--sizes quick full]
    python -m benchmarks.time_to_accuracy [--config omniglot-5w1s]
    python -m benchmarks.sinusoid [--steps N]
    python -m benchmarks.scaling [--config sinusoid] [--devices 1 2 4 8]
    python -m benchmarks.mini_memory [--format pickle|csv|both]
    python -m benchmarks.device_suite [--quick]
"""
