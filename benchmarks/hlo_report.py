"""What XLA makes of one meta-step: kernels, convolutions, and the form of the first inner forward pass.

Compiles (does not run) one jmaml meta-training step (``make_train_step`` with Adam, as ``jmaml
train`` runs it) of the ``omniglot-5w1s`` workload (:mod:`benchmarks.harness.workloads`, tiny
``--quick`` and full size) for jmaml's default and each option, on the CPU backend, and reads the
optimized HLO (``jax.jit(step).lower(state, tasks).compile().as_text()``). Counted, statically (an
instruction in a loop body counts once however often the loop runs):

- fusions: ``fusion`` instructions, each one kernel that XLA generated from several operations;
- kernels: every instruction of the computations that are run as a schedule (the entry, loop
  bodies and conditions, called computations; not fused computations nor reducers), other than
  ``parameter``, ``constant``, ``tuple``, ``get-tuple-element`` and ``bitcast``, which move no data;
- convolutions: ``convolution`` instructions anywhere (the im2col lowering has none: its patches
  multiply the kernel in ``dot`` instructions);
- the first inner forward pass: the first layer's convolution (or im2col matmul) over the tasks'
  support images at the meta-parameters. ``ordinary`` when it is one convolution over all tasks'
  images (batch ``tasks x support``, ``feature_group_count`` 1), ``grouped`` when the task axis went
  into the feature dimension (batch ``support``, ``feature_group_count`` = tasks); for im2col,
  ``one dot`` or ``batched dot`` (a ``dot`` with a task batch dimension).

    python benchmarks/hlo_report.py [--sizes quick full] [--only NAME ...] [--dump DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1])  # the repository root, for benchmarks.harness
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks.harness.environment import describe  # noqa: E402
from benchmarks.harness.workloads import WORKLOADS, BenchWorkload, init_params, make_batches  # noqa: E402
from jmaml import algorithms, losses  # noqa: E402
from jmaml.core.step import init_state, make_train_step  # noqa: E402
from jmaml.models import Conv4, functional  # noqa: E402
from jmaml.models.conv import resolve_impl  # noqa: E402

# Column name -> (Conv4 fields, MetaLearner fields) of each program compiled.
OPTIONS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "conv=xla": ({"conv": "xla"}, {}),
    "conv=im2col": ({"conv": "im2col"}, {}),
    "unroll=full": ({}, {"unroll": True}),
    "conv=xla, unroll=full": ({"conv": "xla"}, {"unroll": True}),
    "remat": ({}, {"remat": True}),
    "precision=bf16": ({"precision": "bf16"}, {}),
    "conv=xla, precision=bf16": ({"conv": "xla", "precision": "bf16"}, {}),
}
MOVE_NO_DATA = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>\S+?)\s+(?P<op>[a-z][\w\-]*)\("
                          r"(?P<operands>[^)]*)\)(?P<attrs>.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[(?P<dims>[0-9,]*)\]")


@dataclasses.dataclass(frozen=True)
class Convolution:
    """One ``convolution`` instruction of an HLO module.

    Attributes:
      name: the instruction's name.
      lhs, rhs, out: the input, kernel and output shapes.
      labels: ``dim_labels``, e.g. ``b01f_01io->b01f``.
      feature_group_count: groups of input features (1: an ordinary convolution).
      batch_group_count: groups of the batch (1 but for some kernel gradients).
      forward: a plain forward convolution (no dilation of the input, output labelled like the input).
    """

    name: str
    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    out: tuple[int, ...]
    labels: str
    feature_group_count: int
    batch_group_count: int
    forward: bool

    def size(self, operand: str, label: str) -> int:
        """The size of dimension ``label`` ('b', 'f', '0', ...) of ``operand`` ('lhs' or 'out')."""
        lhs_labels, rest = self.labels.split("_")
        labels = lhs_labels if operand == "lhs" else rest.split("->")[1]
        return getattr(self, operand)[labels.index(label)]


def _dims(type_text: str) -> tuple[int, ...] | None:
    match = _SHAPE.match(type_text)
    if not match:
        return None
    return tuple(int(d) for d in match["dims"].split(",") if d)


def parse(hlo: str) -> dict[str, Any]:
    """The instructions of an optimized HLO module, by computation.

    Returns:
      ``{"computations": {name: [(instruction name, opcode, type, operands, attributes)]},
      "fused": names of fused computations, "applied": names of reducers/comparators,
      "shapes": {instruction name: dims}}``.
    """
    computations: dict[str, list[tuple[str, str, str, list[str], str]]] = {}
    current = None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            computations[current] = []
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            operands = [o.strip().lstrip("%") for o in match["operands"].split(",") if o.strip()]
            computations[current].append((match["name"], match["op"], match["type"], operands, match["attrs"]))
    attrs = " ".join(i[4] for instrs in computations.values() for i in instrs)
    shapes = {i[0]: _dims(i[2]) for instrs in computations.values() for i in instrs}
    return {"computations": computations, "shapes": shapes,
            "fused": set(re.findall(r"calls=%?([\w.\-]+)", attrs)),
            "applied": set(re.findall(r"to_apply=%?([\w.\-]+)", attrs))}


def counts(module: dict[str, Any]) -> dict[str, int]:
    """Fusions, kernels and convolutions of a parsed module (definitions in the module docstring)."""
    scheduled = [c for c in module["computations"] if c not in module["fused"] and c not in module["applied"]]
    ops = [i[1] for instrs in module["computations"].values() for i in instrs]
    return {"fusions": ops.count("fusion"),
            "kernels": sum(i[1] not in MOVE_NO_DATA for c in scheduled for i in module["computations"][c]),
            "convolutions": ops.count("convolution"), "dots": ops.count("dot")}


def convolutions(module: dict[str, Any]) -> list[Convolution]:
    """Every ``convolution`` instruction of a parsed module, with its operands' shapes."""
    found = []
    for instrs in module["computations"].values():
        for name, op, type_text, operands, attrs in instrs:
            if op != "convolution":
                continue
            labels = re.search(r"dim_labels=(\S+?),", attrs + ",")[1]
            group = lambda key: int(m[1]) if (m := re.search(key + r"=(\d+)", attrs)) else 1  # noqa: E731
            lhs_labels, out_labels = labels.split("_")[0], labels.split("->")[1]
            dilated = "lhs_dilate" in attrs or "rhs_dilate" in attrs
            found.append(Convolution(name, module["shapes"].get(operands[0]) or (), module["shapes"].get(operands[1])
                                     or (), _dims(type_text) or (), labels, group("feature_group_count"),
                                     group("batch_group_count"), not dilated and lhs_labels == out_labels))
    return found


