"""`--set algorithm=...` builds and traces with every image config (the sinusoid ones: test_algorithm_contract)."""

import dataclasses

import jax
import numpy as np
import pytest

from jmaml.algorithms import ALGORITHMS
from jmaml.core.step import make_train_step, scan_steps
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import get_config
from jmaml.experiment.workloads import image_workload


def traces(cfg, workload):
    """Builds the config's train step and traces it abstractly (no compilation)."""
    setup = build(cfg, workload)
    state = setup.template()
    step = scan_steps(make_train_step(setup.learner.at_step(0), setup.optimizer, workload.train_tasks), 1)
    new_state, metrics = jax.eval_shape(step, state, workload.train_data)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["meta_loss"].shape == (1,)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_builds_on_every_image_config(algorithm, omniglot):
    rng = np.random.default_rng(0)
    mini = rng.random((8, 20, 84, 84, 3), dtype=np.float32)  # a stand-in for miniImageNet's arrays
    for name in ("omniglot-5w1s", "omniglot-20w5s", "mini-5w1s", "mini-5w5s"):
        cfg = get_config(name, {"algorithm": algorithm})
        if cfg.dataset == "omniglot":
            workload = image_workload(cfg, omniglot.train, omniglot.test, "omniglot")
        else:
            workload = image_workload(dataclasses.replace(cfg, eval_batch=4), mini, mini, "mini_imagenet")
        traces(cfg, workload)
