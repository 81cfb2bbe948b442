"""The contract every entry of ``ALGORITHMS`` meets, run over the registry (no list of names here).

For each algorithm, built from the sinusoid config with ``algorithm=NAME``:

- ``train`` runs a few meta-steps and the meta-test, in which every inner step lowers the query loss (and
  in meta-training, except for the pretrain baseline, which has no inner step there);
- one meta-training step moves its meta-loss as Adam's first step along its meta-gradient predicts,
  with the loss's slope along that step taken by a float64 central finite difference; where the
  learner is second order (``first_order`` False: its meta-gradient is the gradient of its
  meta-loss) the meta-gradient itself agrees with that finite difference;
- every config key its factory declares (read from the signature) reaches it by value: a config
  with another value of the key hands the factory that value, and the learner built from it
  computes something else than the default's (a key that only shapes the program, as ``unroll``,
  changes the traced program instead);
- where it anneals the derivative order (declares ``first_order_steps``), the host loop that runs a
  config (``Trainer``) switches from first to second order at that step, inside a dispatch.

A toy algorithm that ignores one of its declared keys fails the key check.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_helpers import mlp_apply, mlp_init, mse, random_tasks

import jmaml
from jmaml import algorithms
from jmaml.algorithms import ALGORITHMS
from jmaml.core.inner import INNER_OPTIMIZERS
from jmaml.core.step import init_state, make_train_step
from jmaml.experiment import build, get_config, learner_from_config, make_workload, train
from jmaml.experiment.configs import Config, algorithm_keys
from jmaml.experiment.loop import Trainer

TASKS = random_tasks(1, tasks=4, support=5, query=7)
KEY = jax.random.PRNGKey(5)
STEP = 2  # the meta-step observed; annealed keys are set to it, so they change the learner there
BASE = {"inner_steps": 2, "inner_lr": 0.1}
MARGIN = 0.05  # one Adam step of 1e-3 against its first-order prediction


def base_overrides(algorithm: str) -> dict:
    """The config for ``algorithm``: two inner steps, and annealing (where it takes it) that ends at STEP."""
    return {**BASE, **{k: STEP for k in ("first_order_steps", "msl_anneal_steps") if k in algorithm_keys(algorithm)}}


def from_config(algorithm: str, **overrides):
    cfg = get_config("sinusoid", {"algorithm": algorithm, **base_overrides(algorithm), **overrides})
    return learner_from_config(cfg, mlp_apply, mse)


def alternative(key: str, value):
    """Another valid value of config key ``key`` (now ``value``): from its type, or from its registry of choices."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 3
    strings = {"inner_optimizer": next(name for name in INNER_OPTIMIZERS if name != value),
               "head": "body" if value != "body" else "head"}  # the test MLP's two layers
    assert key in strings, f"new string config key {key!r}: say here which other value it can take"
    return strings[key]


def ravel(tree) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def observe(learner) -> tuple[np.ndarray, Callable[[], str]]:
    """What ``learner`` computes on the fixed tasks at meta-step STEP, float64: its meta-gradient and its
    meta-test curve; and a function giving the traced program of both."""
    meta = learner.init(mlp_init(0))
    phase = learner.at_step(STEP)

    def computed(mp):
        grad = jax.grad(lambda mp: phase.meta_loss(mp, TASKS, STEP, key=KEY)[0])(mp)
        return grad, learner.evaluate(mp, TASKS, key=KEY)["loss"]

    return ravel(jax.jit(computed)(meta)), lambda: str(jax.make_jaxpr(computed)(meta))


def check_keys_reach(algorithm: str, monkeypatch) -> None:
    """Every config key ``algorithm`` declares reaches its factory by value (see the module docstring)."""
    factory, received = ALGORITHMS[algorithm], {}

    @functools.wraps(factory)  # the same signature, so the same config keys
    def spy(*args, **kwargs):
        received.update(kwargs)
        return factory(*args, **kwargs)

    monkeypatch.setitem(ALGORITHMS, algorithm, spy)
    default, default_program = observe(from_config(algorithm))
    defaults = Config()
    for key in algorithm_keys(algorithm):
        value = alternative(key, base_overrides(algorithm).get(key, getattr(defaults, key)))
        configured, program = observe(from_config(algorithm, **{key: value}))
        assert received[key] == value, f"{algorithm}: the config's {key}={value!r} reached the factory as " \
                                       f"{received[key]!r}"
        # a different inner_steps changes the length of the meta-test curve
        moved = configured.shape != default.shape or np.linalg.norm(configured - default) > 1e-6 * np.linalg.norm(
            default)
        assert moved or program() != default_program(), (
            f"{algorithm} declares {key} but {key}={value!r} changes nothing it computes or traces")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_declared_key_reaches_the_algorithm(x64, monkeypatch, algorithm):
    check_keys_reach(algorithm, monkeypatch)


def ignores_proximal_lambda(apply_fn, loss_fn, *, inner_steps: int, inner_lr: float | None = None,
                            proximal_lambda: float = 1.0, metrics=None, unroll: int | bool = 1):
    """A broken toy algorithm: it declares proximal_lambda and drops it."""
    return algorithms.maml(apply_fn, loss_fn, inner_steps=inner_steps, inner_lr=inner_lr, metrics=metrics,
                           unroll=unroll)


