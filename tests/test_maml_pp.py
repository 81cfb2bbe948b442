"""MAML++: LSLR, multi-step loss, derivative-order annealing, per-step BatchNorm weights, cosine meta-lr."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks, sq_loss, task, uniform

import jmaml

K, ANNEAL = 3, 10


pytestmark = pytest.mark.usefixtures("x64")


def paper_weights(steps, anneal, epoch):
    """``get_per_step_loss_importance_vector`` of Antoniou et al.'s code, epochs read as meta-steps."""
    if epoch >= anneal:
        return np.eye(steps)[-1]
    w = np.ones(steps) / steps
    decay, floor = 1.0 / steps / anneal, 0.03 / steps
    for i in range(steps - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return w


class NormNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(jmaml.BatchStatNorm(name="norm0")(nn.Dense(4)(x)))
        return nn.Dense(1, name="head")(x)


def hand_unrolled(loss, theta, hyper, tasks, weights, steps, norm, first_order=False):
    """The multi-step loss by an explicit loop: rate ``r[k]`` of each leaf at step ``k``, norm leaves
    set to their table entry ``min(k, K - 1)``."""
    rates, tables = jax.tree.leaves(hyper["lslr"]), jax.tree.leaves(hyper["per_step_bn"])
    total = 0.0
    for i in range(tasks.x_support.shape[0]):
        t = task(tasks, i)
        phi = theta
        for k in range(steps):
            leaves, treedef = jax.tree.flatten(phi)
            grads = jax.tree.leaves(jax.grad(loss)(phi, t.x_support, t.y_support))
            grads = jax.lax.stop_gradient(grads) if first_order else grads
            tab = iter(tables)
            j = min(k, K - 1)
            phi = jax.tree.unflatten(treedef, [next(tab)[j] if is_norm else p - r[j] * g
                                               for p, g, r, is_norm in zip(leaves, grads, rates, norm)])
            if weights is not None:
                total += weights[k] * loss(phi, t.x_query, t.y_query)
        if weights is None:
            total += loss(phi, t.x_query, t.y_query)
    return total / tasks.x_support.shape[0]


def test_msl_weights_follow_the_paper():
    for t in (0, 1, 4, 9, 10, 50):
        np.testing.assert_allclose(jmaml.msl_weights(K, ANNEAL, t), paper_weights(K, ANNEAL, t), rtol=1e-6)
        assert abs(float(jnp.sum(jmaml.msl_weights(K, ANNEAL, t))) - 1) < 1e-6
    np.testing.assert_array_equal(jmaml.msl_weights(K, 0, 0), [0, 0, 1])


def test_multi_step_loss_and_lslr_equal_explicit_loop():
    learner = jmaml.maml_pp(mlp_apply, mse, inner_lr=0.1, inner_steps=K, msl_anneal_steps=ANNEAL)
    meta = learner.init(mlp_init(0))
    meta["inner"] = uniform(2, meta["inner"], 0.05, 0.3)  # a rate per layer and step
    tasks = random_tasks(1, tasks=1)
    ours = jax.jit(jax.value_and_grad(lambda mp, t: learner.meta_loss(mp, tasks, t)[0]))
    hand = jax.jit(jax.value_and_grad(
        lambda mp, w: hand_unrolled(sq_loss, mp["params"], mp["inner"], tasks, w, K, [False] * 4)))
    for train_step in (4, ANNEAL):
        value, grads = ours(meta, train_step)
        hand_value, hand_grads = hand(meta, paper_weights(K, ANNEAL, train_step))
        assert jnp.allclose(value, hand_value, rtol=1e-12)
        chex.assert_trees_all_close(grads, hand_grads, rtol=1e-9, atol=1e-12)


def test_lslr_keeps_last_rate_beyond_trained_steps():
    learner = jmaml.maml_pp(mlp_apply, mse, inner_lr=0.1, inner_steps=K)
    meta = learner.init(mlp_init(0))
    meta["inner"] = uniform(2, meta["inner"], 0.05, 0.3)
    tasks = random_tasks(1, tasks=1)
    adapt = jax.jit(lambda mp, x, y: learner.adapt(mp, x, y, steps=K + 2))
    after = adapt(meta, tasks.x_support[0], tasks.y_support[0])
    loss = lambda p: mse(mlp_apply(p, tasks.x_query[0]), tasks.y_query[0])  # noqa: E731
    expected = jax.jit(hand_unrolled, static_argnums=(0, 4, 5, 6))(
        sq_loss, meta["params"], meta["inner"], tasks, None, K + 2, (False,) * 4)
    assert jnp.allclose(loss(after), expected, rtol=1e-12)


def test_per_step_norm_weights_equal_explicit_loop():
    init, apply = jmaml.functional(NormNet())
    # first order: the routing of per-step weights is the point here (second order: test above)
    learner = jmaml.maml_pp(apply, mse, inner_lr=0.1, inner_steps=K, msl_anneal_steps=ANNEAL,
                            first_order=True)
    params = uniform(0, jax.eval_shape(init, jax.random.PRNGKey(0), jnp.zeros((1, 2))), -0.8, 1.2)
    meta = learner.init(params)
    tables = meta["inner"]["per_step_bn"]
    assert jax.tree.map(jnp.shape, tables) == {"norm0": {"bias": (K, 4), "scale": (K, 4)}}
    meta["inner"] = {"lslr": uniform(2, meta["inner"]["lslr"], 0.05, 0.3),
                     "per_step_bn": uniform(3, tables, 0.5, 1.5)}
    tasks = random_tasks(1, tasks=1)
    paths = jmaml.core.masks.leaf_paths(meta["params"])
    norm = [p.startswith("norm0/") for p in paths]
    weights = paper_weights(K, ANNEAL, 3)

    adapted = jax.jit(learner.adapt)(meta, tasks.x_support[0], tasks.y_support[0])
    # the update is (value - param), so apply_updates lands on the value up to one rounding
    last = jax.tree.map(lambda v: v[K - 1], meta["inner"]["per_step_bn"]["norm0"])
    chex.assert_trees_all_close(adapted["norm0"], last, rtol=1e-15, atol=0)
    grads = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks, 3)[0]))(meta)
    loss = lambda p, x, y: mse(apply(p, x), y)  # noqa: E731
    hand = lambda mp: hand_unrolled(  # noqa: E731
        loss, mp["params"], mp["inner"], tasks, weights, K, norm, first_order=True)
    chex.assert_trees_all_close(grads, jax.jit(jax.grad(hand))(meta), rtol=1e-9, atol=1e-12)
    # every step's normalisation weights learn
    assert all(jnp.all(jnp.any(g != 0, axis=1)) for g in jax.tree.leaves(grads["inner"]["per_step_bn"]))


