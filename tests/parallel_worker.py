"""Subprocess of tests/test_parallel.py: trains a tiny workload on the devices it is given and saves
the meta-loss trajectory, the parameters and the shardings it saw to an ``.npz``.

Usage: ``python tests/parallel_worker.py WORKLOAD OUT.npz [--steps N] [--meta-chunks C]
[--coordinator HOST:PORT --num-processes N --process-id I]``. The device count comes from the
environment (``JAX_NUM_CPU_DEVICES``), set by the parent before this process imports jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np


def config(workload: str, meta_chunks: int):
    from jmaml.experiment.configs import CONFIGS

    if workload == "sinusoid":
        return dataclasses.replace(CONFIGS["sinusoid"], meta_batch=8, hidden=(16, 16), meta_chunks=meta_chunks,
                                   eval_batch=8, eval_tasks=16, eval_max_steps=2)
    # a tiny-filter Omniglot-like config on random uint8 images (the sampler and the uint8 path are the real ones)
    return dataclasses.replace(CONFIGS["omniglot-5w1s"], meta_batch=8, filters=4, image_size=8, queries=2,
                               meta_chunks=meta_chunks, eval_batch=8, eval_tasks=16, eval_max_steps=2,
                               test_inner_steps=1)


def workload_of(cfg):
    from jmaml.experiment.workloads import image_workload, sinusoid_workload

    if cfg.dataset == "sinusoid":
        return sinusoid_workload(cfg)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (20, 4, cfg.image_size, cfg.image_size, 1), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 4, cfg.image_size, cfg.image_size, 1), dtype=np.uint8)
    return image_workload(cfg, train, test, "omniglot")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=("sinusoid", "omniglot"))
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--meta-chunks", type=int, default=1)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args()

    from jmaml import parallel

    if args.coordinator:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id, timeout=60)
    import jax

    from jmaml.core.step import make_train_step
    from jmaml.evaluation import meta_test
    from jmaml.experiment.build import build, keys

    cfg = config(args.workload, args.meta_chunks)
    workload = workload_of(cfg)
    setup = build(cfg, workload)
    mesh = parallel.make_mesh()
    sampler = parallel.shard_tasks(workload.train_tasks, mesh)
    step = parallel.shard_train_step(make_train_step(setup.learner, setup.optimizer, sampler,
                                                     chunks=cfg.meta_chunks), mesh)
    state = parallel.replicate(setup.init(), mesh)
    data = parallel.replicate(workload.train_data, mesh) if workload.train_data is not None else None

    # the tasks as sampled inside a jitted program: their sharding and values
    key = jax.random.PRNGKey(7)
    tasks = jax.jit(sampler)(key, data)
    task_spec = str(tasks.x_support.sharding.spec)
    shards = len({str(s.index) for s in tasks.x_support.addressable_shards})
    hlo = step.jitted.lower(state, None, data).compile().as_text()

    losses = []
    for _ in range(args.steps):
        state, metrics = step(state, None, data)
        losses.append(float(metrics["meta_loss"]))
    test = meta_test(setup.learner, state.meta_params, parallel.shard_tasks(workload.test_tasks, mesh),
                     parallel.replicate(workload.test_data, mesh) if workload.test_data is not None else None,
                     key=keys(cfg)[2], num_tasks=cfg.eval_tasks, batch=cfg.eval_batch,
                     max_steps=cfg.eval_max_steps, test_steps=cfg.test_inner_steps, metric=workload.metric)
    params = {jax.tree_util.keystr(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state.meta_params))[0]}
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), test=np.asarray(test["per_step"]),
                 **{f"param:{name}": p for name, p in params.items()},
                 info=json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                                  "task_spec": task_spec, "distinct_shards": shards,
                                  "all_reduce": "all-reduce" in hlo,
                                  "task_values": np.asarray(jax.device_get(
                                      jax.jit(workload.train_tasks)(key, data).x_support)).sum().item(),
                                  "sharded_values": float(np.asarray(jax.device_get(tasks.x_support)).sum())}))


if __name__ == "__main__":
    main()
