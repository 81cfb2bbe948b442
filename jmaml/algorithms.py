"""The MAML family, each a small factory over the one core in ``jmaml/core``; :data:`ALGORITHMS` lists them.

| algorithm | inner optimiser (optax) | meta-objective (estimator) | meta-parameters |
|---|---|---|---|
| ``maml`` | ``sgd(inner_lr)`` or any | query loss, differentiated through the inner loop | theta |
| ``fomaml`` | ``sgd(inner_lr)`` or any | query loss, inner gradients held constant | theta |
| ``meta_sgd`` | ``learned_sgd()`` | query loss through the inner loop | theta, a rate per entry |
| ``anil`` | ``chain(sgd, adapt_only(head))`` | query loss through the (head-only) inner loop | theta |
| ``maml_pp`` | ``chain(per_step_sgd, per_step_values)`` | multi-step loss, annealed order | theta, LSLR, BN/step |
| ``reptile`` | ``sgd`` / ``adam(b1=0)`` or any | ``0.5 ||theta - sg(phi_K)||^2`` | theta |
| ``imaml`` | ``chain(proximal(lambda), sgd)`` | query loss, implicit gradient by CG | theta |
| ``pretrain`` | ``sgd(inner_lr)`` (at test only) | loss on all task data, no adaptation | theta |

Every factory takes ``apply_fn, loss_fn`` positionally and its options as keyword-only arguments;
:func:`algorithm_options` reads them from the signature. Where a factory takes ``inner_optimizer``,
the rule is that of :func:`jmaml.core.inner.inner_optimizer_from`: a name (``"sgd"``, ``"adam"``)
takes its learning rate from ``inner_lr``; an optax transformation brings its own, and ``inner_lr``
must then be left out.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import optax

from jmaml.core import inner, objectives
from jmaml.core.inner import inner_optimizer_from
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn
from jmaml.core.masks import PathSpec, resolve
from jmaml.core.types import Params, PyTree
from jmaml.errors import JmamlError, check_positive

# Scale and bias of jmaml's BatchStatNorm, named "norm<i>" (Conv4) or by flax's default name.
NORM_LEAVES = r"(^|/)(norm\d*|BatchStatNorm_\d+)/(scale|bias)$"

InnerOptimizer = str | optax.GradientTransformation


def _learner(apply_fn: ApplyFn, loss_fn: LossFn, inner_optimizer: optax.GradientTransformation,
             inner_steps: int, objective, metrics: Mapping[str, MetricFn] | None, **options: Any) -> MetaLearner:
    return MetaLearner(apply_fn, loss_fn, inner_optimizer, inner_steps, objective, metrics=dict(metrics or {}),
                       **options)


def maml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
         inner_optimizer: InnerOptimizer = "sgd", first_order: bool = False,
         metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Model-Agnostic Meta-Learning: gradient-descent inner loop, meta-gradient through it.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar`` (mean over the batch).
      inner_steps: inner steps per task (K).
      inner_lr: the inner learning rate (alpha) of a named ``inner_optimizer``.
      inner_optimizer: ``"sgd"`` (the paper's), ``"adam"`` (beta1 = 0) or any optax
        transformation, e.g. ``optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.4))``
        (then without ``inner_lr``). The meta-gradient goes through it.
      first_order: drop the second-order terms (FOMAML).
      metrics: extra per-task metrics, e.g. ``{"accuracy": jmaml.losses.accuracy}``.
      unroll: unroll factor of the inner ``lax.scan``.

    Returns:
      The meta-learner.

    Raises:
      JmamlError: bad options, or ``inner_lr`` together with an optax ``inner_optimizer``.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """
    return _learner(apply_fn, loss_fn, inner_optimizer_from(inner_optimizer, inner_lr), inner_steps,
                    objectives.query_loss, metrics, first_order=first_order, unroll=unroll)


