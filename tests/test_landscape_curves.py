"""Mode-connecting curves: hand formulas, brute-force evaluation, and a trained curve on xor."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.data.playground import make_dataset
from research.landscape import curves as C
from research.landscape.evaluate import linen_functions
from research.losses import Loss
from research.models import MLP
from research.train.state import TrainState
from research.train.steps import train_step_jit
from research.tree import vdot as tree_vdot


def _trees(seed=0):
    rng = np.random.default_rng(seed)
    return [{"a": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)},
             "b": rng.normal(size=(4,)).astype(np.float32)} for _ in range(3)]


def _close(tree, expected, tol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _mix(coefs, trees):
    return jax.tree_util.tree_map(lambda *xs: sum(c * x for c, x in zip(coefs, xs)), *trees)


def test_curves_by_hand_formula():
    w1, th, w2 = _trees()
    _close(C.bezier(w1, th, w2, 0.0), w1)
    _close(C.bezier(w1, th, w2, 1.0), w2)
    _close(C.bezier(w1, th, w2, 0.5), _mix([0.25, 0.5, 0.25], [w1, th, w2]))
    _close(C.bezier(w1, th, w2, 0.3), _mix([0.49, 0.42, 0.09], [w1, th, w2]))
    _close(C.polychain(w1, th, w2, 0.0), w1)
    _close(C.polychain(w1, th, w2, 0.5), th)
    _close(C.polychain(w1, th, w2, 1.0), w2)
    _close(C.polychain(w1, th, w2, 0.25), _mix([0.5, 0.5], [w1, th]))
    _close(C.polychain(w1, th, w2, 0.75), _mix([0.5, 0.5], [th, w2]))
    # Traced t (inside jit) gives the same points as a Python float.
    jitted = jax.jit(C.polychain)
    for t in (0.1, 0.5, 0.9):
        _close(jitted(w1, th, w2, jnp.float32(t)), C.polychain(w1, th, w2, t))
    # From the midpoint the Bezier curve is the straight line.
    mid = C.midpoint(w1, w2)
    for t in (0.2, 0.7):
        _close(C.bezier(w1, mid, w2, t), _mix([1 - t, t], [w1, w2]), 1e-5)
    with pytest.raises(ValueError, match="unknown curve"):
        C.curve_point("spline", w1, th, w2, 0.5)


def test_barrier_by_hand_and_bad_input():
    b = C.barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0])
    assert b["barrier"] == pytest.approx(1.5) and b["t_max"] == 0.5
    assert C.barrier([0.0, 0.5, 1.0], [1.0, 1.0, 1.0])["barrier"] == 0.0
    with pytest.raises(ValueError, match="from exactly 0"):
        C.barrier([0.1, 1.0], [1.0, 2.0])


def test_plane_coordinates_reconstruct_the_curve():
    w1, th, w2 = _trees(1)
    plane = C.curve_plane(w1, w2, th)
    e1, e2 = plane.directions
    vdot = tree_vdot
    assert vdot(e1, e1) == pytest.approx(1.0) and vdot(e2, e2) == pytest.approx(1.0)
    assert abs(vdot(e1, e2)) < 1e-6
    ts = np.array([0.0, 0.3, 0.5, 1.0])
    for kind in ("bezier", "polychain", "line"):
        for t, (x, y) in zip(ts, plane.curve(kind, ts)):
            _close(_mix([1.0, x, y], [w1, e1, e2]), C.curve_point(kind, w1, th, w2, t), 1e-5)
    with pytest.raises(ValueError, match="do not span a plane"):
        C.curve_plane(w1, w2, C.midpoint(w1, w2))


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(3)(nn.relu(x))


def test_bn_curve_against_a_brute_force_loop():
    model, loss = _BNNet(), Loss("softmax_ce", 3)
    rng = np.random.default_rng(0)
    x_tr = rng.normal(size=(40, 4)).astype(np.float32)
    x_te = rng.normal(size=(24, 4)).astype(np.float32)
    y_te = rng.integers(0, 3, 24).astype(np.int32)
    init = jax.jit(model.init)  # one compilation, not one per initializer operation
    v = [init(jax.random.PRNGKey(s), x_tr[:2]) for s in range(3)]
    w1, w2, th = (vi["params"] for vi in v)
    fn, bn_update = linen_functions(model.apply, loss, with_state=True)
    ts = np.linspace(0.0, 1.0, 5)
    s = C.evaluate_curve(fn, "bezier", w1, w2, ts, {"x": x_te, "y": y_te}, theta=th,
                         model_state=v[0]["batch_stats"], bn_update_fn=bn_update,
                         bn_data={"x": x_tr, "y": np.zeros(40, np.int32)}, batch_size=64)

    @jax.jit  # the loop's body as one program, where eager operations compile one each
    def brute_force(t):
        p = _mix([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], [w1, th, w2])
        zeros = jax.tree_util.tree_map(jnp.zeros_like, v[0]["batch_stats"])
        _, upd = model.apply({"params": p, "batch_stats": zeros}, x_tr, train=True,
                             mutable=["batch_stats"])
        # momentum 0.9 from zero: the running average is 0.1 x the training split's statistic.
        stats = jax.tree_util.tree_map(lambda r: r / 0.1, upd["batch_stats"])
        out = model.apply({"params": p, "batch_stats": stats}, x_te, train=False)
        return out, optax.softmax_cross_entropy_with_integer_labels(out, y_te)

    for k, t in enumerate(ts):
        out, ce = brute_force(np.float32(t))
        ref_loss = float(np.mean(ce))
        ref_acc = float(np.mean(np.argmax(out, -1) == y_te))
        assert s.values["loss"][k] == pytest.approx(ref_loss, rel=1e-4)
        assert s.values["accuracy"][k] == pytest.approx(ref_acc)
    with pytest.raises(ValueError, match="control point"):
        C.evaluate_curve(fn, "bezier", w1, w2, ts, {"x": x_te, "y": y_te})


def _train_mlp(x, y, seed, steps=300):
    model = MLP(widths=(16,), num_outputs=1, activation="tanh")
    state = TrainState.create(apply_fn=model.apply,
                              variables=jax.jit(model.init)(jax.random.PRNGKey(seed), x[:1]),
                              tx=optax.adam(0.03), loss=Loss("bce", 2))
    key = jax.random.PRNGKey(seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(x), 20, replace=False)
        state, _ = train_step_jit(state, {"x": x[idx], "y": y[idx]}, key)
    return state


def test_trained_curve_removes_the_straight_line_barrier_on_xor():
    pts, labels = make_dataset("xor", n=200, seed=0)
    x = np.asarray(pts, np.float32) / 5.0
    y = (np.asarray(labels) > 0).astype(np.int32)
    s1, s2 = _train_mlp(x, y, 1), _train_mlp(x, y, 2)
    w1, w2 = s1.params, s2.params
    fn, _ = linen_functions(s1.apply_fn, s1.loss, with_state=False)
    data, ts = {"x": x, "y": y}, np.linspace(0.0, 1.0, 11)
    line = C.evaluate_curve(fn, "line", w1, w2, ts, data)
    # Untrained, the Bezier curve from the midpoint is the line: same values.
    start = C.evaluate_curve(fn, "bezier", w1, w2, ts, data, theta=C.midpoint(w1, w2))
    np.testing.assert_allclose(start.values["loss"], line.values["loss"], rtol=1e-4, atol=1e-6)
    theta, history = C.train_curve(s1.apply_fn, s1.loss, w1, w2, x, y, tx=optax.adam(0.02),
                                   epochs=20, batch_size=20, seed=0)
    assert history[-1]["loss"] < history[0]["loss"]
    curve = C.evaluate_curve(fn, "bezier", w1, w2, ts, data, theta=theta)
    b_line = C.barrier(ts, line.values["loss"])["barrier"]
    b_curve = C.barrier(ts, curve.values["loss"])["barrier"]
    assert b_line > 0.1, b_line  # two xor solutions are separated along the line
    assert b_curve < 0.3 * b_line, (b_curve, b_line)
    # The ends stay fixed: the curve's end losses are the models' own.
    assert curve.values["loss"][0] == pytest.approx(line.values["loss"][0], rel=1e-5)
    assert curve.values["loss"][-1] == pytest.approx(line.values["loss"][-1], rel=1e-5)
    # Same seed, same control point (t drawn from fold_in(key, step)).
    again, _ = C.train_curve(s1.apply_fn, s1.loss, w1, w2, x, y, tx=optax.adam(0.02),
                             epochs=20, batch_size=20, seed=0)
    _close(again, theta, 0.0)
