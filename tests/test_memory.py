"""Memory options: rematerialised inner steps and a chunked meta-batch compute the same gradient."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmaml
from jmaml import evaluation, losses
from jmaml.data import sinusoid

pytestmark = pytest.mark.usefixtures("x64")


def mlp_problem(steps, tasks=4, support=8, width=16):
    init, apply = jmaml.functional(jmaml.MLP((width, width), 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), init(jax.random.PRNGKey(0), jnp.zeros((1, 1))))
    batch = sinusoid.sample_tasks(jax.random.PRNGKey(1), tasks, support, 8, dtype=jnp.float64)
    learner = jmaml.maml(apply, losses.mse, inner_lr=0.01, inner_steps=steps)
    return learner, learner.init(params), batch


def grads_of(learner, meta_params, batch, chunks=1):
    fn = jax.jit(lambda mp: jmaml.meta_gradient(learner, mp, batch, chunks=chunks))
    return fn(meta_params)


def test_remat_gives_the_same_meta_gradient():
    learner, meta_params, batch = mlp_problem(steps=3)
    (l1, a1), g1 = grads_of(learner, meta_params, batch)
    (l2, a2), g2 = grads_of(dataclasses.replace(learner, remat=True), meta_params, batch)
    chex.assert_trees_all_close((l1, a1, g1), (l2, a2, g2), rtol=1e-10, atol=1e-13)


def test_chunked_meta_batch_gives_the_same_meta_gradient():
    learner, meta_params, batch = mlp_problem(steps=2, tasks=8)
    (l1, a1), g1 = grads_of(learner, meta_params, batch)
    # per-task aux in task order, against each task's meta-loss alone (an explicit loop)
    alone = jax.jit(lambda mp, task: learner.meta_loss(mp, task)[1])
    for i in range(8):
        task = jax.tree.map(lambda a: a[i:i + 1], batch)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], a1),
                                    jax.tree.map(lambda a: a[0], alone(meta_params, task)), rtol=1e-10, atol=1e-13)
    assert len({float(v) for v in a1["query_loss"]}) == 8  # distinct per task, so the order is checked
    for chunks in (2, 4):
        (l2, a2), g2 = grads_of(learner, meta_params, batch, chunks=chunks)
        chex.assert_trees_all_close((l1, a1, g1), (l2, a2, g2), rtol=1e-10, atol=1e-13)
    with pytest.raises(jmaml.JmamlError, match="meta_chunks=3 must divide the meta-batch of 8 tasks"):
        jmaml.meta_gradient(learner, meta_params, batch, chunks=3)


class ChunkRecorder:
    """A learner for ``meta_gradient`` (it calls only ``meta_loss``) whose aux also returns, for each task, the
    indices of all tasks of its chunk and the task's first input, to see how the meta-batch was split."""

    def __init__(self, learner):
        self.learner = learner

    def meta_loss(self, meta_params, tasks, meta_step=0, *, key=None, task_ids=None):
        loss, aux = self.learner.meta_loss(meta_params, tasks, meta_step, key=key, task_ids=task_ids)
        size = task_ids.shape[0]
        return loss, {**aux, "chunk": jnp.broadcast_to(task_ids, (size, size)), "x": tasks.x_support[:, 0, 0]}


@pytest.mark.parametrize("chunks", [2, 4])
def test_meta_chunks_are_interleaved(chunks):
    """Chunk c holds tasks c, c + chunks, c + 2 * chunks, ... (each chunk an equal share of every contiguous
    block of the meta-batch, e.g. every device's shard), and the per-task aux comes back in task order."""
    learner, meta_params, batch = mlp_problem(steps=1, tasks=8)
    (_, aux), _ = jmaml.meta_gradient(ChunkRecorder(learner), meta_params, batch, chunks=chunks)
    expected = [[i % chunks + chunks * j for j in range(8 // chunks)] for i in range(8)]
    np.testing.assert_array_equal(aux["chunk"], expected)
    np.testing.assert_array_equal(aux["x"], batch.x_support[:, 0, 0])


def test_task_keys_do_not_depend_on_chunks():
    """Reptile's minibatches are drawn from fold_in(key, task index in the whole meta-batch)."""
    learner, meta_params, batch = mlp_problem(steps=3)
    reptile = jmaml.reptile(learner.apply_fn, learner.loss_fn, inner_lr=0.01, inner_steps=3, inner_batch=3)
    key = jax.random.PRNGKey(4)
    one = jax.jit(lambda mp: jmaml.meta_gradient(reptile, mp, batch, key=key))(meta_params)
    two = jax.jit(lambda mp: jmaml.meta_gradient(reptile, mp, batch, key=key, chunks=2))(meta_params)
    chex.assert_trees_all_close(one, two, rtol=1e-10, atol=1e-13)
    other = jax.jit(lambda mp: jmaml.meta_gradient(reptile, mp, batch, key=jax.random.PRNGKey(5)))(meta_params)
    assert not np.allclose(one[0][0], other[0][0])


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_chunked_meta_test_scores_the_same_tasks(algorithm):
    """meta_test in 2 or 4 chunks equals it in one piece, per step (means and intervals), in float64;
    Reptile's inner minibatches make each task's key matter, which must follow the task, not its chunk."""
    learner, meta_params, _ = mlp_problem(steps=2)
    if algorithm == "reptile":
        learner = jmaml.reptile(learner.apply_fn, learner.loss_fn, inner_lr=0.01, inner_steps=2, inner_batch=3)

    def sample(key, data):
        return sinusoid.sample_tasks(key, 8, 8, 8, dtype=jnp.float64)

    def run(chunks):
        return evaluation.meta_test(learner, meta_params, sample, key=jax.random.PRNGKey(3), num_tasks=16, batch=8,
                                    max_steps=3, test_steps=2, metric="mse", chunks=chunks)

    one = run(1)
    assert len(set(one["per_step"])) == 4  # the steps score differently: a real comparison
    for chunks in (2, 4):
        got = run(chunks)
        np.testing.assert_allclose(got["per_step"], one["per_step"], rtol=1e-12)
        np.testing.assert_allclose(got["per_step_ci95"], one["per_step_ci95"], rtol=1e-10)


def temp_bytes(learner, meta_params, batch):
    fn = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, batch)[0]))
    return fn.lower(meta_params).compile().memory_analysis().temp_size_in_bytes


def test_remat_memory_grows_far_slower_with_inner_steps():
    """Compiled temporary memory against the number of inner steps K, with and without remat.

    Without remat the backward pass stores every step's activations; with remat only the
    parameters between steps: memory still grows with K (measured on XLA:CPU: about 4.2 / 5.0 /
    8.4 MB at K = 4 / 16 / 64, against 11.0 / 33.9 / 125.6 MB), at about one copy of the
    parameters per task and step.
    """
    # wide layers and many support points, so that activations, not parameters, fill memory
    tasks, support, width = 2, 512, 64
    plain, remat = {}, {}
    for k in (4, 64):
        learner, meta_params, batch = mlp_problem(steps=k, tasks=tasks, support=support, width=width)
        plain[k] = temp_bytes(learner, meta_params, batch)
        remat[k] = temp_bytes(dataclasses.replace(learner, remat=True), meta_params, batch)
    slope_plain, slope_remat = ((m[64] - m[4]) / 60 for m in (plain, remat))
    param_bytes = 8 * sum(x.size for x in jax.tree.leaves(meta_params["params"]))
    assert slope_plain > 10 * slope_remat, (plain, remat)
    assert 0 <= slope_remat <= 1.5 * tasks * param_bytes, (slope_remat, tasks * param_bytes)
