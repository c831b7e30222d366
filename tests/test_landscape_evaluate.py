"""Grid evaluation against independent references: direct evaluation, a brute-force loop, an
analytic quadratic surface, hand-computed BatchNorm statistics, and one device vs a mesh."""

import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import landscape as L
from research.sharding import make_mesh

N, BATCH = 37, 8  # a ragged last batch (37 = 4 * 8 + 5)
AXES = [np.linspace(-1.0, 1.0, 5), np.linspace(-0.5, 0.5, 3)]


class ConvBN(nn.Module):
    momentum: float = 0.75  # not Flax's default: the engine must not assume a momentum

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3)(x)


def _per_example(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=N).astype(np.int32)
    model = ConvBN()
    v = model.init(jax.random.key(0), x[:2])
    # Non-trivial running statistics, as after training.
    _, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    stats = jax.tree_util.tree_map(lambda s: s * 3.0, upd["batch_stats"])
    params = v["params"]
    dirs = [L.random_direction(params, 0), L.random_direction(params, 1)]

    def fn(p, s, batch):
        out = model.apply({"params": p, "batch_stats": s}, batch["x"])
        return {"loss": _per_example(out, batch["y"]),
                "accuracy": (jnp.argmax(out, -1) == batch["y"]).astype(jnp.float32)}

    return dict(x=x, y=y, model=model, params=params, stats=stats, dirs=dirs, fn=fn,
                data={"x": x, "y": y})


def _direct(model, params, stats, x, y):
    """Whole split in one call, numpy mean: the independent reference."""
    out = np.asarray(model.apply({"params": params, "batch_stats": stats}, x), np.float64)
    logp = out - np.log(np.exp(out - out.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - out.max(1, keepdims=True)
    return -logp[np.arange(len(y)), y].mean(), (out.argmax(1) == y).mean()


def _bn_update(model):
    def update(p, st, batch):
        _, upd = model.apply({"params": p, "batch_stats": st}, batch["x"], train=True,
                             mutable=["batch_stats"])
        return upd["batch_stats"]
    return update


def _perturb(tree, dirs, coefs):
    return jax.tree_util.tree_map(
        lambda t, *ds: t + sum(c * d for c, d in zip(coefs, ds)), tree, *dirs)


def test_origin_equals_evaluation_loss(setup):
    s = setup
    surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"],
                           model_state=s["stats"], batch_size=BATCH, points_per_call=4)
    loss, acc = _direct(s["model"], s["params"], s["stats"], s["x"], s["y"])
    assert surf.values["loss"][2, 1] == pytest.approx(loss, rel=1e-5)
    assert surf.values["accuracy"][2, 1] == pytest.approx(acc, abs=1e-6)
    assert surf.complete and surf.values["loss"].shape == (5, 3)
    assert L.evaluate_point(s["fn"], s["params"], s["data"], model_state=s["stats"],
                            batch_size=BATCH)["loss"] == pytest.approx(loss, rel=1e-5)


def test_matches_brute_force_loop(setup):
    s = setup
    surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"],
                           model_state=s["stats"], batch_size=BATCH, points_per_call=4)
    for i, a in enumerate(AXES[0]):
        for j, b in enumerate(AXES[1]):
            p = _perturb(s["params"], s["dirs"], (a, b))
            loss, acc = _direct(s["model"], p, s["stats"], s["x"], s["y"])
            assert surf.values["loss"][i, j] == pytest.approx(loss, rel=2e-5)
            assert surf.values["accuracy"][i, j] == pytest.approx(acc, abs=1e-6)


