"""Meta-SGD: learned per-entry inner rates, exact meta-gradient; from_config builds every algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse, normal, random_tasks, uniform

import jmaml
from jmaml.experiment import configs
from jmaml.experiment.train import learner_from_config


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_rates_are_meta_params_shaped_like_params():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=2)
    params = mlp_init(0)
    rates = learner.init(params)["inner"]
    assert jax.tree.structure(rates) == jax.tree.structure(params)
    for r, p in zip(jax.tree.leaves(rates), jax.tree.leaves(params)):
        assert r.shape == p.shape and jnp.all(r == 0.1)


def test_rate_gradient_matches_central_finite_differences():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=2)
    meta = learner.init(mlp_init(0))
    # distinct rates per entry, so a wrong index would show
    meta["inner"] = uniform(3, meta["inner"], 0.1, 0.15)
    tasks = random_tasks(1)
    loss = jax.jit(lambda rates: learner.meta_loss({"params": meta["params"], "inner": rates}, tasks)[0])
    grad = jax.grad(loss)(meta["inner"])

    flat, unravel = jax.flatten_util.ravel_pytree(meta["inner"])
    flat_grad = jax.flatten_util.ravel_pytree(grad)[0]
    eps = 1e-6
    directions = [normal(7, flat.size)]
    directions += [jnp.asarray(np.eye(flat.size)[i]) for i in (0, 7, flat.size - 1)]
    for d in directions:
        fd = (loss(unravel(flat + eps * d)) - loss(unravel(flat - eps * d))) / (2 * eps)
        exact = jnp.vdot(flat_grad, d)
        assert abs(fd - exact) / abs(exact) < 1e-6, (fd, exact)


def test_train_step_updates_weights_and_rates():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=1)
    state = jmaml.init_state(learner, optax.sgd(0.1), mlp_init(0), jax.random.PRNGKey(0))
    new, metrics = jax.jit(jmaml.make_train_step(learner, optax.sgd(0.1)))(state, random_tasks(1))
    for part in ("params", "inner"):
        moved = jax.tree.map(lambda a, b: jnp.any(a != b), new.meta_params[part], state.meta_params[part])
        assert all(jax.tree.leaves(moved)), part
    assert jnp.isfinite(metrics["meta_loss"])


def test_from_config_builds_every_algorithm_from_its_fields():
    built = {}
    for name in configs.ALGORITHM_NAMES:
        cfg = configs.Config(algorithm=name, inner_lr=0.2, inner_steps=2, msl_anneal_steps=3,
                             first_order_steps=1, reptile_batch=2, reptile_optimizer="adam",
                             proximal_lambda=0.5, cg_steps=3)
        built[name] = learner_from_config(cfg, mlp_apply, mse, {"mae": mse})
        assert built[name].inner_steps == 2 and set(built[name].metrics) == {"mae"}
    params = mlp_init(0)
    assert built["maml"].first_order is False and built["fomaml"].first_order is True
    assert all(jnp.all(r == 0.2) for r in jax.tree.leaves(built["meta_sgd"].init(params)["inner"]))
    assert built["maml_pp"].first_order_steps == 1 and built["maml_pp"].at_step(0).first_order
    assert built["reptile"].inner_batch == 2 and built["reptile"].rule.init_state is not None  # Adam state
    assert built["imaml"].objective.__qualname__.startswith("implicit_loss")
    assert built["pretrain"].objective is jmaml.core.objectives.joint_loss
    with pytest.raises(jmaml.JmamlError, match="head 'head' selects no parameter"):
        learner_from_config(configs.Config(algorithm="anil"), mlp_apply, mse).init({"body": params["body"]})


def test_from_config_rejects_unknown_algorithm():
    cfg = configs.Config()
    object.__setattr__(cfg, "algorithm", "mamlx")  # past Config's own validation
    with pytest.raises(jmaml.JmamlError, match=r"unknown algorithm 'mamlx'; choose one of: maml, fomaml, "):
        learner_from_config(cfg, mlp_apply, mse)
