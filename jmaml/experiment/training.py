"""``jmaml train`` and ``jmaml eval`` as functions: a run folder from a config, and its meta-test.

:func:`train` is :func:`jmaml.experiment.run.prepare`, :meth:`Run.fit <jmaml.experiment.run.Run.fit>`
and :meth:`Run.meta_test <jmaml.experiment.run.Run.meta_test>`, with the result written to
``eval.json`` and the curves to ``curves.png``; :func:`meta_test_checkpoint` scores a run's latest
checkpoint again.
"""

from __future__ import annotations

import dataclasses
import os

from jmaml.experiment import checkpoint, runs
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import Config, validate
from jmaml.experiment.run import meta_test_of, prepare
from jmaml.experiment.workloads import make_workload


def train(cfg: Config, out: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Meta-trains ``cfg`` in the run folder ``out`` (or continues it), then meta-tests it.

    Everything that can be wrong with the input (config, folder, data, memory) is checked
    before the first step runs (:func:`jmaml.experiment.run.prepare`).

    Returns:
      The meta-test result, also written to ``eval.json``.

    Raises:
      JmamlError: bad input; nothing of an earlier run is changed, and a folder this call
        created is removed.
      Stopped: SIGINT or SIGTERM; a checkpoint of the step reached was saved.
      RunFailed: divergence or a failed checkpoint write; the last good checkpoint stays.
    """
    with prepare(cfg, out, resume=resume, progress=progress) as run:
        run.fit()
        result = run.meta_test()
        result["train_seconds"] = run.train_seconds
        if run.main:
            runs.write_json(run.folder.file(runs.EVAL), result)
            _plot(run.folder.path)
    return result


def _plot(path: str) -> None:
    """``curves.png`` in the run folder, when matplotlib (the ``plot`` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    from jmaml.experiment.plots import plot_runs

    plot_runs([path], os.path.join(path, runs.CURVES))


def meta_test_checkpoint(path: str, overrides: dict | None = None) -> dict:
    """The meta-test of the latest checkpoint of the run in ``path`` (nothing is written).

    ``overrides`` may change the meta-test (``eval_tasks``) and where the data is
    (``data_dir``). The result names the checkpoint step it scored (``"checkpoint_step"``).
    """
    cfg = runs.load_config(path)
    if overrides:
        cfg = validate(dataclasses.replace(cfg, **overrides))
    workload = make_workload(cfg)
    setup = build(cfg, workload)
    state, step = checkpoint.restore(os.path.join(path, runs.CHECKPOINTS), setup.template())
    result = meta_test_of(cfg, workload, setup.learner, state.meta_params, step=step)
    result["checkpoint_step"] = step
    return result
