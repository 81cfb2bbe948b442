"""Reading an optimized HLO module (``compiled.as_text()``): instructions, convolutions, collectives.

One parser for every benchmark that reads a compiled program (:mod:`benchmarks.hlo_report`,
:mod:`benchmarks.scaling`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

MOVE_NO_DATA = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
# ``[ROOT] %name = TYPE opcode(OPERANDS), ATTRIBUTES``; TYPE may be a tuple ``(f32[2]{0}, s32[])``
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s+(?P<op>[a-z][\w\-]*)\("
                          r"(?P<operands>.*?)\)(?P<attrs>(,.*)?)$")
_OPERAND = re.compile(r"%?([\w.\-]+)\s*(?:,|$)")  # an operand's name: the word before a comma or the end
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
            operands = _OPERAND.findall(match["operands"])
            computations[current].append((match["name"], match["op"], match["type"], operands, match["attrs"]))
    attrs = " ".join(i[4] for instrs in computations.values() for i in instrs)
    shapes = {i[0]: dims(i[2]) for instrs in computations.values() for i in instrs}
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
                                     or (), dims(type_text) or (), labels, group("feature_group_count"),
                                     group("batch_group_count"), not dilated and lhs_labels == out_labels))
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
