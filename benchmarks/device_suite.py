"""Everything a short device window should measure, in one call of at most 7 minutes on one H100/H200.

    python -m benchmarks.device_suite [--quick] [--only TEXT ...] [--out benchmarks/results] [--budget-s 420]
                                      [--compile-threads 4] [--list | --list-gpu]

Runs, in order of priority (the issue that asked for it: the fastest MAML step on a GPU):

1. per workload (``omniglot-5w1s``, ``omniglot-20w1s``, ``mini-5w1s``, ``mini-5w5s``): jmaml with the
   config's defaults, the same at ``jax_default_matmul_precision=highest`` (the precision reference),
   plain JAX (vmap + jit), and jmaml with each option of :data:`JMAML_OPTIONS` (the convolution lowerings,
   bf16, the inner loop unrolled); ms per meta-step (median after warm-up, synchronised, inputs rotated
   among 3 batches), tasks/s, compile s, the compiled program's bytes, XLA's FLOPs and achieved FLOP/s;
2. the PyTorch peers: torch.func on every workload, the per-task loop (learn2learn / higher pattern)
   only on :data:`LOOP_WORKLOAD` (68x slower than jmaml, its other figures are known: RESULTS.md);
3. jmaml's default on ``omniglot-5w1s`` under each set of XLA GPU flags (:data:`XLA_FLAG_SETS`: whole-step
   CUDA graphs, autotuning off; GPU only);
4. time to accuracy: ``omniglot-5w1s`` with the paper's settings, meta-test accuracy on 600 tasks (95%
   interval) at 10, 20 and 30 s of training (``benchmarks/time_to_accuracy.py``);
5. if time is left: several jmaml runs in one program (:data:`RUNS_IN_ONE_PROGRAM`).

Every run's first meta-gradient is checked against jmaml default's on the same inputs and weights
(``grad err``) and against the highest-precision one (``err vs highest``).

**Processes.** A process's start (Python, imports, the device, the data) cost about 10 s on the H200, and
each program about 10 s of compiling: one process per run did not fit 7 minutes. So the JAX runs of one
workload share one process, which compiles their programs at once in ``--compile-threads`` threads (XLA
compiles without holding the GIL) and then times them one after the other; the PyTorch runs share
another (peak memory reset per run); each XLA flag set has a process of its own (the flags are read when
the backend starts), and so has the time-to-accuracy run. A JAX run's memory is its compiled program's
(XLA's memory analysis: arguments, outputs, temporaries and code), not a process peak. Concurrent
compiles autotune concurrently on the one device, which may pick other kernels than one compile alone:
``--compile-threads 1`` compiles one program at a time.

``--list`` prints the plan this machine would run; ``--list-gpu`` the plan a GPU runs, each process with its
estimated seconds (:func:`estimate_s`, from the 2026-11-27 H200 figures) and the running total against
the budget. A process that would start after ``--budget-s`` seconds is recorded as not run. ``--quick``:
one tiny workload, a few runs and a 2-second sinusoid time-to-accuracy, on the CPU in CI. ``--only`` keeps
the runs whose label contains any of the given texts (e.g. ``--only omniglot-5w1s jmaml``). Writes
``<out>/<date>-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where the children run, as python -m benchmarks.device_suite

BUDGET_S = 420.0  # one device call of at most 7 minutes
JAX_PEERS = ("plain_jax",)
TORCH_PEERS = ("torch_func",)
LOOP_WORKLOAD = "omniglot-5w1s"  # the only workload the PyTorch per-task loop runs on
# jmaml options timed beside its defaults, as labels of benchmarks.harness.workloads.options; a key the
# workload's dataset does not read (pool=reshape on Omniglot) is left out of that workload's run. The last is
# every option that cuts launches per step (benchmarks/gpu_program.py, RESULTS.md 2026-12-07) at once.
JMAML_OPTIONS = ("conv=xla", "conv=im2col", "precision=bf16", "unroll=full",
                 "unroll=full, norm_stats=one_pass, meta_update=flat, pool=reshape")
REFERENCE_PRECISION = "highest"  # jax_default_matmul_precision of the gradient-agreement reference
FLAGS_WORKLOAD = "omniglot-5w1s"
# XLA GPU flags for a launch-bound step, each set in a process of its own: whole-step CUDA graphs (command
# buffers that also take loops and conditionals, from a single kernel on; then with loops unrolled inside the
# graph), and autotuning off (what autotuning buys, and costs in compile time). Each flag is one that jaxlib
# 0.11.2's CUDA plugin knows (an unknown flag aborts the process: XLA_FLAGS parsed, 2026-12-07).
_GRAPHS = ("--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL "
           "--xla_gpu_graph_min_graph_size=1")
XLA_FLAG_SETS = {
    "whole-step CUDA graphs": _GRAPHS,
    "whole-step CUDA graphs, loops unrolled": f"{_GRAPHS} --xla_gpu_command_buffer_unroll_loops=true",
    "autotune off": "--xla_gpu_autotune_level=0",
}
TTA = {"config": "omniglot-5w1s", "at": [10.0, 20.0, 30.0], "eval_tasks": 600, "set": []}
# jmaml runs trained in one program (jmaml.make_runs_step), against one run's step time: (workload, runs)
RUNS_IN_ONE_PROGRAM = (("omniglot-5w1s", 8), ("omniglot-5w1s", 16), ("mini-5w1s", 8))
QUICK = {"workloads": ("omniglot-5w1s",), "jmaml_options": ("precision=bf16",), "torch_peers": ()}
# (warm-up, timed) meta-steps per implementation; the loop is slow and its figure known
STEPS = {"torch_loop": (1, 5), "torch_func": (2, 10)}
DEFAULT_STEPS, QUICK_STEPS = (3, 20), (1, 3)

# What the estimates stand on: the 2026-11-27 H200 suite (benchmarks/results/2026-11-27-h200-run*.json).
# Per workload: compile s of jmaml default and of plain JAX; ms per meta-step of jmaml default, plain JAX,
# torch.func and the PyTorch loop.
H200 = {
    "omniglot-5w1s": {"compile": 8.7, "plain_compile": 8.0, "jmaml": 10.6, "plain_jax": 11.9, "torch_func": 44.2,
                      "torch_loop": 718.5},
    "omniglot-20w1s": {"compile": 12.8, "plain_compile": 20.6, "jmaml": 41.8, "plain_jax": 44.6,
                       "torch_func": 190.4, "torch_loop": 1393.4},
    "mini-5w1s": {"compile": 14.3, "plain_compile": 17.3, "jmaml": 32.1, "plain_jax": 29.1, "torch_func": 186.7,
                  "torch_loop": 378.3},
    "mini-5w5s": {"compile": 13.0, "plain_compile": 17.6, "jmaml": 49.4, "plain_jax": 36.3, "torch_func": 180.8,
                  "torch_loop": 193.3},
}
PROCESS_S = 10.5  # a child's start, data and record: jmaml default's process wall less its compile (19.2 - 8.7)
TORCH_SETUP_S = 3.0  # a PyTorch run's model and batches on the device
TTA_OVERHEAD_S = 31.7  # the time-to-accuracy process less its training seconds (91.7 s for 60 s)
UNMEASURED = 1.5  # an option not yet measured: this times jmaml default's compile and step
COMPILE_SPEEDUP = 3.0  # assumed speed-up of --compile-threads >= 3 over compiling one program at a time


def _step_run(workload: str, impl: str, variant: str, options: dict | None = None, **extra) -> dict:
    return {"workload": workload, "impl": impl, "variant": variant, "options": options or {}, **extra}


def plan(quick: bool, gpu: bool) -> list[dict]:
    """Every process of the suite, in the order they run: ``{"kind": "steps" | "tta", "runs": [...],
    "xla_flags": ...}``; a step run is ``{"workload", "impl", "variant", "options", "precision"?, "label"}``."""
    # imported here, not at the top: main() sets up the device memory policy before JAX starts
    import jax

    from benchmarks.harness.workloads import BENCHMARKED, options
    from jmaml.experiment import CONFIGS

    workloads = QUICK["workloads"] if quick else BENCHMARKED
    labels = QUICK["jmaml_options"] if quick else JMAML_OPTIONS
    backend = "gpu" if gpu else jax.default_backend()
    groups = []
    for name in workloads:
        runs = [_step_run(name, "jmaml", "default"),
                _step_run(name, "jmaml", f"default, matmul precision {REFERENCE_PRECISION}",
                          precision=REFERENCE_PRECISION)]
        runs += [_step_run(name, peer, peer) for peer in JAX_PEERS]
        for label in labels:
            label = ", ".join(part for part in label.split(", ") if applies(CONFIGS[name], part))
            if label and not same_as_default(CONFIGS[name], options(label), backend):
                runs.append(_step_run(name, "jmaml", label, options(label)))
        groups.append({"kind": "steps", "runs": runs})
    torch_peers = QUICK["torch_peers"] if quick else TORCH_PEERS
    torch_runs = [_step_run(name, peer, peer) for name in workloads for peer in torch_peers]
    torch_runs += [_step_run(name, "torch_loop", "torch_loop") for name in workloads if name == LOOP_WORKLOAD]
    groups.append({"kind": "steps", "runs": torch_runs})
    if gpu and not quick:
        groups += [{"kind": "steps", "xla_flags": flags,
                    "runs": [_step_run(FLAGS_WORKLOAD, "jmaml", f"default, {label}", xla_flags=flags)]}
                   for label, flags in XLA_FLAG_SETS.items()]
    tta = ({"config": "sinusoid", "at": [0.5, 1.0, 2.0], "eval_tasks": 100, "set": ["log_every=50"]}
           if quick else TTA)
    groups.append({"kind": "tta", "runs": [{**tta, "variant": "time to accuracy"}]})
    if not quick:
        groups += [{"kind": "steps", "runs": [_step_run(name, "jmaml_runs", f"{n} runs in one program", {"runs": n})]}
                   for name, n in RUNS_IN_ONE_PROGRAM]
    for group in groups:
        for run in group["runs"]:
            run["label"] = " ".join(str(run[k]) for k in ("workload", "config", "impl", "variant") if run.get(k))
    return [group for group in groups if group["runs"]]


def applies(cfg, part: str) -> bool:
    """Whether the option ``part`` (one ``key=value`` of a label) is a key ``cfg``'s dataset reads."""
    from jmaml.experiment.configs import DATASETS

    key = part.split("=")[0].strip()
    return key in DATASETS[cfg.dataset] or not any(key in keys for keys in DATASETS.values())


