"""Config keys reach what they configure: each training setting changes the computation built from a Config
the way it should (the algorithms' own keys: test_algorithm_contract)."""

import dataclasses
import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks

from jmaml.core.step import make_train_step, meta_gradient
from jmaml.experiment import loop
from jmaml.experiment import run as run_module
from jmaml.experiment import training
from jmaml.experiment.assembly import build, learner_from_config
from jmaml.experiment.configs import get_config
from jmaml.experiment.workloads import chunking, image_workload, sinusoid_workload

TASKS = random_tasks(1, tasks=4, support=5, query=7)
KEY = jax.random.PRNGKey(5)
BASE = {"inner_steps": 2, "inner_lr": 0.1}


def ravel(tree):
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def from_config(algorithm, **overrides):
    return learner_from_config(get_config("sinusoid", {"algorithm": algorithm, **BASE, **overrides}), mlp_apply, mse)


def test_remat_same_gradient_rematerialised_program(x64):
    grads, texts, temp = {}, {}, {}
    for remat in (False, True):
        learner = from_config("maml", remat=remat, inner_steps=5)
        assert learner.remat is remat
        meta = learner.init(mlp_init(0))
        fn = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, TASKS)[0]))
        grads[remat] = ravel(fn(meta))
        lowered = fn.lower(meta)
        texts[remat] = lowered.as_text()
        temp[remat] = lowered.compile().memory_analysis().temp_size_in_bytes
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-12, atol=1e-14)
    # jax.checkpoint lowers to an optimization barrier around the stored residuals
    assert "optimization_barrier" in texts[True] and "optimization_barrier" not in texts[False]
    assert temp[True] < temp[False], temp


class _Stop(Exception):
    pass


def spy_trainer(monkeypatch) -> dict:
    """Makes ``train`` stop where it builds its Trainer; returns the dict that gets the Trainer's arguments."""
    seen = {}

    class Spy(loop.Trainer):
        def __init__(self, *args, **kwargs):
            seen.update(inspect.signature(loop.Trainer).bind(*args, **kwargs).arguments)
            raise _Stop

    monkeypatch.setattr(run_module, "Trainer", Spy)
    return seen


def test_meta_chunks_reaches_the_train_step(monkeypatch, tmp_path):
    """``train`` gives ``meta_chunks`` to the Trainer, and the Trainer to ``make_train_step``; both are stopped
    before anything compiles."""
    seen = spy_trainer(monkeypatch)
    cfg = get_config("sinusoid", {"meta_batch": 4, "meta_chunks": 2, "hidden": (4,)})
    with pytest.raises(_Stop):
        training.train(cfg, str(tmp_path / "run"), progress=False)
    assert seen["meta_chunks"] == 2

    def spy_step(*args, **kwargs):
        seen["chunks"] = kwargs.get("chunks", 1)
        raise _Stop

    monkeypatch.setattr(loop, "make_train_step", spy_step)
    trainer = loop.Trainer(*(seen[k] for k in ("learner", "optimizer", "sample_tasks", "data")),
                           steps_per_dispatch=seen["steps_per_dispatch"], meta_chunks=seen["meta_chunks"])
    with pytest.raises(_Stop):
        trainer.compiled(trainer.learner, 1, build(cfg, sinusoid_workload(cfg)).template())
    assert seen["chunks"] == 2


def test_meta_chunks_auto_is_one_task_per_device_on_the_cpu(monkeypatch, tmp_path):
    """``meta_chunks=0`` (the miniImageNet configs' default): on the CPU one task per device per chunk,
    in meta-training (it reaches the Trainer) and in the meta-test; on an accelerator one piece."""
    seen = spy_trainer(monkeypatch)
    cfg = get_config("sinusoid", {"meta_batch": 4, "meta_chunks": 0, "hidden": (4,), "eval_batch": 10,
                                  "eval_tasks": 10, "eval_max_steps": 1})
    with pytest.raises(_Stop):
        training.train(cfg, str(tmp_path / "run"), progress=False)
    assert seen["meta_chunks"] == 4
    monkeypatch.setattr(run_module, "meta_test",
                        lambda *args, **kwargs: seen.update(eval_chunks=kwargs["chunks"]) or {})
    workload = sinusoid_workload(cfg)
    setup = build(cfg, workload)
    run_module.meta_test_of(cfg, workload, setup.learner, setup.template().meta_params)
    assert seen["eval_chunks"] == 10
    mini = get_config("mini-5w1s")
    assert mini.meta_chunks == 0 and chunking(mini) == (4, 20)
    assert chunking(mini, 2) == (2, 10)  # per device: each chunk spans every device
    assert chunking(get_config("mini-5w1s", {"eval_batch": 5, "eval_tasks": 10}), 2) == (2, 5)  # eval not split
    assert chunking(get_config("mini-5w1s", {"meta_chunks": 2})) == (2, 1)  # as given; meta-test in one piece
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert chunking(mini) == (1, 1)


