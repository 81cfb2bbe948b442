"""Episodic few-shot task sampling: N ways, K shots, Q queries, over ``[classes, drawings, ...]`` data.

Per task: ``ways`` distinct classes; per class ``shots + queries`` distinct drawings, the first
``shots`` for support and the rest for query (so support and query never share a drawing); labels
``0..ways-1`` given to the classes in a random order. Examples are class-major: support row
``i * shots + j`` is shot ``j`` of the class labelled ``labels[i]``.

* :func:`sample_tasks` is a pure ``jax.random`` function for data on the device, to call inside the
  jitted train step (no host round-trip per step).
* :func:`host_sample_tasks` gives exactly the same tasks for the same key from a host numpy array.
* :func:`as_float` turns uint8 images (how data sets are kept, on the host and on the device) into
  float32 in [0, 1] after the gather, inside the caller's jitted step.

Nothing here is jitted; the caller jits the step that samples.

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (episodic training);
  Finn et al., "Model-Agnostic Meta-Learning", ICML 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmaml.core.types import Tasks
from jmaml.errors import JmamlError


def validate_episode(num_classes: int, drawings_per_class: int, image_shape: Sequence[int], *,
                     ways: int, shots: int, queries: int, meta_batch: int) -> None:
    """Check that an episode configuration fits the data, before anything compiles.

    Args:
      num_classes: classes in the data (leading axis of the images).
      drawings_per_class: examples per class (second axis).
      image_shape: the trailing example shape, e.g. ``(28, 28, 1)``; must be non-empty.
      ways: classes per task.
      shots: support examples per class.
      queries: query examples per class.
      meta_batch: tasks per batch.

    Raises:
      JmamlError: one message listing every problem (non-integer or non-positive sizes, more ways
        than classes, ``shots + queries`` above the examples per class, images of the wrong rank).
    """
    problems, ok = [], set()
    sizes = {"ways": ways, "shots": shots, "queries": queries, "meta_batch": meta_batch}
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            problems.append(f"{name} must be a static Python int, got {type(v).__name__} {v!r}")
        elif v < 1:
            problems.append(f"{name} must be positive, got {v}")
        else:
            ok.add(name)
    if "ways" in ok and ways > num_classes:
        problems.append(f"ways={ways} is more than the {num_classes} classes in the data; use "
                        f"ways <= {num_classes}")
    if {"shots", "queries"} <= ok and shots + queries > drawings_per_class:
        problems.append(f"shots + queries = {shots} + {queries} = {shots + queries} is more than the "
                        f"{drawings_per_class} examples per class; lower shots or queries")
    if len(tuple(image_shape)) == 0:
        problems.append("images must be [classes, examples_per_class, *example_shape], e.g. "
                        f"[classes, 20, 28, 28, 1]; got shape [{num_classes}, {drawings_per_class}]")
    if problems:
        raise JmamlError("bad episode: " + "; ".join(problems))


def _validate_images(shape: Sequence[int], ways: int, shots: int, queries: int, meta_batch: int) -> None:
    if len(shape) < 2:
        raise JmamlError(f"images must be [classes, examples_per_class, *example_shape], got shape "
                         f"{tuple(shape)}")
    validate_episode(shape[0], shape[1], tuple(shape[2:]), ways=ways, shots=shots, queries=queries,
                     meta_batch=meta_batch)


def _top_indices(keys: jax.Array, k: int) -> jax.Array:
    """Indices of the ``k`` largest of non-negative int32 ``keys [..., n]``: ``k`` argmax passes.

    ``lax.top_k`` and sorts over thousands of classes are slow on CPU; ``k`` masked argmaxes are
    cheap everywhere and break ties the same way on every backend (lowest index first).
    """
    iota = jnp.arange(keys.shape[-1])

    def take_max(keys, _):
        i = jnp.argmax(keys, axis=-1)
        return jnp.where(iota == i[..., None], -1, keys), i

    _, idx = jax.lax.scan(take_max, keys, None, length=k)
    return jnp.moveaxis(idx, 0, -1)


def _task_indices(key: jax.Array, num_classes: int, drawings: int, ways: int, per_class: int,
                  meta_batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Indices of a batch: classes ``[B, ways]``, drawings ``[B, ways, per_class]``, labels ``[B, ways]``.

    One draw of random 31-bit keys, ranked: the ``ways`` largest of ``num_classes`` keys pick
    distinct classes, the order of ``drawings`` keys per class picks distinct drawings, and the order
    of ``ways`` keys gives the label permutation (a single threefry call keeps compilation fast).
    """
    sizes = (num_classes, ways * drawings, ways)
    bits = jax.random.bits(key, (meta_batch, sum(sizes)), jnp.uint32)
    keys = (bits >> 1).astype(jnp.int32)
    cls_keys, draw_keys, label_keys = jnp.split(keys, [sizes[0], sizes[0] + sizes[1]], axis=1)
    classes = _top_indices(cls_keys, ways)
    picks = jnp.argsort(draw_keys.reshape(meta_batch, ways, drawings), axis=-1)[..., :per_class]
    return classes, picks, jnp.argsort(label_keys, axis=-1)