def test_quadratic_loss_gives_analytic_surface():
    # A plain-JAX model whose loss is a scalar batch mean (the vmap-per-example path).
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32)
    theta = {"w": jnp.asarray(rng.normal(size=4), jnp.float32), "c": jnp.float32(0.3)}
    d1 = {"w": jnp.asarray(rng.normal(size=4), jnp.float32), "c": jnp.float32(0.0)}
    d2 = {"w": jnp.asarray(rng.normal(size=4), jnp.float32), "c": jnp.float32(1.0)}

    def loss_fn(p, batch):
        return jnp.mean((batch["x"] @ p["w"] + p["c"] - batch["y"]) ** 2)

    surf = L.evaluate_grid(loss_fn, theta, [d1, d2], AXES, {"x": x, "y": y}, batch_size=BATCH,
                           points_per_call=6)
    # f(a, b) = mean((r + a s1 + b s2)^2), a quadratic with closed-form coefficients.
    X = x.astype(np.float64)
    r = X @ np.asarray(theta["w"], np.float64) + 0.3 - y
    s1 = X @ np.asarray(d1["w"], np.float64)
    s2 = X @ np.asarray(d2["w"], np.float64) + 1.0
    A, B = np.meshgrid(*AXES, indexing="ij")
    want = (np.mean(r * r) + 2 * A * np.mean(r * s1) + 2 * B * np.mean(r * s2)
            + A ** 2 * np.mean(s1 * s1) + 2 * A * B * np.mean(s1 * s2) + B ** 2 * np.mean(s2 * s2))
    np.testing.assert_allclose(surf.values["loss"], want, rtol=1e-5)


def test_bn_interpolate_policy(setup):
    s = setup
    stats_b = jax.tree_util.tree_map(lambda t: t * 0.5 + 0.1, s["stats"])
    sd = L.interpolation_direction(s["stats"], stats_b)
    axes = [np.linspace(-0.5, 1.5, 5)]
    surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                           model_state=s["stats"], bn_policy="interpolate",
                           state_directions=[sd], batch_size=BATCH)
    for i, a in enumerate(axes[0]):
        p = _perturb(s["params"], s["dirs"][:1], (a,))
        st = _perturb(s["stats"], [sd], (a,))
        st = {"BatchNorm_0": {"mean": st["BatchNorm_0"]["mean"],
                              "var": jnp.maximum(st["BatchNorm_0"]["var"], 0.0)}}
        loss, _ = _direct(s["model"], p, st, s["x"], s["y"])
        assert surf.values["loss"][i] == pytest.approx(loss, rel=2e-5)


def test_bn_recompute_policy_matches_hand_statistics(setup):
    s = setup
    update = _bn_update(s["model"])
    axes = [np.linspace(-1.0, 1.0, 3)]
    surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                           model_state=s["stats"], bn_policy="recompute", bn_update_fn=update,
                           batch_size=BATCH)
    ref_model = ConvBN(momentum=0.0)  # running statistics = this batch's statistics exactly
    for i, a in enumerate(axes[0]):
        p = _perturb(s["params"], s["dirs"][:1], (a,))
        acc, count = None, 0
        for start in range(0, N, BATCH):
            xb = s["x"][start:start + BATCH]
            _, upd = ref_model.apply({"params": p, "batch_stats": s["stats"]}, xb, train=True,
                                     mutable=["batch_stats"])
            weight = len(xb)
            st = jax.tree_util.tree_map(lambda t, w=weight: np.asarray(t, np.float64) * w,
                                        upd["batch_stats"])
            acc = st if acc is None else jax.tree_util.tree_map(np.add, acc, st)
            count += len(xb)
        stats = jax.tree_util.tree_map(lambda t, n=count: jnp.asarray(t / n, jnp.float32), acc)
        loss, _ = _direct(s["model"], p, stats, s["x"], s["y"])
        assert surf.values["loss"][i] == pytest.approx(loss, rel=1e-4)
    # Recomputed statistics differ from the kept ones (the test would be vacuous otherwise).
    keep = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                           model_state=s["stats"], batch_size=BATCH)
    assert not np.allclose(keep.values["loss"], surf.values["loss"], rtol=1e-3)


