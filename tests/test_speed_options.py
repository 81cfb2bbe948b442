"""The speed options (config keys ``conv``, ``precision``, ``unroll``) compute the default's meta-gradient.

Each option is set through the config, built the way ``jmaml train`` builds it
(``workloads.image_workload`` and ``build.learner_from_config``), and its second-order meta-gradient
on a tiny conv config (Conv4 omniglot variant, 4 filters, 8x8 images, 3-way 1-shot, 2 inner steps,
2 tasks) is compared with the default's on the same tasks and initial parameters.

Tolerances: options that only reorder arithmetic (lowering, unrolling) agree to a relative L2 error below
1e-12 over all leaves in float64 (in float32 the agreement, about 1e-5, depends on the machine).
``precision=bf16`` rounds every convolution and matmul operand to bfloat16 (8 bits of mantissa, relative
rounding 2^-9 = 0.2%). On this tiny config the last two layers see 1x1 feature maps, so BatchNorm normalises
over 3 values per channel and amplifies that rounding: measured, the bf16 meta-gradient has a cosine
similarity of 0.979 with the float32 one and a relative L2 difference of 0.44 (also 0.98 / 0.52-0.82 for one
step or a rate of 0.1). The test therefore asks for a cosine above 0.95 and a relative difference below 0.7:
it catches a sign, a missing term or a float32 path that is not taken, not a small bias. Whether bf16 trains
to float32's quality is a training check (sinusoid, Omniglot), not done here.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmaml.experiment.assembly import learner_from_config
from jmaml.experiment.configs import get_config
from jmaml.experiment.workloads import image_workload

BASE = {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 2, "inner_steps": 2, "inner_lr": 0.4,
        "filters": 4, "image_size": 8, "conv": "im2col", "eval_batch": 2, "eval_tasks": 2}


def setup(**options):
    """The learner, meta-parameters and a meta-batch of the tiny config with ``options`` set."""
    cfg = get_config("omniglot-5w1s", {**BASE, **options})
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8, 1), dtype=np.uint8)
    workload = image_workload(cfg, images, images, "omniglot")
    learner = learner_from_config(cfg, workload.apply_fn, workload.loss_fn)
    params = workload.init(jax.random.PRNGKey(0))
    tasks = workload.train_tasks(jax.random.PRNGKey(1), workload.train_data)
    return cfg, learner, learner.init(params), tasks


def meta_gradient(dtype=jnp.float32, **options):
    """The flattened meta-gradient (and its tree) of the tiny config with ``options``, with the weights and
    tasks in ``dtype`` (float64 under the ``x64`` fixture)."""
    _, learner, meta_params, tasks = setup(**options)
    meta_params, tasks = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                      (meta_params, tasks))
    grad = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta_params)
    return np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(grad)]), grad


@pytest.fixture(scope="module")
def default():
    return meta_gradient()


def rel_error(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("options", [{"conv": "xla"}, {"unroll": 2}])
def test_float32_options_match_default(x64, options):
    """In float64 the lowerings and the unrolled loop compute the default's meta-gradient to rounding
    (in float32 the tiny config's BatchNorm over 3 values amplifies rounding to ~1e-5, machine-dependent)."""
    flat, _ = meta_gradient(jnp.float64, **options)
    assert rel_error(flat, meta_gradient(jnp.float64)[0]) < 1e-12


def test_unroll_reaches_the_learner():
    cfg, learner, _, _ = setup(unroll=2)
    assert cfg.unroll == 2 and learner.unroll == 2
    assert setup()[1].unroll == 1
    assert setup(unroll=0)[1].unroll is True  # 0: the whole inner loop


def test_bf16_matches_float32_meta_gradient(default):
    flat, grad = meta_gradient(precision="bf16")
    reference = default[0]
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grad)), "parameters and gradients stay float32"
    cosine = float(flat @ reference / np.linalg.norm(flat) / np.linalg.norm(reference))
    assert rel_error(flat, reference) < 0.7 and cosine > 0.95
    assert rel_error(flat, reference) > 0, "bf16 must actually round something"


@pytest.mark.parametrize("conv", ["im2col", "xla"])
def test_bf16_puts_only_conv_and_matmul_operands_in_bfloat16(conv):
    """In the jaxpr of the meta-loss: every convolution / dot takes a bfloat16 operand and returns
    float32; no other primitive produces a bfloat16 value except the converts that feed them (and
    the slices, pads and concatenation of im2col's patches, which move values without arithmetic)."""
    _, learner, meta_params, tasks = setup(precision="bf16", conv=conv)
    jaxpr = jax.make_jaxpr(lambda mp: learner.meta_loss(mp, tasks)[0])(meta_params)
    heavy, bf16_outputs = [], set()

    def walk(jpr):
        for eqn in jpr.eqns:
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                    if hasattr(sub, "eqns"):
                        walk(sub)
            name = eqn.primitive.name
            if name in ("conv_general_dilated", "dot_general"):
                heavy.append((name, [v.aval.dtype for v in eqn.invars], eqn.outvars[0].aval.dtype))
            elif any(getattr(v.aval, "dtype", None) == jnp.bfloat16 for v in eqn.outvars):
                bf16_outputs.add(name)

    walk(jaxpr.jaxpr)
    assert heavy
    # Every product returns float32; the forward ones take two bfloat16 operands. The backward ones
    # are what JAX's transpose rules emit: under im2col a float32 cotangent times a bfloat16 operand,
    # under xla (conv_general_dilated's transpose) float32 times float32 -- so bf16 speeds up the
    # forward pass only until the cotangents are cast too (a custom_vjp; not done).
    assert all(out == jnp.float32 for _, _, out in heavy), heavy
    if conv == "im2col":
        assert all(jnp.bfloat16 in ins for _, ins, _ in heavy), heavy
    assert any(ins == [jnp.bfloat16] * 2 for _, ins, _ in heavy)
    moves = {"convert_element_type", "pad", "slice", "concatenate", "reshape", "transpose", "broadcast_in_dim",
             "add_any", "squeeze", "expand_dims", "split", "jit", "rev", "select_n", "dynamic_slice", "copy"}
    assert bf16_outputs <= moves, bf16_outputs - moves


def test_precision_is_refused_for_sinusoid_and_bad_values():
    from jmaml.errors import JmamlError

    with pytest.raises(JmamlError, match="precision has no effect on sinusoid"):
        get_config("sinusoid", {"precision": "bf16"})
    with pytest.raises(JmamlError, match="precision must be one of float32, bf16"):
        get_config("omniglot-5w1s", {"precision": "fp16"})
    with pytest.raises(JmamlError, match="unroll must be a non-negative integer"):
        get_config("omniglot-5w1s", {"unroll": -1})
    assert dataclasses.replace(get_config("omniglot-5w1s")).precision == "float32"


@pytest.mark.parametrize("strides", [1, 2])
def test_im2col_convolution_equals_xla_convolution(x64, strides):
    from jmaml.models.conv import Conv2D

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 10, 2), jnp.float64)
    im2col, xla = Conv2D(4, 3, strides, impl="im2col"), Conv2D(4, 3, strides, impl="xla")
    params = im2col.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    chex.assert_trees_all_close(im2col.apply(params, x), xla.apply(params, x), rtol=1e-12, atol=1e-12)
