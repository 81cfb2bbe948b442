"""The one MAML core: the inner loop, the vmap over tasks, and the meta-loss.

Every algorithm of the family is a :class:`MetaLearner` built from three parts
(see ``jmaml/algorithms.py``):

- an inner-update rule (:mod:`jmaml.core.inner`): fixed, learned, per-step, frozen body;
- a per-task meta-objective (:mod:`jmaml.core.objectives`): it decides how the meta-gradient is
  estimated (unrolled second order, first order, Reptile, implicit) by what it differentiates;
- the meta-parameters: the model's parameters plus whatever the rule learns (``init``).

All methods are pure functions of their arguments; nothing is jitted here. Jit the train step
(:mod:`jmaml.core.step`) or your own function at the edge.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jmaml.core.inner import InnerRule, check_positive
from jmaml.core.types import Params, PyTree, Tasks
from jmaml.errors import JmamlError

ApplyFn = Callable[[Params, jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
MetricFn = Callable[[jax.Array, jax.Array], jax.Array]
# (learner, meta_params, one task, train step) -> (scalar loss, per-task aux dict)
Objective = Callable[["MetaLearner", PyTree, Tasks, Any], tuple[jax.Array, dict]]


def check_tasks(tasks: Tasks) -> None:
    """Checks that a batch of tasks is shaped consistently; raises one JmamlError if not."""
    if not isinstance(tasks, Tasks):
        raise JmamlError(
            f"expected jmaml.Tasks(x_support, y_support, x_query, y_query), got {type(tasks).__name__}")
    shapes = {name: jnp.shape(a) for name, a in zip(Tasks._fields, tasks)}
    for name, shape in shapes.items():
        if len(shape) < 2:
            raise JmamlError(f"{name} must be shaped [tasks, examples, ...], got shape {shape}")
    if len({s[0] for s in shapes.values()}) != 1:
        raise JmamlError(f"all four arrays of Tasks need the same leading task axis, got {shapes}")
    for part in ("support", "query"):
        x, y = shapes[f"x_{part}"], shapes[f"y_{part}"]
        if x[1] != y[1]:
            raise JmamlError(
                f"x_{part} has {x[1]} examples per task but y_{part} has {y[1]}: shapes {x} and {y}")
    if shapes["x_support"][2:] != shapes["x_query"][2:]:
        raise JmamlError("support and query inputs must have the same per-example shape, got "
                         f"x_support {shapes['x_support']} and x_query {shapes['x_query']}")
    if shapes["y_support"][2:] != shapes["y_query"][2:]:
        raise JmamlError("support and query targets must have the same per-example shape, got "
                         f"y_support {shapes['y_support']} and y_query {shapes['y_query']}")


@dataclasses.dataclass(frozen=True, eq=False)
class MetaLearner:
    """A MAML-family meta-learner: pure functions over ``meta_params``.

    ``meta_params`` is ``{"params": <model parameters>, "inner": <rule hyper-parameters>}``.

    Attributes:
      apply_fn: ``apply_fn(params, x) -> outputs`` for one task's batch of inputs.
      loss_fn: ``loss_fn(outputs, y) -> scalar``, the mean loss over the batch.
      rule: the inner-update rule.
      inner_steps: inner steps during meta-training (and by default at meta-test).
      objective: the per-task meta-objective; its gradient is the meta-gradient.
      first_order: hold the inner gradients constant (no second-order terms).
      metrics: extra per-task metrics ``name -> fn(outputs, y)``, e.g. accuracy.
      unroll: ``lax.scan`` unroll factor of the inner loop (``True`` unrolls fully).
    """

    apply_fn: ApplyFn
    loss_fn: LossFn
    rule: InnerRule
    inner_steps: int
    objective: Objective
    first_order: bool = False
    metrics: Mapping[str, MetricFn] = dataclasses.field(default_factory=dict)
    unroll: int | bool = 1

    def __post_init__(self):
        check_positive("inner_steps", self.inner_steps, integer=True)

    def init(self, params: Params) -> PyTree:
        """Meta-parameters for the model parameters ``params``."""
        return {"params": params, "inner": self.rule.init(params)}

    def inner_loop(
        self,
        meta_params: PyTree,
        x_support: jax.Array,
        y_support: jax.Array,
        *,
        steps: int | None = None,
        observe: Callable[[Params], Any] | None = None,
        first_order: bool | None = None,
    ) -> tuple[Params, Any]:
        """Runs the inner loop on one task.

        Args:
          meta_params: from :meth:`init`.
          x_support: one task's support inputs ``[n_support, ...]``.
          y_support: their targets.
          steps: inner steps (default ``inner_steps``); 0 returns the meta-parameters.
          observe: called on the parameters after each step; its outputs are stacked.
          first_order: overrides the learner's ``first_order``.

        Returns:
          ``(adapted params, stacked observations or None)``.
        """
        steps = self.inner_steps if steps is None else steps
        first_order = self.first_order if first_order is None else first_order
        hyper = meta_params["inner"]

        def support_loss(params):
            return self.loss_fn(self.apply_fn(params, x_support), y_support)

        def step(params, k):
            grads = jax.grad(support_loss)(params)
            if first_order:
                grads = lax.stop_gradient(grads)
            params = self.rule.step(hyper, params, grads, k)
            return params, (observe(params) if observe is not None else None)

        return lax.scan(step, meta_params["params"], jnp.arange(steps), unroll=self.unroll)

    def adapt(self, meta_params: PyTree, x_support: jax.Array, y_support: jax.Array,
              *, steps: int | None = None) -> Params:
        """Adapted parameters for one task (its support set, no task axis)."""
        return self.inner_loop(meta_params, x_support, y_support, steps=steps)[0]

    def scores(self, params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """Loss and every metric of ``params`` on ``(x, y)``."""
        outputs = self.apply_fn(params, x)
        out = {"loss": self.loss_fn(outputs, y)}
        out.update({name: fn(outputs, y) for name, fn in self.metrics.items()})
        return out

    @staticmethod
    def over_tasks(fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(meta_params, task, *rest)`` mapped over the task axis: the one vmap of jmaml.

        Only the task (second argument) is batched; the meta-parameters and the rest are shared.
        """

        def mapped(meta_params, tasks, *rest):
            return jax.vmap(fn, in_axes=(None, 0) + (None,) * len(rest))(meta_params, tasks, *rest)

        return mapped

    def meta_loss(self, meta_params: PyTree, tasks: Tasks, train_step: Any = 0
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean meta-objective over a batch of tasks; its gradient is the meta-gradient.

        Args:
          meta_params: from :meth:`init`.
          tasks: a batch of tasks with a leading task axis.
          train_step: the meta-training step, for objectives that anneal over training.

        Returns:
          ``(scalar loss, aux)`` where ``aux`` maps names to per-task values ``[tasks]``:
          ``query_loss`` and each metric after adaptation, and ``*_before`` at the
          meta-parameters.
        """
        check_tasks(tasks)
        losses, aux = self.over_tasks(lambda mp, task, t: self.objective(self, mp, task, t))(
            meta_params, tasks, train_step)
        return jnp.mean(losses), aux

    def evaluate(self, meta_params: PyTree, tasks: Tasks, *, steps: int | None = None
                 ) -> dict[str, jax.Array]:
        """Query loss and metrics after 0, 1, ..., ``steps`` inner steps on each task.

        Returns:
          A dict of ``[tasks, steps + 1]`` arrays: ``loss`` and one per metric.
        """
        check_tasks(tasks)

        def one(mp, task):
            observe = lambda p: self.scores(p, task.x_query, task.y_query)  # noqa: E731
            before = observe(mp["params"])
            _, after = self.inner_loop(mp, task.x_support, task.y_support, steps=steps, observe=observe)
            return jax.tree.map(lambda b, a: jnp.concatenate([b[None], a]), before, after)

        return self.over_tasks(one)(meta_params, tasks)
