"""Plots from a surface file: files written (atomically), 3D not blank, levels, VTK, GIF frames."""

import os
import pathlib
import xml.etree.ElementTree as ET

import matplotlib.artist
import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pytest
from PIL import Image

from research import landscape as L
from research import viz
from research.landscape.surface import empty_surface


@pytest.fixture(scope="module")
def surface_path(tmp_path_factory):
    x, y = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
    X, Y = np.meshgrid(x, y, indexing="ij")
    s = empty_surface([x, y], ["loss", "accuracy"], {"seed": 0}, {"split": "train"})
    s.values["loss"][:] = 0.1 + 2 * X ** 2 + 5 * (Y - 0.2) ** 2 + np.exp(3 * (X ** 2 + Y ** 2)) - 1
    s.values["accuracy"][:] = np.exp(-s.values["loss"])
    s.done[:] = True
    t = np.stack([np.linspace(0.9, 0.0, 6), np.linspace(-0.8, 0.0, 6)], 1)
    s.extras.update(trajectory=t, trajectory_steps=np.arange(6) * 5,
                    trajectory_distance=np.linspace(0.2, 0.0, 6))
    path = str(tmp_path_factory.mktemp("surf") / "plane.npz")
    L.save_surface(path, s)
    return path


@pytest.fixture(scope="module")
def line_path(tmp_path_factory):
    x = np.linspace(-0.5, 1.5, 11)
    s = empty_surface([x], ["loss", "accuracy"])
    s.values["loss"][:] = 1 + (x - 1) ** 2
    s.values["accuracy"][:] = 1 - 0.3 * np.abs(x - 1)
    s.done[:] = True
    path = str(tmp_path_factory.mktemp("line") / "interp.npz")
    L.save_surface(path, s)
    return path


def _colourful_fraction(path):
    """Share of saturated pixels: the drawn data, not the grey axes, panes and text."""
    img = np.asarray(Image.open(path).convert("RGB"), np.float64)
    return np.mean(img.max(axis=-1) - img.min(axis=-1) > 60)


def test_contour_levels_are_round_numbers():
    v = np.array([[0.01, 0.1], [1.0, 10.0]])
    levels, log = L.contour_levels(v, n=8, quantile=1.0)
    assert log
    # 1-2-5 (or finer) per decade, above the minimum, up to the top.
    assert levels[0] > 0.01 and levels[-1] == 10.0
    mantissas = levels / 10.0 ** np.floor(np.log10(levels) + 1e-9)
    assert set(np.round(mantissas, 6)) <= {1.0, 1.5, 2.0, 3.0, 5.0, 7.0}
    levels, log = L.contour_levels(np.array([2.29, 3.0, 3.62]), n=10, quantile=1.0)
    assert not log
    step = float(np.round(np.diff(levels)[0], 9))
    assert step in (0.1, 0.2, 0.25, 0.5)
    np.testing.assert_allclose(np.diff(levels), step)
    # Multiples of the step (2.4, 2.6, ...), not 2.42, 2.87, 3.18.
    np.testing.assert_allclose(levels / step, np.round(levels / step), atol=1e-9)
    assert 2.29 < levels[0] <= 2.29 + step and levels[-1] <= 3.62
    # A huge corner value does not set the top level.
    v = np.concatenate([np.linspace(1, 2, 99), [1e6]])
    assert L.contour_levels(v, 5, quantile=0.98)[0][-1] < 3


def test_all_2d_plots_write_png_and_pdf(surface_path, tmp_path):
    for name, fig in [("contour", L.plot_contour(surface_path)),
                      ("filled", L.plot_contour(surface_path, kind="filled")),
                      ("heatmap", L.plot_contour(surface_path, kind="heatmap", log=True)),
                      ("surface3d", L.plot_surface_3d(surface_path)),
                      ("trajectory", L.plot_trajectory(surface_path))]:
        paths = L.save_figure(fig, str(tmp_path / name))
        assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "pdf"]
        with open(paths[1], "rb") as f:
            assert f.read(5) == b"%PDF-"
        # Not blank (the reference's 3D plot is blank with current matplotlib).
        floor = 0.3 if name in ("filled", "heatmap") else 0.05
        assert _colourful_fraction(paths[0]) > floor, name
    assert plt.get_fignums() == []  # save_figure closes figures


