"""Plots of run folders: learning curves and the meta-test against inner steps, several runs overlaid.

Everything here reads what :func:`jmaml.experiment.training.train` writes into a run folder
(``config.json``, ``metrics.jsonl``, ``eval.json``) and draws on a bare
:class:`matplotlib.figure.Figure` (no pyplot, so no global backend is chosen or changed: the PNG is
rendered by Agg, and a notebook displays the returned figure inline). matplotlib is the optional
extra ``plot``: ``pip install 'jmaml[plot]'``.

Typical use::

    from jmaml.experiment import plots
    plots.plot_runs(["runs/maml", "runs/fomaml"], "curves.png")   # what `jmaml plot` does
    fig = plots.figure(plots.load_runs(["runs/maml"]))            # in a notebook

A group folder (``jmaml train --seeds/--sweep``) stands for its runs; the runs of a plot that include
a group are drawn as bands over seeds (:func:`seed_bands`), one per setting.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from jmaml.data.paths import atomic_write
from jmaml.errors import JmamlError
from jmaml.experiment import runs as run_files

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("png", "pdf", "svg")
# Config keys never shown in a legend: where the data lives says nothing about the run.
_NOT_IN_LEGEND = frozenset({"name", "algorithm", "data_dir", "download"})
_MAX_LEGEND_KEYS = 4


@dataclass
class Run:
    """One run folder, read.

    Attributes:
      path: the folder.
      config: ``config.json`` as a dict.
      metrics: the lines of ``metrics.jsonl``, one dict per logged step.
      eval: ``eval.json`` (the meta-test), or ``None`` while the run has not finished.
      label: the legend entry; :func:`load_runs` fills it from the configs of all runs plotted.
    """

    path: str
    config: dict[str, Any]
    metrics: list[dict[str, float]]
    eval: dict[str, Any] | None = None
    label: str = field(default="")


def _read_json(file: str) -> Any:
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise JmamlError(f"cannot read {file}: {err}; is the run folder intact?") from None


def load_run(path: str) -> Run:
    """Reads the run folder ``path``.

    A trailing half-written line of ``metrics.jsonl`` (a run still training) is ignored.

    Raises:
      JmamlError: ``path`` is not a run folder (no ``config.json`` or no logged step), or one
        of its files cannot be parsed.
    """
    config_file = os.path.join(path, run_files.CONFIG)
    metrics_file = os.path.join(path, run_files.METRICS)
    if not os.path.isfile(config_file):
        raise JmamlError(f"{path} is not a jmaml run folder (no {run_files.CONFIG}); "
                         "give folders written by `jmaml train --out`")
    if not os.path.isfile(metrics_file):
        raise JmamlError(f"{path} has no {run_files.METRICS}: the run logged no step yet; "
                         "plot it once training has logged (every log_every steps)")
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise JmamlError(f"{config_file} must hold a JSON object (a jmaml config)")
    try:
        with open(metrics_file) as f:
            text = f.read()
    except OSError as err:
        raise JmamlError(f"cannot read {metrics_file}: {err.strerror}") from None
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # still being written
    metrics = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or "step" not in entry:
            raise JmamlError(f"{metrics_file} line {number} is not a JSON object with a 'step': {line[:80]!r}")
        metrics.append(entry)
    if not metrics:
        raise JmamlError(f"{metrics_file} holds no logged step yet; plot the run once training has logged")
    eval_file = os.path.join(path, run_files.EVAL)
    result = _read_json(eval_file) if os.path.isfile(eval_file) else None
    return Run(path=path, config=config, metrics=metrics, eval=result)


def labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Legend entries: each config's name and algorithm, then the keys whose values differ between them.

    At most four differing keys are named (then ``...``); ``data_dir`` and ``download`` never are.
    """
    keys = sorted({k for c in configs for k in c} - _NOT_IN_LEGEND)
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    out = []
    for config in configs:
        head = " ".join(str(config[k]) for k in ("name", "algorithm") if k in config)
        if config.get("name") == config.get("algorithm"):
            head = str(config.get("name", ""))
        extra = [f"{k}={_short(config.get(k))}" for k in differ[:_MAX_LEGEND_KEYS]]
        if len(differ) > _MAX_LEGEND_KEYS:
            extra.append("...")
        out.append(", ".join([head] * bool(head) + extra) or "run")
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(map(str, value))
    return str(value)


def load_runs(paths: Sequence[str]) -> list[Run]:
    """Reads every run folder in ``paths`` and labels them against each other (:func:`labels`).

    Runs whose configs are identical are told apart by their folder names.

    Raises:
      JmamlError: no path given, or one of them is not a run folder.
    """
    if not paths:
        raise JmamlError("give at least one run folder to plot")
    loaded = [load_run(p) for p in paths]
    names = labels([r.config for r in loaded])
    for run, name in zip(loaded, names):
        run.label = f"{name} ({os.path.basename(os.path.normpath(run.path))})" if names.count(name) > 1 else name
    return loaded


