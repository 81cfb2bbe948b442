"""Named experiment configs, ``key=value`` overrides, and their validation.

Every check here runs before anything is traced or compiled, and fails with one
:class:`~jmaml.errors.JmamlError` that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import typing
from typing import Any

from jmaml.algorithms import ALGORITHMS, algorithm_options
from jmaml.core.inner import INNER_OPTIMIZERS
from jmaml.core.schedules import SCHEDULES, MetaUpdate
from jmaml.errors import JmamlError
from jmaml.models.conv import ConvImpl, Precision
from jmaml.models.conv4 import Pool
from jmaml.models.norm import NormStats

# Each dataset and the keys that only it reads; every other key applies to every dataset.
DATASETS: dict[str, tuple[str, ...]] = {
    "sinusoid": ("hidden", "eval_queries"),
    "omniglot": ("filters", "conv", "precision", "norm_stats", "image_size", "data_dir", "download", "data_seed"),
    "mini_imagenet": ("filters", "conv", "precision", "norm_stats", "pool", "data_dir", "data_format"),
}
# Keys a resumed run may change: they leave the training trajectory as it was.
RESUMABLE_KEYS = ("steps", "eval_tasks", "eval_batch", "eval_max_steps", "eval_queries", "test_inner_steps",
                  "checkpoint_every", "checkpoint_minutes", "data_dir", "download")
# Keys whose values may differ between the runs of one program (`jmaml train --seeds/--sweep`): they change
# numbers, not shapes or the program. The seed picks a run's initial weights and task stream; the others are
# traced per run (every other key, e.g. ways, shots, filters, hidden, inner_steps, meta_batch, image_size,
# algorithm or dataset, shapes the program and needs a program, a `jmaml train`, of its own).
SWEEP_KEYS = ("seed", "inner_lr", "meta_lr", "proximal_lambda")
TRACED_KEYS = tuple(key for key in SWEEP_KEYS if key != "seed")


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: the data, the algorithm, the model, meta-training and meta-test.

    Attributes are the keys of ``--set key=value``.
    """

    name: str = "sinusoid"
    dataset: str = "sinusoid"
    algorithm: str = "maml"
    # tasks
    ways: int = 1
    shots: int = 10
    queries: int = 10
    meta_batch: int = 25
    # inner loop
    inner_lr: float = 0.01
    inner_steps: int = 1
    test_inner_steps: int = 1
    first_order: bool = False
    remat: bool = False
    unroll: int = 1  # inner steps per scan iteration; 0: the whole inner loop unrolled
    # outer loop
    meta_lr: float = 1e-3
    lr_schedule: str = "constant"
    meta_update: str = "per_leaf"  # "flat": Adam on all meta-parameters raveled into one vector
    steps: int = 70_000
    meta_chunks: int = 1  # 0: auto, see workloads.chunking
    # model: MLP widths for regression, conv filters for images (0 = the paper's)
    hidden: tuple[int, ...] = (40, 40)
    filters: int = 0
    conv: str = "auto"
    precision: str = "float32"
    norm_stats: str = "two_pass"  # BatchNorm statistics; "one_pass": mean and mean square in one read
    pool: str = "reduce_window"  # miniImageNet's max-pooling; "reshape": a reshape and a max
    # meta-test
    eval_tasks: int = 1000
    eval_queries: int = 100
    eval_max_steps: int = 10
    eval_batch: int = 100
    # bookkeeping
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5000
    checkpoint_minutes: float = 10.0
    data_dir: str = ""
    download: bool = True
    data_seed: int = 0
    data_format: str = ""
    image_size: int = 28
    # algorithm options (see README's algorithm table)
    head: str = "head"
    msl_anneal_steps: int = 0
    first_order_steps: int = 0
    proximal_lambda: float = 1.0
    cg_steps: int = 5
    inner_optimizer: str = "sgd"
    inner_batch: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return validate(cls(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in raw.items() if k in known}))


_OMNIGLOT = Config(dataset="omniglot", ways=5, shots=1, queries=15, meta_batch=32, inner_lr=0.4,
                   inner_steps=1, test_inner_steps=3, steps=60_000, eval_tasks=600, eval_max_steps=10)
_MINI = Config(dataset="mini_imagenet", ways=5, shots=1, queries=15, meta_batch=4, inner_lr=0.01,
               inner_steps=5, test_inner_steps=10, steps=60_000, eval_tasks=600, eval_max_steps=10,
               eval_batch=20, image_size=84, meta_chunks=0)