def same_as_default(cfg, overrides: dict, backend: str) -> bool:
    """Whether ``overrides`` leave ``cfg``'s program as it is on ``backend`` (e.g. ``conv=xla`` where the
    config's ``conv=auto`` is XLA's convolution): such an option is not timed twice."""
    from jmaml.models.conv import resolve_impl

    changed = dataclasses.replace(cfg, **overrides)
    return dataclasses.replace(changed, conv=resolve_impl(changed.conv, backend)) == dataclasses.replace(
        cfg, conv=resolve_impl(cfg.conv, backend))


def steps_of(run: dict, quick: bool) -> tuple[int, int]:
    """(warm-up, timed) meta-steps of a step run."""
    return QUICK_STEPS if quick else STEPS.get(run["impl"], DEFAULT_STEPS)


def estimate_s(group: dict, compile_threads: int) -> float:
    """Estimated seconds of one process of the full suite on an H100/H200, from :data:`H200`: the
    process's start, its programs' compiles (at once in ``compile_threads`` threads, assumed
    :data:`COMPILE_SPEEDUP` times faster than one at a time, never faster than the longest), set-up
    and steps. A jmaml option not measured yet counts :data:`UNMEASURED` times jmaml default."""
    if group["kind"] == "tta":
        return PROCESS_S + max(group["runs"][0]["at"]) + TTA_OVERHEAD_S
    compiles, seconds = [], PROCESS_S
    for run in group["runs"]:
        known = H200[run["workload"]]
        warmup, timed = steps_of(run, quick=False)
        factor = 1.0 if run["variant"] == "default" or run["impl"] != "jmaml" else UNMEASURED
        if run["impl"] == "jmaml_runs":
            factor = run["options"]["runs"] / 2  # assumed: N runs take N/2 times one run (the target: 8 in 2x)
        if run["impl"].startswith("torch"):
            seconds += TORCH_SETUP_S
        else:
            compiles.append(known["plain_compile" if run["impl"] == "plain_jax" else "compile"] * factor)
        ms = known[run["impl"] if run["impl"] in known else "jmaml"] * factor
        seconds += (warmup + timed + 1) * ms / 1e3
    if compiles:
        speedup = min(COMPILE_SPEEDUP, compile_threads, len(compiles))
        seconds += max(max(compiles), sum(compiles) / speedup)
    return seconds