def fomaml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
           inner_optimizer: InnerOptimizer = "sgd", metrics: Mapping[str, MetricFn] | None = None,
           unroll: int | bool = 1) -> MetaLearner:
    """First-order MAML: ``maml(..., first_order=True)``.

    References:
      Finn, Abbeel & Levine (2017), section 5.2. https://arxiv.org/abs/1703.03400
    """
    return maml(apply_fn, loss_fn, inner_steps=inner_steps, inner_lr=inner_lr, inner_optimizer=inner_optimizer,
                first_order=True, metrics=metrics, unroll=unroll)


def meta_sgd(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float,
             first_order: bool = False, metrics: Mapping[str, MetricFn] | None = None,
             unroll: int | bool = 1) -> MetaLearner:
    """Meta-SGD: an inner learning rate per parameter entry, meta-trained with the weights.

    The inner step is ``phi - alpha * grad`` elementwise (``inner.learned_sgd``), with
    ``alpha = meta_params["inner"]["lr"]`` shaped like the parameters and starting at
    ``inner_lr``; the meta-gradient reaches it through the unrolled inner loop.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_steps: inner steps per task (the paper uses one).
      inner_lr: initial value of every learned rate.
      first_order: hold the inner gradients constant (the rates still get a gradient).
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Li, Zhou, Chen & Li (2017). Meta-SGD: Learning to Learn Quickly for Few-Shot Learning.
      https://arxiv.org/abs/1707.09835
    """
    check_positive("inner_lr", inner_lr)
    return _learner(apply_fn, loss_fn, inner.learned_sgd(name="lr"), inner_steps, objectives.query_loss,
                    metrics, init_inner=lambda params: {"lr": inner.learned_sgd_init(params, inner_lr)},
                    first_order=first_order, unroll=unroll)


