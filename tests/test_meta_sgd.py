"""Meta-SGD: learned per-entry inner rates, exact meta-gradient; from_config builds every algorithm."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse, normal, random_tasks, sq_loss, task, uniform

import jmaml
from jmaml.experiment import configs
from jmaml.experiment.assembly import learner_from_config

pytestmark = pytest.mark.usefixtures("x64")


def test_rates_are_meta_params_shaped_like_params():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=2)
    params = mlp_init(0)
    rates = learner.init(params)["inner"]["lr"]
    assert jax.tree.structure(rates) == jax.tree.structure(params)
    for r, p in zip(jax.tree.leaves(rates), jax.tree.leaves(params)):
        assert r.shape == p.shape and jnp.all(r == 0.1)


def test_rate_gradient_matches_central_finite_differences():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=2)
    meta = learner.init(mlp_init(0))
    # distinct rates per entry, so a wrong index would show
    meta["inner"]["lr"] = uniform(3, meta["inner"]["lr"], 0.1, 0.15)
    tasks = random_tasks(1)
    loss = jax.jit(lambda rates: learner.meta_loss({"params": meta["params"], "inner": {"lr": rates}}, tasks)[0])
    grad = jax.grad(loss)(meta["inner"]["lr"])

    flat, unravel = jax.flatten_util.ravel_pytree(meta["inner"]["lr"])
    flat_grad = jax.flatten_util.ravel_pytree(grad)[0]
    eps = 1e-6
    directions = [normal(7, flat.size)]
    directions += [jnp.asarray(np.eye(flat.size)[i]) for i in (0, 7, flat.size - 1)]
    for d in directions:
        fd = (loss(unravel(flat + eps * d)) - loss(unravel(flat - eps * d))) / (2 * eps)
        exact = jnp.vdot(flat_grad, d)
        assert abs(fd - exact) / abs(exact) < 1e-6, (fd, exact)


def explicit_meta_sgd(theta, alpha, t, steps, first_order=False):
    """Meta-SGD's inner loop by hand: ``phi <- phi - alpha * grad`` elementwise, ``steps`` times;
    returns the query loss at phi_K and phi_K itself."""
    phi = theta
    for _ in range(steps):
        g = jax.grad(sq_loss)(phi, t.x_support, t.y_support)
        g = jax.lax.stop_gradient(g) if first_order else g
        phi = jax.tree.map(lambda p, a, gg: p - a * gg, phi, alpha, g)
    return sq_loss(phi, t.x_query, t.y_query), phi


def test_forward_rule_is_theta_minus_alpha_grad():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=2)
    meta = learner.init(mlp_init(0))
    meta["inner"]["lr"] = uniform(3, meta["inner"]["lr"], 0.05, 0.2)  # a distinct rate per entry
    t = task(random_tasks(1), 0)
    adapted = jax.jit(learner.adapt)(meta, t.x_support, t.y_support)
    _, phi = explicit_meta_sgd(meta["params"], meta["inner"]["lr"], t, 2)
    chex.assert_trees_all_close(adapted, phi, rtol=1e-12, atol=1e-14)


def test_train_step_applies_the_explicit_meta_gradient_to_weights_and_rates():
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=1)
    state = jmaml.init_state(learner, optax.sgd(0.1), mlp_init(0), jax.random.PRNGKey(0))
    tasks = random_tasks(1)
    new, metrics = jax.jit(jmaml.make_train_step(learner, optax.sgd(0.1)))(state, tasks)

    def hand(theta, alpha):
        return jnp.mean(jnp.stack([explicit_meta_sgd(theta, alpha, task(tasks, i), 1)[0] for i in range(2)]))

    loss, (g_theta, g_alpha) = jax.value_and_grad(hand, argnums=(0, 1))(mlp_init(0), state.meta_params["inner"]["lr"])
    want = {"params": jax.tree.map(lambda p, g: p - 0.1 * g, mlp_init(0), g_theta),
            "inner": {"lr": jax.tree.map(lambda a, g: a - 0.1 * g, state.meta_params["inner"]["lr"], g_alpha)}}
    chex.assert_trees_all_close(new.meta_params, want, rtol=1e-10, atol=1e-13)
    chex.assert_trees_all_close(metrics["meta_loss"], loss, rtol=1e-12)


def test_first_order_meta_gradient_equals_closed_form():
    """First order, phi_K = theta - sum_k alpha * sg(g_k): the meta-gradient is g_q(phi_K) for theta and
    -sum_k g_k * g_q(phi_K) for alpha (g_k the support gradient at step k, g_q the query gradient)."""
    steps = 2
    learner = jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=steps, first_order=True)
    meta = learner.init(mlp_init(0))
    meta["inner"]["lr"] = uniform(3, meta["inner"]["lr"], 0.05, 0.2)
    tasks = random_tasks(1)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta)
    per_task = []
    for i in range(2):
        t, phi, support_grads = task(tasks, i), meta["params"], []
        for _ in range(steps):
            support_grads.append(jax.grad(sq_loss)(phi, t.x_support, t.y_support))
            phi = jax.tree.map(lambda p, a, g: p - a * g, phi, meta["inner"]["lr"], support_grads[-1])
        g_q = jax.grad(sq_loss)(phi, t.x_query, t.y_query)
        g_alpha = jax.tree.map(lambda q, *gs: -sum(gs) * q, g_q, *support_grads)
        per_task.append({"params": g_q, "inner": {"lr": g_alpha}})
    want = jax.tree.map(lambda a, b: (a + b) / 2, *per_task)
    chex.assert_trees_all_close(grads, want, rtol=1e-10, atol=1e-13)
    second = jax.grad(lambda mp: jmaml.meta_sgd(mlp_apply, mse, inner_lr=0.1, inner_steps=steps).meta_loss(
        mp, tasks)[0])(meta)
    assert not np.allclose(jax.flatten_util.ravel_pytree(second)[0], jax.flatten_util.ravel_pytree(grads)[0])


def test_from_config_builds_every_algorithm_from_its_fields():
    built = {}
    for name in jmaml.ALGORITHMS:
        cfg = configs.Config(algorithm=name, inner_lr=0.2, inner_steps=2, msl_anneal_steps=3,
                             first_order_steps=1, inner_batch=2, inner_optimizer="adam",
                             proximal_lambda=0.5, cg_steps=3)
        built[name] = learner_from_config(cfg, mlp_apply, mse, {"mae": mse})
        assert built[name].inner_steps == 2 and set(built[name].metrics) == {"mae"}
    params = mlp_init(0)
    assert built["maml"].first_order is False and built["fomaml"].first_order is True
    assert all(jnp.all(r == 0.2) for r in jax.tree.leaves(built["meta_sgd"].init(params)["inner"]["lr"]))
    assert built["maml_pp"].first_order_steps == 1 and built["maml_pp"].at_step(0).first_order
    adam_state = jax.tree.leaves(built["reptile"].inner_optimizer.init(params),
                                 is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
    assert built["reptile"].inner_batch == 2 and any(isinstance(s, optax.ScaleByAdamState) for s in adam_state)
    assert built["imaml"].objective.__qualname__.startswith("implicit_loss")
    assert built["pretrain"].objective is jmaml.core.objectives.joint_loss
    with pytest.raises(jmaml.JmamlError, match="head 'head' selects no parameter"):
        learner_from_config(configs.Config(algorithm="anil"), mlp_apply, mse).init({"body": params["body"]})


def test_from_config_rejects_unknown_algorithm():
    cfg = configs.Config()
    object.__setattr__(cfg, "algorithm", "mamlx")  # past Config's own validation
    with pytest.raises(jmaml.JmamlError, match=r"unknown algorithm 'mamlx'; choose one of: maml, fomaml, "):
        learner_from_config(cfg, mlp_apply, mse)
