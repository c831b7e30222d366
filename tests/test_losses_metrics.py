import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import metrics as M
from research.losses import Loss


def test_bce_matches_formula():
    o = np.array([[-2.0], [0.3], [4.0]], np.float32)
    y = np.array([0, 1, 1])
    p = 1 / (1 + np.exp(-o[:, 0]))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(Loss("bce", 2).per_example(jnp.asarray(o), jnp.asarray(y)),
                               expected, rtol=1e-5)


def test_softmax_ce_matches_formula():
    o = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
    y = np.array([2, 0])
    logp = o - np.log(np.exp(o).sum(1, keepdims=True))
    np.testing.assert_allclose(Loss("softmax_ce", 3).per_example(o, y),
                               -logp[np.arange(2), y], rtol=1e-5)
    np.testing.assert_array_equal(Loss("softmax_ce", 3).predict(o), [1, 2])


def test_playground_squared_error_on_tanh_and_regression():
    o = np.array([[0.5], [-1.0]], np.float32)
    y = np.array([1, 0])  # targets +1, -1
    np.testing.assert_allclose(Loss("mse", 2).per_example(o, y),
                               0.5 * (np.tanh(o[:, 0]) - np.array([1, -1])) ** 2, rtol=1e-6)
    t = np.array([0.2, 0.4], np.float32)
    np.testing.assert_allclose(Loss("mse", 0).per_example(o, t), 0.5 * (o[:, 0] - t) ** 2)
    assert not Loss("mse", 0).classification


def test_penalties_cover_kernels_only():
    params = {"Dense_0": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([10.0, 10.0])},
              "BatchNorm_0": {"scale": jnp.array([5.0]), "bias": jnp.array([5.0])}}
    assert float(Loss("bce", 2, "l1", 0.1).penalty(params)) == pytest.approx(0.3)
    assert float(Loss("bce", 2, "l2", 0.1).penalty(params)) == pytest.approx(0.1 * 0.5 * 5)
    assert float(Loss("bce", 2).penalty(params)) == 0.0


def test_bce_refuses_multiclass():
    with pytest.raises(ValueError, match="bce"):
        Loss("bce", 5)


def _brute_confusion(pred, y, c):
    out = np.zeros((c, c), int)
    for p, t in zip(pred, y):
        out[t, p] += 1
    return out


def test_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    c = 4
    y = rng.integers(0, c, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, c, 200))
    conf = _brute_confusion(pred, y, c)
    recalls = [np.mean(pred[y == k] == k) for k in range(c)]
    f1s = []
    for k in range(c):
        tp = np.sum((pred == k) & (y == k))
        fp = np.sum((pred == k) & (y != k))
        fn = np.sum((pred != k) & (y == k))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    # Host arrays (numpy), JAX arrays (jax.numpy) and under jit: the same numbers.
    confusion_jit = jax.jit(M.confusion_matrix, static_argnums=2)
    for arr, confusion in ((np.asarray, M.confusion_matrix), (jnp.asarray, M.confusion_matrix),
                           (jnp.asarray, confusion_jit)):
        got = confusion(arr(pred), arr(y), c)
        assert isinstance(got, np.ndarray) == (arr is np.asarray)
        np.testing.assert_array_equal(got, conf)
        assert float(M.accuracy(arr(pred), arr(y))) == pytest.approx(np.mean(pred == y))
        assert float(M.balanced_accuracy(arr(conf))) == pytest.approx(np.mean(recalls),
                                                                       rel=1e-6)
        assert float(M.macro_f1(arr(conf))) == pytest.approx(np.mean(f1s), rel=1e-6)
    assert float(jax.jit(M.macro_f1)(conf)) == pytest.approx(np.mean(f1s), rel=1e-6)


def test_metrics_mask_and_absent_classes():
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    mask = np.array([1, 1, 1, 1, 0])
    assert float(M.accuracy(pred, y, mask)) == pytest.approx(3 / 4)
    assert float(M.accuracy(jnp.asarray(pred), y, mask)) == pytest.approx(3 / 4)
    np.testing.assert_array_equal(M.confusion_matrix(pred, y, 4, jnp.asarray(mask)),
                                  M.confusion_matrix(pred, y, 4, mask))
    conf = M.confusion_matrix(pred, y, 4, mask)
    assert int(conf.sum()) == 4
    # class 2 masked out and class 3 absent: balanced accuracy averages classes 0 and 1 only
    assert float(M.balanced_accuracy(conf)) == pytest.approx((0.5 + 1.0) / 2)
    for pred_, y_ in itertools.product([pred], [y]):
        assert M.confusion_matrix(pred_, y_, 3).shape == (3, 3)


def test_per_class_against_brute_force():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 100)
    pred = np.where(rng.random(100) < 0.7, y, rng.integers(0, 3, 100))
    out = M.per_class(_brute_confusion(pred, y, 3))
    for k in range(3):
        tp = np.sum((pred == k) & (y == k))
        assert out["precision"][k] == pytest.approx(tp / np.sum(pred == k))
        assert out["recall"][k] == pytest.approx(tp / np.sum(y == k))
        p, r = out["precision"][k], out["recall"][k]
        assert out["f1"][k] == pytest.approx(2 * p * r / (p + r))
        assert out["support"][k] == np.sum(y == k)
