"""The host loop: build, meta-train with progress and logs, checkpoint, meta-test."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np
import optax

from jmaml import algorithms
from jmaml.core import schedules
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn
from jmaml.core.step import TrainState, init_state, make_train_step, scan_steps
from jmaml.errors import JmamlError
from jmaml.evaluation import meta_test
from jmaml.experiment import checkpoint, runs
from jmaml.experiment.configs import Config, validate
from jmaml.experiment.workloads import Workload, eval_batch, make_workload


def learner_from_config(cfg: Config, apply_fn: ApplyFn, loss_fn: LossFn,
                        metrics: Mapping[str, MetricFn] | None = None) -> MetaLearner:
    """The meta-learner ``cfg.algorithm`` names, built from a :class:`~jmaml.experiment.configs.Config`.

    Reads ``algorithm``, ``inner_lr``, ``inner_steps`` and, per algorithm: ``first_order``
    (maml, meta_sgd, anil, maml_pp), ``head`` (anil), ``msl_anneal_steps`` and
    ``first_order_steps`` (maml_pp, per-step weights for the ``NORM_LEAVES`` leaves),
    ``reptile_optimizer`` and ``reptile_batch`` (reptile), ``proximal_lambda`` and ``cg_steps``
    (imaml).

    Raises:
      JmamlError: ``cfg.algorithm`` is not one of ``configs.ALGORITHM_NAMES``.
    """
    common = dict(inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps, metrics=metrics)
    builders = {
        "maml": lambda: algorithms.maml(apply_fn, loss_fn, first_order=cfg.first_order, **common),
        "fomaml": lambda: algorithms.fomaml(apply_fn, loss_fn, **common),
        "meta_sgd": lambda: algorithms.meta_sgd(apply_fn, loss_fn, first_order=cfg.first_order, **common),
        "anil": lambda: algorithms.anil(apply_fn, loss_fn, head=cfg.head, first_order=cfg.first_order, **common),
        "maml_pp": lambda: algorithms.maml_pp(apply_fn, loss_fn, msl_anneal_steps=cfg.msl_anneal_steps,
                                   first_order_steps=cfg.first_order_steps, first_order=cfg.first_order,
                                   **common),
        "reptile": lambda: algorithms.reptile(apply_fn, loss_fn, inner_optimizer=cfg.reptile_optimizer,
                                   inner_batch=cfg.reptile_batch, **common),
        "imaml": lambda: algorithms.imaml(apply_fn, loss_fn, proximal_lambda=cfg.proximal_lambda,
                               cg_steps=cfg.cg_steps, **common),
        "pretrain": lambda: algorithms.pretrain(apply_fn, loss_fn, **common),
    }
    if cfg.algorithm not in builders:
        raise JmamlError(f"unknown algorithm {cfg.algorithm!r}; choose one of: {', '.join(builders)}")
    return builders[cfg.algorithm]()


def meta_optimizer(cfg: Config) -> optax.GradientTransformation:
    """Adam on the meta-parameters, with a constant or cosine-annealed learning rate."""
    return schedules.meta_optimizer(cfg.meta_lr, cfg.steps, cfg.lr_schedule)


def keys(cfg: Config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Independent PRNG keys for the model's init, meta-training and meta-test tasks."""
    init_key, train_key, test_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    return init_key, train_key, test_key


def build(cfg: Config, workload: Workload):
    """The learner, the meta-optimizer and the initial train state of ``cfg``."""
    learner = learner_from_config(cfg, workload.apply_fn, workload.loss_fn, workload.metrics)
    if cfg.remat:
        learner = dataclasses.replace(learner, remat=True)
    optimizer = meta_optimizer(cfg)
    init_key, train_key, _ = keys(cfg)
    state = init_state(learner, optimizer, workload.init(init_key), train_key)
    return learner, optimizer, state


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5)


def evaluate_run(cfg: Config, workload: Workload, learner, meta_params) -> dict:
    """The config's meta-test of ``meta_params``."""
    return meta_test(learner, meta_params, workload.test_tasks, workload.test_data, key=keys(cfg)[2],
                     num_tasks=cfg.eval_tasks, batch=eval_batch(cfg),
                     max_steps=cfg.eval_max_steps, test_steps=cfg.test_inner_steps, metric=workload.metric)


def format_eval(result: dict) -> str:
    """The meta-test as printed lines: the headline and the score after each inner step."""
    unit = "%" if result["metric"] == "accuracy" else ""
    scale = 100.0 if unit else 1.0
    lines = [f"meta-test over {result['tasks']} tasks, {result['metric']} after {result['test_steps']} "
             f"inner steps: {result['mean'] * scale:.4f}{unit} +- {result['ci95'] * scale:.4f}{unit} (95%)"]
    for k, (m, c) in enumerate(zip(result["per_step"], result["per_step_ci95"])):
        lines.append(f"  after {k:2d} steps: {m * scale:.4f}{unit} +- {c * scale:.4f}{unit}")
    return "\n".join(lines)


def train(cfg: Config, out: str, *, progress: bool = True) -> dict:
    """Meta-trains ``cfg``, saves the state in ``out``, meta-tests it and returns the result.

    Everything that can be wrong with the input (config, output folder, data) is checked
    before the first compilation.
    """
    out = runs.create(out)
    workload = make_workload(cfg)
    learner, optimizer, state = build(cfg, workload)
    with open(os.path.join(out, runs.CONFIG), "w") as f:
        f.write(cfg.to_json())

    log = runs.MetricsLog(out)
    bar = _progress(cfg.steps, progress)
    start = time.perf_counter()
    done = saved = 0
    checkpoints = os.path.join(out, runs.CHECKPOINTS)
    compiled = {}  # (phase learner, chunk length) -> jitted chunk; at most a few in a run
    try:
        while done < cfg.steps:
            phase = learner.at_step(done)  # derivative-order annealing switches learners once
            n = min(cfg.log_every, cfg.steps - done)
            if done < learner.first_order_steps:
                n = min(n, learner.first_order_steps - done)
            if (phase, n) not in compiled:
                step = make_train_step(phase, optimizer, workload.train_tasks, chunks=cfg.meta_chunks)
                compiled[phase, n] = jax.jit(scan_steps(step, n), donate_argnums=0)
            state, metrics = compiled[phase, n](state, workload.train_data)
            if cfg.checkpoint_every and (done + n) // cfg.checkpoint_every > done // cfg.checkpoint_every:
                checkpoint.save(checkpoints, done + n, state)
                saved = done + n
            done += n
            values = {k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - start
            log.write(done, {**values, "seconds": elapsed, "steps_per_second": done / elapsed})
            bar.update(n)
            bar.set_postfix(meta_loss=f"{values['meta_loss']:.4f}")
    finally:
        bar.close()
        log.close()
    if saved != done:
        checkpoint.save(checkpoints, done, state)
    result = evaluate_run(cfg, workload, learner, state.meta_params)
    result["train_seconds"] = time.perf_counter() - start
    runs.write_json(os.path.join(out, runs.EVAL), result)
    return result


def evaluate(path: str, overrides: dict | None = None) -> dict:
    """Repeats the meta-test of the run in ``path`` from its saved parameters."""
    cfg = runs.load_config(path)
    if overrides:
        cfg = validate(dataclasses.replace(cfg, **overrides))
    workload = make_workload(cfg)
    learner, _, like = build(cfg, workload)
    state: TrainState = checkpoint.restore(os.path.join(path, runs.CHECKPOINTS), like)
    result = evaluate_run(cfg, workload, learner, state.meta_params)
    runs.write_json(os.path.join(path, runs.EVAL), result)
    return result