def test_3d_axes_hold_the_surface(surface_path):
    s = L.load_surface(surface_path)
    for log, z in ((False, s.values["loss"]), (True, np.log10(s.values["loss"]))):
        fig = L.plot_surface_3d(surface_path, log=log)
        ax = fig.axes[0]
        assert ax.name == "3d" and len(fig.axes) == 1  # the height says it: no colour bar
        assert ax.get_zlabel() == ("loss (log scale)" if log else "loss")
        # Ticks read as losses, plainly (2, 5, 10), wherever the height is log10 of them.
        labels = [ax.zaxis.get_major_formatter()(t) for t in ax.get_zticks()]
        assert labels and all("10^" not in t and "\\times" not in t for t in labels)
        zmin, zmax = ax.get_zlim()
        assert zmin <= z.min() + 1e-9 and zmax > np.quantile(z, 0.5)
        plt.close(fig)


def test_minimum_is_marked(surface_path):
    fig = L.plot_contour(surface_path)
    s = L.load_surface(surface_path)
    i, j = np.unravel_index(np.argmin(s.values["loss"]), s.shape)
    stars = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert len(stars) == 1
    np.testing.assert_allclose(stars[0].get_xydata()[0], [s.axes[0][i], s.axes[1][j]])
    plt.close(fig)


def test_1d_twin_axes_and_interpolation(line_path, tmp_path):
    fig = L.plot_interpolation(line_path, log=True)
    ax, ax2 = fig.axes
    s = L.load_surface(line_path)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), s.values["loss"])
    np.testing.assert_allclose(ax2.lines[0].get_ydata(), s.values["accuracy"])
    assert ax.get_yscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert "initial" in texts and "trained" in texts
    assert _colourful_fraction(L.save_figure(fig, str(tmp_path / "interp"), ("png",))[0]) > 0.01
    with pytest.raises(ValueError, match="1D"):
        L.plot_1d(L.load_surface(line_path).__class__(
            axes=(np.zeros(2), np.zeros(2)), values={"loss": np.zeros((2, 2))},
            done=np.ones((2, 2), bool)))


def test_vtp_export_parses_back(surface_path, tmp_path):
    path = L.export_vtp(surface_path, str(tmp_path / "s.vtp"), zmax=1e9)
    s = L.load_surface(surface_path)
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    nx, ny = s.shape
    assert int(piece.get("NumberOfPoints")) == nx * ny
    assert int(piece.get("NumberOfPolys")) == (nx - 1) * (ny - 1)
    pts = np.array(piece.find("Points/DataArray").text.split(), float).reshape(-1, 3)
    X, Y = np.meshgrid(*s.axes, indexing="ij")
    np.testing.assert_allclose(pts[:, 0], X.ravel(), rtol=1e-6)
    np.testing.assert_allclose(pts[:, 1], Y.ravel(), rtol=1e-6)
    np.testing.assert_allclose(pts[:, 2], s.values["loss"].ravel(), rtol=1e-6)
    arrays = {a.get("Name"): a for a in piece.find("Polys")}
    conn = np.array(arrays["connectivity"].text.split(), int).reshape(-1, 4)
    assert conn.max() == nx * ny - 1
    np.testing.assert_array_equal(conn[0], [0, ny, ny + 1, 1])
    offsets = np.array(arrays["offsets"].text.split(), int)
    np.testing.assert_array_equal(offsets, 4 * np.arange(1, (nx - 1) * (ny - 1) + 1))
    names = {a.get("Name") for a in piece.find("PointData")}
    assert names == {"loss", "accuracy"}


def test_gif_has_one_frame_per_checkpoint(surface_path, tmp_path):
    path = L.animate_trajectory(surface_path, str(tmp_path / "descent.gif"), fps=4)
    with Image.open(path) as im:
        assert im.n_frames == 6


