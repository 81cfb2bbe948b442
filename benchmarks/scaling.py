"""Tasks per second against the device count, weak and strong scaling, and the all-reduce bytes per step.

Times the sharded, jitted meta-training step of ``jmaml train`` (prepared the same way,
:func:`jmaml.experiment.prepare` on the first ``n`` devices, one step per dispatch) for
each device count ``n`` of ``--devices`` and two sweeps:

- weak scaling: ``--per-device`` tasks on every device, so the meta-batch grows as ``n``;
- strong scaling: the config's meta-batch (after ``--set``) split over the ``n`` devices.

Each step is timed to ``block_until_ready``; a row reports the median over ``--steps`` steps after
``--warmup`` steps. The all-reduce bytes per step are read from the compiled program
(``compiled.as_text()``: the summed result shapes of its ``all-reduce`` / ``all-reduce-start``
ops; the step is one scan iteration, so each op runs once a step) and set against the
meta-gradient, the meta-parameters' bytes, which the data-parallel step must sum over devices
once. Other collectives (all-gather, reduce-scatter, ...) are counted apart: a gather of the
tasks would show there.

On a CPU host each device count runs in a subprocess of its own with ``JAX_NUM_CPU_DEVICES=n``
and ``JAX_PLATFORMS=cpu``: simulated devices that share the host's cores, so the rows check that
the sharded program runs and what it communicates, not how fast more devices are. On a GPU or
TPU host the device counts are taken from ``jax.devices()`` (those larger than the host's count
are left out).

Image configs sample from a synthetic uint8 pool shaped like the dataset's meta-training split
(Omniglot 4800 classes, miniImageNet 64 classes; 20 drawings each): a step's cost does not depend
on the pixel values or the pool size, as tasks are gathered from it. ``--data real`` loads the
config's data instead.

    python -m benchmarks.scaling [--config sinusoid] [--set KEY=VALUE ...] [--devices 1 2 4 8]
        [--modes weak strong] [--per-device N] [--steps 20] [--warmup 3] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.hlo import collective_bytes, parse
from benchmarks.harness.workloads import quick_overrides
from jmaml.errors import JmamlError
from jmaml.experiment import CONFIGS, Config, chunking, get_config, parse_overrides

MODES = ("weak", "strong")
SYNTHETIC_DRAWINGS = 20  # drawings per class of the synthetic pool (>= shots + queries of every named config)


class UsageError(Exception):
    """A bad option; :func:`main` prints it as one ``error:`` line and exits with 2."""


def base_config(name: str, sets: list[str], quick: bool) -> Config:
    """The named config with the quick shapes (``--quick``) and then the ``--set`` overrides."""
    overrides = quick_overrides(CONFIGS[name]) if quick else {}
    overrides.update(parse_overrides(sets))
    return get_config(name, overrides)


def meta_batches(cfg: Config, devices: list[int], modes: list[str], per_device: int) -> dict[tuple[str, int], int]:
    """``(mode, n) -> meta-batch``; every one checked against its device count before anything compiles."""
    from jmaml import parallel

    sizes = {}
    for mode in modes:
        for n in devices:
            size = per_device * n if mode == "weak" else cfg.meta_batch
            parallel.check_meta_batch(size, n, meta_chunks=chunking(dataclasses.replace(cfg, meta_batch=size), n)[0],
                                      name="meta_batch" if mode == "strong" else f"--per-device {per_device} x {n}")
            sizes[mode, n] = size
    return sizes


def synthetic_images(cfg: Config):
    """A uint8 pool shaped like ``cfg``'s meta-training split, of random pixels."""
    from jmaml.data import mini_imagenet, omniglot

    if cfg.dataset == "omniglot":
        shape = (omniglot.NUM_TRAIN_CHARACTERS * omniglot.ROTATIONS, SYNTHETIC_DRAWINGS, cfg.image_size,
                 cfg.image_size, 1)
    else:
        shape = (mini_imagenet.CLASSES["train"], SYNTHETIC_DRAWINGS, *mini_imagenet.IMAGE_SHAPE)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def workload_of(cfg: Config, data: str, pool):
    from jmaml.experiment import image_workload, make_workload

    if cfg.dataset == "sinusoid" or data == "real":
        return make_workload(cfg)
    variant = "omniglot" if cfg.dataset == "omniglot" else "mini_imagenet"
    return image_workload(cfg, pool, pool[:cfg.ways], variant)


def compile_step(cfg: Config, n: int, data: str, pool):
    """``cfg``'s train step on the first ``n`` devices, prepared as ``jmaml train`` prepares it
    (:func:`jmaml.experiment.prepare`, no run folder), one step per dispatch: a :class:`Run` whose
    ``compile_seconds`` is the first program's compile time."""
    import jax

    from jmaml.experiment import prepare

    devices = jax.devices()[:n]
    if len(devices) < n:
        raise UsageError(f"{n} devices asked, {len(devices)} present")
    return prepare(dataclasses.replace(cfg, log_every=1), None, progress=False, devices=devices,
                   workload=workload_of(cfg, data, pool))


