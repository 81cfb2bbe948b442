"""The ``jmaml`` command: ``jmaml train | resume | eval | plot``.

Exit status: 0 done; 1 the run failed after it started (divergence, a failed checkpoint
write: the message says what is intact; in a group, one ``error:`` line per run that diverged, once the
others have finished); 2 bad input (one ``error:`` line, nothing changed);
3 stopped by SIGINT or SIGTERM after saving a checkpoint (continue with ``jmaml resume DIR``);
130 interrupted before training started (nothing saved).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys

from jmaml.errors import JmamlError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_INTERRUPTED = 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    from jmaml.experiment.configs import CONFIGS, SWEEP_KEYS

    parser = argparse.ArgumentParser(prog="jmaml", description="MAML-family meta-learning in JAX.",
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a config, then meta-test it")
    train.add_argument("config", help=f"one of: {', '.join(CONFIGS)}")
    train.add_argument("--steps", type=int, help="meta-training steps (overrides the config)")
    train.add_argument("--out", help="run folder (default: runs/<config>-<time>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its latest checkpoint (steps may grow)")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--seeds", metavar="SEEDS",
                       help="train several seeds in one program, e.g. 0-7 or 0,2,5: one run folder per run under "
                            "--out, and group.json, the meta-test over seeds")
    train.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help="train every value in one program, e.g. --sweep inner_lr=0.1,0.4 (repeatable: a grid, "
                            f"times every seed of --seeds); keys that can be swept: {', '.join(SWEEP_KEYS)}")
    train.add_argument("--data-dir", help="data folder (default: $JMAML_DATA_DIR or the user cache)")
    train.add_argument("--no-download", action="store_true",
                       help="never download data; fail if it is not in the data folder")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set inner_lr=0.1 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress output")
    _distributed_arguments(train)

    resume = sub.add_parser("resume", help="continue a run (or a group of runs) from its latest checkpoint")
    resume.add_argument("run_dir")
    resume.add_argument("--steps", type=int, help="train to this many steps in all (default: the run's)")
    resume.add_argument("--data-dir", help="data folder, if it moved since training")
    resume.add_argument("--no-progress", action="store_true", help="no progress output")
    _distributed_arguments(resume)

    evaluate = sub.add_parser("eval", help="meta-test a trained run again from its latest checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--tasks", type=int, help="number of test tasks (default: the run's)")
    evaluate.add_argument("--data-dir", help="data folder, if it moved since training")

    plot = sub.add_parser("plot", help="learning curves and meta-test of one or more runs, overlaid")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN")
    plot.add_argument("--out", default="curves.png", help="image file to write (.png, .pdf, .svg)")

    from jmaml.experiment import data_command
    data_command.add_parser(sub)
    return parser


def _distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process runs (every process runs the same command)")
    group.add_argument("--distributed", action="store_true",
                       help="join a jax.distributed run: detected on SLURM, Open MPI and Cloud TPU, or given by "
                            "--coordinator, --num-processes and --process-id")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    group.add_argument("--distributed-timeout", type=int, default=300, metavar="SECONDS",
                       help="how long to wait for all processes to connect (default 300)")


def _start_processes(args) -> None:
    """``jax.distributed.initialize`` before anything touches a device, when asked for."""
    explicit = any(getattr(args, k, None) is not None for k in ("coordinator", "num_processes", "process_id"))
    if getattr(args, "distributed", False) or explicit:
        from jmaml import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id, timeout=args.distributed_timeout)


def _say(*lines: str) -> None:
    """Console output, from process 0 only."""
    from jmaml import parallel

    if parallel.is_main_process():
        for line in lines:
            print(line)


def format_eval(result: dict) -> str:
    """The meta-test as printed lines: the headline and the score after each inner step."""
    unit = "%" if result["metric"] == "accuracy" else ""
    scale = 100.0 if unit else 1.0

    def number(value):
        return "nan" if value is None else f"{value * scale:.4f}{unit}"

    lines = [f"meta-test over {result['tasks']} tasks, {result['metric']} after {result['test_steps']} "
             f"inner steps: {number(result['mean'])} +- {number(result['ci95'])} (95%)"]
    for k, (m, c) in enumerate(zip(result["per_step"], result["per_step_ci95"])):
        lines.append(f"  after {k:2d} steps: {number(m)} +- {number(c)}")
    return "\n".join(lines)


def format_group(summary: dict) -> str:
    """A group's summary as a table: per setting, the meta-test over seeds."""
    unit = "%" if summary["metric"] == "accuracy" else ""
    scale = 100.0 if unit else 1.0

    def number(value):
        return "-" if value is None else f"{value * scale:.4f}{unit}"

    rows = [[row["setting"] or "(seeds)", str(len(row["seeds"])), number(row["mean"]), number(row["std"]),
             number(row["ci95"]), number(row["meta_test_ci95"])] for row in summary["settings"]]
    head = ["setting", "seeds", "mean", "std", "95% (seeds)", "95% (tasks)"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"meta-test of the group, {summary['metric']} after {summary['test_steps']} inner steps, over seeds:"]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in [head, *rows]]
    return "\n".join(lines)


