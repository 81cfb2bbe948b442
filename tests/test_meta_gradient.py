"""The second-order meta-gradient against independent computations, in float64: finite differences,
a closed form, a Python loop over tasks, first order, and the optax update the train step applies."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import conv_problem, directional_fd, explicit_adapt, mlp_problem, random_like, tree_dot

import jmaml
from jmaml import losses

pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem], ids=["mlp", "conv_bn"])
def test_second_order_meta_gradient_matches_finite_differences(problem):
    learner, meta_params, batch = problem()
    f = jax.jit(lambda mp: learner.meta_loss(mp, batch)[0])
    grad = jax.jit(jax.grad(f))(meta_params)
    for seed in range(3):
        direction = random_like(jax.random.PRNGKey(10 + seed), meta_params)
        analytic = tree_dot(grad, direction)
        numeric = directional_fd(f, meta_params, direction)
        assert abs(analytic - numeric) <= 1e-6 * abs(numeric), (analytic, numeric)


def test_second_order_differs_from_first_order():
    learner, meta_params, batch = mlp_problem()
    fo = jmaml.fomaml(learner.apply_fn, learner.loss_fn, inner_lr=0.05, inner_steps=2)
    g2 = jax.grad(lambda mp: learner.meta_loss(mp, batch)[0])(meta_params)
    g1 = jax.grad(lambda mp: fo.meta_loss(mp, batch)[0])(meta_params)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
    assert diff > 1e-4


def test_first_order_equals_query_gradient_at_adapted_params():
    learner, meta_params, batch = mlp_problem(steps=3)
    fo = jmaml.fomaml(learner.apply_fn, learner.loss_fn, inner_lr=0.05, inner_steps=3)
    got = jax.grad(lambda mp: fo.meta_loss(mp, batch)[0])(meta_params)["params"]
    per_task = []
    for t in range(batch.x_support.shape[0]):
        task = jax.tree.map(lambda a: a[t], batch)
        phi = explicit_adapt(fo.apply_fn, fo.loss_fn, meta_params["params"], task.x_support, task.y_support,
                             0.05, 3)
        per_task.append(jax.grad(lambda p: fo.loss_fn(fo.apply_fn(p, task.x_query), task.y_query))(phi))
    want = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *per_task)
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_one_step_linear_regression_matches_closed_form():
    rng = np.random.default_rng(0)
    n, m, d, lr = 6, 9, 4, 0.1
    xs, xq = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    ys, yq = rng.normal(size=(n, 1)), rng.normal(size=(m, 1))
    w = rng.normal(size=(d, 1))
    learner = jmaml.maml(lambda p, x: x @ p["w"], losses.mse, inner_lr=lr, inner_steps=1)
    meta_params = learner.init({"w": jnp.asarray(w)})
    batch = jmaml.Tasks(*(jnp.asarray(a)[None] for a in (xs, ys, xq, yq)))

    # closed form: w1 = w - lr (2/n) Xs^T (Xs w - ys);  dL/dw = (I - lr (2/n) Xs^T Xs) (2/m) Xq^T (Xq w1 - yq)
    w1 = w - lr * (2 / n) * xs.T @ (xs @ w - ys)
    loss = np.mean((xq @ w1 - yq) ** 2)
    grad = (np.eye(d) - lr * (2 / n) * xs.T @ xs) @ ((2 / m) * xq.T @ (xq @ w1 - yq))

    chex.assert_trees_all_close(learner.adapt(meta_params, xs, ys)["w"], w1, rtol=1e-12)
    got_loss, _ = learner.meta_loss(meta_params, batch)
    got_grad = jax.grad(lambda mp: learner.meta_loss(mp, batch)[0])(meta_params)["params"]["w"]
    chex.assert_trees_all_close(got_loss, loss, rtol=1e-12)
    chex.assert_trees_all_close(got_grad, grad, rtol=1e-10)


def explicit_meta_loss(learner, params, batch, lr, steps):
    """MAML's meta-loss by hand: a Python loop over tasks, each adapted by :func:`explicit_adapt`."""
    losses_ = []
    for t in range(batch.x_support.shape[0]):
        task = jax.tree.map(lambda a: a[t], batch)
        phi = explicit_adapt(learner.apply_fn, learner.loss_fn, params, task.x_support, task.y_support, lr, steps)
        losses_.append(learner.loss_fn(learner.apply_fn(phi, task.x_query), task.y_query))
    return jnp.mean(jnp.stack(losses_))


class JitTest(chex.TestCase):
    """The meta-loss and meta-gradient, jitted and not, equal the explicit loop's."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_no_jit(self):
        learner, meta_params, batch = mlp_problem()
        (loss, aux), grads = self.variant(jax.value_and_grad(learner.meta_loss, has_aux=True))(meta_params, batch)
        want, want_grads = jax.value_and_grad(explicit_meta_loss, argnums=1)(
            learner, meta_params["params"], batch, 0.05, 2)
        chex.assert_trees_all_close(loss, want, rtol=1e-12)
        chex.assert_trees_all_close(jnp.mean(aux["query_loss"]), want, rtol=1e-12)
        chex.assert_trees_all_close(grads["params"], want_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem], ids=["mlp", "conv_bn"])
def test_vmap_over_tasks_equals_python_loop(problem):
    learner, meta_params, batch = problem()
    (loss, aux), grad = jax.jit(jax.value_and_grad(learner.meta_loss, has_aux=True))(meta_params, batch)
    one_task = jax.jit(jax.value_and_grad(lambda mp, task: learner.objective(learner, mp, task, 0, None)[0]))
    losses_, grads = [], []
    for t in range(batch.x_support.shape[0]):
        value, g = one_task(meta_params, jax.tree.map(lambda a: a[t], batch))
        losses_.append(value)
        grads.append(g)
    chex.assert_trees_all_close(aux["query_loss"], jnp.stack(losses_), rtol=1e-12)
    chex.assert_trees_all_close(loss, np.mean(losses_), rtol=1e-12)
    want = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *grads)
    chex.assert_trees_all_close(grad, want, rtol=1e-9, atol=1e-12)


def test_train_step_applies_optax_update_of_meta_gradient():
    learner, meta_params, batch = mlp_problem()
    opt = optax.sgd(0.1)
    state = jmaml.TrainState(jnp.zeros((), jnp.int32), meta_params, opt.init(meta_params),
                             jax.random.PRNGKey(0))
    new, metrics = jax.jit(jmaml.make_train_step(learner, opt))(state, batch)
    grad = jax.grad(lambda mp: learner.meta_loss(mp, batch)[0])(meta_params)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, meta_params, grad)
    chex.assert_trees_all_close(new.meta_params, want, rtol=1e-10)
    assert int(new.step) == 1
    chex.assert_trees_all_close(metrics["meta_loss"], learner.meta_loss(meta_params, batch)[0], rtol=1e-12)