def print_plan(groups: list[dict], compile_threads: int, budget_s: float) -> float:
    """Prints every process with its runs, estimated seconds and the running total; returns the
    total of the processes up to and including the time-to-accuracy run (the suite's must-run part)."""
    total, must = 0.0, 0.0
    for group in groups:
        seconds = estimate_s(group, compile_threads)
        total += seconds
        flags = f"  [XLA_FLAGS {group['xla_flags']}]" if group.get("xla_flags") else ""
        late = "  (past the budget: runs only if time is left)" if total > budget_s else ""
        print(f"~{seconds:5.0f} s  (total ~{total:4.0f} s){late}{flags}")
        for run in group["runs"]:
            print(f"           {run['label']}")
        if not must and group["kind"] == "tta":
            must = total
    print(f"estimated on an H100/H200: ~{must:.0f} s up to the time-to-accuracy run, ~{total:.0f} s in all; "
          f"budget {budget_s:.0f} s")
    return must


def _set_up_run(run: dict, workloads: dict, quick: bool):
    from benchmarks.harness.measure import set_up
    from benchmarks.harness.runner import IMPLS

    warmup, timed = steps_of(run, quick)
    precision = contextlib.nullcontext()
    if run.get("precision"):
        import jax

        precision = jax.default_matmul_precision(run["precision"])  # thread-local: this run's trace only
    with precision:
        return set_up(run["impl"], IMPLS[run["impl"]], workloads[run["workload"]], steps=timed, warmup=warmup,
                      batches=3, options=run["options"])