@pytest.mark.parametrize("grid,data", [(4, 1), (1, 4), (2, 2)])
def test_mesh_gives_same_surface_as_one_device(setup, grid, data):
    s = setup
    assert len(jax.devices()) >= 4, "conftest should give 4 CPU devices"
    kw = dict(model_state=s["stats"], batch_size=BATCH, points_per_call=4)
    one = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], **kw)
    many = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"],
                           mesh=make_mesh(grid, data), **kw)
    for k in one.values:
        np.testing.assert_allclose(many.values[k], one.values[k], rtol=1e-5, atol=1e-6)


def test_mesh_recompute_policy(setup):
    s = setup
    update = _bn_update(s["model"])
    kw = dict(model_state=s["stats"], batch_size=BATCH, bn_policy="recompute",
              bn_update_fn=update, points_per_call=2)
    axes = [np.linspace(-1.0, 1.0, 3)]
    one = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"], **kw)
    many = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                           mesh=make_mesh(2, 2), **kw)
    np.testing.assert_allclose(many.values["loss"], one.values["loss"], rtol=1e-5)


def test_points_per_step_and_bfloat16(setup):
    s = setup
    kw = dict(model_state=s["stats"], batch_size=BATCH, points_per_call=6)
    ref = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], **kw)
    vm = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], points_per_step=3,
                         **kw)
    np.testing.assert_allclose(vm.values["loss"], ref.values["loss"], rtol=1e-5)
    bf = L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], dtype="bfloat16", **kw)
    np.testing.assert_allclose(bf.values["loss"], ref.values["loss"], rtol=3e-2)
    assert not np.array_equal(bf.values["loss"], ref.values["loss"])  # it did compute in bf16


def test_memory_is_bounded_independently_of_points_per_call(setup):
    s = setup
    kw = dict(model_state=s["stats"])
    axes = [np.linspace(-1, 1, 16)]

    def scratch(**extra):
        surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"], **kw,
                               **extra)
        return surf.info["scratch_bytes_per_device"]

    few = scratch(points_per_call=2, batch_size=4)
    many = scratch(points_per_call=16, batch_size=4)
    assert many <= few * 1.1  # lax.map: memory does not grow with points per call
    assert scratch(points_per_call=2, batch_size=32) > 3 * few  # but with the batch
    kw["batch_size"] = BATCH
    with pytest.raises(ValueError, match="max_memory_bytes: one call needs"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"], **kw,
                        max_memory_bytes=16)


def test_nnx_model_through_split_merge():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin1 = nnx.Linear(3, 8, rngs=rngs)
            self.lin2 = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            return self.lin2(jnp.tanh(self.lin1(x)))

    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=N).astype(np.int32)
    graphdef, params = nnx.split(Net(nnx.Rngs(0)))

    def fn(state, batch):
        out = nnx.merge(graphdef, state)(batch["x"])
        return {"loss": _per_example(out, batch["y"])}

    d = L.random_direction(params, 5)
    axes = [np.linspace(-1, 1, 4)]
    surf = L.evaluate_grid(fn, params, [d], axes, {"x": x, "y": y}, batch_size=BATCH)
    for i, a in enumerate(axes[0]):
        model = nnx.merge(graphdef, _perturb(params, [d], (a,)))
        want = float(np.mean(_per_example(model(x), y)))
        assert surf.values["loss"][i] == pytest.approx(want, rel=1e-5)


def test_progress_bar_reports_points(setup, capsys):
    s = setup
    L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], model_state=s["stats"],
                    batch_size=BATCH, points_per_call=4, progress=True)
    err = capsys.readouterr().err
    assert "15/15 points" in err


