"""The MAML family, each a small factory over the one core in ``jmaml/core``.

| algorithm | inner rule | meta-objective (estimator) | meta-parameters |
|---|---|---|---|
| ``maml`` | ``sgd(inner_lr)`` | query loss, differentiated through the inner loop | theta |
| ``fomaml`` | ``sgd(inner_lr)`` | query loss, inner gradients held constant | theta |
| ``pretrain`` | ``sgd(inner_lr)`` (at test only) | loss on all task data, no adaptation | theta |
"""

from __future__ import annotations

from typing import Mapping

from jmaml.core import inner, objectives
from jmaml.core.learner import ApplyFn, LossFn, MetaLearner, MetricFn


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
    return MetaLearner(apply_fn, loss_fn, inner.sgd(inner_lr), inner_steps, objectives.query_loss,
                       first_order=first_order, metrics=dict(metrics or {}), unroll=unroll)


def fomaml(apply_fn: ApplyFn, loss_fn: LossFn, *, inner_lr: float, inner_steps: int,
           metrics: Mapping[str, MetricFn] | None = None, unroll: int | bool = 1) -> MetaLearner:
    """First-order MAML: ``maml(..., first_order=True)``.

    References:
      Finn, Abbeel & Levine (2017), section 5.2. https://arxiv.org/abs/1703.03400
    """
    return maml(apply_fn, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True,
                metrics=metrics, unroll=unroll)


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
    return MetaLearner(apply_fn, loss_fn, inner.sgd(inner_lr), inner_steps, objectives.joint_loss,
                       metrics=dict(metrics or {}), unroll=unroll)
