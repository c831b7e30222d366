"""Curvature tools against dense Hessians (`jax.hessian` + numpy's `eigh`) of a tiny MLP.

The reference is the dense Hessian of the mean loss over all examples of the split, so the
split-averaged tools (padded batches, a ragged last batch masked) must match it exactly.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from research.landscape import evaluate_grid
from research.landscape import hessian as H
from research.models import CNN, MLP

N = 13  # with batch_size 4: three whole batches and a ragged one of a single example
MODEL = MLP(widths=(4,), num_outputs=1, activation="tanh")


def _loss_B(params, batch):
    logits_B = MODEL.apply({"params": params}, batch["x"])[:, 0]
    return jnp.logaddexp(0.0, logits_B) - batch["y"] * logits_B


def _problem(seed=0):
    x_NxD = np.asarray(jax.random.normal(jax.random.key(seed), (N, 2)), np.float32)
    y_N = (x_NxD[:, 0] * x_NxD[:, 1] > 0).astype(np.float32)
    # Compiled: one compilation instead of one per initializer operation.
    params = jax.jit(MODEL.init)(jax.random.key(seed + 1), x_NxD)["params"]
    return params, {"x": x_NxD, "y": y_N}


@jax.jit
def _dense_hessian(params, data):
    # One program (traced once per shape), where eager `jax.hessian` compiles each operation.
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: jnp.mean(_loss_B(unravel(f), data)))(flat)


def _dense(params, data):
    """The dense Hessian of the mean loss over all examples, in float64, and its eigenpairs."""
    hess = np.asarray(_dense_hessian(params, data), np.float64)
    hess = 0.5 * (hess + hess.T)
    w, v = np.linalg.eigh(hess)
    return hess, w, v


def test_hvp_primitive_matches_dense_hessian():
    params, data = _problem()
    hess, _, _ = _dense(params, data)
    flat, unravel = ravel_pytree(params)
    v = np.random.default_rng(0).normal(size=flat.shape).astype(np.float32)
    got = jax.jit(lambda v: ravel_pytree(H.hvp(lambda p: jnp.mean(_loss_B(p, data)), params,
                                               unravel(v)))[0])(v)
    np.testing.assert_allclose(np.asarray(got), hess @ v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_size", [None, 4])
def test_top_eigenpairs_match_dense_with_ragged_batches(batch_size):
    params, data = _problem()
    hess, w, _ = _dense(params, data)
    want = w[np.argsort(-np.abs(w))[:2]]
    pairs = H.top_eigenvalues(_loss_B, params, data, k=2, batch_size=batch_size,
                              max_iter=2000, tol=1e-7)
    np.testing.assert_allclose(pairs.values, want, rtol=1e-3)
    for lam, vec in zip(pairs.values, pairs.vectors):
        v = np.asarray(ravel_pytree(vec)[0], np.float64)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(hess @ v, lam * v, atol=1e-2 * abs(want[0]))
    assert np.all((pairs.iterations >= 1) & (pairs.iterations <= 2000))


def test_dict_and_scalar_functions_give_the_same_curvature():
    params, data = _problem()
    _, w, _ = _dense(params, data)
    as_dict = H.top_eigenvalue(lambda p, b: {"loss": _loss_B(p, b), "other": b["y"]},
                               params, data, batch_size=4, max_iter=2000, tol=1e-7)
    # a scalar batch mean with a ragged last batch: evaluated per example, still exact
    as_mean = H.top_eigenvalue(lambda p, b: jnp.mean(_loss_B(p, b)), params, data,
                               batch_size=4, max_iter=2000, tol=1e-7)
    top = w[np.argmax(np.abs(w))]
    assert as_dict[0] == pytest.approx(top, rel=1e-3)
    assert as_mean[0] == pytest.approx(top, rel=1e-3)


def _quadratic(eigs, seed=0, n=6):
    """Per-example quadratics 0.5 w^T A_i w whose mean Hessian has the spectrum `eigs`."""
    d = len(eigs)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = q @ np.diag(eigs) @ q.T
    noise = rng.normal(size=(n, d, d))
    noise = noise + noise.transpose(0, 2, 1)
    a_NxDxD = a + noise - noise.mean(0)  # the mean is exactly `a`
    fn = lambda p, b: 0.5 * jnp.einsum("i,bij,j->b", p["w"], b["a"], p["w"])  # noqa: E731
    return fn, {"w": jnp.ones(d)}, {"a": a_NxDxD.astype(np.float32)}


def test_deflation_finds_negative_eigenvalues_in_order():
    fn, params, data = _quadratic([9.0, -6.0, 4.0, 1.0, 0.5, 0.1])
    pairs = H.top_eigenvalues(fn, params, data, k=3, batch_size=4, max_iter=3000, tol=1e-8)
    np.testing.assert_allclose(pairs.values, [9.0, -6.0, 4.0], rtol=1e-3)
    flat_KxP = np.stack([np.asarray(v["w"]) for v in pairs.vectors])
    np.testing.assert_allclose(flat_KxP @ flat_KxP.T, np.eye(3), atol=1e-3)


def test_hutchinson_trace_is_unbiased_over_a_split():
    params, data = _problem()
    hess, _, _ = _dense(params, data)
    est, stderr = H.hutchinson_trace(_loss_B, params, data, samples=300, batch_size=4,
                                     probes_per_step=64, seed=1)
    assert stderr > 0
    assert abs(est - np.trace(hess)) < 4 * stderr + 1e-6


def test_lanczos_density_and_extremes_match_dense():
    params, data = _problem()
    _, w, _ = _dense(params, data)
    p = len(w)
    nodes, weights = H.lanczos(_loss_B, params, data, steps=p, runs=2, batch_size=4)
    for theta, tau in zip(nodes, weights):
        np.testing.assert_allclose(np.sort(theta), w, atol=1e-4 * np.abs(w).max())
        assert tau.sum() == pytest.approx(1.0, abs=1e-5)
    lmax, lmin = H.extreme_eigenvalues(_loss_B, params, data, steps=p, batch_size=4)
    assert lmax == pytest.approx(w[-1], rel=1e-4)
    assert lmin == pytest.approx(w[0], abs=1e-4 * np.abs(w).max())
    grid, density, info = H.spectral_density(_loss_B, params, data, steps=p, runs=2,
                                             batch_size=4, sigma=0.01)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert len(info["nodes"]) == 2


def test_lanczos_survives_more_steps_than_distinct_eigenvalues():
    # rank-deficient: 3 distinct eigenvalues in 6 dimensions, so Lanczos breaks down early
    fn, params, data = _quadratic([2.0, 2.0, 2.0, -1.0, -1.0, 0.5])
    nodes, weights = H.lanczos(fn, params, data, steps=6)
    assert np.all(np.isfinite(nodes[0])) and weights[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert nodes[0].max() == pytest.approx(2.0, rel=1e-4)
    assert nodes[0].min() == pytest.approx(-1.0, rel=1e-4)


def test_second_call_with_new_params_does_not_retrace():
    H.clear_cache()
    traces = []

    def counted(p, b):
        traces.append(1)  # runs only while jax traces the function
        return _loss_B(p, b)

    params, data = _problem()
    params2, data2 = _problem(seed=5)
    for tool in (lambda p, d: H.top_eigenvalues(counted, p, d, k=2, batch_size=4, max_iter=5),
                 lambda p, d: H.hutchinson_trace(counted, p, d, samples=4, batch_size=4),
                 lambda p, d: H.lanczos(counted, p, d, steps=5, batch_size=4)):
        tool(params, data)
        first = len(traces)
        assert first > 0
        tool(params2, data2)  # new parameters and new data, same shapes
        assert len(traces) == first


def test_bad_inputs_say_what_is_wrong():
    params, data = _problem()
    with pytest.raises(ValueError, match="k:"):
        H.top_eigenvalues(_loss_B, params, data, k=0)
    with pytest.raises(ValueError, match="leading"):
        H.hutchinson_trace(_loss_B, params, {"x": data["x"], "y": data["y"][:3]})
    with pytest.raises(ValueError, match="'loss'"):
        H.top_eigenvalues(lambda p, b: {"l": _loss_B(p, b)}, params, data)
    with pytest.raises(ValueError, match="shape"):
        H.lanczos(lambda p, b: _loss_B(p, b)[:2], params, data, steps=3)


def test_line_along_top_eigenvector_curves_by_lambda_max():
    params, data = _problem()
    _, w, _ = _dense(params, data)
    hd = H.hessian_directions(_loss_B, params, data, k=1, batch_size=4, max_iter=2000,
                              tol=1e-7)
    assert hd.eigenvalues[0] == pytest.approx(w[np.argmax(np.abs(w))], rel=1e-3)
    assert hd.eigenvalues[0] > 0
    h = 0.05
    alpha = np.array([-h, 0.0, h])
    s = evaluate_grid(_loss_B, params, hd.directions, [alpha], data, batch_size=4,
                      info=hd.info)
    f = s.values["loss"]
    second = (f[0] - 2 * f[1] + f[2]) / h**2
    assert second == pytest.approx(hd.eigenvalues[0], rel=2e-2)
    assert s.info["hessian_eigenvalues"] == pytest.approx(list(hd.eigenvalues))


@pytest.mark.parametrize("loop", ["host", "device"])
def test_eigenvalue_map_matches_dense_at_grid_points(tmp_path, loop):
    from research.landscape import load_surface

    params, data = _problem()
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(3)
    dirs = [unravel(jnp.asarray(rng.normal(size=flat.shape), jnp.float32) * 0.3)
            for _ in range(2)]
    axes = [np.array([-1.0, 0.0, 1.0]), np.array([0.0, 0.5])]
    p = flat.shape[0]
    s = H.eigenvalue_map(_loss_B, params, dirs, axes, data, steps=p, batch_size=4,
                         points_per_call=4, path=str(tmp_path / "eig.npz"), loop=loop)
    for i, a in enumerate(axes[0]):
        for j, b in enumerate(axes[1]):
            at = jax.tree_util.tree_map(lambda t, x, y, a=a, b=b: t + a * x + b * y, params, *dirs)
            _, w, _ = _dense(at, data)
            scale = np.abs(w).max()
            assert s.values["lambda_max"][i, j] == pytest.approx(w[-1], abs=1e-3 * scale)
            assert s.values["lambda_min"][i, j] == pytest.approx(w[0], abs=1e-3 * scale)
    back = load_surface(str(tmp_path / "eig.npz"))
    assert back.complete and back.settings["lanczos_steps"] == p
    np.testing.assert_allclose(back.values["ratio"],
                               np.abs(s.values["lambda_min"] / s.values["lambda_max"]))


def test_host_rademacher_matches_the_device_bits():
    for seed, stream in [(0, 0), (7, 3), (2**32 - 1, 1 << 20)]:
        dev = np.asarray(H._rademacher(jnp.uint32(seed), jnp.uint32(stream), 257))
        np.testing.assert_array_equal(H._np_rademacher(seed, stream, 257)[0], dev)


def test_host_and_device_loops_agree():
    params, data = _problem()
    kw = {"batch_size": 4}
    host = H.top_eigenvalues(_loss_B, params, data, k=2, max_iter=50, tol=1e-6, loop="host", **kw)
    dev = H.top_eigenvalues(_loss_B, params, data, k=2, max_iter=50, tol=1e-6, loop="device",
                            **kw)
    np.testing.assert_allclose(host.values, dev.values, rtol=1e-4)
    # The same iteration, so the same count, give or take the one step where a float32
    # residual sits at the 1e-6 tolerance (the last bits differ between the two programs).
    assert np.all(np.abs(np.asarray(host.iterations) - np.asarray(dev.iterations)) <= 1)
    # The same unit vector (a residual at 1e-6 leaves each entry within about 1e-3).
    v_h, v_d = ravel_pytree(host.vectors[0])[0], ravel_pytree(dev.vectors[0])[0]
    assert float(jnp.dot(v_h, v_d)) > 1 - 1e-5
    tr_h = H.hutchinson_trace(_loss_B, params, data, samples=12, loop="host", **kw)
    tr_d = H.hutchinson_trace(_loss_B, params, data, samples=12, probes_per_step=5,
                              loop="device", **kw)
    np.testing.assert_allclose(tr_h, tr_d, rtol=1e-4)
    (n_h,), _ = H.lanczos(_loss_B, params, data, steps=8, loop="host", **kw)
    (n_d,), _ = H.lanczos(_loss_B, params, data, steps=8, loop="device", **kw)
    np.testing.assert_allclose(n_h, n_d, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="loop"):
        H.lanczos(_loss_B, params, data, steps=3, loop="gpu")


@pytest.mark.parametrize("loop", ["host", "device"])
@pytest.mark.parametrize("counts", [(6, 4, 2), (3, 2, 1)])
def test_lanczos_restarts_after_a_breakdown_and_finds_every_multiple_eigenvalue(loop, counts):
    # H = diag(1, ..., 2, ..., 3, ...): a Krylov space has at most 3 dimensions, so the run
    # breaks down at step 3 and must go on from fresh vectors to find the multiplicities. In 6
    # dimensions a fresh random (+-1) vector falls into the span found so far, so the fallback
    # to a unit vector is needed there.
    d_P = np.repeat(np.float32([1.0, 2.0, 3.0]), counts)

    def quadratic_B(params, batch):
        return 0.5 * jnp.sum(d_P * params["w"] ** 2) + 0.0 * batch["x"][:, 0]

    params = {"w": jnp.asarray(np.linspace(-1, 1, d_P.size), jnp.float32)}
    data = {"x": np.zeros((5, 1), np.float32)}
    (nodes,), (weights,) = H.lanczos(quadratic_B, params, data, steps=d_P.size, loop=loop)
    np.testing.assert_allclose(np.sort(nodes), np.sort(d_P), atol=1e-5)
    assert np.sum(weights) == pytest.approx(1.0, abs=1e-5)


def test_residual_budget_falls_back_to_recomputing(monkeypatch):
    params, data = _problem()
    _, w, _ = _dense(params, data)
    monkeypatch.setattr(H, "RESIDUAL_BYTES", 0)  # nothing fits: the plain step, same numbers
    lmax, lmin = H.extreme_eigenvalues(_loss_B, params, data, steps=len(w), batch_size=4,
                                       loop="host")
    assert lmax == pytest.approx(w[-1], rel=1e-4)
    assert lmin == pytest.approx(w[0], abs=1e-4 * np.abs(w).max())


def _map_problem():
    params, data = _problem()
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(4)
    dirs = [unravel(jnp.asarray(rng.normal(size=flat.shape), jnp.float32) * 0.3)
            for _ in range(2)]
    return params, data, dirs, [np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)]


def test_killed_eigenvalue_map_resumes_without_redoing_points(tmp_path, monkeypatch):
    from research.landscape import load_surface
    from research.landscape.surface import SurfaceMismatchError

    params, data, dirs, axes = _map_problem()
    kw = {"steps": 10, "batch_size": 4, "points_per_call": 5}
    whole = H.eigenvalue_map(_loss_B, params, dirs, axes, data, **kw)
    path = str(tmp_path / "eig.npz")
    real, calls = H._map_chunk, []

    def dies_after_two(run, coords):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed while computing the third chunk
        calls.append(len(coords))
        return real(run, coords)
    monkeypatch.setattr(H, "_map_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, **kw)
    part = load_surface(path)
    assert part.done.sum() == 8 and not part.complete  # 12 points in equal chunks of 4
    assert np.all(np.isnan(part.values["lambda_max"][~part.done]))

    calls.clear()

    def counted(run, coords):
        calls.append(len(coords))
        return real(run, coords)
    monkeypatch.setattr(H, "_map_chunk", counted)
    resumed = H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, **kw)
    assert calls == [4]  # the four missing points, in one chunk
    assert resumed.complete and load_surface(path).complete
    for name in H.MAP_METRICS:
        np.testing.assert_allclose(resumed.values[name], whole.values[name], rtol=1e-5,
                                   atol=1e-7)
    calls.clear()
    H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, **kw)  # all done: no work
    assert not calls
    with pytest.raises(SurfaceMismatchError, match="lanczos_steps"):
        H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, **{**kw, "steps": 9})


@pytest.mark.parametrize("loop", ["host", "device"])
def test_eigenvalue_map_sharded_over_devices_equals_one_device(tmp_path, monkeypatch, loop):
    from research.sharding import make_mesh

    params, data, dirs, axes = _map_problem()  # 12 points
    kw = {"steps": 8, "batch_size": 4, "points_per_call": 5, "loop": loop}
    one = H.eigenvalue_map(_loss_B, params, dirs, axes, data, **kw)
    mesh = make_mesh()  # the 4 host devices of tests/conftest.py along the grid axis
    assert mesh.shape["grid"] == 4
    seen, built = [], []
    real, real_op = H._map_chunk, H._HostOperator

    def spy(run, coords):
        seen.append(len(coords))
        return real(run, coords)

    def spy_op(*args, **kwargs):
        built.append(args[-1] if len(args) > 6 else kwargs.get("mesh"))
        return real_op(*args, **kwargs)
    monkeypatch.setattr(H, "_map_chunk", spy)
    monkeypatch.setattr(H, "_HostOperator", spy_op)
    four = H.eigenvalue_map(_loss_B, params, dirs, axes, data, mesh=mesh,
                            path=str(tmp_path / "eig.npz"), **kw)
    assert seen == [4, 4, 4]  # chunks of at most 5 points, a multiple of the 4 devices
    # theta's start and the host loop share one operator over the mesh: the data put once
    assert built == [mesh]
    for name in ("lambda_max", "lambda_min"):
        np.testing.assert_allclose(four.values[name], one.values[name], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="data axis"):
        H.eigenvalue_map(_loss_B, params, dirs, axes, data, mesh=make_mesh(grid=2, data=2), **kw)


def test_eigenvalue_map_parts_run_at_once_on_one_cpu_device(monkeypatch):
    # Each part of a chunk waits at a two-party barrier: two parts pass it only if they run at
    # the same time, one part at a time would time out.
    params, data, dirs, axes = _map_problem()  # 12 points
    kw = {"steps": 6, "batch_size": 4, "points_per_call": 5}
    barrier, sizes, real = threading.Barrier(2, timeout=20), [], H._map_runner_device

    def meeting(*args, **kwargs):
        run = real(*args, **kwargs)

        def meet(coords_CxK):
            sizes.append(len(coords_CxK))
            barrier.wait()
            return run(coords_CxK)
        return meet
    monkeypatch.setattr(H, "_map_runner_device", meeting)
    monkeypatch.setattr("research.sharding.usable_cpus", lambda: 2)
    both = H.eigenvalue_map(_loss_B, params, dirs, axes, data, **kw)  # no convolution: device
    assert sizes == [2] * 6  # chunks of 4 (at most 5, a multiple of 2), two parts at once
    sizes.clear()
    monkeypatch.setattr("research.landscape.evaluate.MAX_CPU_CALLS", 1)
    barrier = threading.Barrier(1)  # one part at a time no longer meets anyone
    one = H.eigenvalue_map(_loss_B, params, dirs, axes, data, **kw)
    assert sizes == [4, 4, 4]
    for name in H.MAP_METRICS:
        np.testing.assert_allclose(both.values[name], one.values[name], rtol=1e-5, atol=1e-7)


def test_map_runs_convolutions_on_the_host_one_point_at_a_time(monkeypatch):
    params, data, dirs, _ = _map_problem()
    assert not H._convolves(_loss_B, *H._prepare(_loss_B, params, data, None, None))
    fn, cnn_params, cnn_data, kw = _cnn_with_batchnorm()
    assert not H._convolves(fn, *H._prepare(fn, cnn_params, cnn_data, None, kw["model_state"]))
    fn, cnn_params, cnn_data, kw = _cnn_with_batchnorm(channels=(2, 2))
    assert H._convolves(fn, *H._prepare(fn, cnn_params, cnn_data, None, kw["model_state"]))

    def hidden(p, batch):  # a convolution inside a jit inside a scan
        conv = jax.jit(lambda x: jax.lax.conv_general_dilated(x, p["k"], (1,), "SAME"))
        _, y = jax.lax.scan(lambda c, x: (c, conv(x[None])[0]), 0.0, batch["x"])
        return jnp.sum(y**2, axis=(1, 2))
    conv_args = H._prepare(hidden, {"k": jnp.ones((1, 1, 3))}, {"x": np.ones((2, 1, 5))}, None,
                           None)
    assert H._convolves(hidden, *conv_args)
    assert H._map_loop("auto", True) == "host" and H._map_loop("auto", False) == "device"
    assert H._map_loop("device", True) == "device"

    seen, real = [], H._lanczos_host

    def spy(op, coefs, v_GxSxP, *args, **kwargs):
        seen.append(v_GxSxP.shape[0])
        return real(op, coefs, v_GxSxP, *args, **kwargs)
    monkeypatch.setattr(H, "_lanczos_host", spy)
    flat, unravel = ravel_pytree(cnn_params)
    d_P = jnp.asarray(np.random.default_rng(9).normal(size=flat.shape), jnp.float32) * 0.2
    alphas = np.linspace(0, 1, 4)
    s = H.eigenvalue_map(fn, cnn_params, [unravel(d_P)], [alphas], cnn_data, steps=flat.size,
                         **kw)
    assert seen == [1] * 5  # theta's start, then each of the 4 points on its own
    hessian = jax.jit(jax.hessian(
        lambda f: jnp.mean(fn(unravel(f), kw["model_state"], cnn_data)["loss"])))
    for i, a in enumerate(alphas):
        w = np.linalg.eigvalsh(np.asarray(hessian(flat + a * d_P), np.float64))
        assert s.values["lambda_max"][i] == pytest.approx(w[-1], abs=1e-3 * np.abs(w).max())
        assert s.values["lambda_min"][i] == pytest.approx(w[0], abs=1e-3 * np.abs(w).max())
    seen.clear()
    H.eigenvalue_map(_loss_B, params, dirs[:1], [np.linspace(0, 1, 4)], data, steps=3,
                     loop="host", points_per_call=4)
    assert max(seen) > 1  # no convolution: a chunk's points in lockstep


def test_map_start_leans_towards_theta_extreme_eigenvectors_and_is_recorded(tmp_path):
    from research.landscape.surface import SurfaceMismatchError

    params, data, dirs, axes = _map_problem()
    _, w, v_PxP = _dense(params, data)
    p = len(w)
    op = H._HostOperator(_loss_B, params, data, 4, None, dirs)
    random_P = H._map_start(op, p, p, 0, "random")
    start_P = H._map_start(op, p, p, 0, "theta")
    np.testing.assert_allclose(np.abs(random_P), 1 / np.sqrt(p), rtol=1e-6)  # +-1, normalised
    assert np.linalg.norm(start_P) == pytest.approx(1.0, abs=1e-5)
    # With p steps the Ritz vectors are theta's extreme eigenvectors (dense eigh): the start
    # is (random + u_max + u_min) / norm, up to the eigenvectors' signs.
    gaps = []
    for s_max in (1, -1):
        for s_min in (1, -1):
            want_P = random_P + s_max * v_PxP[:, -1] + s_min * v_PxP[:, 0]
            gaps.append(np.abs(start_P - want_P / np.linalg.norm(want_P)).max())
    assert min(gaps) < 1e-4 and sorted(gaps)[1] > 0.05

    kw = {"steps": 6, "batch_size": 4, "points_per_call": 6}
    path = str(tmp_path / "eig.npz")
    warm = H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, **kw)
    cold = H.eigenvalue_map(_loss_B, params, dirs, axes, data, start="random", **kw)
    assert warm.settings["lanczos_start"] == "theta"
    assert cold.settings["lanczos_start"] == "random"
    assert not np.allclose(warm.values["lambda_min"], cold.values["lambda_min"])
    with pytest.raises(SurfaceMismatchError, match="lanczos_start"):
        H.eigenvalue_map(_loss_B, params, dirs, axes, data, path=path, start="random", **kw)
    with pytest.raises(ValueError, match="start"):
        H.eigenvalue_map(_loss_B, params, dirs, axes, data, start="centre", **kw)


def test_eigenvalue_map_plots(tmp_path):
    import matplotlib.pyplot as plt

    from research.landscape.eigen_plot import plot_eigenvalue_map, plot_eigenvalue_maps

    params, data, dirs, axes = _map_problem()
    s = H.eigenvalue_map(_loss_B, params, dirs, axes, data, steps=6, batch_size=4)
    paths = plot_eigenvalue_maps(s, str(tmp_path / "fig6"), title="tiny MLP")
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "pdf"]
    assert all((tmp_path / f"fig6.{e}").stat().st_size > 0 for e in ("png", "pdf"))
    fig, ax = plt.subplots()
    assert plot_eigenvalue_map(s, "lambda_min", ax=ax) is ax
    line = H.eigenvalue_map(_loss_B, params, dirs[:1], axes[:1], data, steps=6)
    plot_eigenvalue_map(line, "ratio", ax=ax)
    plt.close(fig)
    with pytest.raises(ValueError, match="metric"):
        plot_eigenvalue_map(s, "loss")


def _cnn_with_batchnorm(channels=(2,)):
    """Our CNN with BatchNorm through `model_state`: fn(params, state, batch), eval mode.

    Its first convolution (one input channel) is shifts and products (`research.models.ops`),
    not a convolution primitive; a second layer is one.
    """
    from research.landscape.evaluate import linen_functions
    from research.losses import Loss

    model = CNN(channels=channels, num_outputs=2, batch_norm=True)
    x = np.asarray(jax.random.normal(jax.random.key(5), (6, 4, 4, 1)), np.float32)
    # Compiled: one compilation each instead of one per operation.
    variables = jax.jit(model.init)(jax.random.key(6), x)
    # Statistics that are not the initial zeros and ones: one training-mode pass.
    _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    fn, _ = linen_functions(model.apply, Loss("softmax_ce", num_classes=2), with_state=True)
    data = {"x": x, "y": np.array([0, 1, 1, 0, 1, 0], np.int32)}
    return fn, variables["params"], data, {"model_state": updates["batch_stats"]}


def _nnx_with_batchnorm():
    """A user's NNX model with BatchNorm, bound to its statistics, and an optax loss."""
    import optax
    from flax import nnx

    from research import adapters as A

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)
            self.l2 = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.bn(self.l1(x))))

    x = np.asarray(jax.random.normal(jax.random.key(7), (7, 3)), np.float32)
    model, params, state = A.nnx(Net(nnx.Rngs(0)))
    # moves the statistics off their init (compiled: one compilation, not one per operation)
    _, state = jax.jit(lambda p, s, x: model(p, s, x, train=True))(params, state, x)
    fn = A.per_example_fn(model, optax.softmax_cross_entropy_with_integer_labels, state)
    return fn, params, {"x": x, "y": np.array([0, 1, 1, 0, 1, 0, 1], np.int32)}, {}