def test_bad_inputs_name_the_field(setup):
    s = setup
    kw = dict(model_state=s["stats"], batch_size=BATCH)
    bad_dir = {"Conv_0": s["dirs"][0]["Conv_0"]}
    with pytest.raises(ValueError, match=r"directions\[1\]: tree structure"):
        L.evaluate_grid(s["fn"], s["params"], [s["dirs"][0], bad_dir], AXES, s["data"], **kw)
    nan_params = jax.tree_util.tree_map(lambda t: t.at[..., 0].set(jnp.nan), s["params"])
    with pytest.raises(ValueError, match="params: leaf 'BatchNorm_0/bias'"):
        L.evaluate_grid(s["fn"], nan_params, s["dirs"], AXES, s["data"], **kw)
    with pytest.raises(ValueError, match="axes: got 1"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES[:1], s["data"], **kw)
    with pytest.raises(ValueError, match="bn_policy"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], bn_policy="running",
                        **kw)
    with pytest.raises(ValueError, match="state_directions"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"],
                        bn_policy="interpolate", **kw)
    with pytest.raises(ValueError, match="bn_update_fn"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"],
                        bn_policy="recompute", **kw)
    with pytest.raises(ValueError, match="data: every array"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, {"x": s["x"], "y": s["y"][:3]},
                        **kw)
    with pytest.raises(ValueError, match="metric 'loss' has shape"):
        L.evaluate_grid(lambda p, st, b: {"loss": jnp.zeros((2, 2))}, s["params"], s["dirs"],
                        AXES, s["data"], **kw)
    with pytest.raises(ValueError, match="dtype"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"], AXES, s["data"], dtype="float16", **kw)


def test_linen_functions_with_penalty_and_no_state():
    from research.losses import Loss
    from research.models import MLP

    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 2)).astype(np.float32)
    y = rng.integers(0, 2, size=N).astype(np.int32)
    model = MLP(widths=(4,), num_outputs=1, activation="tanh")
    params = model.init(jax.random.key(1), x[:2])["params"]
    loss = Loss("bce", 2, "l2", 0.1)
    fn, _ = L.linen_functions(model.apply, loss, with_state=False)
    got = L.evaluate_point(fn, params, {"x": x, "y": y}, batch_size=BATCH)
    out = model.apply({"params": params}, x)
    data_loss = float(np.mean(loss.per_example(out, y)))
    penalty = 0.05 * sum(float(np.sum(np.square(params[k]["kernel"])))
                         for k in ("Dense_0", "Dense_1"))
    assert got["loss"] == pytest.approx(data_loss, rel=1e-5)
    assert got["objective"] == pytest.approx(data_loss + penalty, rel=1e-5)
    assert got["accuracy"] == pytest.approx(float(np.mean((out[:, 0] > 0) == y)), abs=1e-6)


def _line_problem(seed=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 3)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32)
    theta = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
    return theta, {"x": x, "y": y}


def _line_reference(theta, d, axis, data) -> np.ndarray:
    """Mean squared error of the line problem at theta + a d for each a, in float64."""
    x64 = data["x"].astype(np.float64)
    return np.array([np.mean((x64 @ (np.asarray(theta["w"], np.float64)
                                     + a * np.asarray(d["w"], np.float64)) - data["y"]) ** 2)
                     for a in axis])


def test_second_surface_of_the_same_model_compiles_nothing():
    theta, data = _line_problem()
    traces = []

    def fn(p, batch):
        traces.append(1)  # runs only when JAX traces the function
        return (batch["x"] @ p["w"] - batch["y"]) ** 2

    first = L.evaluate_grid(fn, theta, [L.gaussian_direction(theta, 0)], [np.linspace(-1, 1, 7)],
                            data, batch_size=BATCH)
    assert first.complete
    before = len(traces)
    d = L.gaussian_direction(theta, 1)
    second = L.evaluate_grid(fn, theta, [d], [np.linspace(-3, 2, 7)], data, batch_size=BATCH)
    assert len(traces) == before  # new directions and coordinates, same shapes: no trace
    np.testing.assert_allclose(second.values["loss"],
                               _line_reference(theta, d, np.linspace(-3, 2, 7), data), rtol=1e-5)


