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
from jmaml.experiment.configs import CONFIGS, Config
from jmaml.models import Conv4, functional

# The configs the throughput benchmark times (second-order MAML on Conv4, the paper's four settings).
BENCHMARKED = ("omniglot-5w1s", "omniglot-20w1s", "mini-5w1s", "mini-5w5s")


@dataclasses.dataclass(frozen=True)
class BenchWorkload:
    """One meta-training episode batch and Conv4, as a named config sets them up.

    Attributes:
      name: the config's name (``omniglot-5w1s``), ``-quick`` appended for the tiny version.
      variant: Conv4 variant, ``"omniglot"`` or ``"mini_imagenet"``.
      filters: Conv4 filters per layer.
      image: ``(height, width, channels)`` of one input.
      ways: classes per task.
      shots: support examples per class.
      queries: query examples per class.
      inner_steps: inner SGD steps.
      inner_lr: inner SGD learning rate.
      meta_batch: tasks per meta-step.
      meta_lr: Adam learning rate of the meta-update.
      conv: jmaml's convolution lowering (``auto``, ``xla`` or ``im2col``).
    """

    name: str
    variant: str
    filters: int
    image: tuple[int, int, int]
    ways: int
    shots: int
    queries: int
    inner_steps: int
    inner_lr: float
    meta_batch: int
    meta_lr: float = 1e-3
    conv: str = "auto"

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
        """A tiny version with the same structure (variant, ways, inner steps) for CI."""
        side = 8 if self.variant == "omniglot" else 16
        return dataclasses.replace(
            self, name=f"{self.name}-quick", filters=4,
            image=(side, side, self.image[2]), ways=min(self.ways, 3), queries=2,
            inner_steps=min(self.inner_steps, 2), meta_batch=2)


def from_config(cfg: Config) -> BenchWorkload:
    """The meta-training episode of ``cfg``: what one step of ``jmaml train`` computes on it.

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
    image = (cfg.image_size, cfg.image_size, 1) if cfg.dataset == "omniglot" else MINI_IMAGENET_SHAPE
    # the filter count the config's model really has (0 in the config means the variant's default)
    init, _ = functional(Conv4(cfg.ways, variant=cfg.dataset, filters=cfg.filters or None))
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, *image), jnp.float32))
    return BenchWorkload(cfg.name, cfg.dataset, shapes["conv0"]["kernel"].shape[-1], image, ways=cfg.ways,
                         shots=cfg.shots, queries=cfg.queries, inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                         meta_batch=cfg.meta_batch, meta_lr=cfg.meta_lr, conv=cfg.conv)


WORKLOADS: dict[str, BenchWorkload] = {name: from_config(CONFIGS[name]) for name in BENCHMARKED}


def select(names: list[str] | None, quick: bool) -> list[BenchWorkload]:
    """The workloads called ``names`` (all by default), shrunk to tiny shapes if ``quick``."""
    names = names or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return [WORKLOADS[n].quick() if quick else WORKLOADS[n] for n in names]


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
    init, _ = functional(Conv4(workload.ways, variant=workload.variant, filters=workload.filters,
                               conv="xla"))
    params = init(jax.random.PRNGKey(seed), jnp.zeros((1, *workload.image), jnp.float32))
    return jax.tree.map(lambda a: np.asarray(a).astype(dtype), params)
