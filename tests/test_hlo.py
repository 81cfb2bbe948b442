"""The HLO reader counts what a program holds (checked by hand); the first inner step runs at the shared
meta-parameters: one ordinary convolution over all tasks' support images (not a convolution grouped by task),
and the same meta-gradient as an explicit per-task loop."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import pytest

import jmaml
from benchmarks.harness.hlo import (
    collective_bytes,
    convolutions,
    counts,
    cudnn_convolutions,
    executed,
    gpu_counts,
    gpu_kind,
    launches,
    parse,
    shape_bytes,
)
from jmaml import losses
from jmaml.core.types import Tasks
from jmaml.models import Conv4, functional
from jmaml.models.conv import resolve_impl

TASKS, WAYS, SHOTS, QUERIES, SIDE, FILTERS = 3, 2, 1, 2, 8, 2


def test_hlo_bytes_counted_by_hand():
    assert shape_bytes("f32[64,3,3]{2,1,0}") == 64 * 9 * 4
    assert shape_bytes("(f32[16]{0}, bf16[2,8]{1,0}, /*index=2*/f32[], s32[])") == 16 * 4 + 16 * 2 + 4 + 4
    text = "\n".join([
        "ENTRY %main {",
        "  %p = f32[10]{0} parameter(0)",
        "  %all-reduce.3 = (f32[10]{0}, f32[]) all-reduce(f32[10]{0} %p, f32[] %c), replica_groups={{0,1}}",
        "  %ars = f32[5,2]{1,0} all-reduce-start(f32[5,2]{1,0} %q), replica_groups={{0,1}}",
        "  %ard = f32[5,2]{1,0} all-reduce-done(f32[5,2]{1,0} %ars)",  # the other half of the same op
        "  ROOT %ag = f32[4,10]{1,0} all-gather(f32[2,10]{1,0} %r), dimensions={0}",
        "  %get = f32[10]{0} get-tuple-element((f32[10]{0}, f32[]) %all-reduce.3), index=0",
        "}"])
    module = parse(text)
    assert collective_bytes(module) == {"all_reduce_ops": 2, "all_reduce_bytes": 44 + 40,
                                        "other_collective_ops": 1, "other_collective_bytes": 160}
    assert [i[0] for i in module["computations"]["main"]] == ["p", "all-reduce.3", "ars", "ard", "ag", "get"]
    assert module["computations"]["main"][5][3] == ["all-reduce.3"]  # the operand of a tuple type
    assert module["shapes"]["ag"] == (4, 10) and module["shapes"]["all-reduce.3"] is None  # a tuple has no dims
    assert counts(module)["kernels"] == 4  # the collectives; not the parameter nor get-tuple-element


def tiny_problem(conv, steps, dtype=jnp.float32):
    """Conv4 with 2 filters on 8x8 images, 3 tasks of 2-way 1-shot, ``steps`` inner SGD steps."""
    init, apply = functional(Conv4(WAYS, filters=FILTERS, conv=conv))
    params = jax.tree.map(lambda p: p.astype(dtype), init(jax.random.PRNGKey(0), jnp.zeros((1, SIDE, SIDE, 1))))
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    labels = lambda n: jnp.tile(jnp.repeat(jnp.arange(WAYS), n), (TASKS, 1))  # noqa: E731
    tasks = Tasks(jax.random.normal(keys[0], (TASKS, WAYS * SHOTS, SIDE, SIDE, 1), dtype), labels(SHOTS),
                  jax.random.normal(keys[1], (TASKS, WAYS * QUERIES, SIDE, SIDE, 1), dtype), labels(QUERIES))
    learner = jmaml.maml(apply, losses.cross_entropy, inner_lr=0.4, inner_steps=steps)
    return learner, learner.init(params), tasks


def test_first_inner_forward_is_one_ordinary_convolution_over_all_tasks():
    learner, meta_params, tasks = tiny_problem("xla", steps=2)
    grad = jax.jit(jax.grad(lambda mp: learner.meta_loss(mp, tasks)[0]))
    hlo = grad.lower(meta_params).compile().as_text()
    forward = [c for c in convolutions(parse(hlo)) if c.forward and c.size("out", "0") == SIDE // 2]
    support = TASKS * WAYS * SHOTS
    kernel = meta_params["params"]["conv0"]["kernel"].shape
    ordinary = [c for c in forward if c.feature_group_count == 1 and c.size("lhs", "b") == support
                and c.rhs == kernel and c.out == (support, SIDE // 2, SIDE // 2, FILTERS)]
    assert ordinary, f"no ordinary first-layer convolution over all {support} support images: {forward}"
    # the adapted parameters differ per task: the query pass is grouped by task, with the task's own images
    assert any(c.feature_group_count == TASKS and c.size("lhs", "b") == WAYS * QUERIES for c in forward)


def explicit_meta_loss(learner, meta_params, tasks):
    """Second-order MAML written out: a Python loop of SGD steps on each task, the mean query loss."""
    def one(xs, ys, xq, yq):
        params = meta_params["params"]
        for _ in range(learner.inner_steps):
            grads = jax.grad(lambda p: learner.loss_fn(learner.apply_fn(p, xs), ys))(params)
            params = jax.tree.map(lambda p, g: p - 0.4 * g, params, grads)
        return learner.loss_fn(learner.apply_fn(params, xq), yq)

    return jnp.mean(jnp.stack([one(*(a[i] for a in tasks)) for i in range(TASKS)]))


@pytest.mark.usefixtures("x64")
def test_meta_gradient_equals_explicit_loop():
    """Step 0 outside the scan, steps 1 and 2 in it: the same second-order meta-gradient."""
    learner, meta_params, tasks = tiny_problem("xla", 3, jnp.float64)
    loss, grads = jax.jit(jax.value_and_grad(lambda mp: learner.meta_loss(mp, tasks)[0]))(meta_params)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda mp: explicit_meta_loss(learner, mp, tasks)))(
        meta_params)
    assert grads["params"]["conv0"]["kernel"].dtype == jnp.float64
    chex.assert_trees_all_close((loss, grads), (ref_loss, ref_grads), rtol=1e-10, atol=1e-12)


# A GPU module written by hand: the entry runs a multi-output fusion, a cuDNN forward convolution, a copy,
# an asynchronous copy and a while loop of 4 iterations (known_trip_count); the loop body runs a grouped
# cuDNN convolution whose window (13x13) is larger than the 3x3 kernel, a GEMM fusion, a loop fusion and a
# copy. Tuple types hold /*index=N*/ comments, as XLA prints them.
GPU_MODULE = (Path(__file__).parent / "hlo" / "gpu_module.hlo.txt").read_text()


def test_gpu_counts_by_hand():
    """Launches: the entry's fusion, convolution, copy and copy-start (4), and the loop body's
    convolution, two fusions and copy 4 times each (16): 20, of them 8 static."""
    module = parse(GPU_MODULE)
    assert module["entry"] == "main"
    assert [i[1] for i in module["computations"]["main"]][:2] == ["parameter", "fusion"]  # the tuple-typed fusion
    assert "while" in [i[1] for i in module["computations"]["main"]]
    assert module["computations"]["main"][1][3] == ["p", "p"]
    assert gpu_counts(module) == {"launches": 20, "static_launches": 8, "cudnn": 5, "grouped": 4,
                                  "large_window": 4, "gemm": 4, "copies": 6, "loops": 1}
    convs = cudnn_convolutions(module)
    assert [(c.window, c.feature_group_count, c.times, c.grouped) for c in convs] == [
        ((3, 3), 1, 1, False), ((13, 13), 32, 4, True)]
    assert [gpu_kind(i) for i, _ in executed(module) if launches(i)] == [
        "fusion", "cudnn convolution", "copy", "copy", "cudnn convolution", "gemm", "fusion", "copy"]
    # the CPU report's static count takes every scheduled computation once (the entry, body and condition)
    assert counts(module)["kernels"] == 6 + 4 + 1


def test_gpu_program_report_runs_on_the_cpu(capsys):
    """The deviceless report's tool, compiled for this machine's CPU (no CUDA plugin needed) at quick size."""
    from benchmarks import gpu_program

    assert gpu_program.main(["--target", "cpu", "--quick", "--workloads", "omniglot-5w1s",
                             "--only", "default", "--breakdown"]) == 0
    out = capsys.readouterr()
    row = [line for line in out.out.splitlines() if line.startswith("| omniglot-5w1s-quick | default |")]
    assert row and "by kind:" in out.err
    assert gpu_program.program_options("default", "gpu")["conv"] == resolve_impl("auto", "gpu")
    assert gpu_program.program_options("conv=xla", "gpu")["conv"] == "xla"


def test_gpu_target_without_cuda_plugin_is_refused_cleanly(capsys):
    import importlib.util

    from benchmarks import gpu_program

    if importlib.util.find_spec("jax_plugins") and importlib.util.find_spec("jax_plugins.xla_cuda12"):
        pytest.skip("the CUDA plugin is installed: compiling for the GPU target works here")
    assert gpu_program.main(["--target", "h200", "--quick", "--workloads", "omniglot-5w1s"]) == 2
    assert "CUDA plugin" in capsys.readouterr().err