def measure(program, cfg: Config, mode: str, *, steps: int, warmup: int) -> dict:
    """One row: the median step time of ``program`` (a prepared run of ``cfg``, see :func:`compile_step`)
    and the collectives it runs."""
    import jax

    from jmaml import parallel

    trainer = program.trainer
    devices, train_data = list(trainer.mesh.devices.flat), trainer.data
    n, template = len(devices), program.setup.template()
    compiled = trainer.compiled(*trainer.plan(0, cfg.steps), template)
    collectives = collective_bytes(parse(compiled.as_text()))
    state = parallel.replicate(program.setup.init(), trainer.mesh)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics, finite = compiled(state, train_data)
        jax.block_until_ready((state, metrics, finite))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    gradient = sum(int(np.prod(leaf.shape)) * 4 for leaf in jax.tree.leaves(template.meta_params))
    return {"mode": mode, "devices": n, "meta_batch": cfg.meta_batch, "tasks_per_device": cfg.meta_batch // n,
            "median_ms": 1e3 * median, "min_ms": 1e3 * min(times), "tasks_per_s": cfg.meta_batch / median,
            "steps": steps, "warmup": warmup, "compile_s": program.compile_seconds, **collectives,
            "gradient_bytes": gradient,
            "meta_params": gradient // 4, "finite": bool(finite), "device_kind": devices[0].device_kind,
            "platform": devices[0].platform}


def run_counts(cfg: Config, counts: list[int], sizes: dict[tuple[str, int], int], args) -> list[dict]:
    """Rows for ``counts`` in this process (its devices)."""
    pool = synthetic_images(cfg) if cfg.dataset != "sinusoid" and args.data == "synthetic" else None
    rows = []
    for n in counts:
        programs: dict[int, Any] = {}  # by meta-batch: weak and strong share a program where they meet
        for mode in args.modes:
            mode_cfg = dataclasses.replace(cfg, meta_batch=sizes[mode, n])
            if mode_cfg.meta_batch not in programs:
                programs[mode_cfg.meta_batch] = compile_step(mode_cfg, n, args.data, pool)
            row = measure(programs[mode_cfg.meta_batch], mode_cfg, mode, steps=args.steps, warmup=args.warmup)
            print(f"{mode} n={n}: {row['meta_batch']} tasks, {row['median_ms']:.2f} ms/step, "
                  f"{row['tasks_per_s']:.1f} tasks/s, all-reduce {row['all_reduce_bytes']} B "
                  f"(gradient {row['gradient_bytes']} B), compiled in {row['compile_s']:.1f} s",
                  file=sys.stderr, flush=True)
            rows.append(row)
        for program in programs.values():
            program.close()
    return rows