@pytest.mark.parametrize("make", [_cnn_with_batchnorm, _nnx_with_batchnorm])
def test_curvature_of_foreign_models_with_batchnorm_state_matches_dense(make):
    fn, params, data, kw = make()
    flat, unravel = ravel_pytree(params)
    state = kw.get("model_state")

    def mean_loss(f):
        out = fn(unravel(f), state, data) if state is not None else fn(unravel(f), data)
        return jnp.mean(out["loss"] if isinstance(out, dict) else out)

    hessian = jax.jit(jax.hessian(mean_loss))

    def dense(at_P):
        w = np.linalg.eigvalsh(np.asarray(hessian(at_P), np.float64))
        return w, np.abs(w).max()

    w, scale = dense(flat)
    top = H.top_eigenvalues(fn, params, data, k=1, batch_size=4, max_iter=3000, tol=1e-7, **kw)
    assert top.values[0] == pytest.approx(w[np.argmax(np.abs(w))], abs=1e-3 * scale)
    d = unravel(jnp.asarray(np.random.default_rng(8).normal(size=flat.shape), jnp.float32) * 0.2)
    p = flat.shape[0]
    s = H.eigenvalue_map(fn, params, [d], [np.array([0.0, 1.0])], data, steps=p, batch_size=4,
                         **kw)
    for i, a in enumerate([0.0, 1.0]):
        w, scale = dense(flat + a * ravel_pytree(d)[0])
        assert s.values["lambda_max"][i] == pytest.approx(w[-1], abs=1e-3 * scale)
        assert s.values["lambda_min"][i] == pytest.approx(w[0], abs=1e-3 * scale)