def _assemble(xp: Any, images, classes, drawings, labels, shots: int) -> Tasks:
    """Gather a batch with one fancy index (numpy or jax.numpy, as ``xp``) and lay it out."""
    b, ways, per_class = drawings.shape
    queries = per_class - shots
    example = images.shape[2:]
    x = images[classes[:, :, None], drawings]  # [B, ways, shots + queries, *example]
    labels = labels.astype(xp.int32)
    return Tasks(
        x_support=x[:, :, :shots].reshape(b, ways * shots, *example),
        y_support=xp.repeat(labels, shots, axis=1),
        x_query=x[:, :, shots:].reshape(b, ways * queries, *example),
        y_query=xp.repeat(labels, queries, axis=1),
    )


def sample_tasks(key: jax.Array, images: jax.Array, *, ways: int, shots: int, queries: int,
                 meta_batch: int) -> Tasks:
    """Sample a batch of N-way K-shot tasks on the device; pure, usable inside ``jax.jit``.

    Args:
      key: a PRNG key.
      images: ``[classes, examples_per_class, H, W, C]`` (any trailing shape), on the device.
      ways: classes per task (static).
      shots: support examples per class (static).
      queries: query examples per class (static).
      meta_batch: tasks in the batch (static).

    Returns:
      :class:`~jmaml.core.types.Tasks` with ``x_support [meta_batch, ways*shots, H, W, C]``,
      ``y_support [meta_batch, ways*shots]`` int32, ``x_query [meta_batch, ways*queries, H, W, C]``,
      ``y_query [meta_batch, ways*queries]`` int32.

    Raises:
      JmamlError: at trace time, when the episode does not fit the data (see :func:`validate_episode`).

    References:
      Vinyals et al., NeurIPS 2016; Finn et al., ICML 2017.
    """
    _validate_images(images.shape, ways, shots, queries, meta_batch)
    idx = _task_indices(key, images.shape[0], images.shape[1], ways, shots + queries, meta_batch)
    return _assemble(jnp, images, *idx, shots)


def host_sample_tasks(key: jax.Array, images: np.ndarray, *, ways: int, shots: int, queries: int,
                      meta_batch: int) -> Tasks:
    """The tasks :func:`sample_tasks` draws for ``key``, gathered on the host from a numpy array.

    The indices come from the same ``jax.random`` computation, run on the CPU; only the (large)
    gather happens in numpy. Use it to check or to feed data that does not fit on the device.

    Args:
      key: a PRNG key.
      images: numpy ``[classes, examples_per_class, H, W, C]``.
      ways: classes per task.
      shots: support examples per class.
      queries: query examples per class.
      meta_batch: tasks in the batch.

    Returns:
      :class:`~jmaml.core.types.Tasks` of numpy arrays, equal to ``sample_tasks(key, images, ...)``.

    Raises:
      JmamlError: when the episode does not fit the data.

    References:
      Vinyals et al., NeurIPS 2016.
    """
    images = np.asarray(images)
    _validate_images(images.shape, ways, shots, queries, meta_batch)
    cpu = jax.devices("cpu")[0]
    idx = _task_indices(jax.device_put(key, cpu), images.shape[0], images.shape[1], ways,
                        shots + queries, meta_batch)
    return _assemble(np, images, *(np.asarray(i) for i in idx), shots)


def as_float(tasks: Tasks, dtype: Any = jnp.float32) -> Tasks:
    """Tasks with uint8 images (0..255) scaled to ``dtype`` in [0, 1]; floating images pass unchanged.

    Keeping images uint8 until after the gather keeps a data set 4x smaller on the device; call this
    on the sampled batch inside the jitted step.

    Args:
      tasks: :class:`~jmaml.core.types.Tasks` from :func:`sample_tasks` (or the host samplers).
      dtype: the floating dtype of the result.

    Returns:
      :class:`~jmaml.core.types.Tasks` with ``x_support`` and ``x_query`` of ``dtype`` (labels unchanged).
    """
    def convert(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x
        if x.dtype != jnp.uint8:
            raise JmamlError(f"images must be uint8 (0..255) or floating, got {x.dtype}")
        return x.astype(dtype) * jnp.asarray(1 / 255, dtype)

    return tasks._replace(x_support=convert(tasks.x_support), x_query=convert(tasks.x_query))
