"""The experiment application on top of the jmaml library.

Named configs (the only reader of a config), workloads built from them, :func:`prepare` (one way to
set up a run, for the ``jmaml`` command, the benchmarks and the notebooks), the host training loop
and its hooks, run folders, orbax checkpoints and the ``jmaml`` command. Nothing in the library
(``jmaml.core``, ``jmaml.algorithms``, ``jmaml.models``, ``jmaml.data``, ``jmaml.evaluation``,
``jmaml.parallel``) imports this package.

The public API (imported on first use, so that ``jmaml --help`` does not start JAX)::

    from jmaml.experiment import get_config, prepare
    with prepare(get_config("sinusoid", {"steps": 1000}), "runs/s") as run:
        run.fit()
        print(run.meta_test()["mean"])
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_PUBLIC = {
    "prepare": "run", "prepare_group": "run", "Run": "run", "RunGroup": "run", "RunFailed": "run", "Stopped": "run",
    "CONFIGS": "configs", "Config": "configs", "get_config": "configs", "parse_overrides": "configs",
    "validate": "configs",
    "build": "assembly", "Setup": "assembly", "learner_from_config": "assembly",
    "Workload": "workloads", "make_workload": "workloads", "image_workload": "workloads",
    "image_model": "workloads", "chunking": "workloads",
    "program_bytes": "memory",
    "train": "training", "train_group": "training",
    "git_commit": "provenance", "record": "provenance",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"jmaml.experiment.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'jmaml.experiment' has no attribute {name!r}")