def anil(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
         inner_optimizer: InnerOptimizer = "sgd", head: PathSpec = "head", first_order: bool = False,
         metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Almost No Inner Loop: only the head adapts; the body is meta-trained through the query loss.

    The inner optimiser is ``optax.chain(inner_optimizer, adapt_only(head))``: the body's leaves
    get a zero update (``optax.freeze`` semantics), so their inner gradients are unused; the
    body's meta-gradient flows through the query loss and through the head's adaptation, which
    depends on the body's features.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_steps: inner steps per task.
      inner_lr: the inner learning rate of the head, for a named ``inner_optimizer``.
      inner_optimizer: ``"sgd"``, ``"adam"`` or an optax transformation (then without ``inner_lr``).
      head: the head's leaves: a regex searched in each leaf's ``'/'``-joined path (``"head"``
        matches ``head/kernel`` and ``head/bias``), a predicate on that path, or a boolean mask
        pytree. Resolved when the meta-parameters are built; selecting no leaf or every leaf
        raises a JmamlError there.
      first_order: hold the head's inner gradients constant.
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Raghu, Raghu, Bengio & Vinyals (2020). Rapid Learning or Feature Reuse? Towards
      Understanding the Effectiveness of MAML. ICLR. https://arxiv.org/abs/1909.09157
    """
    optimizer = optax.chain(inner_optimizer_from(inner_optimizer, inner_lr), inner.adapt_only(head, name="head"))

    def init_inner(params: Params) -> PyTree:
        resolve(head, params, name="head", some=True, not_all=True)
        return {}

    return _learner(apply_fn, loss_fn, optimizer, inner_steps, objectives.query_loss, metrics,
                    init_inner=init_inner, first_order=first_order, unroll=unroll)


def maml_pp(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float,
            msl_anneal_steps: int = 0, first_order_steps: int = 0,
            per_step_bn: PathSpec | None = NORM_LEAVES, first_order: bool = False,
            metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """MAML++: MAML with per-layer per-step learned rates, multi-step loss and order annealing.

    - LSLR: a learned inner rate per parameter tensor and inner step (``inner.per_step_sgd``,
      ``meta_params["inner"]["lslr"]``).
    - Multi-step loss: the query loss after every inner step, weighted, the weights annealed to
      the last step over ``msl_anneal_steps`` meta-steps (``objectives.multi_step_loss``).
    - Derivative-order annealing: first order for the first ``first_order_steps`` meta-steps.
      Train meta-step ``t`` with ``learner.at_step(t)`` (two fixed learners, one retrace).
    - Per-step BatchNorm weights: the leaves ``per_step_bn`` selects get a learned value per
      inner step instead of an inner update (``inner.per_step_values`` chained after LSLR,
      ``meta_params["inner"]["per_step_bn"]``); batch statistics are per step already with
      batch-statistics normalisation. ``None`` turns this off; a model with no such leaves is fine.
    - Cosine annealing of the meta learning rate: an optimiser part, see
      ``jmaml.meta_optimizer(meta_lr, steps, "cosine")``.

    The paper anneals the loss weights over 10 epochs of 500 meta-steps (``msl_anneal_steps=5000``).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_steps: inner steps per task during meta-training (one rate each).
      inner_lr: initial value of every learned rate.
      msl_anneal_steps: meta-steps of multi-step loss (0: final-step loss only).
      first_order_steps: meta-steps trained first order before second order (0: none).
      per_step_bn: the normalisation leaves (a :data:`~jmaml.core.masks.PathSpec`) or ``None``.
      first_order: first order throughout.
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Antoniou, Edwards & Storkey (2019). How to train your MAML. ICLR.
      https://arxiv.org/abs/1810.09502
    """
    check_positive("inner_lr", inner_lr)
    check_positive("inner_steps", inner_steps, integer=True)
    optimizer = inner.per_step_sgd(inner_steps, name="lslr")
    if per_step_bn is not None:
        optimizer = optax.chain(optimizer, inner.per_step_values(per_step_bn, inner_steps, name="per_step_bn"))

    def init_inner(params: Params) -> PyTree:
        values = {"lslr": inner.per_step_sgd_init(params, inner_lr, inner_steps)}
        if per_step_bn is not None:
            values["per_step_bn"] = inner.per_step_values_init(params, per_step_bn, inner_steps, name="per_step_bn")
        return values

    return _learner(apply_fn, loss_fn, optimizer, inner_steps, objectives.multi_step_loss(msl_anneal_steps),
                    metrics, init_inner=init_inner, first_order=first_order,
                    first_order_steps=first_order_steps, unroll=unroll)


def reptile(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
            inner_optimizer: InnerOptimizer = "sgd", inner_batch: int = 0,
            metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Reptile: move theta towards the task-adapted parameters; meta-gradient ``theta - phi_K``.

    The meta-objective is ``0.5 ||theta - stop_gradient(phi_K)||^2`` averaged over tasks, so the
    usual train step with ``optax.sgd(epsilon)`` performs ``theta + epsilon * mean(phi_K - theta)``
    (Adam works as well). Nothing is differentiated through the inner loop.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_steps: inner steps per task.
      inner_lr: the learning rate of a named ``inner_optimizer``.
      inner_optimizer: ``"sgd"``, ``"adam"`` (the paper's Adam with beta1 = 0, its state per
        task) or any optax transformation (then without ``inner_lr``).
      inner_batch: support examples per inner step (0: all of them). Each pass over the support
        set is a fresh permutation drawn from the task's key (see ``MetaLearner.inner_batch``),
        so ``meta_loss`` and ``evaluate`` then need a ``key``.
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms.
      https://arxiv.org/abs/1803.02999 (minibatches: ``_mini_batches`` in
      https://github.com/openai/supervised-reptile)
    """
    return _learner(apply_fn, loss_fn, inner_optimizer_from(inner_optimizer, inner_lr), inner_steps,
                    objectives.reptile_loss, metrics, first_order=True, inner_batch=inner_batch, unroll=unroll)


def imaml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
          inner_optimizer: InnerOptimizer = "sgd", proximal_lambda: float = 1.0, cg_steps: int = 5,
          metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Implicit MAML: proximal inner problem, meta-gradient by implicit differentiation.

    The inner loop runs ``inner_steps`` of ``optax.chain(inner.proximal(proximal_lambda),
    inner_optimizer)`` on ``L_support(phi) + proximal_lambda / 2 ||phi - theta||^2`` from ``theta``
    (also at meta-test). The meta-gradient is ``(I + H / proximal_lambda)^{-1} grad L_query(phi)``,
    solved by ``cg_steps`` conjugate-gradient iterations on Hessian-vector products of the support
    loss at ``phi``; nothing is stored per inner step, so memory does not grow with ``inner_steps``.
    The implicit gradient is exact when the inner loop reaches the proximal solution.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_steps: inner steps per task (enough to approach the proximal solution).
      inner_lr: the learning rate of a named ``inner_optimizer``.
      inner_optimizer: ``"sgd"`` (gradient descent), ``"adam"`` or an optax transformation (then
        without ``inner_lr``); the proximal term is added to the gradient before it.
      proximal_lambda: the regularisation strength lambda, positive.
      cg_steps: conjugate-gradient iterations, positive.
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Rajeswaran, Finn, Kakade & Levine (2019). Meta-Learning with Implicit Gradients.
      NeurIPS. https://arxiv.org/abs/1909.04630
    """
    check_positive("proximal_lambda", proximal_lambda)
    check_positive("cg_steps", cg_steps, integer=True)
    optimizer = optax.chain(inner.proximal(proximal_lambda), inner_optimizer_from(inner_optimizer, inner_lr))
    return _learner(apply_fn, loss_fn, optimizer, inner_steps, objectives.implicit_loss(proximal_lambda, cg_steps),
                    metrics, first_order=True, unroll=unroll)


def pretrain(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_steps: int, inner_lr: float | None = None,
             inner_optimizer: InnerOptimizer = "sgd", metrics: Mapping[str, MetricFn] | None = None,
             unroll: int | bool = 1) -> MetaLearner:
    """The non-meta-learned baseline: train jointly on all tasks, fine-tune at test.

    Meta-training minimises, per task, the mean loss over its support and query examples
    together at the shared parameters (``objectives.joint_loss``); ``adapt``/``evaluate`` then
    fine-tune with ``inner_steps`` steps of the inner optimiser (SGD with ``inner_lr``), exactly
    as MAML's meta-test does.

    References:
      Finn, Abbeel & Levine (2017), section 5.1 ("pretrained" baseline).
      https://arxiv.org/abs/1703.03400
    """
    return _learner(apply_fn, loss_fn, inner_optimizer_from(inner_optimizer, inner_lr), inner_steps,
                    objectives.joint_loss, metrics, unroll=unroll)


# The one list of algorithm names, each with its factory.
ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": maml, "fomaml": fomaml, "meta_sgd": meta_sgd, "anil": anil, "maml_pp": maml_pp,
    "reptile": reptile, "imaml": imaml, "pretrain": pretrain,
}

# What ``from jmaml.algorithms import *`` (and so ``jmaml``) exports: the registry and its factories.
__all__ = ["ALGORITHMS", "NORM_LEAVES", "algorithm_options", *ALGORITHMS]

# Marks an option with no default in :func:`algorithm_options`.
REQUIRED = inspect.Parameter.empty


def algorithm_options(name: str) -> dict[str, Any]:
    """The keyword-only options of algorithm ``name``'s factory, each with its default.

    Read from the factory's signature, so the options live in one place; an option without a
    default (``inner_steps``, and ``inner_lr`` of meta_sgd and maml_pp) maps to :data:`REQUIRED`.
    ``metrics`` and ``unroll`` are options of every algorithm.

    Raises:
      JmamlError: ``name`` is not in :data:`ALGORITHMS`.
    """
    if name not in ALGORITHMS:
        raise JmamlError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    parameters = inspect.signature(ALGORITHMS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
