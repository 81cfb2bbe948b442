"""From a config to the pieces of an experiment: model, loss, metrics, data and task samplers."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmaml import losses
from jmaml.core.learner import ApplyFn, LossFn, MetricFn
from jmaml.core.types import Params, PyTree, Tasks
from jmaml.data import episodes, sinusoid
from jmaml.experiment.configs import DATASETS, Config
from jmaml.models import MLP, Conv4, functional


class Deferred(NamedTuple):
    """Images read only when they are needed: their ``shape`` now, the array from ``load()``."""

    shape: tuple[int, ...]
    load: Callable[[], Any]


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
      train_data: what ``train_tasks`` samples from, placed on the device (None if generated); image
        data stays uint8 there and the samplers convert the sampled batch to float32.
      test_data: likewise for ``test_tasks``, or :class:`Deferred` (miniImageNet's test split is read
        only when the meta-test needs it, so training does not hold it); see :meth:`held_out`.
      data_summary: one plain dict per split (train, val, test) saying what was loaded (see
        :func:`jmaml.data.cache.split_summary`; :func:`summary_line` formats one); empty if generated.
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
    data_summary: tuple[dict, ...] = ()

    def held_out(self) -> Any:
        """``test_data``, read now if it is :class:`Deferred`."""
        return self.test_data.load() if isinstance(self.test_data, Deferred) else self.test_data


def summary_line(summary: dict) -> str:
    """One line saying what was loaded for a split, e.g. for the start of a run's log."""
    line = (f"data {summary['split']}: {summary['format']} {summary['source']}, {summary['classes']} classes, "
            f"{summary['images']} images of {summary['image_size']}, cache {summary['cache']}"
            + (f" {summary['cache_path']}" if summary["cache_path"] else ""))
    resized = summary.get("resized") or {}
    if resized.get("count"):
        sizes = ", ".join(f"{n} of {size}" for size, n in sorted(resized["sizes"].items()))
        line += f"; {resized['count']} images resized to {summary['image_size']} ({sizes})"
    return line


def eval_batch(cfg: Config) -> int:
    """Tasks per compiled meta-test call."""
    return min(cfg.eval_batch, cfg.eval_tasks)


