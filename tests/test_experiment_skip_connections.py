"""Skip-connection reproduction: convexity measures on analytic surfaces, and the script end to end.

The end-to-end test runs the tiny preset and checks the files and that the table's numbers are
those of the saved surfaces.
"""

import dataclasses
import json

import numpy as np
import pytest

from experiments import skip_connections
from research.landscape import load_surface
from research.landscape.measures import convexity, edge_rise, plane_hessians, principal_curvatures


def _grid(num=9):
    x = np.linspace(-1.0, 1.0, num)
    return x, np.meshgrid(x, x, indexing="ij")


def test_hessian_exact_on_quadratics():
    x, (X, Y) = _grid()
    f = 3.0 * X**2 - 2.0 * Y**2 + 1.5 * X * Y + 0.7 * X - 4.0
    hess = plane_hessians(f, x, x)
    assert hess.shape == (7, 7, 2, 2)
    np.testing.assert_allclose(hess, np.broadcast_to([[6.0, 1.5], [1.5, -4.0]], hess.shape),
                               atol=1e-9)
    lmin, lmax = principal_curvatures(f, x, x)
    ref = np.linalg.eigvalsh(np.array([[6.0, 1.5], [1.5, -4.0]]))
    np.testing.assert_allclose(lmin, ref[0], atol=1e-9)
    np.testing.assert_allclose(lmax, ref[1], atol=1e-9)


def test_convexity_of_bowl_saddle_and_mixed_surfaces():
    x, (X, Y) = _grid(11)
    bowl = convexity(X**2 + 0.5 * Y**2, x, x)
    assert bowl["nonconvex_fraction"] == 0.0 and bowl["mean_ratio"] == 0.0
    # A saddle x^2 - 0.5 y^2: lmin/lmax = -0.5 everywhere.
    saddle = convexity(X**2 - 0.5 * Y**2, x, x)
    assert saddle["nonconvex_fraction"] == 1.0
    np.testing.assert_allclose(saddle["ratio_IxJ"], 0.5, atol=1e-9)
    # A weak saddle below the threshold counts as convex-looking.
    weak = convexity(X**2 - 0.05 * Y**2, x, x, threshold=0.1)
    assert weak["nonconvex_fraction"] == 0.0
    np.testing.assert_allclose(weak["mean_ratio"], 0.05, atol=1e-9)
    # f = y^2 + cos(pi x) curves down where |x| < 1/2: by hand, the central difference gives
    # f_xx = -cos(pi x) (2 - 2 cos(pi h)) / h^2, f_yy = 2, f_xy = 0.
    f = Y**2 + np.cos(np.pi * X)
    mixed = convexity(f, x, x, threshold=0.1)
    h = x[1] - x[0]
    fxx = -np.cos(np.pi * x[1:-1]) * (2 - 2 * np.cos(np.pi * h)) / h**2
    lmin, lmax = np.minimum(fxx, 2.0), np.maximum(fxx, 2.0)
    ratio = np.maximum(0.0, -lmin) / np.maximum(np.abs(lmin), np.abs(lmax))
    ratio_IxJ = np.broadcast_to(ratio[:, None], (len(x) - 2, len(x) - 2))
    np.testing.assert_allclose(mixed["ratio_IxJ"], ratio_IxJ, atol=1e-9)
    assert 0.0 < mixed["nonconvex_fraction"] < 1.0
    assert mixed["nonconvex_fraction"] == pytest.approx(np.mean(ratio_IxJ > 0.1))
    assert mixed["mean_ratio"] == pytest.approx(ratio_IxJ.mean())


def test_convexity_restricted_to_a_basin():
    x, (X, Y) = _grid(21)
    f = Y**2 - np.cos(np.pi * X)  # a bowl for |x| < 1/2, curving down beyond
    everywhere = convexity(f, x, x)
    basin = convexity(f, x, x, level=-0.5)  # cos(pi x) >= 0.5 + y^2: inside |x| <= 1/3
    inner = f[1:-1, 1:-1] <= -0.5
    assert basin["points"] == int(inner.sum()) > 0
    assert basin["nonconvex_fraction"] == 0.0 and basin["mean_ratio"] == 0.0
    assert everywhere["points"] == 19 * 19 and everywhere["nonconvex_fraction"] > 0.3
    np.testing.assert_array_equal(basin["ratio_IxJ"], everywhere["ratio_IxJ"])