def expand_groups(paths: Sequence[str]) -> list[str]:
    """``paths`` with each group folder (one holding ``group.json``) replaced by its runs' folders."""
    out = []
    for path in paths:
        group = os.path.join(path, run_files.GROUP)
        out += ([os.path.join(path, name) for name in _read_json(group)["runs"]] if os.path.isfile(group)
                else [path])
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def seed_bands(loaded: Sequence[Run]) -> list[Run]:
    """One run per setting (runs whose configs differ only in the seed), over its seeds.

    Its metrics are the means over the seeds at the steps that every seed logged, each with
    ``<metric>_spread``, the standard deviation over the seeds (the learning curves' band); its
    meta-test is the mean over the seeds of ``per_step`` with the normal 95% interval of that mean as
    ``per_step_ci95`` (the meta-test's band), when every seed finished. Labels name the setting and
    its number of seeds.
    """
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in loaded:
        groups[json.dumps({k: v for k, v in run.config.items() if k != "seed"}, sort_keys=True)].append(run)
    names = labels([members[0].config for members in groups.values()])
    bands = []
    for name, members in zip(names, groups.values()):
        steps = sorted(set.intersection(*({m["step"] for m in run.metrics} for run in members)))
        rows = [[next(m for m in run.metrics if m["step"] == step) for run in members] for step in steps]
        metrics = []
        for step, at in zip(steps, rows):
            row = {"step": step}
            for key in set.intersection(*(set(m) for m in at)) - {"step"}:
                if all(isinstance(m[key], (int, float)) for m in at):
                    row[key], row[f"{key}_spread"] = _mean_std([m[key] for m in at])
            metrics.append(row)
        result = None
        if all(run.eval and "per_step" in run.eval for run in members):
            per_step = [_mean_std(values) for values in zip(*(run.eval["per_step"] for run in members))]
            result = {**members[0].eval, "per_step": [m for m, _ in per_step],
                      "per_step_ci95": [1.96 * s / len(members) ** 0.5 for _, s in per_step]}
        bands.append(Run(path=os.path.dirname(members[0].path), config=members[0].config, metrics=metrics,
                         eval=result, label=f"{name} ({len(members)} seed{'s' * (len(members) > 1)})"))
    return bands


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        raise JmamlError("plotting needs matplotlib, which is not installed: pip install 'jmaml[plot]'") from None
    return Figure


def _query_metric(loaded: Sequence[Run]) -> str:
    """``"accuracy"`` when every run logs a query accuracy, else ``"loss"``."""
    if all(any("query_accuracy" in m for m in r.metrics) for r in loaded):
        return "accuracy"
    return "loss"


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} (%)") if metric == "accuracy" else (1.0, metric)


def plot_learning_curves(loaded: Sequence[Run], axes: Sequence[Axes], *, x: str = "step") -> None:
    """Draws the meta-loss on ``axes[0]`` and the query metric on ``axes[1]`` against ``x``.

    The query metric (accuracy when every run logs one, else loss) is drawn after adaptation
    (solid) and, where logged, at the meta-parameters before adaptation (dashed).

    Args:
      loaded: runs from :func:`load_runs`.
      axes: two matplotlib axes.
      x: ``"step"`` (meta-iterations) or ``"seconds"`` (wall-clock since training started,
        compilation included).
    """
    if x not in ("step", "seconds"):
        raise JmamlError(f"x must be 'step' or 'seconds', got {x!r}")
    metric = _query_metric(loaded)
    scale, name = _scale(metric)
    for index, run in enumerate(loaded):
        color = f"C{index % 10}"
        rows = [m for m in run.metrics if x in m]
        xs = [m[x] for m in rows]
        axes[0].plot(xs, [m.get("meta_loss", float("nan")) for m in rows], color=color, label=run.label)
        _band(axes[0], xs, rows, "meta_loss", 1.0, color)
        for suffix, style in (("", "-"), ("_before", "--")):
            key = f"query_{metric}{suffix}"
            if any(key in m for m in rows):
                axes[1].plot(xs, [m.get(key, float("nan")) * scale for m in rows], style, color=color)
                _band(axes[1], xs, rows, key, scale, color)
    xlabel = "meta-training step" if x == "step" else "seconds (training, compilation included)"
    axes[0].set(xlabel=xlabel, ylabel="meta-loss", title=f"meta-loss against {x}")
    axes[1].set(xlabel=xlabel, ylabel=f"query {name}", title=f"query {metric} against {x}")


def _band(ax: Axes, xs: list, rows: list[dict], key: str, scale: float, color: str) -> None:
    """The band ``key +- key_spread`` of runs from :func:`seed_bands` (nothing for a single run)."""
    if all(f"{key}_spread" in m for m in rows) and rows:
        mean = [m[key] * scale for m in rows]
        spread = [m[f"{key}_spread"] * scale for m in rows]
        ax.fill_between(xs, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
                        color=color, alpha=0.2, linewidth=0)