def test_plot_errors_name_the_problem(surface_path, line_path):
    with pytest.raises(ValueError, match="metric: 'acc'"):
        L.plot_contour(surface_path, metric="acc")
    with pytest.raises(ValueError, match="kind"):
        L.plot_contour(surface_path, kind="wireframe")
    with pytest.raises(ValueError, match="2D"):
        L.plot_contour(line_path)
    with pytest.raises(ValueError, match="no trajectory"):
        s = L.load_surface(surface_path)
        s.extras.clear()
        L.plot_trajectory(s)
    plt.close("all")


class _Boom(matplotlib.artist.Artist):
    """An artist whose drawing fails mid-render, as a bad value or a full disk would.

    It fails from its second drawing on: `bbox_inches="tight"` first draws the figure once for
    the layout, before any file is opened; the failure must come while the file is written.
    """

    def __init__(self):
        super().__init__()
        self.calls = 0

    def draw(self, renderer):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")


def test_failed_render_keeps_the_old_figure_and_leaves_no_temporary(surface_path, tmp_path):
    assert L.save_figure is viz.save_figure  # one function writes every figure
    stem = str(tmp_path / "plane")
    paths = L.save_figure(L.plot_contour(surface_path), stem, ("pdf", "png"))
    before = {p: pathlib.Path(p).read_bytes() for p in paths}
    fig = L.plot_contour(surface_path)
    fig.add_artist(_Boom())
    with pytest.raises(RuntimeError, match="boom"):
        L.save_figure(fig, stem, ("pdf", "png"))
    assert {p: pathlib.Path(p).read_bytes() for p in paths} == before
    assert sorted(os.listdir(tmp_path)) == ["plane.pdf", "plane.png"]
    assert plt.get_fignums() == []


def test_save_figure_keeps_dots_in_the_name_and_drops_a_figure_extension(tmp_path):
    fig, _ = plt.subplots()
    want = [str(tmp_path / "lr_0.5.png")]
    assert viz.save_figure(fig, str(tmp_path / "lr_0.5"), ("png",)) == want
    fig, _ = plt.subplots()
    assert viz.save_figure(fig, str(tmp_path / "a.pdf")) == [str(tmp_path / f"a.{e}")
                                                              for e in ("png", "pdf")]
    with pytest.raises(ValueError, match="formats"):
        viz.save_figure(plt.subplots()[0], str(tmp_path / "b"), ("png", "docx"))
    assert sorted(os.listdir(tmp_path)) == ["a.pdf", "a.png", "lr_0.5.png"]


def test_theta_star_drawn_over_the_minimum_and_labels_plain(surface_path):
    s = L.load_surface(surface_path)
    s.values["loss"][:] = s.values["loss"] - s.values["loss"].min() + 1.0
    i0, j0 = (np.argmin(np.abs(a)) for a in s.axes)
    s.values["loss"][i0, j0] = 0.5  # the minimum at theta*
    fig = L.plot_contour(s)
    ax = fig.axes[0]
    star = next(ln for ln in ax.lines if ln.get_marker() == "*")
    theta = next(ln for ln in ax.lines if ln.get_label().startswith("\u03b8*"))
    np.testing.assert_allclose(star.get_xydata()[0], theta.get_xydata()[0])
    assert theta.get_zorder() > star.get_zorder() and theta.get_markersize() < star.get_markersize()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("\u03b8*") for t in labels) and any("minimum" in t for t in labels)
    assert ax.get_aspect() == 1.0  # equal units on both axes
    assert "bicubic interpolation" in ax.get_title()
    bar = fig.axes[1]
    ticks = [bar.yaxis.get_major_formatter()(t) for t in bar.get_yticks()]
    assert ticks and all("10^" not in t and "\\times" not in t for t in ticks)
    plt.close(fig)