def first_forward(module: dict[str, Any], w: BenchWorkload) -> str:
    """How the first layer's pass over the support images at the meta-parameters was compiled.

    ``ordinary (batch B, groups 1)`` or ``grouped (batch B, groups G)`` for XLA's convolution;
    ``one dot [M, F]`` or ``batched dot`` for im2col; ``not found`` otherwise.
    """
    tasks, support, channels = w.meta_batch, w.ways * w.shots, w.image[2]
    side = -(-w.image[0] // (2 if w.variant == "omniglot" else 1))
    for c in convolutions(module):
        if not c.forward or len(c.lhs) != 4 or c.size("out", "0") != side:
            continue
        batch, features = c.size("lhs", "b"), c.size("lhs", "f")
        if (batch, features, c.feature_group_count) == (tasks * support, channels, 1):
            return f"ordinary (batch {batch}, groups 1)"
        if (batch, features, c.feature_group_count) == (support, tasks * channels, tasks):
            return f"grouped (batch {batch}, groups {tasks})"
    rows = tasks * support * side * side
    for instrs in module["computations"].values():
        for name, op, type_text, operands, attrs in instrs:
            out = _dims(type_text) or ()
            if op == "dot" and out and out[-1] == w.filters and module["shapes"].get(operands[1]) == (
                    9 * channels, w.filters):
                if out == (rows, w.filters):
                    return f"one dot [{rows}, {w.filters}]"
            if op == "dot" and "lhs_batch_dims" in attrs and out[:1] == (tasks,) and out[-1] == w.filters and (
                    len(out) >= 2 and out[1] * (out[2] if len(out) > 3 else 1) == support * side * side):
                return f"batched dot {list(out)}"
    return "not found"


def meta_step_hlo(w: BenchWorkload, model_fields: dict, learner_fields: dict) -> str:
    """Optimized HLO text of one jmaml meta-training step (``make_train_step``, Adam) on ``w``."""
    _, apply = functional(Conv4(w.ways, variant=w.variant, filters=w.filters, **{"conv": w.conv, **model_fields}))
    learner = dataclasses.replace(
        algorithms.maml(apply, losses.cross_entropy, inner_lr=w.inner_lr, inner_steps=w.inner_steps),
        **learner_fields)
    optimizer = optax.adam(w.meta_lr)
    state = init_state(learner, optimizer, jax.tree.map(jnp.asarray, init_params(w)), jax.random.PRNGKey(0))
    tasks = make_batches(w, 1)[0]
    return jax.jit(make_train_step(learner, optimizer)).lower(state, tasks).compile().as_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="omniglot-5w1s", choices=list(WORKLOADS), metavar="CONFIG")
    parser.add_argument("--sizes", nargs="+", choices=("quick", "full"), default=["quick", "full"])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"options to compile, of {list(OPTIONS)}")
    parser.add_argument("--dump", type=Path, help="also write each optimized HLO module into this folder")
    args = parser.parse_args(argv)
    names = args.only or list(OPTIONS)
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {unknown}; choose from {list(OPTIONS)}")

    rows = []
    for size in args.sizes:
        w = WORKLOADS[args.workload].quick() if size == "quick" else WORKLOADS[args.workload]
        for name in names:
            hlo = meta_step_hlo(w, *OPTIONS[name])
            if args.dump:
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{w.name}-{re.sub(r'[^a-z0-9]+', '_', name)}.hlo.txt").write_text(hlo)
            module = parse(hlo)
            rows.append((w, name, counts(module), first_forward(module, w)))
            print(f"{w.name} {name}: {rows[-1][2]}, {rows[-1][3]}", file=sys.stderr, flush=True)

    env = describe()
    print(f"One meta-training step (second-order MAML, Adam) compiled for {env['jax_device']}, jax {env['jax']}, "
          f"commit {env['commit']}, {env['date']}; optimized HLO, static counts (a loop body counts once). "
          f"`default` is conv=auto (`{resolve_impl('auto')}` on this backend), the inner loop a scan (unroll 1). "
          "Fusions: `fusion` instructions; kernels: instructions of the scheduled computations other than "
          "parameter/constant/tuple/get-tuple-element/bitcast; first inner forward: the first layer's pass "
          "over all tasks' support images at the meta-parameters.\n")
    print("| workload | option | fusions | kernels | convolutions | dots | first inner forward |\n"
          "|---|---|---|---|---|---|---|")
    for w, name, c, first in rows:
        print(f"| {w.title} | {name} | {c['fusions']} | {c['kernels']} | {c['convolutions']} | {c['dots']} | {first} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