def child(group: dict, out: Path) -> None:
    """One process of the suite: writes ``record-<i>.json`` (and ``grads-<i>.npz``) into ``out`` for run
    ``i`` of ``group`` as soon as it is measured."""
    import numpy as np

    from benchmarks.harness import environment

    def write(i: int, record: dict, grads=None) -> None:
        if grads is not None:
            import jax

            flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
                    for path, leaf in jax.tree_util.tree_leaves_with_path(grads)}
            np.savez(out / f"grads-{i}.npz", **flat)
        (out / f"record-{i}.json").write_text(json.dumps(record, default=str))

    if group["kind"] == "tta":
        from benchmarks import time_to_accuracy
        from jmaml.experiment import parse_overrides

        spec = group["runs"][0]
        overrides = parse_overrides(spec["set"])
        if group.get("data_dir"):
            overrides["data_dir"] = group["data_dir"]
        write(0, {"status": "ok", **time_to_accuracy.run(spec["config"], spec["at"], spec["eval_tasks"], overrides)})
        return
    import jax

    from benchmarks.harness.measure import time_steps
    from benchmarks.harness.workloads import select

    quick, runs = group["quick"], group["runs"]
    names = sorted({run["workload"] for run in runs})
    workloads = dict(zip(names, select(names, quick)))
    peak_flops = environment.peak_flops(jax.devices()[0].device_kind)
    if all(not run["impl"].startswith("torch") for run in runs):
        # every program compiled at once, then each timed alone
        with ThreadPoolExecutor(max(1, group["compile_threads"])) as pool:
            prepared = list(pool.map(lambda run: _set_up_run(run, workloads, quick), runs))
        for i, ready in enumerate(prepared):
            record, grads = time_steps(ready, peak_flops=peak_flops)
            record["peak_bytes"] = None  # the process's peak holds every program: the memory is program_bytes
            prepared[i] = None  # its buffers
            write(i, record, grads)
    else:
        for i, run in enumerate(runs):  # one at a time: the peak memory is each run's own
            write(i, *time_steps(_set_up_run(run, workloads, quick), peak_flops=peak_flops))


