"""Reading an optimized HLO module (``compiled.as_text()``): instructions, convolutions, collectives,
and what a GPU program launches per call.

One parser for every benchmark that reads a compiled program (:mod:`benchmarks.hlo_report`,
:mod:`benchmarks.scaling`, :mod:`benchmarks.gpu_program`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

MOVE_NO_DATA = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
# Scheduled instructions that launch no kernel of their own: those that move no data, markers, and the
# control flow whose called computations are counted instead (:func:`executed`)
NO_LAUNCH = MOVE_NO_DATA | {"opt-barrier", "add-dependency", "after-all", "domain", "while", "call", "conditional"}
# ``[ROOT] %name = TYPE opcode(OPERANDS), ATTRIBUTES``; TYPE may be a tuple ``(f32[2]{0}, s32[])``
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s+(?P<op>[a-z][\w\-]*)\("
                          r"(?P<operands>.*?)\)(?P<attrs>(,.*)?)$")
_OPERAND = re.compile(r"%?([\w.\-]+)\s*(?:,|$)")  # an operand's name: the word before a comma or the end
_NAMED_OPERAND = re.compile(r"%([\w.\-]+)")  # when operands are printed with their types: f32[8,8]{1,0} %x
_ARRAY = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
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


def dims(type_text: str) -> tuple[int, ...] | None:
    """The dimensions of an array type (``f32[4,8]{1,0}`` -> ``(4, 8)``); None for a tuple."""
    match = _SHAPE.match(type_text)
    if not match:
        return None
    return tuple(int(d) for d in match["dims"].split(",") if d)


def parse(hlo: str) -> dict[str, Any]:
    """The instructions of an optimized HLO module, by computation.

    Returns:
      ``{"computations": {name: [(instruction name, opcode, type, operands, attributes)]},
      "fused": names of fused computations, "applied": names of reducers/comparators,
      "shapes": {instruction name: dims}, "entry": name of the entry computation}``. An instruction's
      type may be a tuple holding ``/*index=5*/`` comments (multi-output fusions, ``while``).
    """
    computations: dict[str, list[tuple[str, str, str, list[str], str]]] = {}
    current, entry = None, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            computations[current] = []
            entry = current if line.startswith("ENTRY") else entry
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            operands = _NAMED_OPERAND.findall(match["operands"]) or _OPERAND.findall(match["operands"])
            computations[current].append((match["name"], match["op"], match["type"], operands, match["attrs"]))
    attrs = " ".join(i[4] for instrs in computations.values() for i in instrs)
    shapes = {i[0]: dims(i[2]) for instrs in computations.values() for i in instrs}
    return {"computations": computations, "shapes": shapes, "entry": entry,
            "fused": set(re.findall(r"calls=%?([\w.\-]+)", attrs)),
            "applied": set(re.findall(r"to_apply=%?([\w.\-]+)", attrs))}


def counts(module: dict[str, Any]) -> dict[str, int]:
    """Fusions, kernels and convolutions of a parsed module (definitions in the module docstring)."""
    scheduled = [c for c in module["computations"] if c not in module["fused"] and c not in module["applied"]]
    ops = [i[1] for instrs in module["computations"].values() for i in instrs]
    return {"fusions": ops.count("fusion"),
            "kernels": sum(i[1] not in MOVE_NO_DATA for c in scheduled for i in module["computations"][c]),
            "convolutions": ops.count("convolution"), "dots": ops.count("dot")}


def _group_count(attrs: str, kind: str) -> int:
    """A convolution's ``feature_group_count`` or ``batch_group_count`` (``kind`` "feature" or "batch"); 1 when
    the attributes give none."""
    match = re.search(kind + r"_group_count=(\d+)", attrs)
    return int(match[1]) if match else 1


def convolutions(module: dict[str, Any]) -> list[Convolution]:
    """Every ``convolution`` instruction of a parsed module, with its operands' shapes."""
    found = []
    for instrs in module["computations"].values():
        for name, op, type_text, operands, attrs in instrs:
            if op != "convolution":
                continue
            labels = re.search(r"dim_labels=(\S+?),", attrs + ",")[1]
            lhs_labels, out_labels = labels.split("_")[0], labels.split("->")[1]
            dilated = "lhs_dilate" in attrs or "rhs_dilate" in attrs
            found.append(Convolution(name, module["shapes"].get(operands[0]) or (), module["shapes"].get(operands[1])
                                     or (), dims(type_text) or (), labels, _group_count(attrs, "feature"),
                                     _group_count(attrs, "batch"), not dilated and lhs_labels == out_labels))
    return found


