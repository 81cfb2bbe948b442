"""The inner loop against explicit loops, in float64: adaptation, the meta-test curve, optax inner
optimizers, the inner_lr / inner_optimizer rules and the host-side switch of order annealing."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import conv_problem, explicit_adapt, mlp_problem

import jmaml
from jmaml import losses

pytestmark = pytest.mark.usefixtures("x64")


def test_adapt_equals_explicit_unrolled_loop():
    learner, meta_params, batch = conv_problem(steps=3)
    task = jax.tree.map(lambda a: a[0], batch)
    got = learner.adapt(meta_params, task.x_support, task.y_support)
    want = explicit_adapt(learner.apply_fn, learner.loss_fn, meta_params["params"], task.x_support,
                          task.y_support, 0.3, 3)
    chex.assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_evaluate_reports_before_and_after_each_step():
    learner, meta_params, batch = conv_problem(steps=2)
    per_step = learner.evaluate(meta_params, batch, steps=4)
    assert per_step["loss"].shape == (2, 5) and per_step["accuracy"].shape == (2, 5)
    _, aux = learner.meta_loss(meta_params, batch)
    chex.assert_trees_all_close(per_step["loss"][:, 0], aux["query_loss_before"], rtol=1e-12)
    chex.assert_trees_all_close(per_step["loss"][:, 2], aux["query_loss"], rtol=1e-12)
    chex.assert_trees_all_close(per_step["accuracy"][:, 2], aux["query_accuracy"], rtol=1e-12)


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
