"""The MAML core against independent computations, in float64."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmaml
from jmaml import losses
from jmaml.data import sinusoid

pytestmark = pytest.mark.usefixtures("x64")


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


def test_adapt_equals_explicit_unrolled_loop():
    learner, meta_params, batch = conv_problem(steps=3)
    task = jax.tree.map(lambda a: a[0], batch)
    got = learner.adapt(meta_params, task.x_support, task.y_support)
    want = explicit_adapt(learner.apply_fn, learner.loss_fn, meta_params["params"], task.x_support,
                          task.y_support, 0.3, 3)
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


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


def test_evaluate_reports_before_and_after_each_step():
    learner, meta_params, batch = conv_problem(steps=2)
    per_step = learner.evaluate(meta_params, batch, steps=4)
    assert per_step["loss"].shape == (2, 5) and per_step["accuracy"].shape == (2, 5)
    _, aux = learner.meta_loss(meta_params, batch)
    chex.assert_trees_all_close(per_step["loss"][:, 0], aux["query_loss_before"], rtol=1e-12)
    chex.assert_trees_all_close(per_step["loss"][:, 2], aux["query_loss"], rtol=1e-12)
    chex.assert_trees_all_close(per_step["accuracy"][:, 2], aux["query_accuracy"], rtol=1e-12)


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
    chex.assert_trees_all_close(im2col.apply(params, x), xla.apply(params, x), rtol=1e-12, atol=1e-12)


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


def clipped_meta_loss(learner, params, batch, clip, lr, steps, norms):
    """MAML's meta-loss with the inner gradient clipped to global norm ``clip``, written by hand;
    appends every inner gradient's norm to ``norms``."""
    losses_ = []
    for t in range(batch.x_support.shape[0]):
        task = jax.tree.map(lambda a: a[t], batch)
        phi = params
        for _ in range(steps):
            grads = jax.grad(lambda p: learner.loss_fn(learner.apply_fn(p, task.x_support), task.y_support))(phi)
            norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
            norms.append(norm)
            phi = jax.tree.map(lambda p, g: p - lr * g * jnp.minimum(1.0, clip / norm), phi, grads)
        losses_.append(learner.loss_fn(learner.apply_fn(phi, task.x_query), task.y_query))
    return jnp.mean(jnp.stack(losses_))


def test_optax_inner_optimizer_with_clipping_equals_explicit_loop():
    _, meta_params, batch = mlp_problem()
    clip, lr, steps = 0.3, 0.4, 2
    learner = jmaml.maml(mlp_problem()[0].apply_fn, losses.mse, inner_steps=steps,
                         inner_optimizer=optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr)))
    (loss, _), grads = jax.jit(jax.value_and_grad(learner.meta_loss, has_aux=True))(meta_params, batch)
    norms = []
    clipped_meta_loss(learner, meta_params["params"], batch, clip, lr, steps, norms)
    want, want_grads = jax.value_and_grad(clipped_meta_loss, argnums=1)(
        learner, meta_params["params"], batch, clip, lr, steps, [])
    assert min(float(n) for n in norms) > 1.5 * clip  # the clip is active at every inner step of every task
    chex.assert_trees_all_close(loss, want, rtol=1e-12)
    chex.assert_trees_all_close(grads["params"], want_grads, rtol=1e-9, atol=1e-12)
    # and clipping changes the meta-gradient: plain SGD with the same rate gives another one
    plain = jmaml.maml(learner.apply_fn, losses.mse, inner_lr=lr, inner_steps=steps)
    other = jax.grad(lambda mp: plain.meta_loss(mp, batch)[0])(meta_params)["params"]
    assert not np.allclose(jax.flatten_util.ravel_pytree(other)[0],
                           jax.flatten_util.ravel_pytree(grads["params"])[0], rtol=1e-3)


def test_inner_lr_and_inner_optimizer_rules():
    learner, _, _ = mlp_problem()
    apply = learner.apply_fn
    for factory in (jmaml.maml, jmaml.fomaml, jmaml.anil, jmaml.reptile, jmaml.imaml, jmaml.pretrain):
        with pytest.raises(jmaml.JmamlError, match=r"^inner_lr=0.1 and an optax inner_optimizer both set the "
                                                   r"inner step; give the learning rate inside the optax"):
            factory(apply, losses.mse, inner_steps=1, inner_lr=0.1, inner_optimizer=optax.sgd(0.1))
        with pytest.raises(jmaml.JmamlError, match=r"^inner_optimizer='sgd' needs inner_lr, its learning rate$"):
            factory(apply, losses.mse, inner_steps=1)
        with pytest.raises(jmaml.JmamlError, match=r"^inner_optimizer must be one of 'sgd', 'adam' or an optax "
                                                   r"GradientTransformation, got 'rmsprop'$"):
            factory(apply, losses.mse, inner_steps=1, inner_lr=0.1, inner_optimizer="rmsprop")
    assert isinstance(jmaml.maml(apply, losses.mse, inner_steps=1, inner_optimizer=optax.sgd(0.1)).inner_optimizer,
                      optax.GradientTransformation)
    with pytest.raises(jmaml.JmamlError, match=r"^first_order must be True or False, got 1$"):
        jmaml.maml(apply, losses.mse, inner_lr=0.1, inner_steps=1, first_order=1)


