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
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from jmaml.core.inner import InnerRule, apply_step, check_positive
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
      inner_batch: examples per inner step (0: the whole support set). Step ``k`` uses the
        ``inner_batch`` examples from index ``k * inner_batch`` on, cycling through the support
        set, which is in random order already (Reptile's minibatches).
      remat: rematerialise each inner step in the backward pass (``jax.checkpoint``): the
        meta-gradient then stores only the parameters between steps, not every activation, so
        memory grows far slower with the number of inner steps, for about one more forward pass.
      first_order_steps: derivative-order annealing (MAML++): the first ``first_order_steps``
        meta-steps are first order, the later ones use ``first_order``. For speed the training
        loop runs ``at_step(step)``, one of two fixed learners; ``meta_loss`` of this learner
        itself anneals inside the program (correct, but second-order cost throughout).
    """

    apply_fn: ApplyFn
    loss_fn: LossFn
    rule: InnerRule
    inner_steps: int
    objective: Objective
    first_order: bool = False
    metrics: Mapping[str, MetricFn] = dataclasses.field(default_factory=dict)
    unroll: int | bool = 1
    inner_batch: int = 0
    first_order_steps: int = 0
    remat: bool = False

    def __post_init__(self):
        check_positive("inner_steps", self.inner_steps, integer=True)
        for name in ("inner_batch", "first_order_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise JmamlError(f"{name} must be a non-negative integer, got {value!r}")

    def at_step(self, step: int) -> "MetaLearner":
        """The learner to train meta-step ``step`` (a host integer) with.

        Without derivative-order annealing (``first_order_steps == 0``) this is ``self``. With it,
        one of two fixed learners (the same object every call): first order before
        ``first_order_steps``, ``first_order`` from then on. Jit a train step per learner and
        switch when the returned object changes: one retrace in a whole run.
        """
        if not self.first_order_steps:
            return self
        return self._phases[int(step) >= self.first_order_steps]

    @functools.cached_property
    def _phases(self) -> tuple["MetaLearner", "MetaLearner"]:
        return (dataclasses.replace(self, first_order=True, first_order_steps=0),
                dataclasses.replace(self, first_order_steps=0))

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
          first_order: overrides the learner's ``first_order``; a traced boolean selects first
            order inside the program (second-order cost either way).

        Returns:
          ``(adapted params, stacked observations or None)``.
        """
        steps = self.inner_steps if steps is None else steps
        first_order = self.first_order if first_order is None else first_order
        hyper, params = meta_params["inner"], meta_params["params"]
        state = self.rule.init_state(params) if self.rule.init_state is not None else None
        n = jnp.shape(x_support)[0]
        batch = self.inner_batch if 0 < self.inner_batch < n else 0

        def support_loss(params, k):
            x, y = x_support, y_support
            if batch:
                index = (k * batch + jnp.arange(batch)) % n
                x, y = jnp.take(x, index, axis=0), jnp.take(y, index, axis=0)
            return self.loss_fn(self.apply_fn(params, x), y)

        def step(carry, k):
            params, state = carry
            grads = jax.grad(support_loss)(params, k)
            if isinstance(first_order, bool):
                grads = lax.stop_gradient(grads) if first_order else grads
            else:
                grads = jax.tree.map(lambda g: jnp.where(first_order, lax.stop_gradient(g), g), grads)
            params, state = apply_step(self.rule, hyper, params, grads, k, state)
            return (params, state), (observe(params) if observe is not None else None)

        if self.remat:
            step = jax.checkpoint(step)
        (params, _), observed = lax.scan(step, (params, state), jnp.arange(steps), unroll=self.unroll)
        return params, observed

    def adapt(self, meta_params: PyTree, x_support: jax.Array, y_support: jax.Array,
              *, steps: int | None = None) -> Params:
        """Adapted parameters for one task (its support set, no task axis)."""
        return self.inner_loop(meta_params, x_support, y_support, steps=steps)[0]

    def check_model_input(self, meta_params: PyTree, tasks: Tasks) -> None:
        """Raises one JmamlError if the model cannot take one task's support inputs.

        Runs ``apply_fn`` abstractly (``jax.eval_shape``: no compilation, no FLOPs), so an image
        of the wrong size or channel count is reported before anything is compiled.
        """
        x = jax.ShapeDtypeStruct(jnp.shape(tasks.x_support)[1:], jnp.result_type(tasks.x_support))
        try:
            jax.eval_shape(self.apply_fn, meta_params["params"], x)
        except Exception as err:  # flax and lax raise several types for a shape mismatch
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise JmamlError(
                f"the model cannot take this task's inputs of shape {x.shape} (examples, ...): {first}; "
                "make the data's shape (e.g. image size and channels) match what the model was "
                "initialised with") from err

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
        self.check_model_input(meta_params, tasks)
        learner = self
        if self.first_order_steps:  # annealed in the program; at_step() gives two faster learners
            learner = dataclasses.replace(self, first_order_steps=0, first_order=jnp.logical_or(
                self.first_order, jnp.asarray(train_step) < self.first_order_steps))
        losses, aux = self.over_tasks(lambda mp, task, t: learner.objective(learner, mp, task, t))(
            meta_params, tasks, train_step)
        return jnp.mean(losses), aux

    def evaluate(self, meta_params: PyTree, tasks: Tasks, *, steps: int | None = None
                 ) -> dict[str, jax.Array]:
        """Query loss and metrics after 0, 1, ..., ``steps`` inner steps on each task.

        Returns:
          A dict of ``[tasks, steps + 1]`` arrays: ``loss`` and one per metric.
        """
        check_tasks(tasks)
        self.check_model_input(meta_params, tasks)

        def one(mp, task):
            observe = lambda p: self.scores(p, task.x_query, task.y_query)  # noqa: E731
            before = observe(mp["params"])
            _, after = self.inner_loop(mp, task.x_support, task.y_support, steps=steps, observe=observe)
            return jax.tree.map(lambda b, a: jnp.concatenate([b[None], a]), before, after)

        return self.over_tasks(one)(meta_params, tasks)