def test_edge_rise_and_bad_grids():
    x, (X, Y) = _grid(5)
    r = edge_rise(X**2 + Y**2, x, x)
    border = np.concatenate([(X**2 + Y**2)[0], (X**2 + Y**2)[-1], (X**2 + Y**2)[1:-1, 0],
                             (X**2 + Y**2)[1:-1, -1]])
    assert r["center"] == 0.0 and r["rise"] == pytest.approx(border.mean())
    with pytest.raises(ValueError, match="evenly spaced"):
        plane_hessians(np.zeros((3, 3)), np.array([0.0, 0.1, 0.5]), np.arange(3.0))
    with pytest.raises(ValueError, match="does not match"):
        plane_hessians(np.zeros((3, 4)), np.arange(3.0), np.arange(3.0))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="Config.depths"):
        skip_connections.Config(depths=())
    with pytest.raises(ValueError, match="Config.grid"):
        skip_connections.Config(grid="-1:1:2")


def test_skip_connections_end_to_end(tmp_path):
    # One stage instead of the tiny preset's two: each of the three networks compiles fewer
    # layers (the run took 49 s instead of 61 s). Depth 1 still has a residual block of two
    # multi-channel convolutions behind the one-channel stem, with and without its skip;
    # depth 0 (no library convolution) takes the Hessian map's device loop, depth 1 the host's.
    cfg = dataclasses.replace(skip_connections.PRESETS["tiny"], channels=(2,),
                              workdir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    results = skip_connections.main(cfg)
    out = tmp_path / "skip_connections"
    for name in ("contours", "surfaces_3d", "convexity_maps", "eigen_ratio_maps",
                 "eigen_lambda_min_maps"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    rows = {r["model"]: r for r in saved["rows"]}
    assert set(rows) == {"resnet_depth0", "plain_depth0", "resnet_depth1", "plain_depth1"}
    # depth 0 has no blocks to skip: one network serves both rows
    assert rows["resnet_depth0"]["run"] == rows["plain_depth0"]["run"] == "depth0"
    assert not (out / "resnet_depth0").exists()
    axis = np.linspace(-1, 1, 5)
    for row in rows.values():
        s = load_surface(str(out / row["run"] / "plane.npz"))
        assert s.complete and s.shape == (5, 5)
        conv = convexity(s.values["loss"], axis, axis, cfg.threshold)
        assert row["nonconvex_fraction"] == pytest.approx(conv["nonconvex_fraction"])
        assert row["mean_ratio"] == pytest.approx(conv["mean_ratio"])
        basin = convexity(s.values["loss"], axis, axis, cfg.threshold, level=row["basin_level"])
        assert row["basin_points"] == basin["points"] >= 1
        assert row["basin_nonconvex_fraction"] == pytest.approx(basin["nonconvex_fraction"])
        assert row["edge_rise"] == pytest.approx(row["edge_mean_loss"] - row["center_loss"])
        assert row["center_loss"] == pytest.approx(s.values["loss"][2, 2])
        assert 0.0 <= row["test_accuracy"] <= 1.0
        # the paper's measure: the full Hessian's eigenvalue map, saved and resumable
        eig = load_surface(str(out / row["run"] / "eigen.npz"))
        assert eig.complete and eig.shape == (3, 3)
        np.testing.assert_allclose(eig.values["ratio"],
                                   np.abs(eig.values["lambda_min"] / eig.values["lambda_max"]))
        assert row["eig_mean_ratio"] == pytest.approx(np.mean(eig.values["ratio"]))
        assert row["eig_lambda_max_center"] == pytest.approx(eig.values["lambda_max"][1, 1])
        assert row["eig_lambda_max_center"] >= row["eig_lambda_min_center"]
    table = (out / "results.md").read_text()
    assert "| resnet_depth1 |" in table and "non-convex share" in table
    assert "Hessian mean abs(lmin/lmax)" in table
    # a second run reuses the trained runs and surfaces and gives the same numbers
    again = skip_connections.main(cfg)
    assert json.loads(json.dumps(again["rows"])) == saved["rows"]
