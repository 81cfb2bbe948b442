"""Subprocess of tests/test_parallel.py: trains a tiny workload on the devices it is given and saves
the meta-loss trajectory, the parameters and the shardings it saw to an ``.npz``.

Usage: ``python tests/parallel_worker.py WORKLOAD OUT.npz [--steps N] [--meta-chunks C]
[--coordinator HOST:PORT --num-processes N --process-id I]``. The device count comes from the
environment (``JAX_NUM_CPU_DEVICES``), set by the parent before this process imports jax.

``python tests/parallel_worker.py jmaml OUT.json ARGS...`` runs the ``jmaml`` command (``cli.main(ARGS)``) in
this process instead and records the sharding of the tasks its compiled programs sample (:func:`spied_command`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

COLLECTIVES = r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("


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


class ShardingSpy:
    """The learner as ``meta_gradient`` sees it (it calls only ``meta_loss``), recording the sharding XLA gives
    the tasks of each ``meta_loss`` call (with meta_chunks > 1, one chunk inside the scan) in the compiled step."""

    def __init__(self, learner, seen: list):
        self.learner, self.seen = learner, seen

    def meta_loss(self, meta_params, tasks, *args, **kwargs):
        import jax

        jax.debug.inspect_array_sharding(tasks.x_support, callback=self.seen.append)
        return self.learner.meta_loss(meta_params, tasks, *args, **kwargs)


def sharding_info(shardings: list) -> list:
    """``[spec, number of devices]`` of each distinct sharding."""
    return sorted({(str(s.spec), len(s.device_set)) for s in shardings})


def spied_command(out: str, argv: list[str]) -> None:
    """Runs ``jmaml ARGV`` (``cli.main``, whose exit status this process ends with) and writes ``{"train",
    "test"}`` to ``out``: for the tasks sampled inside the Trainer's dispatches (the sampler handed to
    ``loop.make_train_step``) and inside the meta-test (the one handed to ``run.meta_test``), each distinct
    ``[spec, devices, tasks per device, tasks]`` of the support set's sharding as XLA placed it."""
    import jax

    from jmaml.experiment import cli, loop, run

    seen = {"train": set(), "test": set()}

    def spied(sample_tasks, where: str):
        def sample(key, data):
            tasks = sample_tasks(key, data)
            shape = tasks.x_support.shape
            jax.debug.inspect_array_sharding(tasks.x_support, callback=lambda s: seen[where].add(
                (str(getattr(s, "spec", type(s).__name__)), len(s.device_set), s.shard_shape(shape)[0], shape[0])))
            return tasks

        return sample

    make_train_step, meta_test = loop.make_train_step, run.meta_test
    loop.make_train_step = lambda learner, optimizer, sample_tasks, **kwargs: make_train_step(
        learner, optimizer, spied(sample_tasks, "train"), **kwargs)
    run.meta_test = lambda learner, meta_params, sample_tasks, *args, **kwargs: meta_test(
        learner, meta_params, spied(sample_tasks, "test"), *args, **kwargs)
    code = cli.main(argv)
    Path(out).write_text(json.dumps({k: sorted(v) for k, v in seen.items()}))
    sys.exit(code)


def main() -> None:
    if sys.argv[1] == "jmaml":
        spied_command(sys.argv[2], sys.argv[3:])
        return
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
    from jmaml.experiment.assembly import build, keys

    cfg = config(args.workload, args.meta_chunks)
    workload = workload_of(cfg)
    setup = build(cfg, workload)
    mesh = parallel.make_mesh()
    sampler = parallel.shard_tasks(workload.train_tasks, mesh)
    chunk_shardings = []  # filled when the step compiles (inspect_array_sharding leaves no op in the program)
    step = parallel.shard_train_step(make_train_step(ShardingSpy(setup.learner, chunk_shardings), setup.optimizer,
                                                     sampler, chunks=cfg.meta_chunks), mesh)
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
    # meta-test through the library function: the sharding of its test tasks inside the compiled scorer, and
    # of the per-task scores it fetches (split over the processes in a multi-process run: to_host gathers them)
    test_shardings, fetched = [], []
    test_sampler = parallel.shard_tasks(workload.test_tasks, mesh)

    def spied_sampler(key, data):
        tasks = test_sampler(key, data)
        jax.debug.inspect_array_sharding(tasks.x_support, callback=test_shardings.append)
        return tasks

    to_host = parallel.to_host

    def spied_to_host(tree):
        fetched.extend((str(x.sharding.spec), x.is_fully_addressable) for x in jax.tree.leaves(tree))
        return to_host(tree)

    parallel.to_host = spied_to_host
    test = meta_test(setup.learner, state.meta_params, spied_sampler,
                     parallel.replicate(workload.test_data, mesh) if workload.test_data is not None else None,
                     key=keys(cfg)[2], num_tasks=cfg.eval_tasks, batch=cfg.eval_batch,
                     max_steps=cfg.eval_max_steps, test_steps=cfg.test_inner_steps, metric=workload.metric)
    parallel.to_host = to_host
    # gathered on every process (a collective), the same tasks drawn unsharded and sharded
    task_values = float(to_host(jax.jit(workload.train_tasks)(key, data).x_support).sum())
    sharded_values = float(to_host(tasks.x_support).sum())
    params = {jax.tree_util.keystr(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(state.meta_params))[0]}
    if jax.process_index() == 0:
        np.savez(args.out, losses=np.asarray(losses), test=np.asarray(test["per_step"]),
                 **{f"param:{name}": p for name, p in params.items()},
                 info=json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                                  "task_spec": task_spec, "distinct_shards": shards,
                                  "all_reduce": "all-reduce" in hlo,
                                  "collectives": sorted(set(re.findall(COLLECTIVES, hlo))),
                                  "chunk_shardings": sharding_info(chunk_shardings),
                                  "test_shardings": sharding_info(test_shardings),
                                  "fetched": sorted(set(fetched)),
                                  "task_values": task_values, "sharded_values": sharded_values}))


if __name__ == "__main__":
    main()