def test_meta_chunks_same_gradient_chunked_program(x64):
    learner = from_config("maml")
    meta = learner.init(mlp_init(0))
    gradient = jax.jit(meta_gradient, static_argnums=0, static_argnames="chunks")
    whole = gradient(learner, meta, TASKS, key=KEY)
    chunked = gradient(learner, meta, TASKS, key=KEY, chunks=2)
    chex.assert_trees_all_close(chunked, whole, rtol=1e-12, atol=1e-14)
    cfg = get_config("sinusoid", {"meta_batch": 4, "hidden": (4,)})
    texts = {}
    for chunks in (1, 2):
        setup = build(cfg, sinusoid_workload(cfg))
        step = make_train_step(setup.learner, setup.optimizer, chunks=chunks)
        texts[chunks] = jax.jit(step).lower(setup.template(), TASKS._replace(
            x_support=TASKS.x_support[..., :1], x_query=TASKS.x_query[..., :1])).as_text()
    # one more loop: the scan over the chunks around the inner loop's scan
    assert texts[2].count("stablehlo.while") == texts[1].count("stablehlo.while") + 1


def adam_rates(cfg):
    """The learning rate the config's meta-optimizer applies at each step: with a constant gradient of ones,
    Adam's bias-corrected moments are exactly 1, so each update is ``-lr_k / (1 + eps)``."""
    optimizer = build(cfg, sinusoid_workload(cfg)).optimizer
    params = {"w": jnp.zeros(3)}
    state = optimizer.init(params)
    rates = []
    for _ in range(cfg.steps + 1):
        updates, state = optimizer.update({"w": jnp.ones(3)}, state, params)
        rates.append(-float(updates["w"][0]) * (1 + 1e-8))
    return np.array(rates)


def test_lr_schedule_cosine_is_the_rate_adam_applies(x64):
    cfg = get_config("sinusoid", {"steps": 10, "meta_lr": 2e-3, "lr_schedule": "cosine"})
    k = np.arange(11)
    # PyTorch's CosineAnnealingLR(T_max=steps, eta_min=1e-5), as MAML++ anneals the meta learning rate
    want = 1e-5 + (2e-3 - 1e-5) * (1 + np.cos(math.pi * k / 10)) / 2
    np.testing.assert_allclose(adam_rates(cfg), want, rtol=1e-9)
    np.testing.assert_allclose(adam_rates(dataclasses.replace(cfg, lr_schedule="constant")), 2e-3, rtol=1e-9)


def test_conv_key_same_forward_different_lowering():
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 8, 8, 1), dtype=np.uint8)
    x = jnp.asarray(images[:5, 0] / 255.0, jnp.float32)
    outputs, texts = {}, {}
    for impl in ("xla", "im2col"):
        cfg = get_config("omniglot-5w1s", {"conv": impl, "filters": 4, "meta_batch": 2, "queries": 1,
                                           "eval_tasks": 2, "eval_batch": 2})
        workload = image_workload(cfg, images, images, "omniglot")
        apply = build(cfg, workload).learner.apply_fn
        params = workload.init(jax.random.PRNGKey(0))
        outputs[impl] = jax.jit(apply)(params, x)
        texts[impl] = jax.jit(apply).lower(params, x).as_text()
    np.testing.assert_allclose(outputs["im2col"], outputs["xla"], rtol=1e-5, atol=1e-5)
    assert "convolution" in texts["xla"] and "convolution" not in texts["im2col"]
