"""Curvature of a loss at a point: Hessian-vector products and the top eigenvalue (PyHessian).

`hvp(loss_fn, params, v)` is forward-over-reverse differentiation (`jvp` of `grad`), so it costs
about two gradient evaluations and never forms the Hessian. `top_eigenvalue` runs power iteration
on it, which converges to the eigenvalue of largest magnitude (for a trained network at a
minimum, the largest positive one). Works on any pytree of parameters and any
`loss_fn(params) -> scalar` (close over the data and any model state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """The Hessian of `loss_fn` at `params` times `v` (forward-over-reverse).

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        v: a pytree shaped like `params`.

    Returns:
        H v, shaped like `params`.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                             jax.tree_util.tree_leaves(b)))


def _scale(a: PyTree, c: jax.Array) -> PyTree:
    return jax.tree_util.tree_map(lambda x: x * c, a)


def top_eigenvalue(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, iters: int = 50,
                   tol: float = 1e-4, seed: int = 0) -> tuple[float, PyTree, int]:
    """The Hessian's eigenvalue of largest magnitude, by power iteration.

    Args:
        loss_fn: scalar function of the parameters.
        params: the point (e.g. a trained minimum).
        iters: maximum number of Hessian-vector products.
        tol: stop when the eigenvalue estimate changes by less than `tol` relative to its size.
        seed: seed of the random start vector.

    Returns:
        (eigenvalue, unit eigenvector shaped like `params`, iterations used).
    """
    if iters < 1:
        raise ValueError(f"iters: must be >= 1, got {iters}")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    v = jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, jnp.shape(x), jnp.float32) for k, x in zip(keys, leaves)])
    v = _scale(v, 1.0 / jnp.sqrt(_vdot(v, v)))
    step = jax.jit(lambda p, u: hvp(loss_fn, p, u))
    eig, used = np.nan, 0
    for used in range(1, iters + 1):
        hv = step(params, v)
        new = float(_vdot(v, hv))  # Rayleigh quotient of the unit vector v
        norm = jnp.sqrt(_vdot(hv, hv))
        if float(norm) == 0.0:
            return 0.0, v, used
        v = _scale(hv, 1.0 / norm)
        if np.isfinite(eig) and abs(new - eig) <= tol * max(abs(new), 1e-12):
            eig = new
            break
        eig = new
    return float(eig), v, used


__all__ = ["hvp", "top_eigenvalue"]