# The MAML paper's settings (Finn et al. 2017, section 5 and its reference code; its numbers are in the README).
CONFIGS: dict[str, Config] = {
    # K=10, one step of 0.01, meta-batch 25, Adam 1e-3, 70k steps.
    "sinusoid": Config(),
    # conv4 64 filters, stride 2; one step of 0.4 (3 at test); meta-batch 32.
    "omniglot-5w1s": dataclasses.replace(_OMNIGLOT, name="omniglot-5w1s"),
    "omniglot-5w5s": dataclasses.replace(_OMNIGLOT, name="omniglot-5w5s", shots=5),
    # 20-way: five steps of 0.1, meta-batch 16; 5 queries per class (100 query images a task).
    "omniglot-20w1s": dataclasses.replace(_OMNIGLOT, name="omniglot-20w1s", ways=20, queries=5, meta_batch=16,
                                          inner_lr=0.1, inner_steps=5, test_inner_steps=5),
    "omniglot-20w5s": dataclasses.replace(_OMNIGLOT, name="omniglot-20w5s", ways=20, shots=5, queries=5,
                                          meta_batch=16, inner_lr=0.1, inner_steps=5, test_inner_steps=5),
    # conv4 32 filters + max-pool, 84x84; five steps of 0.01 (10 at test); meta-batch 4 (2 for 5-shot);
    # on the CPU one task at a time (meta_chunks=0), which keeps a run under 2.5 GB.
    "mini-5w1s": dataclasses.replace(_MINI, name="mini-5w1s"),
    "mini-5w5s": dataclasses.replace(_MINI, name="mini-5w5s", shots=5, meta_batch=2),
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def parse_value(key: str, text: str) -> Any:
    """Parses the text of ``--set key=text`` into the type of ``Config.key``."""
    types = _field_types()
    if key not in types:
        raise JmamlError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")
    kind = types[key]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        want = {bool: "true or false", int: "an integer", float: "a number"}.get(
            kind, "comma-separated integers")
        raise JmamlError(f"config key {key!r} needs {want}, got {text!r}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` into typed overrides."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise JmamlError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = parse_value(key.strip(), text.strip())
    return out


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` text into seeds: ``0-7``, ``0,2,5`` or both (``0-3,8``), each seed once."""
    seeds: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            first, sep, last = part.partition("-")
            seeds += list(range(int(first), int(last) + 1)) if sep else [int(first)]
    except ValueError:
        raise JmamlError(f"--seeds takes seeds like 0-7 or 0,2,5, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise JmamlError(f"--seeds needs distinct non-negative seeds, like 0-7 or 0,2,5, got {text!r}")
    return seeds


def parse_sweep(pairs: list[str]) -> dict[str, list[Any]]:
    """``--sweep key=v1,v2`` texts into ``{key: [values]}``; every key must be one of :data:`SWEEP_KEYS`.

    Raises:
      JmamlError: one line: a malformed pair, an unknown key, a key given twice, or the keys that cannot be
        swept in one program (all named at once).
    """
    sweep: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not text.strip():
            raise JmamlError(f"--sweep takes key=value,value,..., got {pair!r}")
        if key in sweep:
            raise JmamlError(f"--sweep {key} is given twice; list all its values in one --sweep {key}=...")
        sweep[key] = [parse_value(key, value) for value in text.replace(" ", "").split(",") if value]
    check_sweep_keys(sweep)
    return sweep


def grid(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the grid of ``sweep`` (``{key: [values]}``), the last key varying fastest."""
    return [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())]


def get_config(name: str, overrides: dict[str, Any] | None = None) -> Config:
    """The named config with ``overrides`` applied, validated."""
    if name not in CONFIGS:
        raise JmamlError(f"unknown config {name!r}; choose one of: {', '.join(CONFIGS)}")
    cfg = validate(dataclasses.replace(CONFIGS[name], **(overrides or {})))
    check_applicable(cfg, overrides or {})
    return cfg


def algorithm_keys(algorithm: str) -> tuple[str, ...]:
    """The config keys ``algorithm``'s factory takes (read from its signature)."""
    return tuple(key for key in algorithm_options(algorithm) if key in _FIELDS)


_FIELDS = {field.name for field in dataclasses.fields(Config)}


def _own_keys(algorithm: str) -> tuple[str, ...]:
    """The keys of ``algorithm`` that not every algorithm takes."""
    common = set.intersection(*(set(algorithm_keys(name)) for name in ALGORITHMS))
    return tuple(key for key in algorithm_keys(algorithm) if key not in common)


def check_applicable(cfg: Config, keys: typing.Iterable[str]) -> None:
    """Raises one JmamlError for a key set by the user that ``cfg``'s dataset or algorithm ignores."""
    for key in keys:
        owners = [name for name, own in DATASETS.items() if key in own]
        if owners and cfg.dataset not in owners:
            raise JmamlError(f"{key} has no effect on {cfg.dataset} data (it applies to {', '.join(owners)}); "
                             f"the dataset keys that apply to {cfg.dataset} are: "
                             f"{', '.join(DATASETS[cfg.dataset]) or 'none'}")
        owners = [name for name in ALGORITHMS if key in _own_keys(name)]
        if owners and key not in _own_keys(cfg.algorithm):
            raise JmamlError(f"{key} has no effect with algorithm={cfg.algorithm} (it applies to "
                             f"{', '.join(owners)}); the algorithm keys that apply to {cfg.algorithm} are: "
                             f"{', '.join(_own_keys(cfg.algorithm)) or 'none'}")


def check_sweep_keys(keys: typing.Iterable[str]) -> None:
    """Raises one JmamlError naming the keys in ``keys`` that cannot vary within one program."""
    bad = [key for key in keys if key not in SWEEP_KEYS]
    if bad:
        raise JmamlError(f"{', '.join(bad)} cannot be swept in one program (it changes the program's shapes or "
                         f"structure); the keys that can be swept in one program are: "
                         f"{', '.join(k + ' (--seeds)' if k == 'seed' else k for k in SWEEP_KEYS)}; "
                         "train other values with separate `jmaml train` commands")


def check_group(cfgs: typing.Sequence[Config]) -> None:
    """Raises one JmamlError unless the configs differ only in :data:`SWEEP_KEYS` (one program for all)."""
    if not cfgs:
        raise JmamlError("a group needs at least one run")
    first = dataclasses.asdict(cfgs[0])
    check_sweep_keys(sorted({key for cfg in cfgs[1:] for key, value in dataclasses.asdict(cfg).items()
                             if value != first[key]}))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise JmamlError(message)


def validate(cfg: Config) -> Config:
    """Checks every value of ``cfg``; returns it unchanged or raises one JmamlError."""
    _require(cfg.dataset in DATASETS, f"dataset must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    _require(cfg.algorithm in ALGORITHMS,
             f"unknown algorithm {cfg.algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
    for key in ("ways", "shots", "queries", "meta_batch", "inner_steps", "test_inner_steps", "steps",
                "eval_tasks", "eval_queries", "eval_batch", "log_every", "cg_steps", "image_size"):
        value = getattr(cfg, key)
        _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{key} must be a positive integer, got {value!r}")
    for key in ("inner_lr", "meta_lr", "proximal_lambda"):
        value = getattr(cfg, key)
        _require(isinstance(value, (int, float)) and value > 0, f"{key} must be positive, got {value!r}")
        _require(math.isfinite(value), f"{key} must be a finite number, got {value!r}")
    _require(isinstance(cfg.checkpoint_minutes, (int, float)) and 0 <= cfg.checkpoint_minutes < math.inf,
             f"checkpoint_minutes must be a non-negative number (0: no time-based checkpoints), "
             f"got {cfg.checkpoint_minutes!r}")
    for key in ("filters", "data_seed", "checkpoint_every", "msl_anneal_steps",
                "first_order_steps", "inner_batch", "eval_max_steps", "meta_chunks", "unroll"):
        value = getattr(cfg, key)
        _require(isinstance(value, int) and value >= 0, f"{key} must be a non-negative integer, got {value!r}")
    _require(cfg.eval_max_steps >= cfg.test_inner_steps,
             f"eval_max_steps ({cfg.eval_max_steps}) must be at least test_inner_steps ({cfg.test_inner_steps})")
    _require(cfg.lr_schedule in SCHEDULES,
             f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {cfg.lr_schedule!r}")
    convs = typing.get_args(ConvImpl)
    _require(cfg.conv in convs, f"conv must be one of {', '.join(convs)}, got {cfg.conv!r}")
    precisions = typing.get_args(Precision)
    _require(cfg.precision in precisions, f"precision must be one of {', '.join(precisions)}, got {cfg.precision!r}")
    for key, literal in (("norm_stats", NormStats), ("meta_update", MetaUpdate), ("pool", Pool)):
        allowed = typing.get_args(literal)
        _require(getattr(cfg, key) in allowed, f"{key} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    _require(cfg.inner_optimizer in INNER_OPTIMIZERS,
             f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {cfg.inner_optimizer!r}")
    _require(len(cfg.hidden) > 0 and all(w > 0 for w in cfg.hidden),
             f"hidden must be positive layer widths like 40,40, got {cfg.hidden!r}")
    _require(cfg.eval_tasks % cfg.eval_batch == 0 or cfg.eval_tasks < cfg.eval_batch,
             f"eval_tasks ({cfg.eval_tasks}) must be a multiple of eval_batch ({cfg.eval_batch})")
    _require(cfg.meta_chunks == 0 or cfg.meta_batch % cfg.meta_chunks == 0,
             f"meta_chunks ({cfg.meta_chunks}) must divide meta_batch ({cfg.meta_batch}), or be 0 (auto)")
    _require(cfg.data_format in ("", "csv", "pickle"),
             f"data_format must be csv or pickle (or empty: the one format in the folder), got {cfg.data_format!r}")
    if cfg.dataset == "mini_imagenet":
        _require(cfg.image_size == 84, f"miniImageNet images are 84x84: leave image_size at 84, got {cfg.image_size}")
    if cfg.dataset == "sinusoid":
        _require(cfg.ways == 1, f"sinusoid regression has no classes: leave ways at 1, got {cfg.ways}")
    else:
        _require(cfg.ways >= 2, f"classification needs ways >= 2, got {cfg.ways}")
    return cfg