def _group_configs(args, overrides: dict) -> list | None:
    """The configs of a ``--seeds``/``--sweep`` group (a grid, every point times every seed), or None."""
    from jmaml.experiment.configs import get_config, grid, parse_seeds, parse_sweep

    if args.seeds is None and not args.sweep:
        return None
    sweep = parse_sweep(args.sweep)
    if args.seeds is not None:
        if "seed" in sweep or args.seed is not None:
            raise JmamlError("give the seeds once: --seeds, or --seed / --sweep seed=...")
        sweep["seed"] = parse_seeds(args.seeds)
    both = sorted(set(sweep) & set(overrides))
    if both:
        raise JmamlError(f"{both[0]} is both swept and set; give it in --sweep only")
    return [get_config(args.config, {**overrides, **point}) for point in grid(sweep)]


def _train(args) -> None:
    from jmaml.experiment.configs import get_config, parse_overrides
    from jmaml.experiment.training import train, train_group

    overrides = parse_overrides(args.set)
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.data_dir is not None:
        overrides["data_dir"] = os.path.abspath(args.data_dir)
    if args.no_download:
        overrides["download"] = False
    cfgs = _group_configs(args, overrides)
    cfg = get_config(args.config, overrides) if cfgs is None else None
    if args.resume and not args.out:
        raise JmamlError("--resume needs the run folder: pass --out DIR (or use `jmaml resume DIR`)")
    out = args.out or os.path.join("runs", f"{args.config}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if cfgs is not None:
        _report_group(train_group(cfgs, out, resume=args.resume, progress=not args.no_progress), out)
        return
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    _say(format_eval(result), f"run saved in {os.path.abspath(out)}")


def _report_group(summary: dict, out: str) -> None:
    """The group's table and where it is; one error line per run that diverged."""
    from jmaml.experiment.run import RunFailed

    _say(format_group(summary), f"{len(summary['runs'])} runs saved in {os.path.abspath(out)}")
    if summary["failed"]:
        raise RunFailed("\n".join(summary["failed"].values()))


def _resume(args) -> None:
    import dataclasses
    import json

    from jmaml.experiment.configs import validate
    from jmaml.experiment.runs import GROUP, load_config
    from jmaml.experiment.training import train, train_group

    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.data_dir is not None:
        overrides["data_dir"] = os.path.abspath(args.data_dir)
    group = os.path.join(args.run_dir, GROUP)
    if os.path.isfile(group):
        with open(group) as f:
            names = json.load(f)["runs"]
        cfgs = [validate(dataclasses.replace(load_config(os.path.join(args.run_dir, name)), **overrides))
                for name in names]
        _report_group(train_group(cfgs, args.run_dir, resume=True, progress=not args.no_progress), args.run_dir)
        return
    cfg = validate(dataclasses.replace(load_config(args.run_dir), **overrides))
    result = train(cfg, args.run_dir, resume=True, progress=not args.no_progress)
    _say(format_eval(result), f"run saved in {os.path.abspath(args.run_dir)}")


def _eval(args) -> None:
    from jmaml.experiment import runs
    from jmaml.experiment.training import meta_test_checkpoint

    overrides = {}
    if args.tasks is not None:
        overrides["eval_tasks"] = args.tasks
    if args.data_dir is not None:
        overrides["data_dir"] = os.path.abspath(args.data_dir)
    result = meta_test_checkpoint(args.run_dir, overrides)
    print(f"checkpoint step {result['checkpoint_step']} of {os.path.abspath(args.run_dir)}")
    print(format_eval(result))
    path = os.path.join(args.run_dir, runs.eval_file(result["checkpoint_step"], result["tasks"]))
    try:
        runs.write_json(path, result)
    except OSError as err:
        raise JmamlError(f"could not write {path}: {err.strerror}; the result above is complete") from None
    print(f"written to {os.path.abspath(path)}")


def _plot(args) -> None:
    from jmaml.experiment.plots import plot_runs

    print(f"written to {plot_runs(args.run_dirs, args.out)}")


def _data(args) -> None:
    from jmaml.experiment.data_command import run

    run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jmaml`` console script; returns the exit status."""
    from jmaml.experiment.run import RunFailed, Stopped

    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    # orbax's notes are not for the console, nor are the errors its background threads log after a failed
    # save (a full disk): the failure reaches the user as one `error:` line naming the intact checkpoint
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        _start_processes(args)
        {"train": _train, "resume": _resume, "eval": _eval, "plot": _plot, "data": _data}[args.command](args)
    except JmamlError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:  # one line per run that failed (a group's runs fail alone)
        print("\n".join(f"error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return EXIT_FAILED
    except Stopped as err:
        print(err, file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
