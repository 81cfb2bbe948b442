"""jmaml: MAML-family meta-learning in JAX.

The public API, flat: ``Tasks``, ``MetaLearner``, the algorithm factories (``maml``,
``fomaml``, ...), inner rules, the train step, models and losses.
"""

from jmaml import losses
from jmaml.algorithms import anil, fomaml, imaml, maml, maml_pp, meta_sgd, pretrain, reptile
from jmaml.core.implicit import cg_solve
from jmaml.core.inner import (InnerRule, apply_step, from_optax, frozen, learned_sgd, per_step_sgd,
                              per_step_values, proximal, sgd)
from jmaml.core.learner import MetaLearner, check_tasks
from jmaml.core.schedules import meta_lr_schedule, meta_optimizer, msl_weights
from jmaml.core.step import TrainState, init_state, make_train_step, meta_gradient, scan_steps
from jmaml.core.types import Tasks
from jmaml.errors import JmamlError
from jmaml.models import MLP, BatchStatNorm, Conv4, functional

__version__ = "0.1.0"

__all__ = [
    "BatchStatNorm", "Conv4", "InnerRule", "JmamlError", "MLP", "MetaLearner", "Tasks", "TrainState",
    "check_tasks", "fomaml", "frozen", "functional", "init_state", "learned_sgd", "losses", "maml",
    "make_train_step", "meta_gradient", "per_step_sgd", "pretrain", "scan_steps", "sgd",
    "anil", "apply_step", "cg_solve", "from_optax", "imaml", "maml_pp", "meta_lr_schedule",
    "meta_optimizer", "meta_sgd", "msl_weights", "per_step_values", "proximal", "reptile",
]