def test_annealing_has_one_path_the_host_switch():
    learner, meta_params, batch = mlp_problem()
    annealed = jmaml.maml_pp(learner.apply_fn, losses.mse, inner_lr=0.05, inner_steps=2, first_order_steps=3)
    mp = annealed.init(meta_params["params"])
    # a Python meta-step goes through at_step; a traced one is an error that names the fix
    for step in (0, 3):
        chex.assert_trees_all_close(annealed.meta_loss(mp, batch, step),
                                    annealed.at_step(step).meta_loss(mp, batch, step))
    with pytest.raises(jmaml.JmamlError, match=r"first_order_steps=3 meta-steps, which is a host-side switch: "
                                               r"build the train step from learner.at_step\(step\)"):
        jax.jit(lambda t: annealed.meta_loss(mp, batch, t))(0)


def test_registry_and_options_come_from_the_factories():
    for name, factory in jmaml.ALGORITHMS.items():  # each exported under its name, apply_fn and loss_fn first
        assert getattr(jmaml, name) is factory and name in jmaml.__all__
        assert list(inspect.signature(factory).parameters)[:2] == ["apply_fn", "loss_fn"]
    options = {name: jmaml.algorithm_options(name) for name in jmaml.ALGORITHMS}
    common = {"inner_steps", "inner_lr", "metrics", "unroll"}
    assert all(common <= set(o) for o in options.values())
    assert options["reptile"] == {"inner_steps": jmaml.algorithms.REQUIRED, "inner_lr": None,
                                  "inner_optimizer": "sgd", "inner_batch": 0, "metrics": None, "unroll": 1}
    assert set(options["imaml"]) - common == {"inner_optimizer", "proximal_lambda", "cg_steps"}
    assert options["imaml"]["proximal_lambda"] == 1.0 and options["imaml"]["cg_steps"] == 5
    assert set(options["maml_pp"]) - common == {"msl_anneal_steps", "first_order_steps", "per_step_bn", "first_order"}
    assert options["maml_pp"]["per_step_bn"] == jmaml.NORM_LEAVES
    assert options["meta_sgd"]["inner_lr"] is jmaml.algorithms.REQUIRED
    assert set(options["anil"]) - common == {"inner_optimizer", "head", "first_order"}
    assert set(options["fomaml"]) - common == {"inner_optimizer"}
    with pytest.raises(jmaml.JmamlError, match=r"^unknown algorithm 'mamlx'; choose one of: maml, fomaml, "):
        jmaml.algorithm_options("mamlx")


def test_pretrain_objective_and_fine_tuning_equal_explicit_loops():
    """pretrain: per task, the mean loss over support and query together at theta (no adaptation);
    at meta-test, plain SGD fine-tuning on the support set."""
    learner, meta_params, batch = mlp_problem(steps=2)
    pre = jmaml.pretrain(learner.apply_fn, losses.mse, inner_lr=0.05, inner_steps=2)

    def hand(params):
        per_task = []
        for t in range(batch.x_support.shape[0]):
            out = jnp.concatenate([learner.apply_fn(params, batch.x_support[t]),
                                   learner.apply_fn(params, batch.x_query[t])])
            y = jnp.concatenate([batch.y_support[t], batch.y_query[t]])
            per_task.append(jnp.sum((out - y) ** 2) / y.size)
        return sum(per_task) / len(per_task)

    (loss, aux), grads = jax.value_and_grad(pre.meta_loss, has_aux=True)(meta_params, batch)
    want, want_grads = jax.value_and_grad(hand)(meta_params["params"])
    chex.assert_trees_all_close(loss, want, rtol=1e-12)
    chex.assert_trees_all_close(grads["params"], want_grads, rtol=1e-10, atol=1e-13)
    chex.assert_trees_all_close(aux["query_loss"], aux["query_loss_before"])  # no adaptation in training
    scores = pre.evaluate(meta_params, batch, steps=2)["loss"][:, 2]
    for t in range(batch.x_support.shape[0]):
        phi = explicit_adapt(learner.apply_fn, losses.mse, meta_params["params"], batch.x_support[t],
                             batch.y_support[t], 0.05, 2)
        chex.assert_trees_all_close(scores[t], losses.mse(learner.apply_fn(phi, batch.x_query[t]), batch.y_query[t]),
                                    rtol=1e-12)
