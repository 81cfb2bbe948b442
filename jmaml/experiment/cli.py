"""The ``jmaml`` command: ``jmaml train | eval``."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from jmaml.errors import JmamlError


def _parser() -> argparse.ArgumentParser:
    from jmaml.experiment.configs import CONFIGS

    parser = argparse.ArgumentParser(prog="jmaml", description="MAML-family meta-learning in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="meta-train a config, then meta-test it")
    train.add_argument("config", help=f"one of: {', '.join(CONFIGS)}")
    train.add_argument("--steps", type=int, help="meta-training steps (overrides the config)")
    train.add_argument("--out", help="run folder (default: runs/<config>-<time>)")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--data-dir", help="data folder (default: $JMAML_DATA_DIR or the user cache)")
    train.add_argument("--no-download", action="store_true",
                       help="never download data; fail if it is not in the data folder")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set inner_lr=0.1 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("eval", help="meta-test a trained run again from its checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--tasks", type=int, help="number of test tasks (default: the run's)")
    evaluate.add_argument("--data-dir", help="data folder, if it moved since training")
    return parser


def _train(args) -> None:
    from jmaml.experiment.configs import get_config, parse_overrides
    from jmaml.experiment.train import format_eval, train

    overrides = parse_overrides(args.set)
    for key in ("steps", "seed", "data_dir"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.no_download:
        overrides["download"] = False
    cfg = get_config(args.config, overrides)
    out = args.out or os.path.join("runs", f"{args.config}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    result = train(cfg, out, progress=not args.no_progress)
    print(format_eval(result))
    print(f"run saved in {os.path.abspath(out)}")


def _eval(args) -> None:
    from jmaml.experiment.train import evaluate, format_eval

    overrides = {}
    if args.tasks is not None:
        overrides["eval_tasks"] = args.tasks
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    result = evaluate(args.run_dir, overrides)
    print(format_eval(result))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jmaml`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "eval": _eval}[args.command](args)
    except JmamlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
