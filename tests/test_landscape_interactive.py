"""The interactive HTML export: offline page, the data in it, and a headless browser render."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from research.landscape.interactive import build_figure, export_html
from research.landscape.surface import empty_surface, save_surface

pytest.importorskip("plotly", reason="plotly (optional dependency) is not installed")


def _plane(tmp_path, with_trajectory=True):
    a, b = np.linspace(-1.0, 1.0, 7), np.linspace(-0.5, 1.5, 5)
    s = empty_surface([a, b], ["loss", "accuracy"], info={"title": "toy plane"})
    A, B = np.meshgrid(a, b, indexing="ij")
    s.values["loss"][:] = 0.05 + A**2 + 3.0 * (B - 0.5) ** 2
    s.values["accuracy"][:] = 1.0 - A**2 / 2
    s.done[:] = True
    s.done[0, 0] = False  # one point not computed yet: a gap, not a value
    if with_trajectory:
        s.extras["trajectory"] = np.array([[0.9, 1.2], [0.5, 0.8], [0.1, 0.55], [0.0, 0.5]])
        s.extras["trajectory_steps"] = np.array([0, 10, 20, 30])
    path = str(tmp_path / "plane.npz")
    save_surface(path, s)
    return path, s


def test_figure_holds_the_grid_in_plotly_orientation(tmp_path):
    path, s = _plane(tmp_path)
    fig = build_figure(path, log=False)
    surf = fig.data[0]
    z = np.asarray(surf.z, np.float64)
    v = s.values["loss"]
    # plotly's z[row][col] is at (x[col], y[row]); our grid is values[i along axis 0, j along 1].
    assert z.shape == (len(s.axes[1]), len(s.axes[0]))
    assert z[3, 5] == pytest.approx(v[5, 3])
    assert np.isnan(z[0, 0]) and np.isnan(np.asarray(surf.customdata, np.float64)[0, 0])
    # The marked minimum is the grid's argmin among computed points, by brute force.
    best = min((v[i, j], i, j) for i in range(v.shape[0]) for j in range(v.shape[1])
               if s.done[i, j])
    minimum = next(t for t in fig.data if t.name == "grid minimum")
    assert minimum.x[0] == s.axes[0][best[1]] and minimum.y[0] == s.axes[1][best[2]]
    assert minimum.z[0] == pytest.approx(best[0])
    # The trajectory point at a grid node sits on the surface.
    traj = next(t for t in fig.data if t.name == "trajectory")
    assert list(traj.customdata) == [0, 10, 20, 30]
    assert traj.z[-1] == pytest.approx(v[3, 2])


def test_log_toggle_switches_precomputed_traces(tmp_path):
    path, s = _plane(tmp_path)
    fig = build_figure(path, log=True)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["linear", "log\u2081\u2080"]
    linear_vis, log_vis = (b.args[0]["visible"] for b in buttons)
    assert len(linear_vis) == len(fig.data) == 6  # surface, minimum, trajectory per view
    assert all(a != b for a, b in zip(linear_vis, log_vis))
    assert [bool(t.visible) for t in fig.data] == log_vis  # starts in the log view
    log_surface = fig.data[log_vis.index(True)]
    assert np.asarray(log_surface.z, np.float64)[2, 4] == pytest.approx(
        np.log10(s.values["loss"][4, 2]))


def test_html_is_self_contained_and_has_the_data(tmp_path):
    path, _ = _plane(tmp_path)
    out = export_html(path, str(tmp_path / "page" / "plane.html"))
    with open(out, encoding="utf-8") as f:
        html = f.read()
    scripts = re.findall(r"<script[^>]*>", html, flags=re.I)
    assert scripts and not any("src=" in s.lower() for s in scripts), scripts
    assert not re.search(r"<link[^>]+href=[\"']https?:", html, flags=re.I)
    assert "toy plane" in html and "grid minimum" in html and "trajectory" in html
    assert len(html) > 1_000_000  # plotly.js itself is inside the page
    assert not [f for f in os.listdir(tmp_path / "page") if f != "plane.html"]  # no temp left


def test_one_dimensional_surface_and_bad_input(tmp_path):
    s = empty_surface([np.linspace(0, 1, 5)], ["loss"])
    s.values["loss"][:] = [1.0, 0.5, 0.2, 0.4, 2.0]
    s.done[:] = True
    fig = build_figure(s, log=False)
    assert list(fig.data[1].x) == [0.5] and fig.data[1].y[0] == 0.2
    assert [b.args[0]["yaxis.type"] for b in fig.layout.updatemenus[0].buttons] == [
        "linear", "log"]
    with pytest.raises(ValueError, match="metric"):
        build_figure(s, metric="accuracy")
    with pytest.raises(ValueError, match="no trajectory"):
        build_figure(s, trajectory=True)
    s.done[:] = False
    with pytest.raises(ValueError, match="no computed"):
        build_figure(s)
    assert not os.path.exists(tmp_path / "x.html")


def test_missing_plotly_is_named(tmp_path, monkeypatch):
    path, _ = _plane(tmp_path)
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match="pip install plotly"):
        export_html(path, str(tmp_path / "x.html"))
    assert not os.path.exists(tmp_path / "x.html")


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None,
                    reason="no headless browser (apt-get install chromium) to render the page")
def test_page_renders_offline_in_headless_chromium(tmp_path):
    import matplotlib.image

    path, _ = _plane(tmp_path)
    page = export_html(path, str(tmp_path / "plane.html"), log=True)
    png = tmp_path / "shot.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'ud'}",
           f"--screenshot={png}", "--window-size=900,700", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", "file://" + os.path.abspath(page)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or "ERROR:CONSOLE" in line
              or "Error:" in line]
    assert not errors, "\n".join(errors)
    assert png.exists(), proc.stderr[-2000:]
    rgb = matplotlib.image.imread(str(png))[..., :3]
    assert rgb.shape[:2] == (700, 900)
    colours = np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    # A blank or error page has a handful of colours; the shaded viridis surface has hundreds.
    assert len(colours) > 300 and rgb.std() > 0.05, (len(colours), rgb.std())
    # The 3D surface is in the middle of the page: more than white there.
    centre = rgb[200:500, 250:650]
    assert (centre.sum(axis=-1) < 2.7).mean() > 0.2
