"""ANIL: only the head adapts; the body's meta-gradient is MAML's with the body's inner update removed."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks, sq_loss, task, uniform

import jmaml
from jmaml.core.masks import resolve

LR, STEPS = 0.3, 2


pytestmark = pytest.mark.usefixtures("x64")


def head_only_maml_loss(params, tasks):
    """MAML's meta-loss written by hand, with the body's inner update removed."""
    losses = []
    for i in range(tasks.x_support.shape[0]):
        t = task(tasks, i)
        head = params["head"]
        for _ in range(STEPS):
            g = jax.grad(lambda h: sq_loss({**params, "head": h}, t.x_support, t.y_support))(head)
            head = jax.tree.map(lambda h, gh: h - LR * gh, head, g)
        losses.append(sq_loss({"body": params["body"], "head": head}, t.x_query, t.y_query))
    return jnp.mean(jnp.stack(losses))


def test_body_untouched_by_inner_loop():
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS)
    meta = learner.init(mlp_init(0))
    t = task(random_tasks(1), 0)
    adapted = jax.jit(learner.adapt)(meta, t.x_support, t.y_support)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapted["body"]),
                                                     jax.tree.leaves(meta["params"]["body"])))
    assert not jnp.array_equal(adapted["head"]["w"], meta["params"]["head"]["w"])


def test_meta_gradient_equals_maml_without_body_update():
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, head="head")
    meta = learner.init(mlp_init(0))
    tasks = random_tasks(1)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta)["params"]
    expected = jax.jit(jax.grad(head_only_maml_loss))(meta["params"], tasks)
    chex.assert_trees_all_close(grads, expected, rtol=1e-9, atol=1e-12)
    assert jnp.any(grads["body"]["w"] != 0)  # the body learns through the query loss


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_head():
    """First order, head_K = head - LR * sum_k sg(g_k): the meta-gradient of (body, head) is the
    query loss's gradient at (body, head_K), the adaptation held constant."""
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=STEPS, first_order=True)
    meta = learner.init(mlp_init(0))
    tasks = random_tasks(1)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta)["params"]
    per_task = []
    for i in range(tasks.x_support.shape[0]):
        t, params = task(tasks, i), meta["params"]
        head = params["head"]
        for _ in range(STEPS):
            g = jax.grad(sq_loss)({**params, "head": head}, t.x_support, t.y_support)["head"]
            head = jax.tree.map(lambda h, gh: h - LR * gh, head, g)
        per_task.append(jax.grad(sq_loss)({**params, "head": head}, t.x_query, t.y_query))
    chex.assert_trees_all_close(grads, jax.tree.map(lambda a, b: (a + b) / 2, *per_task), rtol=1e-10, atol=1e-13)
    second = jax.grad(head_only_maml_loss)(meta["params"], tasks)
    assert not np.allclose(second["body"]["w"], grads["body"]["w"])


def test_frozen_body_gets_a_zero_update_with_any_inner_optimizer():
    """Adam on the head only: the body is frozen (optax.freeze semantics), the head moves as Adam moves it."""
    learner = jmaml.anil(mlp_apply, mse, inner_steps=1, inner_optimizer=optax.adam(0.05))
    meta = learner.init(mlp_init(0))
    t = task(random_tasks(1), 0)
    adapted = learner.adapt(meta, t.x_support, t.y_support)
    g = jax.grad(sq_loss)(meta["params"], t.x_support, t.y_support)["head"]
    # Adam's first step: m_hat = g, v_hat = g^2, so the step is -lr * g / (|g| + eps)
    want = jax.tree.map(lambda h, gh: h - 0.05 * gh / (jnp.abs(gh) + 1e-8), meta["params"]["head"], g)
    chex.assert_trees_all_close(adapted, {"body": meta["params"]["body"], "head": want}, rtol=1e-12)


def test_regex_predicate_and_mask_select_the_same_head():
    params = mlp_init(0)
    mask = {"body": {"b": False, "w": False}, "head": {"b": True, "w": True}}
    prefix = {"body": False, "head": True}
    for spec in ("head", r"^head/", lambda path: path.startswith("head/"), mask, prefix):
        assert resolve(spec, params, name="head", some=True, not_all=True) == mask


def test_works_with_flax_model_head_name():
    init, apply = jmaml.functional(jmaml.MLP((4,), 1))
    learner = jmaml.anil(apply, mse, inner_lr=LR, inner_steps=1)
    meta = learner.init(uniform(0, jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 2))), -1, 1))
    t = task(random_tasks(1), 0)
    adapted = jax.jit(learner.adapt)(meta, t.x_support, t.y_support)
    assert jnp.array_equal(adapted["Dense_0"]["kernel"], meta["params"]["Dense_0"]["kernel"])
    assert not jnp.array_equal(adapted["head"]["kernel"], meta["params"]["head"]["kernel"])


def test_head_selecting_no_leaf_is_an_error():
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=1, head="classifier")
    with pytest.raises(jmaml.JmamlError, match=r"^head 'classifier' selects no parameter; "
                                               r"parameter paths are: "
                                               r"body/b, body/w, head/b, head/w$"):
        learner.init(mlp_init(0))


def test_head_selecting_every_leaf_is_an_error():
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=1, head=lambda path: True)
    with pytest.raises(jmaml.JmamlError, match=r"^head <lambda> selects every parameter \(.*\); "
                                               r"it must leave some of the network out$"):
        learner.init(mlp_init(0))


def test_head_mask_with_wrong_structure_is_an_error():
    learner = jmaml.anil(mlp_apply, mse, inner_lr=LR, inner_steps=1, head={"head": True})
    with pytest.raises(jmaml.JmamlError,
                       match=r"^head mask must have the parameters' structure .* \(or a prefix of it\), got"):
        learner.init(mlp_init(0))
