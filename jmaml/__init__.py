"""jmaml: MAML-family meta-learning in JAX.

The public API, flat: ``Tasks``, ``MetaLearner``, the algorithm factories (every entry of
:data:`jmaml.algorithms.ALGORITHMS`, under its name) and their registry, the inner rules (optax
transformations), the train step (and many runs in one), models and losses.
"""

from jmaml import algorithms, losses
from jmaml.algorithms import *  # noqa: F401,F403  ALGORITHMS and each of its factories, under its name
from jmaml.core.implicit import cg_solve
from jmaml.core.inner import (
    INNER_OPTIMIZERS,
    adapt_only,
    inner_optimizer_from,
    learned_sgd,
    learned_sgd_init,
    per_step_sgd,
    per_step_sgd_init,
    per_step_values,
    per_step_values_init,
    proximal,
)
from jmaml.core.learner import MetaLearner, check_tasks
from jmaml.core.runs import make_runs_step, stack_runs, unstack_runs
from jmaml.core.schedules import meta_lr_schedule, meta_optimizer, msl_weights
from jmaml.core.step import TrainState, init_state, make_train_step, meta_gradient, scan_steps
from jmaml.core.types import Tasks
from jmaml.errors import JmamlError
from jmaml.models import MLP, BatchStatNorm, Conv4, functional

__version__ = "0.1.0"

__all__ = [
    "BatchStatNorm", "Conv4", "INNER_OPTIMIZERS", "JmamlError", "MLP", "MetaLearner", "Tasks", "TrainState",
    "adapt_only", "cg_solve", "check_tasks", "functional", "init_state", "inner_optimizer_from", "learned_sgd",
    "learned_sgd_init", "losses", "make_runs_step", "make_train_step", "meta_gradient", "meta_lr_schedule",
    "meta_optimizer", "msl_weights", "per_step_sgd", "per_step_sgd_init", "per_step_values", "per_step_values_init",
    "proximal", "scan_steps", "stack_runs", "unstack_runs",
]
__all__ += algorithms.__all__