def test_chunks_are_fitted_to_the_grid(setup, monkeypatch):
    monkeypatch.setattr(L.evaluate, "MAX_CPU_CALLS", 1)  # one call at a time: see below
    assert L.evaluate.chunk_size(9, 32) == 9  # a 3x3 grid costs 9 points, not 32
    assert L.evaluate.chunk_size(121, 32) == 31  # 4 equal chunks, 3 padded points
    assert L.evaluate.chunk_size(15, 4, unit=4) == 4
    assert L.evaluate.chunk_size(121, 32, unit=4) == 32
    assert L.evaluate.chunk_size(3, 32, unit=4) == 4  # never less than one point per device
    s = setup
    sizes = []
    L.evaluate_grid(s["fn"], s["params"], s["dirs"], [np.linspace(-1, 1, 3)] * 2, s["data"],
                    model_state=s["stats"], batch_size=BATCH, points_per_call=32,
                    on_chunk=lambda surface, n: sizes.append(n))
    assert sizes == [9]


def test_chunks_run_at_once_on_one_cpu_device_with_the_same_numbers(monkeypatch):
    # Each point's evaluation waits at a two-party barrier: two calls pass it only if they run
    # at the same time, one call at a time would time out.
    theta, data = _line_problem()
    barrier = threading.Barrier(2, timeout=20)

    def meet(x):
        barrier.wait()
        return x

    def fn(p, batch):
        loss_B = (batch["x"] @ p["w"] - batch["y"]) ** 2
        return jax.pure_callback(meet, jax.ShapeDtypeStruct(loss_B.shape, loss_B.dtype), loss_B)

    monkeypatch.setattr("research.sharding.usable_cpus", lambda: 2)
    assert L.evaluate.concurrent_calls(L.evaluate.single_device_mesh()) == 2
    assert L.evaluate.concurrent_calls(make_mesh(grid=2)) == 1  # several devices: one call
    axes, d = [np.linspace(-1, 1, 9)], [L.gaussian_direction(theta, 0)]
    sizes = []
    both = L.evaluate_grid(fn, theta, d, axes, data, batch_size=BATCH,
                           on_chunk=lambda surface, n: sizes.append(n))
    assert sizes == [5, 4]  # 9 points in two chunks, one per call, stored in grid order
    monkeypatch.setattr(L.evaluate, "MAX_CPU_CALLS", 1)
    barrier = threading.Barrier(1)  # one call at a time no longer meets anyone
    one = L.evaluate_grid(fn, theta, d, axes, data, batch_size=BATCH)
    np.testing.assert_array_equal(both.values["loss"], one.values["loss"])
    np.testing.assert_allclose(both.values["loss"], _line_reference(theta, d[0], axes[0], data),
                               rtol=1e-5)


def test_huge_grid_is_refused_before_allocating():
    theta, data = _line_problem()
    axis = np.linspace(-1, 1, 100_000)
    with pytest.raises(ValueError, match=r"axes: the grid 100000 x 100000 has 10,000,000,000 "
                                         r"points; its surface would need [\d,.]+ GiB"):
        L.evaluate_grid(lambda p, b: b["x"] @ p["w"], theta, [theta, theta], [axis, axis], data)
    with pytest.raises(ValueError, match=r"grid: the grid 1000000000 has 1,000,000,000 points"):
        L.parse_grid("-1:1:1000000000")


def test_one_point_axis():
    with pytest.raises(ValueError, match="ambiguous.*'-1:-1:1'"):
        L.parse_grid("-1:1:1")
    np.testing.assert_array_equal(L.parse_grid("0.5:0.5:1"), [0.5])
    theta, data = _line_problem()
    s = L.evaluate_grid(lambda p, b: (b["x"] @ p["w"]) ** 2, theta, [theta], [[0.5]], data)
    want = np.mean((data["x"].astype(np.float64) @ (1.5 * np.asarray(theta["w"]))) ** 2)
    assert s.shape == (1,) and s.values["loss"][0] == pytest.approx(want, rel=1e-5)


