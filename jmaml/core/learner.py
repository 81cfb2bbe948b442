"""The one MAML core: the inner loop, the vmap over tasks, and the meta-loss.

Every algorithm of the family is a :class:`MetaLearner` built from three parts
(see ``jmaml/algorithms.py``):

- an inner optimiser: any optax transformation, or jmaml's own rules (:mod:`jmaml.core.inner`:
  learned rates, per-step rates and values, a frozen body, a proximal term) chained with optax;
- a per-task meta-objective (:mod:`jmaml.core.objectives`): it decides how the meta-gradient is
  estimated (unrolled second order, first order, Reptile, implicit) by what it differentiates;
- the meta-parameters: the model's parameters plus the inner optimiser's meta-learned values
  (``init_inner``).

All methods are pure functions of their arguments; nothing is jitted here. Jit the train step
(:mod:`jmaml.core.step`) or your own function at the edge.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jmaml.core.types import Params, PyTree, Tasks
from jmaml.errors import JmamlError, check_positive

ApplyFn = Callable[[Params, jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
MetricFn = Callable[[jax.Array, jax.Array], jax.Array]
# (learner, meta_params, one task, meta-step, the task's PRNG key or None) -> (scalar loss, per-task aux)
Objective = Callable[["MetaLearner", PyTree, Tasks, Any, "jax.Array | None"], tuple[jax.Array, dict]]


def no_inner_values(params: Params) -> PyTree:
    """``init_inner`` of an inner optimiser with nothing meta-learned: ``{}``."""
    del params
    return {}


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

    ``meta_params`` is ``{"params": <model parameters>, "inner": <meta-learned inner values>}``.

    Attributes:
      apply_fn: ``apply_fn(params, x) -> outputs`` for one task's batch of inputs.
      loss_fn: ``loss_fn(outputs, y) -> scalar``, the mean loss over the batch.
      inner_optimizer: any ``optax.GradientTransformation``. Its state is initialised on each
        task's starting parameters; inner step ``k`` runs ``inner_optimizer.update(grads, state,
        params, meta=meta_params["inner"], step=k)`` and ``optax.apply_updates`` (see
        :mod:`jmaml.core.inner` for jmaml's own rules, which read ``meta`` and ``step``).
      inner_steps: inner steps during meta-training (and by default at meta-test).
      objective: the per-task meta-objective; its gradient is the meta-gradient.
      init_inner: ``params -> meta-learned inner values`` (``meta_params["inner"]``), a dict
        keyed by the rules that read them; :func:`no_inner_values` (``{}``) by default.
      first_order: hold the inner gradients constant (no second-order terms); a Python bool.
      metrics: extra per-task metrics ``name -> fn(outputs, y)``, e.g. accuracy.
      unroll: ``lax.scan`` unroll factor of the inner loop (``True`` unrolls fully).
      inner_batch: examples per inner step (0, or at least the support size: the whole support
        set). The support set is read as a stream of passes, each pass a fresh permutation of
        it, cut into consecutive minibatches (``_mini_batches`` of Nichol et al.'s code): step
        ``k`` uses stream positions ``k * inner_batch`` to ``(k + 1) * inner_batch - 1``, and
        position ``j`` is example ``permutation(fold_in(task_key, j // n), n)[j % n]``. It needs
        a per-task key (``key`` of :meth:`meta_loss`, :meth:`evaluate`, :meth:`inner_loop`).
      first_order_steps: derivative-order annealing (MAML++): the first ``first_order_steps``
        meta-steps are first order, the later ones use ``first_order``. The one way to train
        with it is the host-side switch :meth:`at_step`, which returns one of two fixed learners.
      remat: rematerialise each inner step in the backward pass (``jax.checkpoint``): the
        meta-gradient then stores the parameters between steps rather than any activation, so
        memory still grows with the number of inner steps, but far slower, for about one more
        forward pass per step. Without it, each step keeps only its matmul and convolution
        outputs (``jax.checkpoint_policies.dots_saveable``) and recomputes the elementwise
        operations between them.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """

    apply_fn: ApplyFn
    loss_fn: LossFn
    inner_optimizer: optax.GradientTransformation
    inner_steps: int
    objective: Objective
    init_inner: Callable[[Params], PyTree] = no_inner_values
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
        for name in ("first_order", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise JmamlError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.inner_optimizer, optax.GradientTransformation):
            raise JmamlError("inner_optimizer must be an optax GradientTransformation (e.g. optax.sgd(0.1)), "
                             f"got {type(self.inner_optimizer).__name__}")

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
        return {"params": params, "inner": self.init_inner(params)}

    def minibatches(self, n: int) -> int:
        """Examples per inner step for a support set of ``n``: ``inner_batch``, or 0 for all ``n``."""
        return self.inner_batch if 0 < self.inner_batch < n else 0

    def inner_loop(
        self,
        meta_params: PyTree,
        x_support: jax.Array,
        y_support: jax.Array,
        *,
        steps: int | None = None,
        observe: Callable[[Params], Any] | None = None,
        key: jax.Array | None = None,
    ) -> tuple[Params, Any]:
        """Runs the inner loop on one task.

        Args:
          meta_params: from :meth:`init`.
          x_support: one task's support inputs ``[n_support, ...]``.
          y_support: their targets.
          steps: inner steps (default ``inner_steps``); 0 returns the meta-parameters.
          observe: called on the parameters after each step; its outputs are stacked.
          key: the task's PRNG key, for minibatches (``inner_batch``); unused otherwise.

        Returns:
          ``(adapted params, stacked observations or None)``.

        Raises:
          JmamlError: minibatches without a key.
        """
        steps = self.inner_steps if steps is None else steps
        meta, params = meta_params["inner"], meta_params["params"]
        optimizer = optax.with_extra_args_support(self.inner_optimizer)
        state = optimizer.init(params)
        n = jnp.shape(x_support)[0]
        batch = self.minibatches(n)
        if batch:
            if key is None:
                raise JmamlError(f"inner_batch={self.inner_batch} draws minibatches from a per-task PRNG key; "
                                 "pass key= to meta_loss, evaluate or inner_loop")
            passes = -(-steps * batch // n)
            stream = jax.vmap(lambda p: jax.random.permutation(jax.random.fold_in(key, p), n))(
                jnp.arange(passes)).reshape(-1)

        def support_loss(params, k):
            x, y = x_support, y_support
            if batch:
                index = lax.dynamic_slice_in_dim(stream, k * batch, batch)
                x, y = jnp.take(x, index, axis=0), jnp.take(y, index, axis=0)
            return self.loss_fn(self.apply_fn(params, x), y)

        def step(carry, k):
            params, state = carry
            grads = jax.grad(support_loss)(params, k)
            if self.first_order:
                grads = lax.stop_gradient(grads)
            updates, state = optimizer.update(grads, state, params, meta=meta, step=k)
            params = optax.apply_updates(params, updates)
            return (params, state), (observe(params) if observe is not None else None)

        # The meta-gradient keeps each inner step's residuals; by default only the matmul and
        # convolution outputs, the elementwise work between them (normalisation, activations, the
        # im2col patches) is recomputed in the backward pass, where XLA fuses it. Scanned steps
        # would otherwise store every intermediate (stacked over steps), which the unrolled loop
        # of plain JAX leaves to XLA to fuse away (benchmarks/memory.py). ``remat``: keep nothing.
        if self.remat:
            step = jax.checkpoint(step)
        else:
            step = jax.checkpoint(step, policy=jax.checkpoint_policies.dots_saveable, prevent_cse=False)
        ks = jnp.arange(steps)
        if steps == 0:
            (params, _), observed = lax.scan(step, (params, state), ks)
            return params, observed
        # Step 0 runs outside the scan, at the parameters as given: under the vmap over tasks they
        # are the shared meta-parameters, so its forward and backward passes are ordinary
        # convolutions (matmuls) over all tasks' support examples. Inside the scan the carry must be
        # batched, which would broadcast the meta-parameters to every task and turn this pass into
        # a grouped convolution (one group per task). Same arithmetic either way.
        carry, first = step((params, state), ks[0])
        (params, _), observed = lax.scan(step, carry, ks[1:], unroll=self.unroll)
        if observe is not None:
            observed = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, observed)
        return params, observed

    def adapt(self, meta_params: PyTree, x_support: jax.Array, y_support: jax.Array,
              *, steps: int | None = None, key: jax.Array | None = None) -> Params:
        """Adapted parameters for one task (its support set, no task axis)."""
        return self.inner_loop(meta_params, x_support, y_support, steps=steps, key=key)[0]

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

    def _check(self, meta_params: PyTree, tasks: Tasks, key: jax.Array | None) -> None:
        check_tasks(tasks)
        self.check_model_input(meta_params, tasks)
        if key is None and self.minibatches(jnp.shape(tasks.x_support)[1]):
            raise JmamlError(f"inner_batch={self.inner_batch} draws minibatches from a per-task PRNG key; "
                             "pass key= (e.g. jax.random.PRNGKey(0)) to meta_loss or evaluate")

    def scores(self, params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """Loss and every metric of ``params`` on ``(x, y)``."""
        outputs = self.apply_fn(params, x)
        out = {"loss": self.loss_fn(outputs, y)}
        out.update({name: fn(outputs, y) for name, fn in self.metrics.items()})
        return out

    @staticmethod
    def over_tasks(fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(meta_params, task, task_key, *rest)`` mapped over the task axis: the one vmap of jmaml.

        Returns ``mapped(meta_params, tasks, *rest, key=None, task_ids=None)``. Only the tasks are
        batched; the meta-parameters and ``rest`` are shared. Task ``i`` gets the key
        ``jax.random.fold_in(key, task_ids[i])`` (``None`` without ``key``); ``task_ids`` is each
        task's index in the whole meta-batch (default ``arange``), so that a task's key does not
        depend on how the meta-batch is split into chunks or across devices.
        """

        def mapped(meta_params, tasks, *rest, key=None, task_ids=None):
            if task_ids is None:
                task_ids = jnp.arange(jnp.shape(tasks.x_support)[0])

            def one(task, task_id, *rest):
                task_key = None if key is None else jax.random.fold_in(key, task_id)
                return fn(meta_params, task, task_key, *rest)

            return jax.vmap(one, in_axes=(0, 0) + (None,) * len(rest))(tasks, task_ids, *rest)

        return mapped

    def meta_loss(self, meta_params: PyTree, tasks: Tasks, meta_step: Any = 0, *,
                  key: jax.Array | None = None, task_ids: jax.Array | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean meta-objective over a batch of tasks; its gradient is the meta-gradient.

        Args:
          meta_params: from :meth:`init`.
          tasks: a batch of tasks with a leading task axis.
          meta_step: the meta-training step (an integer, traced or not), for objectives that
            anneal over training (MAML++'s multi-step loss).
          key: PRNG key of the meta-batch; task ``i`` uses ``fold_in(key, task_ids[i])``. Needed
            only for minibatches (``inner_batch``).
          task_ids: each task's index in the whole meta-batch (default ``arange(tasks)``).

        Returns:
          ``(scalar loss, aux)`` where ``aux`` maps names to per-task values ``[tasks]``:
          ``query_loss`` and each metric after adaptation, and ``*_before`` at the
          meta-parameters.

        Raises:
          JmamlError: bad tasks, or ``first_order_steps`` with a traced ``meta_step`` (derivative-
            order annealing is the host-side switch :meth:`at_step`; a Python ``meta_step`` is
            routed through it).
        """
        self._check(meta_params, tasks, key)
        if self.first_order_steps:
            try:
                meta_step = operator.index(meta_step)
            except TypeError:
                raise JmamlError(
                    f"this learner anneals the derivative order over first_order_steps={self.first_order_steps} "
                    "meta-steps, which is a host-side switch: build the train step from learner.at_step(step) "
                    "(one of two fixed learners), or pass meta_step as a Python int") from None
            return self.at_step(meta_step).meta_loss(meta_params, tasks, meta_step, key=key, task_ids=task_ids)
        losses, aux = self.over_tasks(lambda mp, task, task_key, t: self.objective(self, mp, task, t, task_key))(
            meta_params, tasks, meta_step, key=key, task_ids=task_ids)
        return jnp.mean(losses), aux

    def evaluate(self, meta_params: PyTree, tasks: Tasks, *, steps: int | None = None,
                 key: jax.Array | None = None, task_ids: jax.Array | None = None) -> dict[str, jax.Array]:
        """Query loss and metrics after 0, 1, ..., ``steps`` inner steps on each task.

        ``key`` and ``task_ids`` as in :meth:`meta_loss` (a key is needed only for minibatches).

        Returns:
          A dict of ``[tasks, steps + 1]`` arrays: ``loss`` and one per metric.
        """
        self._check(meta_params, tasks, key)

        def one(mp, task, task_key):
            observe = lambda p: self.scores(p, task.x_query, task.y_query)  # noqa: E731
            before = observe(mp["params"])
            _, after = self.inner_loop(mp, task.x_support, task.y_support, steps=steps, observe=observe,
                                       key=task_key)
            return jax.tree.map(lambda b, a: jnp.concatenate([b[None], a]), before, after)

        return self.over_tasks(one)(meta_params, tasks, key=key, task_ids=task_ids)
