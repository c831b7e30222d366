import numpy as np
import pytest

from research.config import DataConfig
from research.data import load_dataset
from research.data.playground import input_features, make_dataset, reg_gauss_label


def test_xor_noise_free_labels_are_sign_of_product():
    p, y = make_dataset("xor", 500, 0.0, seed=1)
    assert p.shape == (500, 2)
    np.testing.assert_array_equal(y, np.where(p[:, 0] * p[:, 1] >= 0, 1.0, -1.0))
    # every coordinate is pushed at least 0.3 away from zero, within 5.3
    assert np.all(np.abs(p) >= 0.3) and np.all(np.abs(p) <= 5.3)


def test_circle_noise_free_radii_and_labels():
    p, y = make_dataset("circle", 500, 0.0, seed=2)
    r = np.linalg.norm(p, axis=1)
    np.testing.assert_array_equal(y, np.where(r < 2.5, 1.0, -1.0))
    assert np.all(r[:250] <= 2.5) and np.all((r[250:] >= 3.5) & (r[250:] <= 5.0))
    assert (y == 1).sum() == 250


def test_circle_noise_changes_labels_not_points():
    p0, y0 = make_dataset("circle", 400, 0.0, seed=3)
    p1, y1 = make_dataset("circle", 400, 0.5, seed=3)
    # the Playground jitters only the point used for the label
    np.testing.assert_array_equal(p0, p1)
    assert (y0 != y1).any()


def test_spiral_follows_formula():
    n = 200
    p, y = make_dataset("spiral", n, 0.0, seed=0)
    for k, (delta, label) in enumerate(((0.0, 1.0), (np.pi, -1.0))):
        for i in (0, 7, 99):
            r = 5.0 * i / 100
            t = 1.75 * i / 100 * 2 * np.pi + delta
            np.testing.assert_allclose(p[k * 100 + i], [r * np.sin(t), r * np.cos(t)])
            assert y[k * 100 + i] == label


def test_gauss_means_and_variance():
    p, y = make_dataset("gauss", 20000, 0.5, seed=0)
    np.testing.assert_allclose(p[y == 1].mean(0), [2, 2], atol=0.1)
    np.testing.assert_allclose(p[y == -1].mean(0), [-2, -2], atol=0.1)
    np.testing.assert_allclose(p[y == 1].var(0), [4.0, 4.0], rtol=0.05)  # noise 0.5 -> variance 4
    p, y = make_dataset("gauss", 20000, 0.0, seed=0)
    np.testing.assert_allclose(p[y == 1].var(0), [0.5, 0.5], rtol=0.05)


def test_regression_targets():
    p, y = make_dataset("reg-plane", 1200, 0.0, seed=0)
    np.testing.assert_allclose(y, (p[:, 0] + p[:, 1]) / 10)
    assert np.all(np.abs(p) <= 6)
    p, y = make_dataset("reg-gauss", 1200, 0.0, seed=0)
    np.testing.assert_allclose(y, reg_gauss_label(p))
    # at a bump's centre the target is its sign; far from all bumps it is 0
    centres = np.array([[-4, 2.5], [0, 2.5], [4, -2.5], [6, 6]])
    np.testing.assert_allclose(reg_gauss_label(centres), [1, -1, -1, 0])
    np.testing.assert_allclose(reg_gauss_label(np.array([[-4, 3.5]])), [0.5])


def test_features_and_determinism():
    p = np.array([[1.0, 2.0], [-0.5, 0.25]])
    x = input_features(p, ("x1", "x2", "x1^2", "x2^2", "x1*x2", "sin_x1", "sin_x2"))
    np.testing.assert_allclose(x[0], [1, 2, 1, 4, 2, np.sin(1), np.sin(2)], rtol=1e-6)
    a = make_dataset("spiral", 100, 0.3, seed=5)
    b = make_dataset("spiral", 100, 0.3, seed=5)
    c = make_dataset("spiral", 100, 0.3, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_load_splits_by_ratio_without_overlap():
    d = load_dataset(DataConfig(dataset="xor", n=200, train_ratio=0.7, features=("x1", "x1*x2")))
    # 140 points for training, of which 10% per class (seeded) held out for validation.
    assert len(d.x_train) + len(d.x_val) == 140 and len(d.x_test) == 60
    assert d.x_train.shape[1] == 2 and d.x_train.dtype == np.float32
    pts = {tuple(r) for r in np.asarray(d.info["points_train"])}
    val = {tuple(r) for r in np.asarray(d.info["points_val"])}
    test = {tuple(r) for r in np.asarray(d.info["points_test"])}
    assert not pts & test and not pts & val and not val & test
    assert len(pts | val | test) == 200
    # stratified: each class keeps its share in the validation split (within rounding)
    for c in (0, 1):
        n_c = np.sum(d.y_train == c) + np.sum(d.y_val == c)
        assert np.sum(d.y_val == c) == round(0.1 * n_c)
    np.testing.assert_array_equal(d.y_train, (d.x_train[:, 1] >= 0).astype(np.int32))


def test_bad_names():
    with pytest.raises(ValueError, match="dataset"):
        make_dataset("moons")
    with pytest.raises(ValueError, match="DataConfig.dataset"):
        load_dataset(DataConfig(dataset="moons"))
