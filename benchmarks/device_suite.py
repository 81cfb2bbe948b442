"""Everything a short device window should measure, in one call (at most 8 minutes on one H100/H200).

    python -m benchmarks.device_suite [--quick] [--only TEXT ...] [--out benchmarks/results] [--budget-s 450]

Runs, in order of priority, each in its own Python process (so peak device memory, compiled programs
and XLA flags never leak from one run into the next):

1. per workload (``omniglot-5w1s``, ``omniglot-20w1s``, ``mini-5w1s``, ``mini-5w5s``): jmaml with the
   config's defaults, plain JAX, torch.func and the PyTorch per-task loop; ms per meta-step (median
   after warm-up, synchronised, inputs rotated among 3 batches), tasks/s, compile s, peak device
   memory, XLA's FLOPs and achieved FLOP/s. Every run's first meta-gradient is checked against jmaml
   default's on the same inputs and weights (``grad_rel_err``);
2. time to accuracy: ``omniglot-5w1s`` with the paper's settings for 60 s of training, meta-test accuracy
   on 600 tasks (95% interval) at 15, 30 and 60 s (``benchmarks/time_to_accuracy.py``, the one host loop);
3. jmaml with each speed option (:data:`JMAML_OPTIONS`, config overrides) per workload, then several
   runs in one program (:data:`RUNS_IN_ONE_PROGRAM`; tasks/s counts every run's tasks);
4. jmaml's default again under each set of XLA GPU flags (:data:`XLA_FLAG_SETS`; GPU only).

A run that would start after ``--budget-s`` seconds is recorded as not run. ``--quick``: one tiny
workload, four implementations and a 2-second sinusoid time-to-accuracy, on the CPU in CI.
``--only`` keeps the runs whose label contains any of the given texts (e.g. ``--only omniglot-5w1s
jmaml``). Writes ``<out>/<date>-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # where the children run, as python -m benchmarks.device_suite

PEERS = ("plain_jax", "torch_func", "torch_loop")
# jmaml options timed beside its defaults, as labels of benchmarks.harness.workloads.options
JMAML_OPTIONS = ("conv=xla", "conv=im2col", "precision=bf16", "unroll=full")
# jmaml runs trained in one program (jmaml.make_runs_step), against one run's step time: (workload, runs)
RUNS_IN_ONE_PROGRAM = (("omniglot-5w1s", 8), ("omniglot-5w1s", 16), ("mini-5w1s", 8))
# XLA GPU flags worth trying for a launch-bound program, each set applied to its own process.
XLA_FLAG_SETS = {
    "command buffers off": "--xla_gpu_enable_command_buffer=",
    "autotune level 0": "--xla_gpu_autotune_level=0",
    "latency-hiding scheduler": "--xla_gpu_enable_latency_hiding_scheduler=true",
}
QUICK = {"workloads": ("omniglot-5w1s",), "jmaml_options": ("precision=bf16",), "peers": ("plain_jax", "torch_loop")}


def plan(quick: bool, gpu: bool) -> list[dict]:
    """Every run of the suite, in the order they are run."""
    # imported here, not at the top: main() sets up the device memory policy before JAX starts
    from benchmarks.harness.workloads import BENCHMARKED, options

    runs = []
    workloads = QUICK["workloads"] if quick else BENCHMARKED
    labels = QUICK["jmaml_options"] if quick else JMAML_OPTIONS
    peers = QUICK["peers"] if quick else PEERS
    for name in workloads:
        runs.append({"kind": "step", "workload": name, "impl": "jmaml", "variant": "default", "options": {}})
        runs += [{"kind": "step", "workload": name, "impl": peer, "variant": peer, "options": {}} for peer in peers]
    if quick:
        runs.append({"kind": "tta", "config": "sinusoid", "at": [0.5, 1.0, 2.0], "eval_tasks": 100,
                     "set": ["log_every=50"], "variant": "time to accuracy"})
    else:
        runs.append({"kind": "tta", "config": "omniglot-5w1s", "at": [15.0, 30.0, 60.0], "eval_tasks": 600,
                     "set": [], "variant": "time to accuracy"})
    for name in workloads:
        runs += [{"kind": "step", "workload": name, "impl": "jmaml", "variant": label,
                  "options": options(label)} for label in labels]
    if not quick:
        runs += [{"kind": "step", "workload": name, "impl": "jmaml_runs", "variant": f"{n} runs in one program",
                  "options": {"runs": n}} for name, n in RUNS_IN_ONE_PROGRAM]
    if gpu and not quick:
        for name in workloads:
            runs += [{"kind": "step", "workload": name, "impl": "jmaml", "variant": f"default, {label}",
                      "options": {}, "xla_flags": flags} for label, flags in XLA_FLAG_SETS.items()]
    for run in runs:
        run["label"] = " ".join(str(run.get(k, "")) for k in ("workload", "config", "impl", "variant") if run.get(k))
    return runs


def child(spec: dict, out: Path) -> None:
    """One run, in this process: writes ``record.json`` (and ``grads.npz``) into ``out``."""
    import numpy as np

    from benchmarks.harness import environment
    if spec["kind"] == "tta":
        from benchmarks import time_to_accuracy
        from jmaml.experiment import parse_overrides

        overrides = parse_overrides(spec["set"])
        if spec.get("data_dir"):
            overrides["data_dir"] = spec["data_dir"]
        record = time_to_accuracy.run(spec["config"], spec["at"], spec["eval_tasks"], overrides)
        record = {"status": "ok", **record}
    else:
        import jax

        from benchmarks.harness.measure import measure
        from benchmarks.harness.runner import IMPLS
        from benchmarks.harness.workloads import select

        workload = select([spec["workload"]], spec["quick"])[0]
        steps, warmup = (3, 1) if spec["quick"] else (20, 3)
        peak_flops = environment.peak_flops(jax.devices()[0].device_kind)
        record, grads = measure(spec["impl"], IMPLS[spec["impl"]], workload, steps=steps, warmup=warmup, batches=3,
                                options=spec["options"], peak_flops=peak_flops)
        if grads is not None:
            flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
                    for path, leaf in jax.tree_util.tree_leaves_with_path(grads)}
            np.savez(out / "grads.npz", **flat)
    (out / "record.json").write_text(json.dumps(record, default=str))


def launch(spec: dict, timeout: float, env: dict) -> tuple[dict, dict | None]:
    """Runs ``spec`` in a fresh Python process with environment ``env``; the record, plus its first
    meta-gradient if any."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(env)
        if spec.get("xla_flags"):
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + spec["xla_flags"]).strip()
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.device_suite", "--child", json.dumps(spec),
                                   "--child-out", tmp],
                                  env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"status": "error", "reason": f"timed out after {timeout:.0f} s"}, None
        wall = time.perf_counter() - start
        path = Path(tmp) / "record.json"
        if proc.returncode or not path.exists():
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return {"status": "error", "reason": f"exit {proc.returncode}: {' | '.join(tail)}"}, None
        record = json.loads(path.read_text())
        record["process_wall_s"] = wall
        grads = Path(tmp) / "grads.npz"
        return record, (dict(np.load(grads)) if grads.exists() else None)


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


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(env: dict, results: list[dict]) -> str:
    lines = [f"# Device suite, {env['date']}", "",
             f"Device {env['jax_device']} (driver: {env.get('driver') or 'n/a'}), jax {env['jax']}, "
             f"torch {env['torch']}, python {env['python']}, commit {env['commit']}, "
             f"XLA_FLAGS {env['xla_flags']!r}, 1-min load at start {env['load_avg_1min_start']}. "
             "Each run in its own process (peak memory per run). grad err: relative L2 difference of the "
             "first meta-gradient from jmaml default's on the same inputs.", "",
             "| workload | implementation | extra XLA flags | status | ms / step (median) | tasks / s | compile s "
             "| peak MiB | GFLOP / step | TFLOP/s | grad err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["spec"]["kind"] != "step":
            continue
        flops, peak = r.get("flops"), r.get("peak_bytes")
        lines.append(" | ".join([
            f"| {r['spec']['workload']}", r["spec"]["variant"], r["spec"].get("xla_flags") or "",
            r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}",
            _fmt(r.get("median_ms"), ".1f"), _fmt(r.get("tasks_per_s"), ".1f"), _fmt(r.get("compile_s"), ".1f"),
            _fmt(peak / 2 ** 20 if peak else None, ".0f"), _fmt(flops / 1e9 if flops else None, ".2f"),
            _fmt(r.get("tflops_per_s"), ".3f"), _fmt(r.get("grad_rel_err"), ".1e")]) + " |")
    for r in results:
        if r["spec"]["kind"] == "tta":
            lines += ["", f"## Time to accuracy: {r['spec']['config']} ({r['status']})", ""]
            if r["status"] == "ok":
                from benchmarks.time_to_accuracy import markdown as tta_markdown

                lines.append(tta_markdown(r))
            else:
                lines.append(r.get("reason", ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes and few runs: seconds, for CI on the CPU")
    p.add_argument("--only", nargs="+", metavar="TEXT", help="keep runs whose label contains one of these")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the .json and .md")
    p.add_argument("--budget-s", type=float, default=450.0, help="no run starts after this many seconds")
    p.add_argument("--data-dir", help="Omniglot folder for the time-to-accuracy run")
    p.add_argument("--list", action="store_true", help="print the runs and exit")
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

    from benchmarks.harness.measure import gradient_error

    gpu = jax.default_backend() == "gpu"
    runs = plan(args.quick, gpu)
    if args.only:
        runs = [r for r in runs if any(text in r["label"] for text in args.only)]
    if args.list:
        print("\n".join(r["label"] + (f"  [XLA_FLAGS {r['xla_flags']}]" if r.get("xla_flags") else "") for r in runs))
        return 0
    env = environment_record()
    begin, results, references = time.perf_counter(), [], {}
    for spec in runs:
        spec = {**spec, "quick": args.quick, "data_dir": args.data_dir}
        left = args.budget_s - (time.perf_counter() - begin)
        if left <= 0:
            record, grads = {"status": "not run", "reason": f"budget of {args.budget_s:.0f} s spent"}, None
        else:
            record, grads = launch(spec, timeout=max(left, 30.0) + 60.0, env=child_env)
        if grads is not None:
            key = spec["workload"]
            if spec["variant"] == "default" and key not in references:
                references[key] = grads
            if key in references:
                record["grad_rel_err"] = gradient_error(grads, references[key])
        record = {**record, "spec": spec}
        results.append(record)
        print(f"{spec['label']}: {record['status']} {_fmt(record.get('median_ms'), '.1f')} ms "
              f"grad err {_fmt(record.get('grad_rel_err'), '.1e')} {record.get('reason', '')}",
              file=sys.stderr, flush=True)
    env["suite_wall_s"] = time.perf_counter() - begin
    device = re.sub(r"[^A-Za-z0-9]+", "-", env["jax_device"]).strip("-").lower()
    stem = Path(args.out) / f"{datetime.date.today().isoformat()}-{device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(env, results))
    print(stem.with_suffix(".md").read_text())
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
