"""Meta-step throughput of jmaml, plain JAX and the PyTorch peers on the named configs' episodes.

Usage, from the repository root::

    python benchmarks/throughput.py [--quick] [--workloads omniglot-5w1s ...] [--impls ...] [--json PATH]

``--help`` lists every option. The harness lives in :mod:`benchmarks.harness`.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # the repository root, for benchmarks.harness
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.harness.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