def chunking(cfg: Config, devices: int = 1) -> tuple[int, int]:
    """``(meta_chunks, eval_chunks)``: the chunks that a meta-batch and a meta-test batch of ``cfg``
    are computed in on ``devices`` devices of the default backend (same tasks, same results;
    memory of one chunk).

    ``meta_chunks=0`` (auto; the miniImageNet configs' default) means one chunk on a GPU or TPU
    and, on the CPU, one task per device at a time in meta-training and meta-test: there the
    run's memory is the host's, and a whole miniImageNet meta-batch needs 4-10 GB of temporaries
    where one task needs about 1 GB. Any other value is the meta-training split as given, with
    the meta-test in one piece.
    """
    if cfg.meta_chunks:
        return cfg.meta_chunks, 1
    if jax.default_backend() != "cpu":
        return 1, 1
    batch = eval_batch(cfg)
    return max(cfg.meta_batch // devices, 1), batch // devices if batch % devices == 0 else batch


def sinusoid_workload(cfg: Config) -> Workload:
    """Sinusoid regression with the paper's MLP; meta-test tasks score ``eval_queries`` points.

    Weights and tasks are in JAX's default float type: float32, or float64 with ``JAX_ENABLE_X64``
    (e.g. to check that runs trained together equal runs trained alone to rounding)."""
    init, apply = functional(MLP(tuple(cfg.hidden), 1))

    def sampler(meta_batch, queries):
        return lambda key, data: sinusoid.sample_tasks(key, meta_batch, cfg.shots, queries,
                                                       dtype=jnp.result_type(float))

    return Workload(
        init=lambda key: jax.tree.map(lambda p: p.astype(jnp.result_type(float)), init(key, jnp.zeros((1, 1)))),
        apply_fn=apply,
        loss_fn=losses.mse,
        metrics={},
        metric="mse",
        train_tasks=sampler(cfg.meta_batch, cfg.queries),
        test_tasks=sampler(eval_batch(cfg), cfg.eval_queries),
    )


def image_model(cfg: Config, variant: str) -> tuple[Callable, ApplyFn]:
    """``(init, apply)`` of the Conv4 of ``cfg`` (ways, filters, conv, precision, norm_stats, pool) for ``variant``."""
    return functional(Conv4(cfg.ways, variant=variant, filters=cfg.filters or None, conv=cfg.conv,
                            precision=cfg.precision, norm=cfg.norm_stats,
                            pool=cfg.pool if variant == "mini_imagenet" else "reduce_window"))


def image_workload(cfg: Config, train_images, test_images, variant: str,
                   data_summary: tuple[dict, ...] = ()) -> Workload:
    """N-way K-shot classification with Conv4 over image arrays ``[classes, drawings, H, W, C]``.

    The episode (ways, shots, queries against the classes and drawings on hand) is checked
    here, before anything is compiled. Images (uint8 0..255, or float in [0, 1]) are placed on the
    device as they are, sampled inside the jitted step and converted to float32 there;
    ``test_images`` may be :class:`Deferred`, whose ``load`` places them when the meta-test reads them.
    """
    for images, meta_batch, queries in ((train_images, cfg.meta_batch, cfg.queries),
                                        (test_images, eval_batch(cfg), cfg.queries)):
        episodes.validate_episode(images.shape[0], images.shape[1], images.shape[2:], ways=cfg.ways,
                                  shots=cfg.shots, queries=queries, meta_batch=meta_batch)
    init, apply = image_model(cfg, variant)

    def sampler(meta_batch):
        def sample(key, images):
            return episodes.as_float(episodes.sample_tasks(key, images, ways=cfg.ways, shots=cfg.shots,
                                                           queries=cfg.queries, meta_batch=meta_batch))

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
        test_data=test_images if isinstance(test_images, Deferred) else jax.device_put(test_images),
        data_summary=tuple(data_summary),
    )


def omniglot_workload(cfg: Config) -> Workload:
    """Omniglot, Vinyals et al. split: 1200 characters x 4 rotations to meta-train, 423 x 4 to test."""
    from jmaml.data.omniglot import load_omniglot

    splits = load_omniglot(cfg.data_dir or None, image_size=cfg.image_size, seed=cfg.data_seed,
                           download=cfg.download)
    return image_workload(cfg, splits.train, splits.test, "omniglot", splits.summary)


def mini_imagenet_workload(cfg: Config) -> Workload:
    """miniImageNet, Ravi & Larochelle split: 64 classes to meta-train, 20 to meta-test.

    All three splits are checked before any is converted; the validation and test splits are read
    for their summary and the overlap check, and the training split goes to the device as uint8.
    The test split is read again (from its cache) when the meta-test needs it.

    ``cfg.data_format`` (``"csv"`` or ``"pickle"``) chooses for a folder holding both.
    """
    from jmaml.data.mini_imagenet import IMAGE_SHAPE, load_mini_imagenet, load_source

    splits = load_mini_imagenet(cfg.data_dir or None, data_format=cfg.data_format or None, keep=("train",),
                                place=jax.device_put)
    source, summary = splits.sources["test"], next(d for d in splits.summary if d["split"] == "test")
    test = Deferred((summary["classes"], summary["images"] // summary["classes"], *IMAGE_SHAPE),
                    lambda: jax.device_put(load_source(source).images))
    return image_workload(cfg, splits.train, test, "mini_imagenet", splits.summary)


WORKLOADS = {"sinusoid": sinusoid_workload, "omniglot": omniglot_workload,
             "mini_imagenet": mini_imagenet_workload}
assert set(WORKLOADS) == set(DATASETS), "configs.DATASETS and WORKLOADS name the same datasets"


def make_workload(cfg: Config) -> Workload:
    """The workload of ``cfg.dataset``; loads (and checks) its data first."""
    return WORKLOADS[cfg.dataset](cfg)