def launch(group: dict, timeout: float, env: dict) -> list[tuple[dict, dict | None]]:
    """Runs ``group`` in a fresh Python process with environment ``env``: per run, its record and its
    first meta-gradient if any. A run the process did not finish (it crashed or timed out) is an error."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(env)
        if group.get("xla_flags"):
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + group["xla_flags"]).strip()
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.device_suite", "--child", json.dumps(group),
                                   "--child-out", tmp],
                                  env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            failure = f"exit {proc.returncode}: {' | '.join(tail)}"
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout:.0f} s"
        wall = time.perf_counter() - start
        results = []
        for i in range(len(group["runs"])):
            path, grads = Path(tmp) / f"record-{i}.json", Path(tmp) / f"grads-{i}.npz"
            if not path.exists():
                results.append(({"status": "error", "reason": failure}, None))
                continue
            record = {**json.loads(path.read_text()), "process_wall_s": wall}
            results.append((record, dict(np.load(grads)) if grads.exists() else None))
        return results


def environment_record() -> dict:
    from benchmarks.harness import environment

    env = environment.describe()
    try:
        env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    env["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return env


def save_target_config(folder: Path, device: str) -> Path | None:
    """On a GPU, the card's own XLA target config (``GpuTargetConfigProto`` text), for compiling its programs
    on a machine without one (``benchmarks/gpu_program.py``); None elsewhere."""
    import jax

    if jax.default_backend() != "gpu":
        return None
    from jax._src.lib import xla_client

    path = folder / f"{device}-target-config.txtpb"
    path.write_text(str(xla_client.get_topology_for_devices(jax.devices()).target_config))
    return path


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(env: dict, results: list[dict]) -> str:
    lines = [f"# Device suite, {env['date']}", "",
             f"Device {env['jax_device']} (driver: {env.get('driver') or 'n/a'}), jax {env['jax']}, "
             f"torch {env['torch']}, python {env['python']}, commit {env['commit']}, "
             f"XLA_FLAGS {env['xla_flags']!r}, 1-min load at start {env['load_avg_1min_start']}, "
             f"suite {env.get('suite_wall_s', 0):.0f} s. The JAX runs of a workload share a process; MiB: the "
             "compiled program's bytes for JAX, the peak allocated for PyTorch. grad err: relative L2 difference "
             "of the first meta-gradient from jmaml default's on the same inputs; vs highest: from jmaml default's "
             f"at matmul precision {REFERENCE_PRECISION}.", "",
             "| workload | implementation | extra XLA flags | status | ms / step (median) | tasks / s | compile s "
             "| MiB | GFLOP / step | TFLOP/s | grad err | vs highest |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        spec = r["spec"]
        if "workload" not in spec:
            continue
        flops, memory = r.get("flops"), r.get("peak_bytes") or r.get("program_bytes")
        lines.append(" | ".join([
            f"| {spec['workload']}", spec["variant"], spec.get("xla_flags") or "",
            r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}",
            _fmt(r.get("median_ms"), ".1f"), _fmt(r.get("tasks_per_s"), ".1f"), _fmt(r.get("compile_s"), ".1f"),
            _fmt(memory / 2 ** 20 if memory else None, ".0f"), _fmt(flops / 1e9 if flops else None, ".2f"),
            _fmt(r.get("tflops_per_s"), ".3f"), _fmt(r.get("grad_rel_err"), ".1e"),
            _fmt(r.get("grad_err_vs_highest"), ".1e")]) + " |")
    for r in results:
        if "config" in r["spec"]:
            lines += ["", f"## Time to accuracy: {r['spec']['config']} ({r['status']})", ""]
            if r["status"] == "ok":
                from benchmarks.time_to_accuracy import markdown as tta_markdown

                lines.append(tta_markdown(r))
            else:
                lines.append(r.get("reason", ""))
    return "\n".join(lines) + "\n"


def compare_gradients(spec: dict, record: dict, grads: dict | None, references: dict) -> None:
    """Adds the run's gradient agreement to ``record``: against jmaml default's first meta-gradient on its
    workload (``grad_rel_err``) and against the highest-precision one (``grad_err_vs_highest``); a
    reference run's own gradient becomes the reference for the runs after it."""
    from benchmarks.harness.measure import gradient_error

    if grads is None:
        return
    for kind, variant in (("grad_rel_err", "default"),
                          ("grad_err_vs_highest", f"default, matmul precision {REFERENCE_PRECISION}")):
        key = (kind, spec["workload"])
        if spec["impl"] == "jmaml" and spec["variant"] == variant and key not in references:
            references[key] = grads
        if key in references:
            record[kind] = gradient_error(grads, references[key])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few runs: seconds, for CI on the CPU")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="keep runs whose label contains one of these")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the .json and .md")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="no process starts after this many seconds")
    p.add_argument("--compile-threads", type=int, default=4,
                   help="programs a process compiles at once (1: one at a time, as a lone run would)")
    p.add_argument("--data-dir", help="Omniglot folder for the time-to-accuracy run")
    p.add_argument("--list", action="store_true", help="print this machine's plan with estimated seconds and exit")
    p.add_argument("--list-gpu", action="store_true", help="print a GPU's plan with estimated seconds and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child), Path(args.child_out))
        return 0
    child_env = dict(os.environ)
    # This process only asks for the backend: without this, JAX would hold 75% of the GPU's memory
    # all along and leave the runs (PyTorch's above all) the rest.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    import jax

    groups = plan(args.quick, args.list_gpu or jax.default_backend() == "gpu")
    if args.only:
        groups = [{**g, "runs": [r for r in g["runs"] if any(text in r["label"] for text in args.only)]}
                  for g in groups]
        groups = [g for g in groups if g["runs"]]
    if args.list or args.list_gpu:
        print_plan(groups, args.compile_threads, args.budget_s)
        return 0
    env = environment_record()
    begin, results, references = time.perf_counter(), [], {}
    for group in groups:
        group = {**group, "quick": args.quick, "data_dir": args.data_dir, "compile_threads": args.compile_threads}
        left = args.budget_s - (time.perf_counter() - begin)
        if left <= 0:
            outcome = [({"status": "not run", "reason": f"budget of {args.budget_s:.0f} s spent"}, None)
                       for _ in group["runs"]]
        else:
            outcome = launch(group, timeout=max(left, 30.0) + 60.0, env=child_env)
        for spec, (record, grads) in zip(group["runs"], outcome):
            compare_gradients(spec, record, grads, references)
            record = {**record, "spec": {**spec, "xla_flags": group.get("xla_flags")}}
            results.append(record)
            print(f"{spec['label']}: {record['status']} {_fmt(record.get('median_ms'), '.1f')} ms "
                  f"grad err {_fmt(record.get('grad_rel_err'), '.1e')} "
                  f"vs highest {_fmt(record.get('grad_err_vs_highest'), '.1e')} {record.get('reason', '')}",
                  file=sys.stderr, flush=True)
    env["suite_wall_s"] = time.perf_counter() - begin
    device = re.sub(r"[^A-Za-z0-9]+", "-", env["jax_device"]).strip("-").lower()
    stem = Path(args.out) / f"{datetime.date.today().isoformat()}-{device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    env["target_config"] = str(save_target_config(stem.parent, device))
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(env, results))
    print(stem.with_suffix(".md").read_text())
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
