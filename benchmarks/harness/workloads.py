"""The benchmark workloads: the named configs' episodes, and random inputs shaped like them.

A benchmark called ``omniglot-5w1s`` times exactly the meta-training episode of
``jmaml train omniglot-5w1s``: every shape and rate (ways, shots, queries, inner steps and
rate, meta-batch, Conv4 variant and filters, image shape, meta learning rate) is read from
:data:`jmaml.experiment.configs.CONFIGS`, never written down a second time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmaml.core.types import Tasks
from jmaml.data.mini_imagenet import IMAGE_SHAPE as MINI_IMAGENET_SHAPE
from jmaml.experiment import CONFIGS, Config, image_model, parse_overrides, validate

# The configs the throughput benchmark times (second-order MAML on Conv4, the paper's four settings).
BENCHMARKED = ("omniglot-5w1s", "omniglot-20w1s", "mini-5w1s", "mini-5w5s")


def quick_overrides(cfg: Config) -> dict[str, Any]:
    """The one quick-size shrink of every benchmark (``--quick``): config overrides that keep the
    structure of ``cfg`` (dataset, model variant, algorithm; at most 3 ways and 2 inner steps) at
    tiny shapes, for a functional check in seconds."""
    shapes = {"sinusoid": {"hidden": (16, 16)}, "omniglot": {"filters": 4, "image_size": 8},
              "mini_imagenet": {"filters": 4}}[cfg.dataset]
    return {**shapes, "ways": min(cfg.ways, 3), "queries": 2, "inner_steps": min(cfg.inner_steps, 2),
            "meta_batch": 4, "name": f"{cfg.name}-quick"}


# Names of jmaml options in the tables that are not a --set pair themselves (``conv=xla`` is one)
OPTION_NAMES: dict[str, dict[str, Any]] = {
    "default": {},
    "unroll=full": {"unroll": 0},  # 0: the whole inner loop unrolled
    "remat": {"remat": True},
}


def options(label: str) -> dict[str, Any]:
    """The config overrides a column label names: comma-separated ``key=value`` pairs as ``--set``
    takes them or :data:`OPTION_NAMES`, e.g. ``"conv=xla, unroll=full"`` or ``"remat, meta_chunks=4"``.

    Raises:
      JmamlError: a part is neither (an unknown key or a bad value).
    """
    out: dict[str, Any] = {}
    for part in (p.strip() for p in label.split(",")):
        out.update(OPTION_NAMES[part] if part in OPTION_NAMES else parse_overrides([part]))
    return out


# miniImageNet's quick input side: its images have no config key for their size (always 84x84)
QUICK_MINI_IMAGENET_SIDE = 16


@dataclasses.dataclass(frozen=True)
class BenchWorkload:
    """One meta-training episode batch and Conv4, as a named config sets them up.

    Attributes:
      cfg: the config (with any overrides) every jmaml learner of the benchmark is built from.
      variant: Conv4 variant, ``"omniglot"`` or ``"mini_imagenet"``.
      filters: Conv4 filters per layer (the config's, with 0 resolved to the variant's default).
      image: ``(height, width, channels)`` of one input.

    ``name``, ``ways``, ``shots``, ``queries``, ``inner_steps``, ``inner_lr``, ``meta_batch``,
    ``meta_lr`` and ``conv`` are the config's.
    """

    cfg: Config
    variant: str
    filters: int
    image: tuple[int, int, int]

    def __getattr__(self, key: str) -> Any:
        if key in ("name", "ways", "shots", "queries", "inner_steps", "inner_lr", "meta_batch", "meta_lr", "conv"):
            return getattr(self.cfg, key)
        raise AttributeError(key)

    @property
    def title(self) -> str:
        """For tables, e.g. ``Omniglot 5-way 1-shot, 15 queries, 1 step, 32 tasks``."""
        data = "Omniglot" if self.variant == "omniglot" else "miniImageNet"
        steps = f"{self.inner_steps} step" + ("s" if self.inner_steps > 1 else "")
        side, _, channels = self.image
        title = f"{data} {self.ways}-way {self.shots}-shot, {self.queries} queries, {steps}, {self.meta_batch} tasks"
        if self.name.endswith("-quick"):
            title += f" ({side}x{side}x{channels}, {self.filters} filters)"
        return title

    def quick(self) -> "BenchWorkload":
        """The tiny version (:func:`quick_overrides`) for CI."""
        cfg = dataclasses.replace(self.cfg, **quick_overrides(self.cfg))
        side = QUICK_MINI_IMAGENET_SIDE
        return from_config(cfg, image=(side, side, 3) if self.variant == "mini_imagenet" else None)

    def with_options(self, options: dict[str, Any]) -> Config:
        """The config with ``options`` (config keys, as ``--set`` takes them) applied and checked."""
        return validate(dataclasses.replace(self.cfg, **options))


def from_config(cfg: Config, image: tuple[int, int, int] | None = None) -> BenchWorkload:
    """The meta-training episode of ``cfg``: what one step of ``jmaml train`` computes on it.

    Args:
      cfg: a config of second-order MAML on Omniglot or miniImageNet.
      image: the input shape, if not the data set's (``--quick``'s small miniImageNet images).

    Raises:
      ValueError: ``cfg`` is not second-order MAML on image data with a constant Adam rate and
        the whole meta-batch in one piece, which is the program every benchmarked implementation
        computes.
    """
    differs = {key: getattr(cfg, key) for key, value in
               (("algorithm", "maml"), ("first_order", False), ("remat", False),
                ("lr_schedule", "constant")) if getattr(cfg, key) != value}
    if cfg.meta_chunks > 1:  # 0 (auto) is one piece on an accelerator; the harness times the one-piece program
        differs["meta_chunks"] = cfg.meta_chunks
    if cfg.dataset not in ("omniglot", "mini_imagenet"):
        differs["dataset"] = cfg.dataset
    if differs:
        raise ValueError(f"config {cfg.name!r} cannot be benchmarked as plain MAML on Conv4: {differs}")
    if image is None:
        image = (cfg.image_size, cfg.image_size, 1) if cfg.dataset == "omniglot" else MINI_IMAGENET_SHAPE
    # the filter count the config's model really has (0 in the config means the variant's default)
    init, _ = image_model(cfg, cfg.dataset)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *image), jnp.float32))
    return BenchWorkload(cfg, cfg.dataset, shapes["conv0"]["kernel"].shape[-1], image)


BENCH_WORKLOADS: dict[str, BenchWorkload] = {name: from_config(CONFIGS[name]) for name in BENCHMARKED}


def select(names: list[str] | None, quick: bool) -> list[BenchWorkload]:
    """The workloads called ``names`` (all by default), shrunk to tiny shapes if ``quick``."""
    names = names or list(BENCH_WORKLOADS)
    unknown = [n for n in names if n not in BENCH_WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(BENCH_WORKLOADS)}")
    return [BENCH_WORKLOADS[n].quick() if quick else BENCH_WORKLOADS[n] for n in names]


def make_batches(workload: BenchWorkload, count: int, seed: int = 0, dtype: Any = np.float32) -> list[Tasks]:
    """``count`` batches of random tasks (NHWC ``dtype`` images, int32 labels) as numpy arrays.

    Labels follow the episode layout: ``shots`` (support) or ``queries`` (query) examples of
    each of the ``ways`` classes.
    """
    rng = np.random.default_rng(seed)
    w = workload
    ys = np.tile(np.repeat(np.arange(w.ways, dtype=np.int32), w.shots), (w.meta_batch, 1))
    yq = np.tile(np.repeat(np.arange(w.ways, dtype=np.int32), w.queries), (w.meta_batch, 1))

    def images(n: int) -> np.ndarray:
        return rng.standard_normal((w.meta_batch, n, *w.image), dtype=np.float32).astype(dtype)

    return [Tasks(images(w.ways * w.shots), ys, images(w.ways * w.queries), yq) for _ in range(count)]


def init_params(workload: BenchWorkload, seed: int = 0, dtype: Any = np.float32) -> dict[str, Any]:
    """Initial Conv4 parameters (jmaml's layout, numpy ``dtype``), shared by every implementation."""
    init, _ = image_model(dataclasses.replace(workload.cfg, conv="xla"), workload.variant)
    params = init(jax.random.PRNGKey(seed), jnp.zeros((1, *workload.image), jnp.float32))
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
