"""Meta-step throughput of jmaml, plain JAX and the PyTorch peers on the MAML workloads.

Usage: ``python benchmarks/throughput.py [--quick] [--workloads ...] [--impls ...] [--json PATH]``;
``--help`` lists every option. The implementation lives in :mod:`jmaml.bench`.
"""

import sys

from jmaml.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
