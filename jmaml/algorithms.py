"""The MAML family, each a small factory over the one core in ``jmaml/core``.

| algorithm | inner rule | meta-objective (estimator) | meta-parameters |
|---|---|---|---|
| ``maml`` | ``sgd(inner_lr)`` | query loss, differentiated through the inner loop | theta |
| ``fomaml`` | ``sgd(inner_lr)`` | query loss, inner gradients held constant | theta |
| ``meta_sgd`` | ``learned_sgd(inner_lr)`` | query loss through the inner loop | theta, a rate per entry |
| ``anil`` | ``frozen(sgd(inner_lr), head)`` | query loss through the (head-only) inner loop | theta |
| ``maml_pp`` | ``per_step_values(per_step_sgd)`` | multi-step loss, annealed order | theta, LSLR, BN/step |
| ``reptile`` | ``sgd`` / ``from_optax(adam)`` | ``0.5 ||theta - sg(phi_K)||^2`` | theta |
| ``imaml`` | ``proximal(sgd(inner_lr), lambda)`` | query loss, implicit gradient by CG | theta |
| ``pretrain`` | ``sgd(inner_lr)`` (at test only) | loss on all task data, no adaptation | theta |
"""

from __future__ import annotations

from typing import Any, Mapping

import optax

from jmaml.core import inner, objectives
from jmaml.core.inner import check_positive
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn, Objective
from jmaml.core.masks import PathSpec
from jmaml.errors import JmamlError

# Scale and bias of jmaml's BatchStatNorm, named "norm<i>" (Conv4) or by flax's default name.
NORM_LEAVES = r"(^|/)(norm\d*|BatchStatNorm_\d+)/(scale|bias)$"


def _learner(apply_fn: ApplyFn, loss_fn: LossFn, rule: inner.InnerRule, inner_steps: int,
             objective: Objective, metrics: Mapping[str, MetricFn] | None, **options: Any) -> MetaLearner:
    return MetaLearner(apply_fn, loss_fn, rule, inner_steps, objective, metrics=dict(metrics or {}),
                       **options)


def maml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
         first_order: bool = False, metrics: Mapping[str, MetricFn] | None = None,
         unroll: int | bool = 1) -> MetaLearner:
    """Model-Agnostic Meta-Learning: SGD inner loop, meta-gradient through it.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar`` (mean over the batch).
      inner_lr: the inner SGD learning rate (alpha).
      inner_steps: inner SGD steps per task (K).
      first_order: drop the second-order terms (FOMAML).
      metrics: extra per-task metrics, e.g. ``{"accuracy": jmaml.losses.accuracy}``.
      unroll: unroll factor of the inner ``lax.scan``.

    Returns:
      The meta-learner.

    References:
      Finn, Abbeel & Levine (2017). Model-Agnostic Meta-Learning for Fast Adaptation of
      Deep Networks. ICML. https://arxiv.org/abs/1703.03400
    """
    return _learner(apply_fn, loss_fn, inner.sgd(inner_lr), inner_steps, objectives.query_loss, metrics,
                    first_order=first_order, unroll=unroll)


def fomaml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
           metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """First-order MAML: ``maml(..., first_order=True)``.

    References:
      Finn, Abbeel & Levine (2017), section 5.2. https://arxiv.org/abs/1703.03400
    """
    return maml(apply_fn, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True,
                metrics=metrics, unroll=unroll)


def meta_sgd(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
             first_order: bool = False, metrics: Mapping[str, MetricFn] | None = None,
             unroll: int | bool = 1) -> MetaLearner:
    """Meta-SGD: an inner learning rate per parameter entry, meta-trained with the weights.

    ``meta_params["inner"]`` is shaped like the parameters and starts at ``inner_lr``; the
    meta-gradient reaches it through the unrolled inner loop (rule ``learned_sgd``).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_lr: initial value of every learned rate.
      inner_steps: inner steps per task (the paper uses one).
      first_order: hold the inner gradients constant (the rates still get a gradient).
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Li, Zhou, Chen & Li (2017). Meta-SGD: Learning to Learn Quickly for Few-Shot Learning.
      https://arxiv.org/abs/1707.09835
    """
    return _learner(apply_fn, loss_fn, inner.learned_sgd(inner_lr), inner_steps, objectives.query_loss,
                    metrics, first_order=first_order, unroll=unroll)


def anil(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
         head: PathSpec = "head", first_order: bool = False,
         metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Almost No Inner Loop: only the head adapts; the body is meta-trained through the query loss.

    The body's leaves pass through the inner loop unchanged (no inner update, no inner
    gradient computed for them); its meta-gradient flows through the query loss and through
    the head's adaptation, which depends on the body's features.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_lr: the inner SGD learning rate of the head.
      inner_steps: inner steps per task.
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
    rule = inner.frozen(inner.sgd(inner_lr), head, name="head", partial=True)
    return _learner(apply_fn, loss_fn, rule, inner_steps, objectives.query_loss, metrics,
                    first_order=first_order, unroll=unroll)