def plot_meta_test(loaded: Sequence[Run], ax: Axes) -> None:
    """Draws each finished run's meta-test metric against inner steps with its 95% band.

    The band is ``per_step +- per_step_ci95`` of ``eval.json``; a marker shows the score after the
    config's ``test_steps``. Runs without ``eval.json`` (not finished) are left out.
    """
    metrics = sorted({r.eval.get("metric", "?") for r in loaded if r.eval})
    for index, run in enumerate(loaded):
        if not run.eval or "per_step" not in run.eval:
            continue
        scale, _ = _scale(run.eval.get("metric", ""))
        mean = [v * scale for v in run.eval["per_step"]]
        ci = [v * scale for v in run.eval.get("per_step_ci95", [0.0] * len(mean))]
        steps = list(range(len(mean)))
        color = f"C{index % 10}"
        ax.plot(steps, mean, color=color, label=run.label)
        ax.fill_between(steps, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                        color=color, alpha=0.2, linewidth=0)
        test_steps = run.eval.get("test_steps")
        if isinstance(test_steps, int) and 0 <= test_steps < len(mean):
            ax.plot([test_steps], [mean[test_steps]], "o", color=color)
    if not metrics:
        ax.text(0.5, 0.5, "no eval.json yet\n(runs not finished)", ha="center", va="center", transform=ax.transAxes)
    name = _scale(metrics[0])[1] if len(metrics) == 1 else " / ".join(metrics)
    ax.set(xlabel="inner steps at meta-test", ylabel=name, title="meta-test (95% band)")


def figure(loaded: Sequence[Run]) -> Figure:
    """The full figure of :func:`plot_runs` for runs from :func:`load_runs`.

    Top row: meta-loss and query metric against steps, meta-test against inner steps; bottom
    row: meta-loss and query metric against seconds, and the legend.
    """
    figure_class = _matplotlib()
    fig = figure_class(figsize=(15, 8.5), layout="constrained")
    grid = fig.subplots(2, 3)
    plot_learning_curves(loaded, grid[0, :2], x="step")
    plot_learning_curves(loaded, grid[1, :2], x="seconds")
    plot_meta_test(loaded, grid[0, 2])
    for ax in grid.flat[:5]:
        ax.grid(alpha=0.3)
    legend_ax = grid[1, 2]
    legend_ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i % 10}", label=run.label) for i, run in enumerate(loaded)]
    handles += [Line2D([], [], color="grey", linestyle="-", label="query: after adaptation"),
                Line2D([], [], color="grey", linestyle="--", label="query: before adaptation"),
                Line2D([], [], color="grey", marker="o", linestyle="", label="meta-test: config's test_steps")]
    if any("meta_loss_spread" in m for run in loaded for m in run.metrics):  # runs from seed_bands
        from matplotlib.patches import Patch

        handles.append(Patch(color="grey", alpha=0.2, label="band: curves +- std over seeds, meta-test 95% over seeds"))
    legend_ax.legend(handles=handles, loc="center", fontsize="small", frameon=False)
    return fig


def plot_runs(run_dirs: Sequence[str], out: str) -> str:
    """Draws the runs in ``run_dirs`` overlaid into the image file ``out``; what `jmaml plot` does.

    Args:
      run_dirs: run folders written by ``jmaml train`` (finished or still training); a group folder
        stands for its runs, and then every setting is drawn as a band over its seeds
        (:func:`seed_bands`).
      out: the image to write, ``.png`` (or ``.pdf``, ``.svg``); written atomically.

    Returns:
      ``out`` as an absolute path.

    Raises:
      JmamlError: no run, a folder that is not a run, an output that cannot be written or has
        another extension, or matplotlib not installed. All are checked before drawing.
    """
    _matplotlib()
    out = os.path.abspath(out)
    fmt = os.path.splitext(out)[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise JmamlError(f"the plot file must end in {', '.join('.' + f for f in FORMATS)}, got {out}")
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        raise JmamlError(f"{out} is a folder; give a file name such as {os.path.join(out, 'curves.png')}")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise JmamlError(f"cannot write {out}: folder {folder} does not exist or is not writable; "
                         "give another output file")
    loaded = load_runs(expand_groups(run_dirs))
    if any(os.path.isfile(os.path.join(path, run_files.GROUP)) for path in run_dirs):
        loaded = seed_bands(loaded)
    fig = figure(loaded)
    try:
        with atomic_write(out, "wb") as f:
            fig.savefig(f, format=fmt, dpi=100)
    except OSError as err:
        raise JmamlError(f"cannot write {out}: {err.strerror or err}; give another output file") from None
    return out


__all__ = ["FORMATS", "Run", "expand_groups", "figure", "labels", "load_run", "load_runs", "plot_learning_curves",
           "plot_meta_test", "plot_runs", "seed_bands"]