# bytes of one element of an HLO element type
HLO_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
ALL_REDUCE = ("all-reduce", "all-reduce-start")
OTHER_COLLECTIVES = ("all-gather", "all-gather-start", "reduce-scatter", "all-to-all", "collective-permute",
                     "collective-permute-start", "ragged-all-to-all", "collective-broadcast")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result type, an array (``f32[64,3,3]{...}``) or a tuple of arrays."""
    return sum(HLO_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
               for dtype, dims in _ARRAY.findall(shape))


def collective_bytes(module: dict[str, Any]) -> dict[str, int]:
    """The all-reduce ops of a parsed module and their bytes, and the other collectives' ops and
    bytes. The ``-done`` halves of asynchronous ops are not counted twice."""
    counts = {"all_reduce_ops": 0, "all_reduce_bytes": 0, "other_collective_ops": 0, "other_collective_bytes": 0}
    for instrs in module["computations"].values():
        for _, op, type_text, _, _ in instrs:
            kind = "all_reduce" if op in ALL_REDUCE else "other_collective" if op in OTHER_COLLECTIVES else None
            if kind:
                counts[f"{kind}_ops"] += 1
                counts[f"{kind}_bytes"] += shape_bytes(type_text)
    return counts


_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLED = re.compile(r"\b(body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_WINDOW = re.compile(r"window=\{size=([0-9x]+)")


def trip_count(attrs: str) -> int | None:
    """The ``known_trip_count`` of a ``while`` instruction's backend config; None if XLA gives none."""
    match = _TRIP_COUNT.search(attrs)
    return int(match[1]) if match else None


def executed(module: dict[str, Any]) -> list[tuple[tuple[str, str, str, list[str], str], int]]:
    """Every instruction one call of the entry runs, with how often: ``[(instruction, times)]``.

    The entry's instructions run once; a ``while`` body's instructions run ``known_trip_count`` times
    the ``while`` (nested loops multiply; a loop without a known trip count counts once); a ``call``'s
    computation as often as the call; each branch of a ``conditional`` as often as the conditional (an
    overcount: one branch runs). A loop condition is not counted (on the GPU it is a small compare per
    iteration). Fused computations and reducers are not scheduled and not listed.
    """
    out: list[tuple[tuple[str, str, str, list[str], str], int]] = []

    def walk(name: str, times: int, depth: int) -> None:
        for instr in module["computations"].get(name, []):
            out.append((instr, times))
            op, attrs = instr[1], instr[4]
            called = dict((k, v) for k, v in _CALLED.findall(attrs))
            if op == "while" and depth < 32:
                walk(called["body"], times * (trip_count(attrs) or 1), depth + 1)
            elif op == "call" and "to_apply" in called:
                walk(called["to_apply"], times, depth + 1)
            elif op == "conditional":
                branches = _BRANCHES.search(attrs)
                names = ([b.strip().lstrip("%") for b in branches[1].split(",")] if branches else
                         [called[k] for k in ("true_computation", "false_computation") if k in called])
                for branch in names:
                    walk(branch, times, depth + 1)

    walk(module["entry"], 1, 0)
    return out


def launches(instr: tuple[str, str, str, list[str], str]) -> bool:
    """Whether an executed instruction launches work on the device: not one of :data:`NO_LAUNCH`
    and not the ``-done`` half of an asynchronous pair (its ``-start`` counts)."""
    return instr[1] not in NO_LAUNCH and not instr[1].endswith("-done")


