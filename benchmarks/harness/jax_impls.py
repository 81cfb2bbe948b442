"""The JAX implementations: jmaml itself, and a plain vmap + jit version as the in-framework baseline."""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.harness.base import Grads
from benchmarks.harness.workloads import BenchWorkload, init_params
from jmaml import losses
from jmaml.core.runs import make_runs_step, stack_runs
from jmaml.core.schedules import meta_optimizer
from jmaml.core.step import init_state, make_train_step
from jmaml.core.types import Tasks
from jmaml.experiment import image_model, learner_from_config, program_bytes

RUNS = 8  # runs in one program that JmamlRunsBench times unless told otherwise


def _device() -> str:
    device = jax.devices()[0]
    kind = "" if device.device_kind == device.platform else f" {device.device_kind}"
    return f"{device.platform}{kind} (jax, {jax.device_count()} device(s))"


def flops(*stages: Any) -> float | None:
    """FLOPs of XLA's cost analysis of the first of ``stages`` (compiled or lowered programs) giving one."""
    for stage in stages:
        try:
            analysis = stage.cost_analysis()
        except Exception:  # noqa: BLE001  not every stage or backend has one
            continue
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else None
        value = (analysis or {}).get("flops")
        if value and value > 0:
            return float(value)
    return None


def _to_numpy(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


class _JaxBench:
    """Shared plumbing: compile ``step_fn(carry, tasks) -> (carry, loss, grads)`` ahead of time."""

    def __init__(self, step_fn, carry, batches: list[Tasks], donate: bool):
        self.device = _device()
        self.batches = [jax.device_put(Tasks(*b)) for b in batches]
        jitted = jax.jit(step_fn, donate_argnums=0 if donate else ())
        start = time.perf_counter()
        self.compiled = jitted.lower(carry, self.batches[0]).compile()
        self.compile_s = time.perf_counter() - start
        self.flops = flops(self.compiled)
        self.program_bytes = program_bytes(self.compiled)
        self.carry = carry

    def step(self, index: int) -> float:
        self.carry, loss, _ = self.compiled(self.carry, self.batches[index % len(self.batches)])
        return float(jax.block_until_ready(loss))

    def step_on(self, tasks: Tasks) -> tuple[float, Grads]:
        self.carry, loss, grads = self.compiled(self.carry, jax.device_put(Tasks(*tasks)))
        return float(loss), _to_numpy(grads)

    def peak_bytes(self) -> int | None:
        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")


def _last_gradient() -> optax.GradientTransformation:
    """Passes updates through unchanged and keeps the last ones in its state (the meta-gradient,
    placed first in a chain), so the step can hand it out without computing it twice."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda updates, state, params=None: (updates, updates))


def jmaml_step(workload: BenchWorkload, options: dict[str, Any]):
    """jmaml's train step as ``jmaml train`` builds it from the workload's config with ``options``:
    ``(learner, optimizer, step_fn)``, ``step_fn(state, tasks) -> (state, meta-loss, meta-gradient)``."""
    cfg = workload.with_options(options)
    _, apply = image_model(cfg, workload.variant)
    learner = learner_from_config(cfg, apply, losses.cross_entropy)
    optimizer = optax.chain(_last_gradient(), meta_optimizer(cfg.meta_lr, cfg.steps, cfg.lr_schedule,
                                                             update=cfg.meta_update))
    train_step = make_train_step(learner, optimizer)

    def step_fn(state, tasks, data=None):
        state, metrics = train_step(state, tasks)
        return state, metrics["meta_loss"], state.opt_state[0]["params"]

    return learner, optimizer, step_fn


class JmamlBench(_JaxBench):
    """jmaml's own train step, as ``jmaml train`` builds it from the workload's config with
    ``options`` (config keys such as ``conv``, ``precision``, ``unroll``) set on top: the config's
    learner and ``make_train_step``, jitted with the state donated.

    Only the meta-loss (and, for the equivalence test, the meta-gradient) leaves the program,
    as in a training loop that logs the loss.
    """

    def __init__(self, workload: BenchWorkload, params: Grads, batches: list[Tasks], options: dict[str, Any]):
        learner, optimizer, step_fn = jmaml_step(workload, options)
        state = init_state(learner, optimizer, jax.tree.map(jnp.asarray, params), jax.random.PRNGKey(0))
        super().__init__(step_fn, state, batches, donate=True)


class JmamlRunsBench(_JaxBench):
    """``options["runs"]`` (default :data:`RUNS`) jmaml runs in one program (:func:`jmaml.make_runs_step`):
    jmaml's train step vmapped over stacked states; run ``r`` starts from the initial weights of seed ``r``
    (run 0 from the shared ones) and trains on its own meta-batch (the prepared batches, rotated by ``r``).

    The meta-loss and meta-gradient it hands out are run 0's, on the inputs every implementation sees,
    so the gradient check compares run 0 with jmaml alone; its throughput counts every run's tasks.
    """

    def __init__(self, workload: BenchWorkload, params: Grads, batches: list[Tasks], options: dict[str, Any]):
        options = dict(options)
        self.runs, self.inputs = options.pop("runs", RUNS), batches
        learner, optimizer, step_fn = jmaml_step(workload, options)
        states = stack_runs([init_state(learner, optimizer, jax.tree.map(
            jnp.asarray, params if r == 0 else init_params(workload, seed=r)), jax.random.PRNGKey(r))
            for r in range(self.runs)])
        runs_step = make_runs_step(lambda h: step_fn)

        def many(states, tasks):
            states, loss, grads = runs_step(states, {}, tasks)
            return states, loss[0], jax.tree.map(lambda g: g[0], grads)

        super().__init__(many, states, [self.with_runs(b, i) for i, b in enumerate(batches)], donate=True)

    def with_runs(self, first: Tasks, index: int = 0) -> Tasks:
        """A meta-batch per run: run 0's is ``first``, run ``r``'s the prepared batch ``r`` after ``index``."""
        others = [self.inputs[(index + r) % len(self.inputs)] for r in range(1, self.runs)]
        return stack_runs([Tasks(*map(np.asarray, b)) for b in [first, *others]])

    def step_on(self, tasks: Tasks) -> tuple[float, Grads]:
        return super().step_on(self.with_runs(Tasks(*tasks)))


class _BatchNorm(nn.Module):
    """Batch-statistics BatchNorm, written out (flax's BatchNorm would keep running averages)."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        mean = x.mean(axis=(0, 1, 2))
        var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
        return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


class PlainConv4(nn.Module):
    """Conv4 the straightforward way: ``nn.Conv`` with SAME padding, no lowering tricks."""

    ways: int
    variant: str
    filters: int

    @nn.compact
    def __call__(self, x):
        omniglot = self.variant == "omniglot"
        for i in range(4):
            x = nn.Conv(self.filters, (3, 3), strides=2 if omniglot else 1, padding="SAME",
                        name=f"conv{i}")(x)
            x = nn.relu(_BatchNorm(name=f"norm{i}")(x))
            if not omniglot:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.mean(axis=(1, 2)) if omniglot else x.reshape(x.shape[0], -1)
        return nn.Dense(self.ways, name="head")(x)


def plain_meta_loss(workload: BenchWorkload):
    """``meta_loss(params, tasks)``: a Python loop of inner steps per task, ``vmap`` over tasks."""
    model = PlainConv4(workload.ways, workload.variant, workload.filters)

    def loss(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def task_loss(params, xs, ys, xq, yq):
        fast = params
        for _ in range(workload.inner_steps):
            grads = jax.grad(loss)(fast, xs, ys)
            fast = jax.tree.map(lambda p, g: p - workload.inner_lr * g, fast, grads)
        return loss(fast, xq, yq)

    def meta_loss(params, tasks):
        return jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, *tasks).mean()

    return meta_loss


class PlainJaxBench(_JaxBench):
    """The in-framework baseline: ``value_and_grad`` of the plain meta-loss, optax Adam, ``jit``."""

    def __init__(self, workload: BenchWorkload, params: Grads, batches: list[Tasks], options: dict[str, Any]):
        del options
        self.meta_loss = plain_meta_loss(workload)
        optimizer = optax.adam(workload.meta_lr)
        params = jax.tree.map(jnp.asarray, params)

        def step_fn(carry, tasks):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(self.meta_loss)(params, tasks)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss, grads

        super().__init__(step_fn, (params, optimizer.init(params)), batches, donate=False)
