"""Task sampling inside the train step: its PRNG key, scan_steps, and a run reproducible from its seed."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse

import jmaml
from jmaml.core.step import init_state, make_train_step, meta_gradient, scan_steps
from jmaml.data import sinusoid
from jmaml.experiment.assembly import build
from jmaml.experiment.configs import get_config
from jmaml.experiment.training import train
from jmaml.experiment.workloads import make_workload

META_BATCH, SHOTS, QUERIES = 3, 4, 5
# inner_batch < SHOTS: the inner loop draws minibatches from the task key, so the step's task_key matters too
LEARNER = jmaml.reptile(mlp_apply, mse, inner_steps=2, inner_lr=0.05, inner_batch=2)
OPTIMIZER = optax.adam(0.01)


def sample(key, data):
    """The sinusoid sampler; ``data`` (a scalar) scales the targets, so that a step which drops ``data``
    shows."""
    tasks = sinusoid.sample_tasks(key, META_BATCH, SHOTS, QUERIES, dtype=jnp.float64)
    return tasks._replace(y_support=tasks.y_support * data, y_query=tasks.y_query * data)


STEP = make_train_step(LEARNER, OPTIMIZER, sample)
JIT_STEP = jax.jit(STEP)
SCAN = jax.jit(scan_steps(STEP, 3))
DATA = 1.5


@pytest.fixture
def state(x64):
    return init_state(LEARNER, OPTIMIZER, mlp_init(0, d_in=1), jax.random.PRNGKey(7))


@jax.jit
def by_hand(state, data=DATA):
    """One step as make_train_step documents it: split the key in three, sample with the second,
    meta-gradient with the third, the first is the new key."""
    next_key, sample_key, task_key = jax.random.split(state.key, 3)
    tasks = sample(sample_key, data)
    (loss, aux), grads = meta_gradient(LEARNER, state.meta_params, tasks, state.step, key=task_key)
    updates, opt_state = OPTIMIZER.update(grads, state.opt_state, state.meta_params)
    return (jmaml.TrainState(state.step + 1, optax.apply_updates(state.meta_params, updates), opt_state, next_key),
            {"meta_loss": loss, **{k: jnp.mean(v) for k, v in aux.items()}}, tasks)


def test_key_advances_and_tasks_come_from_the_documented_sample_key(state):
    new, metrics = JIT_STEP(state, None, DATA)
    want, want_metrics, tasks = by_hand(state)
    np.testing.assert_array_equal(new.key, jax.random.split(state.key, 3)[0])
    assert int(new.step) == 1
    chex.assert_trees_all_close(new.meta_params, want.meta_params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(metrics, want_metrics, rtol=1e-12, atol=1e-14)
    # the same step with the documented tasks passed in gives the same state: the step sampled exactly these
    given, given_metrics = JIT_STEP(state, tasks)
    chex.assert_trees_all_close(given.meta_params, new.meta_params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(given_metrics, metrics, rtol=1e-12, atol=1e-14)


def test_consecutive_steps_draw_different_tasks(state):
    """With a frozen meta-optimizer, the metrics depend on the sampled tasks only: they must change from step
    to step, and step 2 must have sampled from the key step 1 left."""
    frozen = jax.jit(make_train_step(LEARNER, optax.sgd(0.0), sample))
    s1, m1 = frozen(state, None, DATA)
    s2, m2 = frozen(s1, None, DATA)
    assert abs(float(m1["query_loss_before"]) - float(m2["query_loss_before"])) > 1e-3
    chex.assert_trees_all_close(s2.meta_params, state.meta_params)
    tasks2 = sample(jax.random.split(s1.key, 3)[1], DATA)
    tasks1 = sample(jax.random.split(state.key, 3)[1], DATA)
    assert not np.allclose(tasks1.x_support, tasks2.x_support)
    _, given = frozen(s1, tasks2)
    chex.assert_trees_all_close(given, m2, rtol=1e-12, atol=1e-14)


def test_scan_steps_equals_single_steps(state):
    n = 3  # as SCAN
    scanned, stacked = SCAN(state, DATA)
    single, rows = state, []
    for _ in range(n):
        single, metrics = JIT_STEP(single, None, DATA)
        rows.append(metrics)
    np.testing.assert_array_equal(scanned.key, single.key)
    assert int(scanned.step) == int(single.step) == n
    chex.assert_trees_all_close(scanned.meta_params, single.meta_params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(scanned.opt_state, single.opt_state, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(stacked, jax.tree.map(lambda *r: jnp.stack(r), *rows), rtol=1e-12, atol=1e-14)
    # data reaches the sampler through scan_steps
    other, _ = SCAN(state, 2 * DATA)
    assert not np.allclose(jax.flatten_util.ravel_pytree(other.meta_params)[0],
                           jax.flatten_util.ravel_pytree(scanned.meta_params)[0])


def _config(seed):
    return get_config("sinusoid", {"steps": 4, "log_every": 2, "hidden": (8,), "meta_batch": 4, "eval_tasks": 8,
                                   "eval_max_steps": 1, "seed": seed, "checkpoint_minutes": 0.0})


def _run(tmp_path, name, seed):
    out = tmp_path / name
    train(_config(seed), str(out), progress=False)
    metrics = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "steps_per_second")}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((out / "eval.json").read_text())
    result.pop("train_seconds")
    return metrics, result


def test_a_run_is_reproducible_from_its_seed(tmp_path):
    first = _run(tmp_path, "a", seed=3)
    assert [row["step"] for row in first[0]] == [2, 4]
    assert first == _run(tmp_path, "b", seed=3)
    # and the seed is what it is reproducible from: another seed starts elsewhere
    states = [build(_config(seed), make_workload(_config(seed))).init() for seed in (3, 4)]
    assert not np.array_equal(states[0].key, states[1].key)
    assert not np.allclose(*(jax.flatten_util.ravel_pytree(s.meta_params)[0] for s in states))
