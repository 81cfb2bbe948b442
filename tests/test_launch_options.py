"""Options that cut the GPU program's kernel launches (gpu_program.py) compute the reference's meta-gradient, in
float64: the im2col lowering and one-pass BatchNorm statistics against XLA's convolution with two-pass
statistics (second-order MAML through a scanned inner loop), max-pooling as a reshape and a max against
flax's max_pool, and the flat meta-update (Adam on all meta-parameters raveled into one vector) against
Adam per leaf over two meta-steps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmaml
from jmaml import losses
from jmaml.core.schedules import meta_optimizer
from jmaml.core.step import init_state, make_train_step
from jmaml.core.types import Tasks
from jmaml.errors import JmamlError
from jmaml.experiment.configs import get_config
from jmaml.models import MLP, Conv4, functional

pytestmark = pytest.mark.usefixtures("x64")
TASKS, WAYS, SHOTS, QUERIES, SIDE, FILTERS, STEPS = 3, 2, 1, 2, 8, 2, 2


def conv_problem(conv: str, norm: str):
    """Conv4 (2 filters, 8x8 inputs) with ``conv`` and ``norm`` statistics, 3 tasks of 2-way 1-shot,
    2 inner SGD steps (step 0 outside the scan, step 1 in it), all in float64."""
    init, apply = functional(Conv4(WAYS, filters=FILTERS, conv=conv, norm=norm))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), init(jax.random.PRNGKey(0), jnp.zeros((1, SIDE, SIDE, 1))))
    params = jax.tree.map(lambda p: p + 0.05, params)  # non-zero biases: the statistics see shifted inputs
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    labels = lambda n: jnp.tile(jnp.repeat(jnp.arange(WAYS), n), (TASKS, 1))  # noqa: E731
    tasks = Tasks(jax.random.normal(keys[0], (TASKS, WAYS * SHOTS, SIDE, SIDE, 1), jnp.float64), labels(SHOTS),
                  jax.random.normal(keys[1], (TASKS, WAYS * QUERIES, SIDE, SIDE, 1), jnp.float64), labels(QUERIES))
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.4, inner_steps=STEPS)
    return learner, learner.init(params), tasks


def meta_gradient(conv: str, norm: str):
    learner, meta_params, tasks = conv_problem(conv, norm)
    return jax.jit(jax.value_and_grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta_params)


@pytest.fixture(scope="module")
def reference():
    with jax.enable_x64(True):
        return meta_gradient("xla", "two_pass")


@pytest.mark.parametrize("conv, norm", [("im2col", "two_pass"), ("xla", "one_pass")])
def test_lowering_and_norm_stats_give_the_reference_meta_gradient(reference, conv, norm):
    loss, grads = meta_gradient(conv, norm)
    assert grads["params"]["conv0"]["kernel"].dtype == jnp.float64
    chex.assert_trees_all_close((loss, grads), reference, rtol=1e-9, atol=1e-12)


def test_one_pass_statistics_equal_two_pass_on_a_shifted_batch():
    from jmaml.models.norm import batch_stat_norm

    x = 3.0 + jax.random.normal(jax.random.PRNGKey(2), (6, 5, 5, 4), jnp.float64)
    scale, bias = jnp.linspace(0.5, 2.0, 4), jnp.linspace(-1.0, 1.0, 4)
    chex.assert_trees_all_close(batch_stat_norm(x, scale, bias, 1e-5, "one_pass"),
                                batch_stat_norm(x, scale, bias, 1e-5, "two_pass"), rtol=1e-12, atol=1e-12)


def test_flat_meta_update_takes_the_per_leaf_steps():
    """Two meta-steps of second-order MAML on a small MLP: Adam on the raveled meta-parameters moves
    every leaf exactly as Adam per leaf, and keeps its moments as one vector each."""
    init, apply = functional(MLP(hidden=(8, 8)))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    learner = jmaml.maml(apply, losses.mse, inner_lr=0.1, inner_steps=2)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 10, 1), jnp.float64)
    tasks = Tasks(x[:, :5], jnp.sin(x[:, :5]), x[:, 5:], jnp.sin(x[:, 5:]))
    states = {}
    for update in ("per_leaf", "flat"):
        optimizer = meta_optimizer(1e-2, 100, update=update)
        step = jax.jit(make_train_step(learner, optimizer))
        state = init_state(learner, optimizer, params, jax.random.PRNGKey(0))
        for _ in range(2):
            state, _ = step(state, tasks)
        states[update] = state
    chex.assert_trees_all_close(states["flat"].meta_params, states["per_leaf"].meta_params, rtol=1e-12, atol=1e-14)
    moments = [leaf for leaf in jax.tree.leaves(states["flat"].opt_state) if jnp.ndim(leaf) == 1]
    size = sum(np.size(p) for p in jax.tree.leaves(params))
    assert [np.size(m) for m in moments] == [size, size]  # mu and nu, one vector each
    assert isinstance(meta_optimizer(1e-3, 10), optax.GradientTransformation)


def test_config_keys_reach_the_model_and_optimizer_and_bad_values_are_refused():
    from jmaml.experiment.workloads import image_model

    cfg = get_config("omniglot-5w1s", {"norm_stats": "one_pass", "meta_update": "flat", "filters": 2,
                                       "image_size": 8})
    init, apply = image_model(cfg, "omniglot")
    params = init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
    text = jax.jit(apply).lower(params, jnp.ones((4, 8, 8, 1))).as_text()
    two_pass = jax.jit(image_model(get_config("omniglot-5w1s", {"filters": 2, "image_size": 8}), "omniglot")[1])
    assert text != two_pass.lower(params, jnp.ones((4, 8, 8, 1))).as_text()
    with pytest.raises(JmamlError, match="norm_stats must be one of two_pass, one_pass"):
        get_config("omniglot-5w1s", {"norm_stats": "welford"})
    with pytest.raises(JmamlError, match="meta_update must be one of per_leaf, flat"):
        get_config("omniglot-5w1s", {"meta_update": "fused"})
    with pytest.raises(JmamlError, match="norm_stats has no effect on sinusoid"):
        get_config("sinusoid", {"norm_stats": "one_pass"})


def test_auto_lowering_is_im2col_on_cpu_and_gpu():
    """The GPU default has no grouped convolution: conv=auto is im2col there (RESULTS.md, 2026-12-07)."""
    from jmaml.models.conv import resolve_impl

    assert [resolve_impl("auto", b) for b in ("cpu", "gpu", "cuda", "tpu")] == ["im2col", "im2col", "im2col", "xla"]
    assert resolve_impl("xla", "gpu") == "xla" and resolve_impl("im2col", "tpu") == "im2col"


def test_reshape_max_pool_gives_the_reference_meta_gradient():
    """The miniImageNet variant (stride-1 convolutions, 2x2 max-pooling; 20x20 inputs, so one pooled side is
    odd) with pool=reshape against flax's max_pool: the same second-order meta-gradient."""
    from jmaml.models.conv4 import max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 7, 3), jnp.float64)
    chex.assert_trees_all_close(max_pool_2x2(x, "reshape"), max_pool_2x2(x, "reduce_window"), rtol=0, atol=0)
    grads = []
    for pool in ("reduce_window", "reshape"):
        init, apply = functional(Conv4(WAYS, variant="mini_imagenet", filters=FILTERS, conv="im2col", pool=pool))
        params = init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 20, 3)))
        params = jax.tree.map(lambda p: p.astype(jnp.float64) + 0.05, params)
        keys = jax.random.split(jax.random.PRNGKey(5), 2)
        labels = lambda n: jnp.tile(jnp.repeat(jnp.arange(WAYS), n), (TASKS, 1))  # noqa: E731
        tasks = Tasks(jax.random.normal(keys[0], (TASKS, WAYS * SHOTS, 20, 20, 3), jnp.float64), labels(SHOTS),
                      jax.random.normal(keys[1], (TASKS, WAYS * QUERIES, 20, 20, 3), jnp.float64), labels(QUERIES))
        learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.4, inner_steps=STEPS)
        grads.append(jax.jit(jax.value_and_grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(learner.init(params)))
    chex.assert_trees_all_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(JmamlError, match="pool must be one of reduce_window, reshape"):
        get_config("mini-5w1s", {"pool": "avg"})
    with pytest.raises(JmamlError, match="pool has no effect on omniglot"):
        get_config("omniglot-5w1s", {"pool": "reshape"})
