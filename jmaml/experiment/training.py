"""``jmaml train`` and ``jmaml eval`` as functions: a run folder from a config, and its meta-test.

:func:`train` is :func:`jmaml.experiment.run.prepare`, :meth:`Run.fit <jmaml.experiment.run.Run.fit>`
and :meth:`Run.meta_test <jmaml.experiment.run.Run.meta_test>`, with the result written to
``eval.json`` and the curves to ``curves.png``; :func:`train_group` does the same for a group of runs in
one program (:func:`jmaml.experiment.run.prepare_group`) and summarizes it over seeds in ``group.json``;
:func:`meta_test_checkpoint` scores a run's latest checkpoint again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from jmaml.evaluation import mean_ci95
from jmaml.experiment import checkpoint, runs
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import Config, validate
from jmaml.experiment.run import meta_test_of, prepare, prepare_group
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


def train_group(cfgs: Sequence[Config], out: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Meta-trains a group of runs in one program in the group folder ``out`` (or continues it), then
    meta-tests each run: :func:`train` of every run, with the summary over seeds in ``group.json``.

    A run that diverges stops alone; the others finish, are meta-tested and summarized.

    Returns:
      The summary (:func:`summarize`), also written to ``out/group.json``; its ``"failed"`` maps each
      run that diverged (now or in an earlier start) to its error.

    Raises:
      JmamlError: bad input, checked for every run before the first step (nothing changed).
      Stopped: SIGINT or SIGTERM; a checkpoint of the step reached was saved in every run's folder.
      RunFailed: a failed checkpoint write.
    """
    with prepare_group(cfgs, out, resume=resume, progress=progress) as run:
        run.fit()
        results = run.meta_test()
        group = run.group
        failed = {}
        for name, folder, result in zip(group.names, group.folders, results):
            if result is None:
                with open(folder.file(runs.FAILED)) as f:
                    failed[name] = json.load(f)["error"]
            elif run.main:
                result["train_seconds"] = run.train_seconds
                runs.write_json(folder.file(runs.EVAL), result)
                _plot(folder.path)
        summary = {"runs": group.names, "config": group.cfgs[0].name, "varied": runs.varied_keys(group.cfgs),
                   **summarize(group.cfgs, group.names, results), "failed": failed}
        if run.main:
            runs.write_json(os.path.join(out, runs.GROUP), summary)
    return summary


def summarize(cfgs: Sequence[Config], names: Sequence[str], results: Sequence[dict | None]) -> dict:
    """The meta-test of a group per setting (the runs that differ only in their seed).

    Returns:
      ``{"metric", "test_steps", "settings": [...]}``, one entry per setting in order: its ``setting``
      (``inner_lr=0.1``; ``""`` when only seeds differ), ``runs`` and ``seeds`` that finished, and over
      those seeds the ``mean`` of the meta-test means, their ``std`` (spread), the normal 95% interval of
      that mean (``ci95``) and the mean of the runs' own 95% intervals over test tasks
      (``meta_test_ci95``); a setting none of whose runs finished has None there.
    """
    keys = runs.varied_keys(cfgs)
    settings: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        settings.setdefault(runs.setting(cfg, keys), []).append(index)
    finished = [result for result in results if result is not None]
    rows = []
    for name, members in settings.items():
        done = [i for i in members if results[i] is not None]
        means = np.array([results[i]["mean"] for i in done], np.float64)
        mean, ci95 = mean_ci95(means) if done else (None, None)
        ci95 = ci95 if len(done) > 1 else None  # no interval from one seed
        rows.append({"setting": name, "runs": [names[i] for i in done], "seeds": [cfgs[i].seed for i in done],
                     "mean": mean, "std": float(means.std(ddof=1)) if len(done) > 1 else None, "ci95": ci95,
                     "meta_test_ci95": float(np.mean([results[i]["ci95"] for i in done])) if done else None})
    return {"metric": finished[0]["metric"] if finished else None,
            "test_steps": finished[0]["test_steps"] if finished else None, "settings": rows}


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
