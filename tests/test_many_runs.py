"""Many runs in one program (jmaml.core.runs): each run of a vmapped group follows, in float64, the trajectory
of the same run trained alone with make_train_step (its own seed, rates and task stream)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from family_helpers import mlp_apply, mlp_init, mse

import jmaml
from jmaml.core.runs import make_runs_step, stack_runs, unstack_runs
from jmaml.data import sinusoid

pytestmark = pytest.mark.usefixtures("x64")

RUNS = [{"seed": 0, "inner_lr": 0.01, "meta_lr": 1e-3}, {"seed": 1, "inner_lr": 0.03, "meta_lr": 3e-3}]
STEPS, DATA = 3, 1.5
# MAML++ switches from first to second order after 2 meta-steps (host side, one program per phase) and anneals
# its multi-step loss over 3; Reptile takes minibatches of 2 of the 4 support examples, drawn from each run's keys.
FACTORIES = {
    "maml": lambda h: jmaml.maml(mlp_apply, mse, inner_lr=h["inner_lr"], inner_steps=2),
    "meta_sgd": lambda h: jmaml.meta_sgd(mlp_apply, mse, inner_lr=h["inner_lr"], inner_steps=2),
    "maml_pp": lambda h: jmaml.maml_pp(mlp_apply, mse, inner_lr=h["inner_lr"], inner_steps=2, first_order_steps=2,
                                       msl_anneal_steps=3),
    "reptile": lambda h: jmaml.reptile(mlp_apply, mse, inner_lr=h["inner_lr"], inner_steps=2, inner_batch=2),
}


def sample(key, data):
    """Four sinusoid tasks of 4 support and 5 query points; ``data`` scales the targets (it is shared)."""
    tasks = sinusoid.sample_tasks(key, 4, 4, 5, dtype=jnp.float64)
    return tasks._replace(y_support=tasks.y_support * data, y_query=tasks.y_query * data)


def initial_state(name, run):
    learner = FACTORIES[name](run)
    return jmaml.init_state(learner, optax.adam(run["meta_lr"]), mlp_init(run["seed"], d_in=1),
                            jax.random.PRNGKey(run["seed"]))


def trained_alone(name, run):
    """``STEPS`` meta-steps of one run: make_train_step of its learner at each step (MAML++'s two phases)."""
    learner, optimizer, state = FACTORIES[name](run), optax.adam(run["meta_lr"]), initial_state(name, run)
    steps = {}
    for t in range(STEPS):
        phase = learner.at_step(t)
        if phase not in steps:
            steps[phase] = jax.jit(jmaml.make_train_step(phase, optimizer, sample))
        state, metrics = steps[phase](state, None, DATA)
    return state, metrics


@pytest.mark.parametrize("name", FACTORIES)
def test_runs_in_one_program_equal_the_runs_alone(name):
    hparams = {key: jnp.array([run[key] for run in RUNS]) for key in ("inner_lr", "meta_lr")}
    states = stack_runs([initial_state(name, run) for run in RUNS])
    programs = {}
    for t in range(STEPS):
        phase = t >= 2 if name == "maml_pp" else 0  # the host-side switch, shared by the runs (one step count)
        if phase not in programs:
            programs[phase] = jax.jit(make_runs_step(lambda h, t=t: jmaml.make_train_step(
                FACTORIES[name](h).at_step(t), optax.adam(h["meta_lr"]), sample)))
        states, metrics = programs[phase](states, hparams, None, DATA)
    assert metrics["meta_loss"].shape == (len(RUNS),)
    for i, (together, run) in enumerate(zip(unstack_runs(states), RUNS)):
        alone, alone_metrics = trained_alone(name, run)
        chex.assert_trees_all_close(together, alone, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(metrics["meta_loss"][i], alone_metrics["meta_loss"], rtol=1e-12)
    # and the runs differ: their seeds, rates and task streams are their own
    first, second = (jax.flatten_util.ravel_pytree(s.meta_params)[0] for s in unstack_runs(states)[:2])
    assert not np.allclose(first, second)


def test_bad_groups_are_one_clear_error():
    run = initial_state("maml", RUNS[0])
    with pytest.raises(jmaml.JmamlError, match="at least one run"):
        stack_runs([])
    other = jmaml.init_state(FACTORIES["maml"](RUNS[0]), optax.adam(1e-3), mlp_init(0, d_in=1, hidden=6),
                             jax.random.PRNGKey(0))
    with pytest.raises(jmaml.JmamlError, match=r"run 1 has a leaf of shape \(6,\) float64 where run 0 has \(5,\)"):
        stack_runs([run, other])
    step = make_runs_step(lambda h: jmaml.make_train_step(FACTORIES["maml"](h), optax.adam(h["meta_lr"]), sample))
    states = stack_runs([run, run])
    with pytest.raises(jmaml.JmamlError, match=r"'inner_lr' needs one value per run, shape \(2,\), got \(3,\)"):
        step(states, {"inner_lr": jnp.ones(3), "meta_lr": jnp.ones(2)}, None, DATA)
    with pytest.raises(jmaml.JmamlError, match="'meta_lr' must be finite in every run"):
        step(states, {"inner_lr": jnp.ones(2), "meta_lr": jnp.array([1e-3, jnp.nan])}, None, DATA)
    with pytest.raises(jmaml.JmamlError, match="stacked on a run axis"):
        step(run, {"inner_lr": jnp.ones(2), "meta_lr": jnp.ones(2)}, None, DATA)
