"""The benchmark workloads: the MAML paper's episode shapes, and random inputs shaped like them."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmaml.core.types import Tasks
from jmaml.models import Conv4, functional


@dataclasses.dataclass(frozen=True)
class Workload:
    """One meta-training configuration: an N-way K-shot episode batch and Conv4.

    Attributes:
      name: identifier used on the command line and in reports.
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

    @property
    def title(self) -> str:
        """Human-readable description for tables, e.g. ``Omniglot 5-way 1-shot, 1 step, 32 tasks``."""
        data = "Omniglot" if self.variant == "omniglot" else "miniImageNet"
        steps = f"{self.inner_steps} step" + ("s" if self.inner_steps > 1 else "")
        side, _, channels = self.image
        title = f"{data} {self.ways}-way {self.shots}-shot, {steps}, {self.meta_batch} tasks"
        if self.name.endswith("-quick"):
            title += f" ({side}x{side}x{channels}, {self.filters} filters)"
        return title

    def quick(self) -> "Workload":
        """A tiny version with the same structure (variant, ways, inner steps) for CI."""
        side = 8 if self.variant == "omniglot" else 16
        return dataclasses.replace(
            self, name=f"{self.name}-quick", filters=4,
            image=(side, side, self.image[2]), ways=min(self.ways, 3), queries=2,
            inner_steps=min(self.inner_steps, 2), meta_batch=2)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("omniglot_5w1s", "omniglot", 64, (28, 28, 1),
             ways=5, shots=1, queries=15, inner_steps=1, inner_lr=0.4, meta_batch=32),
    Workload("omniglot_20w1s", "omniglot", 64, (28, 28, 1),
             ways=20, shots=1, queries=15, inner_steps=5, inner_lr=0.1, meta_batch=16),
    Workload("mini_imagenet_5w1s", "mini_imagenet", 32,
             (84, 84, 3), ways=5, shots=1, queries=15, inner_steps=5, inner_lr=0.01, meta_batch=4),
    Workload("mini_imagenet_5w5s", "mini_imagenet", 32,
             (84, 84, 3), ways=5, shots=5, queries=15, inner_steps=5, inner_lr=0.01, meta_batch=4),
)}


def select(names: list[str] | None, quick: bool) -> list[Workload]:
    """The workloads called ``names`` (all by default), shrunk to tiny shapes if ``quick``."""
    names = names or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return [WORKLOADS[n].quick() if quick else WORKLOADS[n] for n in names]


def make_batches(workload: Workload, count: int, seed: int = 0) -> list[Tasks]:
    """``count`` batches of random tasks (NHWC float32 images, int32 labels) as numpy arrays.

    Labels follow the episode layout: ``shots`` (support) or ``queries`` (query) examples of
    each of the ``ways`` classes.
    """
    rng = np.random.default_rng(seed)
    w = workload
    ys = np.tile(np.repeat(np.arange(w.ways, dtype=np.int32), w.shots), (w.meta_batch, 1))
    yq = np.tile(np.repeat(np.arange(w.ways, dtype=np.int32), w.queries), (w.meta_batch, 1))

    def images(n: int) -> np.ndarray:
        return rng.standard_normal((w.meta_batch, n, *w.image), dtype=np.float32)

    return [Tasks(images(w.ways * w.shots), ys, images(w.ways * w.queries), yq) for _ in range(count)]


def init_params(workload: Workload, seed: int = 0) -> dict[str, Any]:
    """Initial Conv4 parameters (jmaml's layout, numpy), shared by every implementation."""
    init, _ = functional(Conv4(workload.ways, variant=workload.variant, filters=workload.filters,
                               conv="xla"))
    params = init(jax.random.PRNGKey(seed), jnp.zeros((1, *workload.image), jnp.float32))
    return jax.tree.map(np.asarray, params)