def test_derivative_order_annealing_two_fixed_learners():
    learner = jmaml.maml_pp(mlp_apply, mse, inner_lr=0.1, inner_steps=1, first_order_steps=5)
    early, late = learner.at_step(0), learner.at_step(5)
    assert early is learner.at_step(4) and late is learner.at_step(10**6)
    assert early.first_order and not late.first_order
    assert early.first_order_steps == late.first_order_steps == 0
    assert jmaml.maml(mlp_apply, mse, inner_lr=0.1, inner_steps=1).at_step(3).first_order is False

    meta = learner.init(mlp_init(0))
    meta["inner"] = uniform(2, meta["inner"], 0.05, 0.3)
    tasks = random_tasks(1)
    norm = [False] * 4
    # the host-side switch gives first order before step 5 and second order from then on: the same
    # numbers as the explicit loop with and without held inner gradients
    for s, first_order in ((2, True), (7, False)):
        lrn = learner.at_step(s)
        ours = jax.jit(jax.grad(lambda mp, lrn=lrn, s=s: lrn.meta_loss(mp, tasks, s)[0]))(meta)
        hand = jax.jit(jax.grad(lambda mp, fo=first_order: hand_unrolled(
            sq_loss, mp["params"], mp["inner"], tasks, None, 1, norm, first_order=fo)))(meta)
        chex.assert_trees_all_close(ours, hand, rtol=1e-9, atol=1e-12)
        # a Python meta_step on the annealing learner itself routes through at_step
        chex.assert_trees_all_close(jax.grad(lambda mp, s=s: learner.meta_loss(mp, tasks, s)[0])(meta), ours,
                                    rtol=1e-12, atol=1e-15)
    first, second = (jax.flatten_util.ravel_pytree(jax.grad(
        lambda mp, s=s: learner.at_step(s).meta_loss(mp, tasks, s)[0])(meta))[0] for s in (2, 7))
    assert not jnp.allclose(first, second)


def test_cosine_meta_lr_schedule():
    schedule = jmaml.meta_lr_schedule(1e-3, 100, "cosine")
    assert np.isclose(schedule(0), 1e-3) and np.isclose(schedule(100), 1e-5)
    assert np.isclose(schedule(50), (1e-3 + 1e-5) / 2)
    assert np.isclose(jmaml.meta_lr_schedule(1e-3, 100)(70), 1e-3)
    # Adam under the cosine schedule: with a constant gradient g, m_hat = g and v_hat = g^2 at every
    # step, so the update at step t is -schedule(t) * g / (|g| + eps)
    opt = jmaml.meta_optimizer(1e-3, 100, "cosine")
    g = {"w": jnp.array([0.5, -2.0])}
    state = opt.init({"w": jnp.zeros(2)})
    for t in range(51):
        updates, state = opt.update(g, state)
        if t in (0, 50):
            chex.assert_trees_all_close(updates["w"], -schedule(t) * g["w"] / (jnp.abs(g["w"]) + 1e-8), rtol=1e-10)
    with pytest.raises(jmaml.JmamlError,
                       match=r"^lr_schedule must be one of constant, cosine, got 'linear'$"):
        jmaml.meta_lr_schedule(1e-3, 100, "linear")


def test_per_step_bn_selecting_every_leaf_is_an_error():
    learner = jmaml.maml_pp(mlp_apply, mse, inner_lr=0.1, inner_steps=K, per_step_bn=".")
    with pytest.raises(jmaml.JmamlError, match=r"^per_step_bn '\.' selects every parameter"):
        learner.init(mlp_init(0))
