"""The GPU program of one meta-step, read without a GPU: kernel launches, cuDNN convolutions, GEMMs.

Compiles (does not run) one jmaml meta-training step (``make_train_step`` with Adam, the program the
throughput benchmark times, :func:`benchmarks.harness.jax_impls.jmaml_step`) of each benchmarked
config for each option, for an NVIDIA target described by a ``GpuTargetConfigProto``
(``benchmarks/targets/<name>.txtpb``) on a machine without a GPU: JAX's deviceless ahead-of-time
compilation (``jax.experimental.topologies``). It needs JAX's CUDA plugin (``jax[cuda12]``, Python
3.12) but no device; ``JAX_PLATFORMS=cpu`` must be set before JAX starts. ``--target cpu`` compiles for
this machine's CPU instead (no plugin needed; what CI runs).

Counted per step from the optimized HLO (:func:`benchmarks.harness.hlo.gpu_counts`): kernel launches
(launching instructions of the entry and of loop bodies times their ``known_trip_count``), cuDNN
convolution custom-calls (how many grouped, how many with a window larger than the 3x3 kernel: weight
gradients written as forward convolutions), GEMMs (cuBLAS calls and GEMM fusions), copies; and the
compiled memory (arguments + outputs + temporaries + code - aliased) and FLOPs of XLA's cost analysis
(the deviceless compile gives none: then that of the program before optimization, lowered for the CPU).
``--breakdown`` also prints, per program, where the launches come from: by kind, and by the source
line of jmaml or optax that the launching instruction's metadata names.

Without a device XLA does not autotune: GEMM tilings and cuDNN algorithms are chosen at run time, and
CUDA graphs are formed when the program is loaded. The counts describe the program's structure, not
its speed. ``default`` resolves ``conv=auto`` as on a GPU.

    JAX_PLATFORMS=cpu python -m benchmarks.gpu_program --target h200 [--workloads NAME ...] \\
        [--only OPTION ...] [--quick] [--breakdown] [--dump DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from benchmarks.harness.hlo import executed, gpu_counts, gpu_kind, launches, parse
from benchmarks.harness.jax_impls import flops, jmaml_step
from benchmarks.harness.workloads import BENCHMARKED, BenchWorkload, init_params, make_batches, options, select
from jmaml.core.step import init_state
from jmaml.experiment import program_bytes
from jmaml.models.conv import resolve_impl

# Compile targets: a GpuTargetConfigProto in text format each, beside this file; "cpu" is this machine.
TARGETS_DIR = Path(__file__).resolve().parent / "targets"
# The programs compiled, by their option labels (:func:`benchmarks.harness.workloads.options`).
OPTIONS = ("default", "conv=xla", "conv=im2col", "unroll=full", "precision=bf16")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LAYER = re.compile(r"/(conv\d+|norm\d+|head)/")


def targets() -> list[str]:
    """The targets ``--target`` takes: ``cpu`` and one per ``benchmarks/targets/*.txtpb``."""
    return ["cpu"] + sorted(p.stem for p in TARGETS_DIR.glob("*.txtpb"))


def target_device(target: str) -> Any:
    """The device to compile for: the local CPU, or a compile-only GPU of the named target config.

    Raises:
      RuntimeError: JAX's CUDA plugin is missing (a GPU target needs it, not a GPU).
    """
    if target == "cpu":
        return jax.devices("cpu")[0]
    from jax.experimental import topologies

    text = (TARGETS_DIR / f"{target}.txtpb").read_text()
    try:
        topology = topologies.get_topology_desc(topology_name="", platform="cuda", topology="1x1x1",
                                                target_config=text)
    except Exception as err:  # noqa: BLE001  jax raises several kinds when no CUDA plugin is installed
        raise RuntimeError(f"compiling for {target} needs JAX's CUDA plugin (pip install 'jax[cuda12]', Python "
                           f"3.12; no GPU needed): {str(err).splitlines()[0] if str(err) else err!r}") from err
    return topology.devices[0]


def program_options(label: str, platform: str) -> dict[str, Any]:
    """The config overrides of option ``label`` for a program compiled for ``platform``: ``conv=auto``
    resolved there (a deviceless compile traces on the CPU, where ``auto`` would pick the CPU's)."""
    out = options(label)
    out.setdefault("conv", resolve_impl("auto", platform))
    return out


def _step_on_cpu(w: BenchWorkload, label: str, platform: str) -> tuple[Any, Any]:
    """jmaml's step function on ``w`` with option ``label`` lowered as for ``platform``, and its initial
    state built on the CPU."""
    learner, optimizer, step_fn = jmaml_step(w, program_options(label, platform))
    with jax.default_device(jax.devices("cpu")[0]):
        state = init_state(learner, optimizer, jax.tree.map(np.asarray, init_params(w)), jax.random.PRNGKey(0))
    return step_fn, state


def compile_step(w: BenchWorkload, label: str, device: Any) -> tuple[Any, Any]:
    """jmaml's meta-training step on ``w`` with option ``label``, lowered and compiled for ``device``.

    The state and meta-batch are built on the CPU and passed as shapes placed on ``device``, so nothing
    runs on (or is copied to) the target. Returns ``(lowered, compiled)``.
    """
    step_fn, state = _step_on_cpu(w, label, "cpu" if device.platform == "cpu" else "gpu")
    sharding = jax.sharding.SingleDeviceSharding(device)
    shaped = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), tree)
    lowered = jax.jit(step_fn, donate_argnums=0).lower(shaped(state), shaped(make_batches(w, 1)[0]))
    return lowered, lowered.compile()


def step_flops(w: BenchWorkload, label: str, platform: str) -> float | None:
    """FLOPs of one step by XLA's cost analysis of the program before optimization, lowered for the CPU
    with the lowering options of ``platform`` (a deviceless GPU compile reports no cost analysis)."""
    step_fn, state = _step_on_cpu(w, label, platform)
    with jax.default_device(jax.devices("cpu")[0]):
        return flops(jax.jit(step_fn).lower(state, make_batches(w, 1)[0]))


def origin(instr: tuple[str, str, str, list[str], str]) -> str:
    """Where an instruction comes from, by its metadata's ``op_name`` (JAX's name stack): the model
    layer (``conv0``, ``norm1``, ``head``) and the primitive; ``inputs`` for copies of the step's
    arguments; ``step`` and the primitive for what lies outside the model (loss, inner and outer
    updates, the sum of per-task gradients)."""
    match = _OP_NAME.search(instr[4])
    if not match:
        return "unnamed"
    name = match[1]
    if name.startswith(("state.", "tasks.")):
        return "inputs"
    layer = _LAYER.search(name)
    return f"{layer[1] if layer else 'step'} {name.rsplit('/', 1)[-1]}"


def breakdown(module: dict[str, Any], top: int = 16) -> str:
    """Where a program's launches per step come from: by kind, by layer, and by :func:`origin`."""
    kinds: collections.Counter = collections.Counter()
    layers: collections.Counter = collections.Counter()
    origins: collections.Counter = collections.Counter()
    for instr, times in executed(module):
        if launches(instr):
            kinds[gpu_kind(instr)] += times
            origins[origin(instr)] += times
            layers[origin(instr).split()[0]] += times
    line = lambda counter, n=None: ", ".join(f"{k} {v}" for k, v in counter.most_common(n))  # noqa: E731
    return f"  by kind: {line(kinds)}\n  by layer: {line(layers)}\n  by origin: {line(origins, top)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="h200", choices=targets())
    parser.add_argument("--workloads", nargs="+", default=list(BENCHMARKED), choices=list(BENCHMARKED),
                        metavar="CONFIG")
    parser.add_argument("--only", nargs="+", metavar="OPTION", help=f"options to compile (default {list(OPTIONS)}); "
                        "any label of benchmarks.harness.workloads.options, e.g. 'conv=im2col, unroll=full'")
    parser.add_argument("--quick", action="store_true", help="the tiny shapes of each config (seconds)")
    parser.add_argument("--breakdown", action="store_true", help="where each program's launches come from")
    parser.add_argument("--dump", type=Path, help="also write each optimized HLO module into this folder")
    args = parser.parse_args(argv)
    labels = args.only or list(OPTIONS)
    if args.target != "cpu" and os.environ.get("JAX_PLATFORMS") != "cpu":
        print("note: set JAX_PLATFORMS=cpu before JAX starts to compile for a GPU on a machine without one",
              file=sys.stderr)
    try:
        device = target_device(args.target)
    except RuntimeError as err:
        print(f"gpu_program: {err}", file=sys.stderr)
        return 2

    kind = getattr(device, "device_kind", device.platform)
    print(f"One meta-training step (second-order MAML, Adam) compiled for {kind} ({args.target}) on this machine, "
          f"jax {jax.__version__}; `default` is conv={resolve_impl('auto', 'cpu' if args.target == 'cpu' else 'gpu')}"
          " there. Per step: loop bodies count times their known trip count.\n")
    print("| config | option | launches (static) | cuDNN convs (grouped, window > 3x3) | GEMMs | copies | loops run "
          "| memory MiB | GFLOP | compile s |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for w in select(args.workloads, args.quick):
        for label in labels:
            start = time.perf_counter()
            _, compiled = compile_step(w, label, device)
            seconds = time.perf_counter() - start
            hlo = compiled.as_text()
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{w.name}-{re.sub(r'[^a-z0-9]+', '_', label)}.hlo.txt").write_text(hlo)
            module = parse(hlo)
            c, memory = gpu_counts(module), program_bytes(compiled)
            flop = flops(compiled) or step_flops(w, label, "cpu" if args.target == "cpu" else "gpu")
            mib = f"{memory / 2**20:.0f}" if memory else "-"
            gflop = f"{flop / 1e9:.2f}" if flop else "-"
            print(f"| {w.name} | {label} | {c['launches']} ({c['static_launches']}) | {c['cudnn']} ({c['grouped']}, "
                  f"{c['large_window']}) | {c['gemm']} | {c['copies']} | {c['loops']} | {mib} | {gflop} | "
                  f"{seconds:.0f} |", flush=True)
            if args.breakdown:
                print(f"{w.name} {label}:\n{breakdown(module)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