def test_step_labels_are_spaced_and_skip_theta_star(surface_path):
    s = L.load_surface(surface_path)
    t = np.array([[0.9, -0.8], [0.5, -0.4], [0.02, 0.01], [0.01, 0.0], [0.005, 0.0], [0.0, 0.0]])
    s.extras.update(trajectory=t, trajectory_steps=np.arange(6) * 10)
    fig = L.plot_trajectory(s, annotate_steps=6)
    texts = sorted(a.get_text() for a in fig.axes[0].texts
                   if isinstance(a, matplotlib.text.Annotation))  # not the contour labels
    assert texts == ["10", "step 0"]  # 20..50 crowd at theta* and are left out
    plt.close(fig)


def test_every_plot_draws_into_a_panel(surface_path, line_path):
    fig = plt.figure(figsize=(12, 8))
    axes = [fig.add_subplot(2, 3, k) for k in (1, 2, 3, 4)]
    ax3d = fig.add_subplot(2, 3, 5, projection="3d")
    assert L.plot_contour(surface_path, ax=axes[0]) is fig
    assert L.plot_trajectory(surface_path, ax=axes[1]) is fig
    assert L.plot_1d(line_path, ax=axes[2]) is fig
    assert L.plot_interpolation(line_path, ax=axes[3]) is fig
    assert L.plot_surface_3d(surface_path, ax=ax3d) is fig
    assert all(a.has_data() for a in [*axes, ax3d])
    with pytest.raises(ValueError, match="3D"):
        L.plot_surface_3d(surface_path, ax=axes[0])
    panels = plt.figure().subplots(1, 2)
    records = [{"split": sp, "epoch": e, "loss": 1.0 / e, "accuracy": 0.1 * e}
               for e in (1, 2, 3) for sp in ("train_steps", "train", "val", "test")]
    assert viz.plot_learning_curves(records, ax=panels) is panels[0].figure
    assert [ln.get_label() for ln in panels[0].lines][2] == "validation"
    plt.close("all")


def test_spectrogram_examples_have_time_mel_axes_and_db_bar():
    x = np.random.default_rng(0).normal(size=(4, 40, 63, 1))
    stats = {"mean": list(np.linspace(-60, -20, 40)), "std": [10.0] * 40}
    fig = viz.plot_spectrogram_examples(x, np.array([0, 1, 0, 1]), ["a", "b"],
                                        sample_rate=16000, hop_length=256,
                                        standardization=stats)
    ax = fig.axes[0]
    assert ax.get_xlim()[1] == pytest.approx(62.5 * 256 / 16000)  # seconds
    assert "1k" in [t.get_text() for t in ax.get_yticklabels()]
    assert fig.axes[-1].get_ylabel() == "log-mel power (dB)"
    lo, hi = ax.images[0].get_clim()
    assert -80 < lo < hi < 10  # mapped back to dB, not standard deviations
    plt.close(fig)


def test_activation_curves_and_their_derivatives_match_the_formulas():
    fig = viz.plot_activations(("linear", "sigmoid", "tanh", "relu"), lo=-3.0, hi=3.0)
    values, slopes = ([line.get_ydata() for line in ax.get_lines() if line.get_label()[0] != "_"]
                      for ax in fig.axes[:2])
    z = fig.axes[0].get_lines()[0].get_xdata()
    assert z[0] == -3.0 and z[-1] == 3.0 and len(values) == len(slopes) == 4
    s = 1.0 / (1.0 + np.exp(-z))
    np.testing.assert_allclose(values[0], z, atol=1e-6)
    np.testing.assert_allclose(slopes[0], 1.0)
    np.testing.assert_allclose(values[1], s, atol=1e-6)
    np.testing.assert_allclose(slopes[1], s * (1 - s), atol=1e-6)
    np.testing.assert_allclose(values[2], np.tanh(z), atol=1e-6)
    np.testing.assert_allclose(slopes[2], 1 - np.tanh(z) ** 2, atol=1e-5)
    np.testing.assert_allclose(values[3], np.maximum(z, 0), atol=1e-6)
    np.testing.assert_allclose(slopes[3][z != 0], (z[z != 0] > 0).astype(float))
    plt.close(fig)
