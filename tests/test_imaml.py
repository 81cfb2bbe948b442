"""iMAML: implicit meta-gradient (I + H/lambda)^{-1} g by CG; its memory stays flat as the inner steps grow."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks

import jmaml

LAM = 0.7


pytestmark = pytest.mark.usefixtures("x64")


def linear(params, x):
    return x @ params["w"] + params["b"]


def test_implicit_gradient_solves_the_linear_system_exactly():
    """Linear regression: a quadratic inner problem whose proximal solution is known in closed form."""
    learner = jmaml.imaml(linear, mse, inner_lr=0.1, inner_steps=400, proximal_lambda=LAM, cg_steps=8)
    theta = {"w": jnp.array([[0.5], [-1.0], [0.3]]), "b": jnp.array([0.2])}
    tasks = random_tasks(1, 1, 6, 8, 3, 1)
    t = jmaml.Tasks(*(a[0] for a in tasks))
    meta = learner.init(theta)

    flat_theta, unravel = jax.flatten_util.ravel_pytree(theta)
    support = lambda f: mse(linear(unravel(f), t.x_support), t.y_support)  # noqa: E731
    query = lambda f: mse(linear(unravel(f), t.x_query), t.y_query)  # noqa: E731
    eye = jnp.eye(flat_theta.size)
    hessian = jax.hessian(support)(flat_theta)  # constant: the support loss is quadratic

    def exact_phi(th):  # the proximal solution: grad L_s(phi) + lambda (phi - theta) = 0
        return jnp.linalg.solve(hessian + LAM * eye, LAM * th - jax.grad(support)(jnp.zeros_like(th)))

    @jax.jit
    def expected(th):
        return exact_phi(th), jnp.linalg.solve(eye + hessian / LAM, jax.grad(query)(exact_phi(th)))

    phi, expected_grads = expected(flat_theta)
    adapted = jax.jit(learner.adapt)(meta, t.x_support, t.y_support)
    assert jnp.allclose(jax.flatten_util.ravel_pytree(adapted)[0], phi, rtol=1e-10, atol=1e-12)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta)["params"]
    flat_grads = jax.flatten_util.ravel_pytree(grads)[0]
    assert jnp.allclose(flat_grads, expected_grads, rtol=1e-9, atol=1e-12)
    # and it is the true derivative of the query loss at the exact proximal solution
    assert jnp.allclose(flat_grads, jax.jit(jax.grad(lambda th: query(exact_phi(th))))(flat_theta), rtol=1e-9)


def test_cg_solves_a_pytree_system():
    matrix = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    b = {"a": jnp.array([1.0, 2.0]), "c": jnp.array(3.0)}
    flat_b, unravel = jax.flatten_util.ravel_pytree(b)
    matvec = lambda v: unravel(matrix @ jax.flatten_util.ravel_pytree(v)[0])  # noqa: E731
    x = jax.flatten_util.ravel_pytree(jmaml.cg_solve(matvec, b, 6))[0]  # more iterations than needed
    assert jnp.allclose(x, jnp.linalg.solve(matrix, flat_b), rtol=1e-12)


def temp_bytes(learner, steps, tasks, params):
    grad = jax.jit(jax.grad(lambda mp, ts: learner(steps).meta_loss(mp, ts)[0]))
    return grad.lower(learner(steps).init(params), tasks).compile().memory_analysis().temp_size_in_bytes


def test_memory_flat_in_inner_steps_unlike_maml():
    tasks = random_tasks(1, 4, 16, 16)
    params = mlp_init(0, 2, 32)
    implicit = lambda k: jmaml.imaml(mlp_apply, mse, inner_lr=0.1, inner_steps=k, cg_steps=5)  # noqa: E731
    unrolled = lambda k: jmaml.maml(mlp_apply, mse, inner_lr=0.1, inner_steps=k)  # noqa: E731
    imaml_5, imaml_50 = (temp_bytes(implicit, k, tasks, params) for k in (5, 50))
    maml_5, maml_50 = (temp_bytes(unrolled, k, tasks, params) for k in (5, 50))
    assert imaml_50 <= imaml_5 * 1.05, (imaml_5, imaml_50)
    assert maml_50 > 3 * maml_5, (maml_5, maml_50)  # MAML stores every inner step for the backward pass


@pytest.mark.parametrize("value", [0, -1.0])
def test_non_positive_lambda_is_an_error(value):
    with pytest.raises(jmaml.JmamlError, match=rf"^proximal_lambda must be a positive number, got {value}$"):
        jmaml.imaml(linear, mse, inner_lr=0.1, inner_steps=5, proximal_lambda=value)


@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_non_positive_cg_steps_is_an_error(value):
    with pytest.raises(jmaml.JmamlError, match=rf"^cg_steps must be a positive integer, got {value}$"):
        jmaml.imaml(linear, mse, inner_lr=0.1, inner_steps=5, cg_steps=value)


def test_proximal_term_chained_with_any_inner_optimizer():
    """optax.chain(proximal(lam), sgd(lr)) steps by -lr * (g + lam * (phi - phi_0)), phi_0 from init."""
    lam, lr = 0.7, 0.2
    opt = optax.chain(jmaml.proximal(lam), optax.sgd(lr))
    phi_0 = {"w": jnp.array([1.0, -2.0])}
    state = opt.init(phi_0)
    phi, g = {"w": jnp.array([1.5, -1.0])}, {"w": jnp.array([0.3, 0.1])}
    updates, _ = opt.update(g, state, phi)
    chex.assert_trees_all_close(updates, {"w": -lr * (g["w"] + lam * (phi["w"] - phi_0["w"]))}, rtol=1e-15)
    # imaml(inner_optimizer=sgd(lr)) is imaml(inner_lr=lr)
    tasks = random_tasks(1)
    a = jmaml.imaml(mlp_apply, mse, inner_lr=0.1, inner_steps=3, proximal_lambda=LAM)
    b = jmaml.imaml(mlp_apply, mse, inner_optimizer=optax.sgd(0.1), inner_steps=3, proximal_lambda=LAM)
    meta = a.init(mlp_init(0))
    chex.assert_trees_all_close(jax.grad(lambda mp: a.meta_loss(mp, tasks)[0])(meta),
                                jax.grad(lambda mp: b.meta_loss(mp, tasks)[0])(meta), rtol=1e-14)