def test_batch_norm_policy_equals_the_old_keywords(setup):
    s = setup
    axes = [np.linspace(-1.0, 1.0, 3)]
    update = _bn_update(s["model"])
    old = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                          model_state=s["stats"], bn_policy="recompute", bn_update_fn=update,
                          batch_size=BATCH)
    policy = L.BatchNormPolicy("recompute", state=s["stats"], update_fn=update)
    new = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                          batch_norm=policy, batch_size=BATCH)
    np.testing.assert_array_equal(new.values["loss"], old.values["loss"])
    assert new.settings == old.settings
    with pytest.raises(ValueError, match="not both"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"],
                        batch_norm=policy, model_state=s["stats"])
    with pytest.raises(TypeError, match="bn_polcy"):
        L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], axes, s["data"], bn_polcy="keep")


def test_interpolated_variance_crossing_zero_is_clamped(setup):
    s = setup
    stats_b = {"BatchNorm_0": {"mean": s["stats"]["BatchNorm_0"]["mean"],
                               "var": s["stats"]["BatchNorm_0"]["var"] * 0.2}}
    sd = L.interpolation_direction(s["stats"], stats_b)
    surf = L.evaluate_grid(s["fn"], s["params"], s["dirs"][:1], [np.array([1.0, 1.5])],
                           s["data"], batch_norm=L.BatchNormPolicy(
                               "interpolate", state=s["stats"], state_directions=[sd]),
                           batch_size=BATCH)
    # At 1.5 the extrapolated variance is -0.2 var: without the clamp, rsqrt gives NaN.
    st = {"BatchNorm_0": {"mean": s["stats"]["BatchNorm_0"]["mean"],
                          "var": jnp.zeros_like(s["stats"]["BatchNorm_0"]["var"])}}
    p = _perturb(s["params"], s["dirs"][:1], (1.5,))
    loss, _ = _direct(s["model"], p, st, s["x"], s["y"])
    assert surf.values["loss"][1] == pytest.approx(loss, rel=2e-5)


def test_recomputed_variance_from_cancellation_is_clamped():
    # A plain-JAX BatchNorm with the fast, unclamped variance E[h^2] - E[h]^2: on near-constant
    # features with a large mean it comes out slightly negative from float32 cancellation.
    rng = np.random.default_rng(0)
    x = (1000.0 + 1e-3 * rng.normal(size=(7, 8))).astype(np.float32)
    data = {"x": x, "y": np.zeros(7, np.float32)}
    theta = {"w": jnp.ones(8, jnp.float32)}
    state = {"mean": jnp.zeros(8, jnp.float32), "var": jnp.ones(8, jnp.float32)}

    def fast_var(h):
        return jnp.mean(h * h, 0) - jnp.mean(h, 0) ** 2

    def update(p, st, batch):
        h = batch["x"] * p["w"][None, :]
        return {"mean": 0.9 * st["mean"] + 0.1 * jnp.mean(h, 0),
                "var": 0.9 * st["var"] + 0.1 * fast_var(h)}

    def fn(p, st, batch):
        z = (batch["x"] * p["w"][None, :] - st["mean"][None, :]) \
            * jax.lax.rsqrt(st["var"] + 1e-5)[None, :]
        return jnp.mean(z * z, axis=1)

    assert float(jnp.min(jax.jit(fast_var)(jnp.asarray(x)))) < -1e-5  # the case exists
    surf = L.evaluate_grid(fn, theta, [{"w": jnp.full(8, 0.01, jnp.float32)}],
                           [np.linspace(-1, 1, 3)], data, batch_size=8,
                           batch_norm=L.BatchNormPolicy("recompute", state=state,
                                                        update_fn=update))
    assert np.isfinite(surf.values["loss"]).all()


def test_linen_functions_are_reused_for_the_same_model():
    from research.losses import Loss
    from research.models import MLP

    model, loss = MLP(widths=(4,), num_outputs=1, activation="tanh"), Loss("bce", 2)
    assert L.linen_functions(model.apply, loss) == L.linen_functions(model.apply, loss)
