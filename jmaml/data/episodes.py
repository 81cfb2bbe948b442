"""Episodic few-shot task sampling: N ways, K shots, Q queries, over ``[classes, drawings, ...]`` data.

Per task: ``ways`` distinct classes; per class ``shots + queries`` distinct drawings, the first
``shots`` for support and the rest for query (so support and query never share a drawing); labels
``0..ways-1`` given to the classes in a random order. Examples are class-major: support row
``i * shots + j`` is shot ``j`` of the class labelled ``labels[i]``.

* :func:`sample_tasks` is a pure ``jax.random`` function for data on the device, to call inside the
  jitted train step (no host round-trip per step).
* :func:`host_sample_tasks` gives exactly the same tasks for the same key from a host numpy array.
* :class:`HostTaskIterator` is the fallback for data too large for the device: numpy sampling in a
  background thread, prefetched and ``jax.device_put``.

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (episodic training);
  Finn et al., "Model-Agnostic Meta-Learning", ICML 2017.
"""

from __future__ import annotations

import functools
import queue
import threading
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


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
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


def numpy_sample_tasks(rng: np.random.Generator, images: np.ndarray, *, ways: int, shots: int,
                       queries: int, meta_batch: int) -> Tasks:
    """Sample tasks with a numpy generator (same invariants as :func:`sample_tasks`, other draws).

    Args:
      rng: the numpy random generator.
      images: numpy ``[classes, examples_per_class, H, W, C]``.
      ways: classes per task.
      shots: support examples per class.
      queries: query examples per class.
      meta_batch: tasks in the batch.

    Returns:
      :class:`~jmaml.core.types.Tasks` of numpy arrays.

    Raises:
      JmamlError: when the episode does not fit the data.

    References:
      Vinyals et al., NeurIPS 2016.
    """
    _validate_images(images.shape, ways, shots, queries, meta_batch)
    num_classes, drawings = images.shape[:2]
    classes = rng.random((meta_batch, num_classes)).argpartition(ways - 1, axis=1)[:, :ways]
    picks = rng.random((meta_batch, ways, drawings)).argsort(axis=2)[:, :, :shots + queries]
    labels = rng.random((meta_batch, ways)).argsort(axis=1)
    return _assemble(np, images, classes, picks, labels, shots)


_DONE = object()


class HostTaskIterator:
    """Batches of tasks sampled on the host in a background thread, prefetched onto the device.

    Batch ``i`` is drawn with ``np.random.default_rng((seed, i))``, so a run resumes exactly by
    passing ``start=i`` (e.g. the step saved in a checkpoint).

    Example::

      with HostTaskIterator(train_images, ways=5, shots=1, queries=15, meta_batch=32) as it:
          for step, tasks in zip(range(1000), it):
              state = train_step(state, tasks)

    Args:
      images: numpy ``[classes, examples_per_class, H, W, C]``.
      ways: classes per task.
      shots: support examples per class.
      queries: query examples per class.
      meta_batch: tasks per batch.
      seed: seed of the stream.
      start: index of the first batch.
      num_batches: stop after this many batches (default: never).
      prefetch: batches kept ready ahead of the consumer.
      device: a ``jax.Device`` or ``jax.sharding.Sharding`` for ``jax.device_put``; None = default.

    Raises:
      JmamlError: when the episode does not fit the data (at construction).

    References:
      Vinyals et al., NeurIPS 2016.
    """

    def __init__(self, images: np.ndarray, *, ways: int, shots: int, queries: int, meta_batch: int,
                 seed: int = 0, start: int = 0, num_batches: int | None = None, prefetch: int = 2,
                 device: Any = None) -> None:
        self._images = np.asarray(images)
        _validate_images(self._images.shape, ways, shots, queries, meta_batch)
        if prefetch < 1:
            raise JmamlError(f"prefetch must be >= 1, got {prefetch}")
        self._sizes = dict(ways=ways, shots=shots, queries=queries, meta_batch=meta_batch)
        self._seed, self._next, self._stop_at = seed, start, None
        if num_batches is not None:
            self._stop_at = start + num_batches
        self._device = device
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def batch(self, index: int) -> Tasks:
        """Batch ``index`` of the stream, as numpy arrays, sampled synchronously."""
        rng = np.random.default_rng((self._seed, index))
        return numpy_sample_tasks(rng, self._images, **self._sizes)

    def _produce(self) -> None:
        i = self._next
        try:
            while not self._stop.is_set() and (self._stop_at is None or i < self._stop_at):
                item = jax.device_put(self.batch(i), self._device)
                i += 1
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            item = _DONE
        except BaseException as e:  # handed to the consumer, re-raised there
            item = e
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> HostTaskIterator:
        return self

    def __next__(self) -> Tasks:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="jmaml-host-tasks", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(item)
            raise item
        return item

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HostTaskIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