def test_an_algorithm_that_ignores_a_declared_key_fails_the_contract(x64, monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "broken", ignores_proximal_lambda)
    with pytest.raises(AssertionError, match="declares proximal_lambda but proximal_lambda=3.0 changes nothing"):
        check_keys_reach("broken", monkeypatch)


ANNEALED = [name for name in ALGORITHMS if "first_order_steps" in algorithm_keys(name)]


@pytest.mark.parametrize("algorithm", ANNEALED)
def test_the_host_loop_switches_derivative_order_at_first_order_steps(x64, algorithm):
    """``first_order_steps`` reaches what a run computes, not only the learner: the host loop (``Trainer``, one
    dispatch of up to 4 steps) trains 4 meta-steps from a config whose annealing ends at STEP as training step
    by step with each step's learner (``at_step(t)``: first order before STEP, second order from it) does. A
    loop that trained the whole dispatch in the phase it started in would differ from step STEP on."""
    cfg = get_config("sinusoid", {"algorithm": algorithm, **base_overrides(algorithm)})
    learner = learner_from_config(cfg, mlp_apply, mse)
    optimizer = build(cfg, make_workload(cfg)).optimizer
    steps = 2 * STEP  # as many steps in each phase
    looped = Trainer(learner, optimizer, lambda key, data: TASKS, None, steps_per_dispatch=steps).fit(
        init_state(learner, optimizer, mlp_init(0), jnp.copy(KEY)), steps)  # the loop donates its state
    expected = init_state(learner, optimizer, mlp_init(0), KEY)
    phases = [learner.at_step(t) for t in range(steps)]  # one object per phase
    train_steps = {phase: jax.jit(make_train_step(phase, optimizer)) for phase in phases}
    for phase in phases:
        expected = train_steps[phase](expected, TASKS, None)[0]
    assert int(looped.step) == steps
    np.testing.assert_allclose(ravel(looped.meta_params), ravel(expected.meta_params), rtol=1e-10, atol=1e-14)


def slope(fn, x: np.ndarray, direction: np.ndarray, eps: float = 1e-5) -> float:
    """Central finite difference of ``fn`` at ``x`` along ``direction`` (float64)."""
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


def check_one_step(algorithm: str) -> None:
    """One Adam step (meta_lr 1e-3) from a config changes the meta-loss by ``-lr * D_v L``, where ``v`` is
    Adam's first direction ``g / (|g| + eps)`` for the learner's meta-gradient ``g`` and ``D_v L`` the loss's
    slope along it by finite differences (first-order Taylor; the rest is far below 5%). Second-order
    learners: ``<g, v>`` equals that slope, so ``g`` is the meta-loss's gradient along it."""
    cfg = get_config("sinusoid", {"algorithm": algorithm, **base_overrides(algorithm)})
    learner = learner_from_config(cfg, mlp_apply, mse).at_step(STEP)
    optimizer = build(cfg, make_workload(cfg)).optimizer
    state = init_state(learner, optimizer, mlp_init(0), jax.random.PRNGKey(0))
    flat, unravel = jax.flatten_util.ravel_pytree(state.meta_params)
    loss = jax.jit(lambda v: learner.meta_loss(unravel(v), TASKS, STEP, key=KEY)[0])
    train_step = jax.jit(lambda s: make_train_step(learner, optimizer)(s, TASKS, None))
    new, metrics = train_step(state._replace(step=jnp.asarray(STEP, state.step.dtype)))
    g = jax.jit(jax.grad(loss))(flat)
    direction = g / (jnp.abs(g) + 1e-8)
    rate = slope(lambda v: float(loss(v)), flat, direction)
    before, after = float(loss(flat)), float(loss(ravel(new.meta_params)))
    assert np.all(np.isfinite(np.asarray(g))) and np.isfinite(after)
    np.testing.assert_allclose(float(metrics["meta_loss"]), before, rtol=1e-12)
    assert after - before == pytest.approx(-cfg.meta_lr * rate, rel=MARGIN), (after - before, rate)
    if not learner.first_order:
        np.testing.assert_allclose(float(g @ direction), rate, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_follows_the_meta_gradient(x64, algorithm):
    check_one_step(algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_trains_and_evaluates_on_sinusoid(tmp_path, algorithm):
    annealing = {k: 2 for k in ("first_order_steps", "msl_anneal_steps") if k in algorithm_keys(algorithm)}
    cfg = get_config("sinusoid", {"algorithm": algorithm, "steps": 4, "log_every": 2, "hidden": (8,),
                                  "eval_tasks": 20, "eval_max_steps": 2, **annealing})
    result = train(cfg, str(tmp_path / algorithm), progress=False)
    assert result["tasks"] == 20 and len(result["per_step"]) == 3
    # Four meta-steps barely move the initialisation, so no band on the values (what training reaches is bounded
    # in test_cli.test_train_then_eval_sinusoid, the learners' numbers are checked above in float64): each inner
    # step on the support set lowers the loss on the query set (drawn from the same sine), at meta-test and in
    # meta-training, which a skipped or misdirected inner step would not (ratio 1, or above it)
    before, one, two = result["per_step"]
    assert two < one < before, result["per_step"]
    rows = [json.loads(line) for line in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # pretrain's training objective is the loss at the shared parameters: no inner step
        ratio = row["query_loss"] / row["query_loss_before"]
        assert ratio == 1.0 if algorithm == "pretrain" else ratio < 1.0, row


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
