"""Curvature of a loss at a point, after PyHessian (Yao et al. 2020), without forming the Hessian.

`hvp(loss_fn, params, v)` is forward-over-reverse differentiation (`jvp` of `grad`), so it costs
about two gradient evaluations. On top of it: `top_eigenvalue` (power iteration, the eigenvalue
of largest magnitude), `top_eigenvalues` (the top k by power iteration with deflation, as
PyHessian does), `hutchinson_trace` (the trace from Rademacher probes `E[v^T H v]`) and
`spectral_density` (stochastic Lanczos quadrature). Works on any pytree of parameters and any
`loss_fn(params) -> scalar` (close over the data and any model state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.flatten_util
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


def _random_like(params: PyTree, key: jax.Array, rademacher: bool = False) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    draw = ((lambda k, x: jax.random.rademacher(k, jnp.shape(x), jnp.float32)) if rademacher
            else (lambda k, x: jax.random.normal(k, jnp.shape(x), jnp.float32)))
    return jax.tree_util.tree_unflatten(treedef, [draw(k, x) for k, x in zip(keys, leaves)])


def _orthonormalize(v: PyTree, basis: list[PyTree]) -> PyTree:
    for b in basis:
        c = _vdot(v, b)
        v = jax.tree_util.tree_map(lambda x, y: x - c * y, v, b)  # noqa: B023 (used at once)
    return _scale(v, 1.0 / jnp.sqrt(_vdot(v, v)))


def top_eigenvalues(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, k: int = 3,
                    iters: int = 100, tol: float = 1e-4,
                    seed: int = 0) -> tuple[list[float], list[PyTree]]:
    """The k Hessian eigenvalues of largest magnitude, by power iteration with deflation.

    Each eigenvector is found by power iteration restricted to the orthogonal complement of the
    ones found before (the iterate is re-orthogonalised after every product, as in PyHessian).

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        k: how many eigenpairs.
        iters: maximum Hessian-vector products per eigenpair.
        tol: relative change of the estimate at which an eigenpair is accepted.
        seed: seed of the random start vectors.

    Returns:
        (eigenvalues in the order found, unit eigenvectors shaped like `params`).
    """
    if k < 1 or iters < 1:
        raise ValueError(f"k and iters must be >= 1, got k={k}, iters={iters}")
    step = jax.jit(lambda p, u: hvp(loss_fn, p, u))
    values: list[float] = []
    vectors: list[PyTree] = []
    for i in range(k):
        v = _orthonormalize(_random_like(params, jax.random.fold_in(jax.random.key(seed), i)),
                            vectors)
        eig = np.nan
        for _ in range(iters):
            hv = step(params, v)
            new = float(_vdot(v, hv))
            v = _orthonormalize(hv, vectors)
            if np.isfinite(eig) and abs(new - eig) <= tol * max(abs(new), 1e-12):
                eig = new
                break
            eig = new
        values.append(float(eig))
        vectors.append(v)
    return values, vectors


def hutchinson_trace(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                     samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's estimate of the Hessian's trace, `mean(v^T H v)` over Rademacher vectors v.

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        samples: number of probe vectors.
        seed: seed of the probes.

    Returns:
        (trace estimate, its standard error).
    """
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")

    @jax.jit
    def probe(key):
        v = _random_like(params, key, rademacher=True)
        return _vdot(v, hvp(loss_fn, params, v))

    keys = jax.random.split(jax.random.key(seed), samples)
    vals = np.asarray([float(probe(key)) for key in keys])
    stderr = float(vals.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")
    return float(vals.mean()), stderr


def lanczos(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, steps: int,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos tridiagonalisation of the Hessian from one random unit vector.

    Full re-orthogonalisation keeps the basis orthogonal in float32 (the basis is held in memory:
    `steps` copies of the parameters).

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        steps: Lanczos steps m (at most the number of parameters).
        seed: seed of the start vector.

    Returns:
        Ritz values theta_m and weights tau_m (squared first components of the eigenvectors of
        the tridiagonal matrix, summing to 1).
    """
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    n = flat.shape[0]
    steps = min(steps, n)
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    matvec = jax.jit(lambda u: jax.flatten_util.ravel_pytree(hvp(loss_fn, params, unravel(u)))[0])
    v = jax.random.normal(jax.random.key(seed), (n,), jnp.float32)
    basis = [v / jnp.linalg.norm(v)]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[j])
        alpha = float(jnp.vdot(w, basis[j]))
        alphas.append(alpha)
        q_JxN = jnp.stack(basis)
        w = w - q_JxN.T @ (q_JxN @ w)  # full re-orthogonalisation (twice is enough)
        w = w - q_JxN.T @ (q_JxN @ w)
        beta = float(jnp.linalg.norm(w))
        if j == steps - 1 or beta < 1e-8:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, vecs = np.linalg.eigh(t)
    return theta, vecs[0, :] ** 2


def spectral_density(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, steps: int = 80,
                     runs: int = 1, grid: np.ndarray | None = None, sigma: float | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each run gives Ritz values and weights; the density is their weighted sum of Gaussians of
    width `sigma`, averaged over runs (it integrates to 1).

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        steps: Lanczos steps per run.
        runs: independent start vectors.
        grid: where to evaluate the density (default: 1000 points spanning the Ritz values).
        sigma: Gaussian width (default: 1% of the Ritz-value range).
        seed: seed of the first start vector.

    Returns:
        (grid, density on the grid, {"nodes": Ritz values per run, "weights": weights per run}).
    """
    nodes, weights = zip(*(lanczos(loss_fn, params, steps, seed + r) for r in range(runs)))
    lo = min(float(x.min()) for x in nodes)
    hi = max(float(x.max()) for x in nodes)
    span = max(hi - lo, 1e-12)
    sigma = sigma or 0.01 * span
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
    density = np.zeros_like(grid, dtype=np.float64)
    for theta, tau in zip(nodes, weights):
        g = np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
        density += (g / (sigma * np.sqrt(2 * np.pi))) @ tau
    return grid, density / runs, {"nodes": [x.tolist() for x in nodes],
                                  "weights": [w.tolist() for w in weights]}


__all__ = ["hutchinson_trace", "hvp", "lanczos", "spectral_density", "top_eigenvalue",
           "top_eigenvalues"]
