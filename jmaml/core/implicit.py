"""Implicit differentiation of the inner loop (iMAML): conjugate gradient on Hessian-vector products."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jmaml.core.types import Params, PyTree
from jmaml.errors import check_positive


def _dot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(alpha: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: alpha * a + b, x, y)


def cg_solve(matvec: Callable[[PyTree], PyTree], b: PyTree, iterations: int) -> PyTree:
    """Conjugate gradient for ``matvec(x) = b`` over pytrees, a fixed number of iterations from 0.

    A fixed count keeps the solve one ``fori_loop`` of constant memory; an iteration whose
    search direction has vanished (converged) leaves the solution unchanged.
    """
    check_positive("cg_steps", iterations, integer=True)

    def safe_div(num, den):
        ok = den != 0
        return jnp.where(ok, num / jnp.where(ok, den, 1), 0)

    def body(_, carry):
        x, r, p, rs = carry
        ap = matvec(p)
        alpha = safe_div(rs, _dot(p, ap))
        x, r = _axpy(alpha, p, x), _axpy(-alpha, ap, r)
        rs_new = _dot(r, r)
        return x, r, _axpy(safe_div(rs_new, rs), p, r), rs_new

    x0 = jax.tree.map(jnp.zeros_like, b)
    return lax.fori_loop(0, iterations, body, (x0, b, b, _dot(b, b)))[0]


def _zero_cotangent(x: jax.Array):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def implicit_adapt(adapt: Callable[[PyTree, jax.Array, jax.Array], Params],
                   support_loss: Callable[[Params, jax.Array, jax.Array], jax.Array],
                   lam: float, cg_steps: int) -> Callable[[PyTree, jax.Array, jax.Array], Params]:
    """Wraps a proximal adaptation so that its vector-Jacobian product is the implicit one.

    ``adapt(meta_params, x, y)`` approximately solves
    ``phi* = argmin_phi support_loss(phi, x, y) + lam / 2 ||phi - theta||^2`` with
    ``theta = meta_params["params"]``. Its derivative is then ``(I + H / lam)^{-1}``, with ``H``
    the Hessian of the support loss at ``phi*``: the backward pass solves
    ``(I + H / lam) v = g`` by ``cg_steps`` conjugate-gradient iterations on Hessian-vector
    products and returns ``v`` for ``theta`` (zero for everything else). The forward pass runs
    the inner loop with no derivative, so memory does not grow with the number of inner steps.

    References:
      Rajeswaran, Finn, Kakade & Levine (2019). Meta-Learning with Implicit Gradients.
      NeurIPS, Lemma 1 and Algorithm 2. https://arxiv.org/abs/1909.04630
    """
    check_positive("proximal_lambda", lam)
    check_positive("cg_steps", cg_steps, integer=True)

    @jax.custom_vjp
    def solve(meta_params, x, y):
        return adapt(lax.stop_gradient(meta_params), x, y)

    def forward(meta_params, x, y):
        phi = solve(meta_params, x, y)
        return phi, (phi, meta_params, x, y)

    def backward(residuals, g):
        phi, meta_params, x, y = residuals
        grad_fn = jax.grad(support_loss)

        def matvec(v):
            hv = jax.jvp(lambda p: grad_fn(p, x, y), (phi,), (v,))[1]
            return jax.tree.map(lambda a, b: a + b / lam, v, hv)

        cotangent = jax.tree.map(_zero_cotangent, meta_params)
        cotangent["params"] = cg_solve(matvec, g, cg_steps)
        return cotangent, _zero_cotangent(x), _zero_cotangent(y)

    solve.defvjp(forward, backward)
    return solve
