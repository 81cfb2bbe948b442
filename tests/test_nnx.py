"""flax NNX modules through ``jmaml.functional``: the same function, parameters and meta-gradient as linen."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jmaml
from jmaml import losses
from jmaml.core.masks import leaf_paths
from jmaml.data import sinusoid
from jmaml.models import nnx as jnnx


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def linen_and_nnx_params(linen_module, nnx_module, x):
    """Both kinds' (init, apply) and the linen initial weights in float64, checked to share paths."""
    init_l, apply_l = jmaml.functional(linen_module)
    init_n, apply_n = jmaml.functional(nnx_module)
    params = to64(init_l(jax.random.PRNGKey(0), x))
    own = init_n(jax.random.PRNGKey(0), x)
    assert leaf_paths(own) == leaf_paths(params)
    assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, params)
    return apply_l, apply_n, params


def max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_nnx_mlp_meta_gradient_equals_linen():
    apply_l, apply_n, params = linen_and_nnx_params(jmaml.MLP((8, 8), 1), jnnx.MLP((8, 8), 1, rngs=nnx.Rngs(3)),
                                                    jnp.zeros((1, 1)))
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(1), 3, 5, 7, dtype=jnp.float64)
    grads = []
    for apply in (apply_l, apply_n):
        learner = jmaml.maml(apply, losses.mse, inner_lr=0.05, inner_steps=3)
        meta_params = learner.init(params)
        (loss, _), grad = jax.jit(lambda mp: jmaml.meta_gradient(learner, mp, batch))(meta_params)
        grads.append((loss, grad))
    (loss_l, grad_l), (loss_n, grad_n) = grads
    assert jax.tree.structure(grad_l) == jax.tree.structure(grad_n)
    assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grad_n))
    assert max_abs_diff(grad_l, grad_n) < 1e-12, max_abs_diff(grad_l, grad_n)
    assert abs(float(loss_l) - float(loss_n)) < 1e-12
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_n)) > 1e-3  # not trivially zero


@pytest.mark.parametrize("variant,size,channels", [("omniglot", 8, 1), ("mini_imagenet", 16, 3)])
def test_nnx_conv4_computes_linen_conv4(variant, size, channels):
    linen = jmaml.Conv4(3, variant=variant, filters=3)
    twin = jnnx.Conv4(3, variant=variant, filters=3, image_size=size, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(2), (6, size, size, channels), jnp.float64)
    apply_l, apply_n, params = linen_and_nnx_params(linen, twin, x)
    np.testing.assert_allclose(apply_n(params, x), apply_l(params, x), rtol=1e-12, atol=1e-12)


def test_nnx_conv4_meta_gradient_equals_linen():
    """Batch-statistics normalisation inside the inner loop and the meta-gradient, both kinds."""
    apply_l, apply_n, params = linen_and_nnx_params(jmaml.Conv4(3, filters=2),
                                                    jnnx.Conv4(3, filters=2, rngs=nnx.Rngs(0)), jnp.zeros((1, 8, 8, 1)))
    kx = jax.random.PRNGKey(4)
    x = jax.random.normal(kx, (2, 6, 8, 8, 1), jnp.float64)
    y = jnp.tile(jnp.arange(3), (2, 2))
    batch = jmaml.Tasks(x[:, :3], y[:, :3], x[:, 3:], y[:, 3:])
    grads = [jax.jit(lambda mp: jmaml.meta_gradient(learner, mp, batch))(learner.init(params))[1]
             for learner in (jmaml.maml(apply, losses.cross_entropy, inner_lr=0.3, inner_steps=1)
                             for apply in (apply_l, apply_n))]
    assert max_abs_diff(*grads) < 1e-10, max_abs_diff(*grads)


class BNNet(nnx.Module):
    def __init__(self, rngs):
        self.body = nnx.Linear(2, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.body(x))))


def test_flax_batchnorm_uses_batch_statistics_and_leaves_the_module_alone():
    model = BNNet(nnx.Rngs(0))
    init, apply = jmaml.functional(model)
    params = to64(init(None, None))
    assert set(params) == {"body", "norm", "head"} and set(params["norm"]) == {"scale", "bias"}
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2), jnp.float64) * 3 + 1
    h = x @ params["body"]["kernel"] + params["body"]["bias"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5) * params["norm"]["scale"] + params["norm"]["bias"]
    expected = jax.nn.relu(h) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(jax.jit(apply)(params, x), expected, rtol=1e-10)
    np.testing.assert_allclose(jax.vmap(apply, (None, 0))(params, jnp.stack([x, 2 * x]))[0], expected, rtol=1e-10)
    np.testing.assert_array_equal(model.norm.mean[...], jnp.zeros(4))  # the running averages were not touched
    # an ANIL-style path mask selects the same leaves as on the linen model
    learner = jmaml.anil(apply, losses.mse, inner_lr=0.1, inner_steps=1, head="head")
    learner.init(params)


def test_functional_rejects_other_objects():
    with pytest.raises(jmaml.JmamlError, match="linen or NNX module"):
        jmaml.functional(lambda params, x: x)
