"""From a config to the pieces of an experiment: model, loss, metrics, data and task samplers."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmaml import losses
from jmaml.experiment.configs import Config
from jmaml.core.learner import ApplyFn, LossFn, MetricFn
from jmaml.core.types import Params, PyTree, Tasks
from jmaml.data import episodes, sinusoid
from jmaml.models import MLP, Conv4, functional


class Workload(NamedTuple):
    """Everything data- and model-specific that meta-training and meta-test need.

    Attributes:
      init: ``key -> params`` of the model.
      apply_fn: ``apply(params, x) -> outputs``.
      loss_fn: ``loss(outputs, y) -> scalar``.
      metrics: extra per-task metrics.
      metric: the headline meta-test metric, ``"mse"`` or ``"accuracy"``.
      train_tasks: ``(key, train_data) -> Tasks`` with ``meta_batch`` meta-training tasks.
      test_tasks: ``(key, test_data) -> Tasks`` with ``eval_batch`` held-out tasks.
      train_data: what ``train_tasks`` samples from, placed on the device (None if generated).
      test_data: likewise for ``test_tasks``.
    """

    init: Callable[[jax.Array], Params]
    apply_fn: ApplyFn
    loss_fn: LossFn
    metrics: dict[str, MetricFn]
    metric: str
    train_tasks: Callable[[jax.Array, PyTree], Tasks]
    test_tasks: Callable[[jax.Array, PyTree], Tasks]
    train_data: Any = None
    test_data: Any = None


def eval_batch(cfg: Config) -> int:
    """Tasks per compiled meta-test call."""
    return min(cfg.eval_batch, cfg.eval_tasks)


def sinusoid_workload(cfg: Config) -> Workload:
    """Sinusoid regression with the paper's MLP; meta-test tasks score ``eval_queries`` points."""
    init, apply = functional(MLP(tuple(cfg.hidden), 1))

    def sampler(meta_batch, queries):
        return lambda key, data: sinusoid.sample_tasks(key, meta_batch, cfg.shots, queries)

    return Workload(
        init=lambda key: init(key, jnp.zeros((1, 1))),
        apply_fn=apply,
        loss_fn=losses.mse,
        metrics={},
        metric="mse",
        train_tasks=sampler(cfg.meta_batch, cfg.queries),
        test_tasks=sampler(eval_batch(cfg), cfg.eval_queries),
    )


def image_workload(cfg: Config, train_images, test_images, variant: str) -> Workload:
    """N-way K-shot classification with Conv4 over image arrays ``[classes, drawings, H, W, C]``.

    The episode (ways, shots, queries against the classes and drawings on hand) is checked
    here, before anything is compiled. Images are sampled inside the jitted step.
    """
    for images, meta_batch, queries in ((train_images, cfg.meta_batch, cfg.queries),
                                        (test_images, eval_batch(cfg), cfg.queries)):
        episodes.validate_episode(images.shape[0], images.shape[1], images.shape[2:], ways=cfg.ways,
                                  shots=cfg.shots, queries=queries, meta_batch=meta_batch)
    init, apply = functional(Conv4(cfg.ways, variant=variant, filters=cfg.filters or None, conv=cfg.conv))

    def sampler(meta_batch):
        def sample(key, images):
            return episodes.sample_tasks(key, images, ways=cfg.ways, shots=cfg.shots, queries=cfg.queries,
                                         meta_batch=meta_batch)

        return sample

    image_shape = train_images.shape[2:]
    return Workload(
        init=lambda key: init(key, jnp.zeros((1, *image_shape), jnp.float32)),
        apply_fn=apply,
        loss_fn=losses.cross_entropy,
        metrics={"accuracy": losses.accuracy},
        metric="accuracy",
        train_tasks=sampler(cfg.meta_batch),
        test_tasks=sampler(eval_batch(cfg)),
        train_data=jax.device_put(train_images),
        test_data=jax.device_put(test_images),
    )


def omniglot_workload(cfg: Config) -> Workload:
    """Omniglot, Vinyals et al. split: 1200 characters x 4 rotations to meta-train, 423 x 4 to test."""
    from jmaml.data.omniglot import load_omniglot

    splits = load_omniglot(cfg.data_dir or None, image_size=cfg.image_size, seed=cfg.data_seed,
                           download=cfg.download)
    return image_workload(cfg, splits.train, splits.test, "omniglot")


def mini_imagenet_workload(cfg: Config) -> Workload:
    """miniImageNet, Ravi & Larochelle split: 64 classes to meta-train, 20 to meta-test."""
    from jmaml.data.mini_imagenet import load_mini_imagenet_split

    train = load_mini_imagenet_split("train", cfg.data_dir or None, dtype="float32")
    test = load_mini_imagenet_split("test", cfg.data_dir or None, dtype="float32")
    return image_workload(cfg, train, test, "mini_imagenet")


WORKLOADS = {"sinusoid": sinusoid_workload, "omniglot": omniglot_workload,
             "mini_imagenet": mini_imagenet_workload}


def make_workload(cfg: Config) -> Workload:
    """The workload of ``cfg.dataset``; loads (and checks) its data first."""
    return WORKLOADS[cfg.dataset](cfg)
