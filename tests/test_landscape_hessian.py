"""Hessian-vector products and the top eigenvalue, against jax.hessian and numpy's eigvalsh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from research.landscape.hessian import hvp, top_eigenvalue
from research.models import MLP


def _problem():
    model = MLP(widths=(5,), num_outputs=1, activation="tanh")
    x_NxD = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    y_N = (x_NxD[:, 0] * x_NxD[:, 1] > 0).astype(jnp.float32)
    params = model.init(jax.random.PRNGKey(1), x_NxD)["params"]

    def loss(p):
        logits_N = model.apply({"params": p}, x_NxD)[:, 0]
        return jnp.mean(jnp.logaddexp(0.0, logits_N) - y_N * logits_N)
    return loss, params


def _dense_hessian(loss, params):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat), np.float64), unravel


def test_hvp_matches_dense_hessian():
    loss, params = _problem()
    H, unravel = _dense_hessian(loss, params)
    v = jax.random.normal(jax.random.PRNGKey(2), (H.shape[0],))
    got = ravel_pytree(hvp(loss, params, unravel(v)))[0]
    np.testing.assert_allclose(np.asarray(got), H @ np.asarray(v), rtol=1e-4, atol=1e-5)


def test_top_eigenvalue_matches_eigvalsh():
    loss, params = _problem()
    H, _ = _dense_hessian(loss, params)
    eigs = np.linalg.eigvalsh(H)
    top = eigs[np.argmax(np.abs(eigs))]
    eig, vec, used = top_eigenvalue(loss, params, iters=500, tol=1e-7, seed=0)
    assert eig == pytest.approx(top, rel=2e-3)
    v = np.asarray(ravel_pytree(vec)[0], np.float64)
    assert np.linalg.norm(v) == pytest.approx(1.0, rel=1e-4)
    # the vector is an eigenvector: H v = lambda v
    np.testing.assert_allclose(H @ v, top * v, atol=5e-3 * abs(top))
    assert 1 <= used <= 500


def test_top_eigenvalue_of_a_quadratic_and_bad_iters():
    A = jnp.diag(jnp.array([1.0, -3.0, 10.0]))
    eig, _, _ = top_eigenvalue(lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": jnp.ones(3)},
                               iters=200, tol=1e-9)
    assert eig == pytest.approx(10.0, rel=1e-5)
    with pytest.raises(ValueError, match="iters"):
        top_eigenvalue(lambda p: jnp.sum(p**2), jnp.ones(2), iters=0)


def _quadratic(eigs, seed=0):
    """A quadratic 0.5 w^T A w with known spectrum, A = Q diag(eigs) Q^T."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    a = jnp.asarray(q @ np.diag(eigs) @ q.T, jnp.float32)
    return (lambda p: 0.5 * p["w"] @ a @ p["w"]), {"w": jnp.ones(len(eigs))}


def test_top_k_eigenvalues_with_deflation():
    from research.landscape.hessian import top_eigenvalues

    loss, params = _quadratic([9.0, -6.0, 4.0, 1.0, 0.5, 0.1])
    values, vectors = top_eigenvalues(loss, params, k=3, iters=2000, tol=1e-9)
    np.testing.assert_allclose(values, [9.0, -6.0, 4.0], rtol=1e-3)
    flat = np.stack([np.asarray(v["w"]) for v in vectors])
    np.testing.assert_allclose(flat @ flat.T, np.eye(3), atol=1e-3)
    # on the MLP problem: the top 2 by magnitude, against the dense Hessian
    loss, params = _problem()
    H, _ = _dense_hessian(loss, params)
    eigs = np.linalg.eigvalsh(H)
    want = eigs[np.argsort(-np.abs(eigs))[:2]]
    got, _ = top_eigenvalues(loss, params, k=2, iters=1000, tol=1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-2)


def test_hutchinson_trace_is_unbiased():
    from research.landscape.hessian import hutchinson_trace

    loss, params = _problem()
    H, _ = _dense_hessian(loss, params)
    est, stderr = hutchinson_trace(loss, params, samples=300, seed=1)
    assert abs(est - np.trace(H)) < 4 * stderr + 1e-6
    assert stderr > 0


def test_lanczos_nodes_are_the_eigenvalues_and_density_integrates_to_one():
    from research.landscape.hessian import lanczos, spectral_density

    eigs = [5.0, 3.0, 2.0, -1.0, 0.5]
    loss, params = _quadratic(eigs, seed=2)
    theta, tau = lanczos(loss, params, steps=5)
    np.testing.assert_allclose(np.sort(theta), np.sort(eigs), atol=1e-3)
    assert tau.sum() == pytest.approx(1.0, abs=1e-5)
    grid, density, info = spectral_density(loss, params, steps=5, runs=3, sigma=0.05)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    # the density peaks at the eigenvalues
    for e in eigs:
        near = np.abs(grid - e) < 0.05
        assert density[near].max() > 10 * np.median(density)
    assert len(info["nodes"]) == 3
