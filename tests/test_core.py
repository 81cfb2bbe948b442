"""The MAML core against independent computations, in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmaml
from jmaml import losses
from jmaml.data import sinusoid


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def directional_fd(f, params, direction, eps=1e-6):
    """Central finite difference of scalar ``f`` at ``params`` along ``direction``."""
    plus = jax.tree.map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree.map(lambda p, d: p - eps * d, params, direction)
    return (f(plus) - f(minus)) / (2 * eps)


def random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def mlp_problem(steps=2, tasks=3):
    init, apply = jmaml.functional(jmaml.MLP((8, 8), 1))
    params = to64(init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(1), tasks, 5, 7, dtype=jnp.float64)
    learner = jmaml.maml(apply, losses.mse, inner_lr=0.05, inner_steps=steps)
    return learner, learner.init(params), batch


def conv_problem(steps=1, tasks=2, ways=3):
    init, apply = jmaml.functional(jmaml.Conv4(ways, filters=3))
    params = to64(init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1))))
    kx, ky = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(kx, (tasks, 2 * ways, 8, 8, 1), jnp.float64)
    y = jnp.tile(jnp.arange(ways), (tasks, 2))
    batch = jmaml.Tasks(x[:, :ways], y[:, :ways], x[:, ways:], y[:, ways:])
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.3, inner_steps=steps,
                         metrics={"accuracy": losses.accuracy})
    return learner, learner.init(params), batch


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


def explicit_adapt(apply_fn, loss_fn, params, x, y, lr, steps):
    """The inner loop written out by hand, one Python iteration per step."""
    for _ in range(steps):
        grads = jax.grad(lambda p: loss_fn(apply_fn(p, x), y))(params)
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return params


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
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)


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

    np.testing.assert_allclose(learner.adapt(meta_params, xs, ys)["w"], w1, rtol=1e-12)
    got_loss, _ = learner.meta_loss(meta_params, batch)
    got_grad = jax.grad(lambda mp: learner.meta_loss(mp, batch)[0])(meta_params)["params"]["w"]
    np.testing.assert_allclose(got_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-10)


@pytest.mark.parametrize("problem", [mlp_problem, conv_problem], ids=["mlp", "conv_bn"])
def test_vmap_over_tasks_equals_python_loop(problem):
    learner, meta_params, batch = problem()
    (loss, aux), grad = jax.jit(jax.value_and_grad(learner.meta_loss, has_aux=True))(meta_params, batch)
    one_task = jax.jit(jax.value_and_grad(lambda mp, task: learner.objective(learner, mp, task, 0)[0]))
    losses_, grads = [], []
    for t in range(batch.x_support.shape[0]):
        value, g = one_task(meta_params, jax.tree.map(lambda a: a[t], batch))
        losses_.append(value)
        grads.append(g)
    np.testing.assert_allclose(aux["query_loss"], jnp.stack(losses_), rtol=1e-12)
    np.testing.assert_allclose(loss, np.mean(losses_), rtol=1e-12)
    want = jax.tree.map(lambda *g: jnp.mean(jnp.stack(g), 0), *grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), grad, want)


def test_adapt_equals_explicit_unrolled_loop():
    learner, meta_params, batch = conv_problem(steps=3)
    task = jax.tree.map(lambda a: a[0], batch)
    got = learner.adapt(meta_params, task.x_support, task.y_support)
    want = explicit_adapt(learner.apply_fn, learner.loss_fn, meta_params["params"], task.x_support,
                          task.y_support, 0.3, 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)


def test_jit_equals_no_jit():
    learner, meta_params, batch = mlp_problem()
    fn = jax.value_and_grad(learner.meta_loss, has_aux=True)
    (l1, a1), g1 = fn(meta_params, batch)
    (l2, a2), g2 = jax.jit(fn)(meta_params, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
                 (l1, a1, g1), (l2, a2, g2))


def test_evaluate_reports_before_and_after_each_step():
    learner, meta_params, batch = conv_problem(steps=2)
    per_step = learner.evaluate(meta_params, batch, steps=4)
    assert per_step["loss"].shape == (2, 5) and per_step["accuracy"].shape == (2, 5)
    _, aux = learner.meta_loss(meta_params, batch)
    np.testing.assert_allclose(per_step["loss"][:, 0], aux["query_loss_before"], rtol=1e-12)
    np.testing.assert_allclose(per_step["loss"][:, 2], aux["query_loss"], rtol=1e-12)
    np.testing.assert_allclose(per_step["accuracy"][:, 2], aux["query_accuracy"], rtol=1e-12)


def test_train_step_applies_optax_update_of_meta_gradient():
    import optax

    learner, meta_params, batch = mlp_problem()
    opt = optax.sgd(0.1)
    state = jmaml.TrainState(jnp.zeros((), jnp.int32), meta_params, opt.init(meta_params),
                             jax.random.PRNGKey(0))
    new, metrics = jax.jit(jmaml.make_train_step(learner, opt))(state, batch)
    grad = jax.grad(lambda mp: learner.meta_loss(mp, batch)[0])(meta_params)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, meta_params, grad)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), new.meta_params, want)
    assert int(new.step) == 1
    np.testing.assert_allclose(metrics["meta_loss"], learner.meta_loss(meta_params, batch)[0], rtol=1e-12)


def test_sinusoid_tasks_follow_paper_ranges():
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(0), 200, 10, 5)
    assert batch.x_support.shape == (200, 10, 1) and batch.x_query.shape == (200, 5, 1)
    x = jnp.concatenate([batch.x_support, batch.x_query], 1)
    y = jnp.concatenate([batch.y_support, batch.y_query], 1)
    assert float(x.min()) >= -5 and float(x.max()) <= 5
    assert float(jnp.abs(y).max()) <= 5
    again = sinusoid.sample_tasks(jax.random.PRNGKey(0), 200, 10, 5)
    jax.tree.map(np.testing.assert_array_equal, batch, again)


@pytest.mark.parametrize("strides", [1, 2])
def test_im2col_convolution_equals_xla_convolution(strides):
    from jmaml.models.conv import Conv2D

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 10, 2), jnp.float64)
    im2col, xla = Conv2D(4, 3, strides, impl="im2col"), Conv2D(4, 3, strides, impl="xla")
    params = im2col.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    np.testing.assert_allclose(im2col.apply(params, x), xla.apply(params, x), rtol=1e-12, atol=1e-12)


def test_wrong_input_shape_for_the_model_is_one_clear_error():
    init, apply = jmaml.functional(jmaml.Conv4(5, filters=2))
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.4, inner_steps=1)
    meta_params = learner.init(init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
    x = jnp.zeros((2, 5, 84, 84, 3))  # miniImageNet-shaped images for an Omniglot-shaped model
    y = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(jmaml.JmamlError, match=r"the model cannot take this task's inputs of shape "
                                                r"\(5, 84, 84, 3\) \(examples, ...\): .*make the data's shape"):
        learner.meta_loss(meta_params, jmaml.Tasks(x, y, x, y))


def test_mismatched_tasks_are_one_clear_error():
    learner, meta_params, batch = mlp_problem()
    bad = batch._replace(y_query=batch.y_query[:, :3])
    with pytest.raises(jmaml.JmamlError, match=r"x_query has 7 examples per task but y_query has 3"):
        learner.meta_loss(meta_params, bad)
    bad = batch._replace(x_query=batch.x_query[:2])
    with pytest.raises(jmaml.JmamlError, match="same leading task axis"):
        learner.meta_loss(meta_params, bad)
    with pytest.raises(jmaml.JmamlError, match="inner_lr must be a positive number, got 0"):
        jmaml.maml(learner.apply_fn, losses.mse, inner_lr=0, inner_steps=1)
    with pytest.raises(jmaml.JmamlError, match="inner_steps must be a positive integer, got 0"):
        jmaml.maml(learner.apply_fn, losses.mse, inner_lr=0.1, inner_steps=0)