def run_simulated(n: int, argv: list[str]) -> list[dict]:
    """Rows of device count ``n`` from a subprocess with ``n`` simulated CPU devices."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(n), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "benchmarks.scaling", *argv, "--devices", str(n), "--child"]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(f"the run on {n} simulated CPU devices failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_speedups(rows: list[dict]) -> None:
    """Speed-up and efficiency against the 1-device row of the same sweep (when measured)."""
    for row in rows:
        one = next((r for r in rows if r["mode"] == row["mode"] and r["devices"] == 1), None)
        row["speedup"] = row["tasks_per_s"] / one["tasks_per_s"] if one else None
        row["efficiency"] = row["speedup"] / row["devices"] if one else None


def title(cfg: Config) -> str:
    what = "sinusoid regression" if cfg.dataset == "sinusoid" else f"{cfg.ways}-way {cfg.shots}-shot, " \
        f"{cfg.queries} queries"
    model = f"MLP {','.join(map(str, cfg.hidden))}" if cfg.dataset == "sinusoid" else \
        f"Conv4 {cfg.filters or 'paper'} filters, {cfg.image_size if cfg.dataset == 'omniglot' else 84}px"
    order = "first-order" if cfg.first_order else "second-order"
    return f"{cfg.name} ({what}, {model}, {cfg.inner_steps} inner steps, {order} {cfg.algorithm})"


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["results"]
    kind = rows[0]["device_kind"] if rows else env["jax_device"]
    where = (f"{max(r['devices'] for r in rows)} simulated CPU devices (`JAX_NUM_CPU_DEVICES`, one subprocess per "
             f"count) on {env['cpu_count']} cores" if result["simulated"] else
             f"{kind}, {env['jax_device_count']} present")
    load = "unknown" if env["load_avg_1min_start"] is None else f"{env['load_avg_1min_start']:.2f}"
    caption = (f"Scaling of the `jmaml train` step of {result['title']} over devices: {where}; jax {env['jax']}, "
               f"commit {env['commit']}, {env['date']}, load average {load}; "
               f"median of {rows[0]['steps'] if rows else 0} steps after {rows[0]['warmup'] if rows else 0} warm-up, "
               f"{result['data']} data. All-reduce bytes: the result shapes of the compiled step's all-reduce ops; "
               "gradient: the meta-parameters' float32 bytes.")
    if result["simulated"]:
        caption += (" Simulated CPU devices share the same cores: this is a functional check (the sharded step "
                    "runs, and what it communicates), not a speed figure.")
    lines = [caption, "", "| scaling | devices | meta-batch | tasks/device | ms/step | tasks/s | speed-up | "
             "efficiency | all-reduce ops | all-reduce bytes | gradient bytes | all-reduce / gradient | "
             "other collective bytes |", "|---|" + "---:|" * 12]
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['mode']} | {r['devices']} | {r['meta_batch']} | {r['tasks_per_device']} | "
                     f"{r['median_ms']:.2f} | {r['tasks_per_s']:.1f} | {fmt(r['speedup'], '.2f')} | "
                     f"{fmt(r['efficiency'], '.2f')} | {r['all_reduce_ops']} | {r['all_reduce_bytes']} | "
                     f"{r['gradient_bytes']} | {r['all_reduce_bytes'] / r['gradient_bytes']:.2f} | "
                     f"{r['other_collective_bytes']} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="sinusoid", choices=list(CONFIGS), metavar="CONFIG",
                   help=f"one of {', '.join(CONFIGS)} (default sinusoid)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, as `jmaml train --set` (repeatable); meta_batch sets strong scaling's")
    p.add_argument("--devices", type=int, nargs="+", help="device counts (default 1 2 4 8; quick 1 2)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--per-device", type=int, help="weak scaling's tasks per device (default: meta_batch / "
                   "the largest device count)")
    p.add_argument("--steps", type=int, help="timed steps per row (default 20; quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3; quick 1)")
    p.add_argument("--data", choices=("synthetic", "real"), default="synthetic",
                   help="image configs: a random uint8 pool of the dataset's shape, or the config's data")
    p.add_argument("--quick", action="store_true", help="tiny shapes, devices 1 2, 2 steps: a functional check")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the Markdown table here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one count, rows as JSON on stdout
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.devices = args.devices or ([1, 2] if args.quick else [1, 2, 4, 8])
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    try:
        for flag, value in (("--steps", args.steps), ("--warmup", args.warmup), *(("--devices", n) for n in
                                                                                  args.devices)):
            if value < (0 if flag == "--warmup" else 1):
                raise UsageError(f"{flag} must be at least {0 if flag == '--warmup' else 1}, got {value}")
        cfg = base_config(args.config, args.set, args.quick)
        per_device = args.per_device or max(1, cfg.meta_batch // max(args.devices))
        if per_device < 1:
            raise UsageError(f"--per-device must be at least 1, got {per_device}")
        args.devices = sorted(set(args.devices))
        sizes = meta_batches(cfg, args.devices, args.modes, per_device)
        if args.child:
            print(json.dumps(run_counts(cfg, args.devices, sizes, args)))
            return 0
        import jax

        from benchmarks.harness.environment import describe

        simulated = jax.default_backend() == "cpu"
        if simulated:
            child_argv = ["--config", args.config, *(a for s in args.set for a in ("--set", s)), "--modes",
                          *args.modes, "--per-device", str(per_device), "--steps", str(args.steps), "--warmup",
                          str(args.warmup), "--data", args.data, *(["--quick"] if args.quick else [])]
            rows = [row for n in args.devices for row in run_simulated(n, child_argv)]
        else:
            present = len(jax.devices())
            skipped = [n for n in args.devices if n > present]
            if skipped:
                print(f"scaling.py: leaving out device counts {skipped}: {present} devices present", file=sys.stderr)
            rows = run_counts(cfg, [n for n in args.devices if n <= present], sizes, args)
    except (UsageError, JmamlError) as err:
        print(f"scaling.py: error: {err}", file=sys.stderr)
        return 2
    rows.sort(key=lambda r: (args.modes.index(r["mode"]), r["devices"]))
    add_speedups(rows)
    result = {"environment": describe(), "config": cfg.name, "overrides": args.set, "quick": args.quick,
              "title": title(cfg), "simulated": simulated, "data": "generated" if cfg.dataset == "sinusoid"
              else args.data, "per_device": per_device, "strong_meta_batch": cfg.meta_batch, "results": rows}
    table = markdown(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