def gpu_kind(instr: tuple[str, str, str, list[str], str]) -> str:
    """What a launching instruction of a GPU program is: ``"cudnn convolution"``, ``"gemm"`` (a cuBLAS
    custom-call or a GEMM fusion: ``kCustom`` with a ``gemm``/``triton`` backend or a called
    ``gemm_fusion`` computation), ``"copy"``, ``"fusion"`` (any other fusion), ``"custom-call"`` (any other)
    or the opcode itself (e.g. ``dynamic-update-slice``)."""
    _, op, _, _, attrs = instr
    if op == "custom-call":
        target = (_TARGET.search(attrs) or [None, ""])[1]
        if "cudnn$conv" in target:
            return "cudnn convolution"
        return "gemm" if "cublas" in target or "gemm" in target.lower() else "custom-call"
    if op == "fusion":
        callee = (re.search(r"calls=%?([\w.\-]+)", attrs) or [None, ""])[1]
        gemm = "gemm" in callee or ("kind=kCustom" in attrs and re.search(r"gemm|triton|cublas", attrs))
        return "gemm" if gemm else "fusion"
    return "copy" if op in ("copy", "copy-start") else op


@dataclasses.dataclass(frozen=True)
class CudnnConvolution:
    """One cuDNN convolution custom-call of a GPU program.

    Attributes:
      name: the instruction's name.
      target: ``__cudnn$convForward``, ``...BackwardFilter``, ``...BackwardInput``, ``...BiasActivationForward``.
      window: the window's size per spatial dimension.
      feature_group_count, batch_group_count: as in HLO (1: not grouped).
      times: how often one call of the program runs it (loop trip counts).
    """

    name: str
    target: str
    window: tuple[int, ...]
    feature_group_count: int
    batch_group_count: int
    times: int

    @property
    def grouped(self) -> bool:
        return self.feature_group_count > 1 or self.batch_group_count > 1


def cudnn_convolutions(module: dict[str, Any], ran: list | None = None) -> list[CudnnConvolution]:
    """The cuDNN convolutions one call of a parsed GPU program runs (``ran``: its :func:`executed`, if
    already computed)."""
    found = []
    for (name, op, _, _, attrs), times in executed(module) if ran is None else ran:
        target = (_TARGET.search(attrs) or [None, ""])[1]
        if op != "custom-call" or "cudnn$conv" not in target:
            continue
        window = _WINDOW.search(attrs)
        found.append(CudnnConvolution(name, target, tuple(int(d) for d in window[1].split("x")) if window else (),
                                      _group_count(attrs, "feature"), _group_count(attrs, "batch"), times))
    return found


def gpu_counts(module: dict[str, Any], kernel_size: int = 3) -> dict[str, int]:
    """Per call of a parsed GPU program (loop bodies times their trip count, :func:`executed`):

    ``launches`` (launching instructions, :func:`launches`), ``static_launches`` (each counted once),
    ``cudnn`` convolutions, of them ``grouped`` (feature or batch groups) and ``large_window`` (a
    window side above ``kernel_size``: a weight gradient written as a forward convolution), ``gemm``
    (cuBLAS calls and GEMM fusions), ``copies``, ``loops`` (``while`` instructions run).
    """
    ran = executed(module)
    run = [(instr, times) for instr, times in ran if launches(instr)]
    convs = cudnn_convolutions(module, ran)
    kinds = [(gpu_kind(instr), times) for instr, times in run]
    return {"launches": sum(t for _, t in run), "static_launches": len(run),
            "cudnn": sum(c.times for c in convs), "grouped": sum(c.times for c in convs if c.grouped),
            "large_window": sum(c.times for c in convs if any(w > kernel_size for w in c.window)),
            "gemm": sum(t for k, t in kinds if k == "gemm"), "copies": sum(t for k, t in kinds if k == "copy"),
            "loops": sum(t for (_, op, _, _, _), t in ran if op == "while")}
