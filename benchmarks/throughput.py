"""Meta-step throughput of jmaml, plain JAX and the PyTorch peers on the named configs' episodes.

Usage, from the repository root::

    python -m benchmarks.throughput [--quick] [--workloads omniglot-5w1s ...] [--impls ...] [--json PATH]

``--help`` lists every option. The harness lives in :mod:`benchmarks.harness`.
"""

import sys

from benchmarks.harness.runner import main

if __name__ == "__main__":
    sys.exit(main())