def maml_pp(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
            msl_anneal_steps: int = 0, first_order_steps: int = 0,
            per_step_bn: PathSpec | None = NORM_LEAVES, first_order: bool = False,
            metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """MAML++: MAML with per-layer per-step learned rates, multi-step loss and order annealing.

    - LSLR: a learned inner rate per parameter tensor and inner step (``per_step_sgd``).
    - Multi-step loss: the query loss after every inner step, weighted, the weights annealed to
      the last step over ``msl_anneal_steps`` meta-steps (``objectives.multi_step_loss``).
    - Derivative-order annealing: first order for the first ``first_order_steps`` meta-steps.
      Train meta-step ``t`` with ``learner.at_step(t)`` (two fixed learners, one retrace).
    - Per-step BatchNorm weights: the leaves ``per_step_bn`` selects get a learned value per
      inner step instead of an inner update (``per_step_values``); batch statistics are per
      step already with batch-statistics normalisation. ``None`` turns this off; a model with no
      such leaves is fine.
    - Cosine annealing of the meta learning rate: an optimiser part, see
      ``jmaml.meta_optimizer(meta_lr, steps, "cosine")``.

    The paper anneals the loss weights over 10 epochs of 500 meta-steps (``msl_anneal_steps=5000``).

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_lr: initial value of every learned rate.
      inner_steps: inner steps per task during meta-training (one rate each).
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
    rule = inner.per_step_sgd(inner_lr, inner_steps)
    if per_step_bn is not None:
        rule = inner.per_step_values(rule, per_step_bn, inner_steps)
    return _learner(apply_fn, loss_fn, rule, inner_steps, objectives.multi_step_loss(msl_anneal_steps),
                    metrics, first_order=first_order, first_order_steps=first_order_steps, unroll=unroll)


def reptile(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
            inner_optimizer: str | optax.GradientTransformation = "sgd", inner_batch: int = 0,
            metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Reptile: move theta towards the task-adapted parameters; meta-gradient ``theta - phi_K``.

    The meta-objective is ``0.5 ||theta - stop_gradient(phi_K)||^2`` averaged over tasks, so the
    usual train step with ``optax.sgd(epsilon)`` performs ``theta + epsilon * mean(phi_K - theta)``
    (Adam works as well). Nothing is differentiated through the inner loop.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_lr: the inner optimiser's learning rate.
      inner_steps: inner steps per task.
      inner_optimizer: ``"sgd"``, ``"adam"`` (the paper's Adam with beta1 = 0, its state per
        task) or any optax optimiser.
      inner_batch: support examples per inner step, cycling through the support set
        (0: all of it).
      metrics: extra per-task metrics.
      unroll: unroll factor of the inner ``lax.scan``.

    References:
      Nichol, Achiam & Schulman (2018). On First-Order Meta-Learning Algorithms.
      https://arxiv.org/abs/1803.02999
    """
    if inner_optimizer == "sgd":
        rule = inner.sgd(inner_lr)
    elif inner_optimizer == "adam":
        check_positive("inner_lr", inner_lr)
        rule = inner.from_optax(optax.adam(inner_lr, b1=0.0))
    elif isinstance(inner_optimizer, optax.GradientTransformation):
        rule = inner.from_optax(inner_optimizer)
    else:
        raise JmamlError("inner_optimizer must be 'sgd', 'adam' or an optax optimiser, "
                         f"got {inner_optimizer!r}")
    return _learner(apply_fn, loss_fn, rule, inner_steps, objectives.reptile_loss, metrics,
                    first_order=True, inner_batch=inner_batch, unroll=unroll)


def imaml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
          proximal_lambda: float = 1.0, cg_steps: int = 5,
          metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """Implicit MAML: proximal inner problem, meta-gradient by implicit differentiation.

    The inner loop runs ``inner_steps`` of gradient descent on
    ``L_support(phi) + proximal_lambda / 2 ||phi - theta||^2`` from ``theta`` (also at meta-test).
    The meta-gradient is ``(I + H / proximal_lambda)^{-1} grad L_query(phi)``, solved by
    ``cg_steps`` conjugate-gradient iterations on Hessian-vector products of the support loss at
    ``phi``; nothing is stored per inner step, so memory does not grow with ``inner_steps``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      loss_fn: ``loss_fn(outputs, y) -> scalar``.
      inner_lr: the inner gradient-descent rate.
      inner_steps: inner steps per task (enough to approach the proximal solution).
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
    rule = inner.proximal(inner.sgd(inner_lr), proximal_lambda)
    return _learner(apply_fn, loss_fn, rule, inner_steps, objectives.implicit_loss(proximal_lambda, cg_steps),
                    metrics, first_order=True, unroll=unroll)


def pretrain(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
             metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """The non-meta-learned baseline: train jointly on all tasks, fine-tune with SGD at test.

    Meta-training minimises the loss on each task's support and query data at the shared
    parameters; ``adapt``/``evaluate`` then fine-tune with ``inner_steps`` SGD steps of
    ``inner_lr``, exactly as MAML's meta-test does.

    References:
      Finn, Abbeel & Levine (2017), section 5.1 ("pretrained" baseline).
      https://arxiv.org/abs/1703.03400
    """
    return _learner(apply_fn, loss_fn, inner.sgd(inner_lr), inner_steps, objectives.joint_loss, metrics,
                    unroll=unroll)
