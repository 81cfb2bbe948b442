"""The results as a Markdown table and a JSON document."""

from __future__ import annotations

import json
from typing import Any

COLUMNS = ("workload", "implementation", "ms / meta-step (median)", "tasks / s", "compile s",
           "first step s", "100-step run s", "GFLOP / step", "TFLOP/s", "of peak", "peak memory",
           "grad. rel. error")


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _bytes(record: dict[str, Any]) -> str:
    if record.get("peak_bytes"):
        return f"{record['peak_bytes'] / 2**20:.0f} MiB"
    if record.get("program_bytes"):
        return f"{record['program_bytes'] / 2**20:.0f} MiB (XLA est.)"
    return "n/a"


def row(record: dict[str, Any]) -> list[str]:
    """One table row; skipped and failed implementations keep their reason."""
    runs = record.get("runs", 1)
    head = [record["title"], record["impl"] + (f" ({runs} runs in one program)" if runs > 1 else "")]
    if record["status"] != "ok":
        return head + [f"{record['status']}: {record.get('reason', '')}"] + [""] * (len(COLUMNS) - 3)
    flops = record.get("flops")
    return head + [
        _num(record["median_ms"], ".1f"), _num(record["tasks_per_s"], ".1f"),
        _num(record["compile_s"], ".1f"),
        _num(record["first_step_s"], ".2f"), _num(record["run_100_s"], ".1f"),
        _num(flops / 1e9 if flops else None, ".3g"), _num(record.get("tflops_per_s"), ".3g"),
        _num(100 * record["peak_fraction"] if record.get("peak_fraction") else None, ".1f") + (
            "%" if record.get("peak_fraction") else ""),
        _bytes(record), _num(record.get("grad_rel_err"), ".1e"),
    ]


def markdown(env: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """A Markdown table of ``records`` under a line saying where they were measured."""
    devices = sorted({r["device"] for r in records if r.get("device")})
    lines = [
        f"Measured {env['date']} on {', '.join(devices) or env['jax_device']} ({env['cpu_count']} CPUs), "
        f"jax {env['jax']}, torch {env['torch'] or 'not installed'}, python {env['python']}, "
        f"commit {env['commit']}, 1-min load average {_num(env.get('load_avg_1min_start'), '.2f')} at start.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(row(r)) + " |" for r in records]
    steps = {(r["warmup"], r["steps"]) for r in records}
    lines += ["", "Median over " + ", ".join(f"{s} timed steps after {w} warm-up" for w, s in sorted(steps))
              + "; compile time apart; 100-step run = compile + first step + 99 x median; "
              "grad. rel. error: the first step's meta-gradient against the first implementation's "
              "(same weights, same inputs), relative L2 difference over all parameters."]
    return "\n".join(lines) + "\n"


def to_json(env: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """The environment and every record, as indented JSON."""
    return json.dumps({"environment": env, "results": records}, indent=2, default=str) + "\n"
