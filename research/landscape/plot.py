"""Plots from a surface file alone: 1D curves, contours, heat maps, 3D, trajectories, GIF, VTK.

Every function takes a `Surface` or the path of a surface file, and returns a matplotlib Figure
(or writes a file). Files are written atomically: figures with `save_figure` (the same function
as `research.viz.save_figure`), the GIF and the VTK file through `research.io`. Figures use the
Agg backend and `fig.add_subplot(projection="3d")` for 3D, which renders with current matplotlib
(the reference's `Axes3D(fig)` gives a blank plot since matplotlib 3.4). Contour levels are
log-spaced when the values span more than a decade and are capped at a high quantile, so a few
huge values at the grid's corners do not flatten the picture.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from research.io import atomic_write_bytes, atomic_write_text
from research.landscape.surface import Surface, load_surface
from research.viz import save_figure

__all__ = ["animate_trajectory", "contour_levels", "export_vtp", "plot_1d", "plot_contour",
           "plot_interpolation", "plot_surface_3d", "plot_trajectory", "save_figure"]

_LABELS = {"loss": "loss", "accuracy": "accuracy", "objective": "objective (loss + penalty)"}


def _surface(surface: Surface | str) -> Surface:
    return load_surface(surface) if isinstance(surface, str) else surface


def _values(s: Surface, metric: str) -> np.ndarray:
    if metric not in s.values:
        raise ValueError(f"metric: {metric!r} is not in the surface; it has {list(s.values)}")
    v = np.array(s.values[metric], np.float64)
    v[~s.done] = np.nan
    return v


def _axis_label(s: Surface, i: int) -> str:
    labels = s.info.get("axis_labels")
    if labels and i < len(labels):
        return str(labels[i])
    return ("\u03b1", "\u03b2", "\u03b3")[i] if i < 3 else f"c{i}"


def _metric_label(metric: str) -> str:
    return _LABELS.get(metric, metric)


def _title(s: Surface, metric: str) -> str:
    parts = [str(s.info["title"])] if s.info.get("title") else []
    split = s.info.get("split")
    parts.append(f"{metric} ({split} split)" if split else metric)
    norm = s.settings.get("normalization")
    if norm:
        parts.append(f"{norm}-normalised")
    return ", ".join(parts)


def contour_levels(values: np.ndarray, n: int = 20, log: bool | None = None,
                   quantile: float = 0.98) -> tuple[np.ndarray, bool]:
    """Contour levels from the minimum to a high quantile of the finite values.

    Args:
        values: the surface values.
        n: number of levels.
        log: log-spaced levels; None chooses them when all values are positive and span more than
            a factor of 20.
        quantile: the top level is this quantile of the values (at least the minimum's double
            when log-spaced), so extreme corners do not flatten the picture.

    Returns:
        (levels, log): increasing levels and whether they are log-spaced.
    """
    finite = np.asarray(values, np.float64)[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("values: no finite values to draw")
    lo, hi = float(finite.min()), float(np.quantile(finite, quantile))
    if hi <= lo:
        hi = float(finite.max())
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    if log is None:
        log = lo > 0 and hi / lo > 20
    if log and lo <= 0:
        raise ValueError("log: log-spaced levels need positive values")
    if log:
        # The first level sits just above the minimum, so the minimum's basin is drawn closed.
        return np.geomspace(lo, hi, n + 1)[1:], True
    return np.linspace(lo, hi, n + 1)[1:], False


def plot_1d(surface: Surface | str, metric: str = "loss", second: str | None = "accuracy",
            log: bool = False, markers: Sequence[tuple[float, str]] = ((0.0, "\u03b8*"),),
            title: str | None = None) -> Figure:
    """A 1D curve of `metric` with `second` (e.g. accuracy) on a twin axis.

    Args:
        surface: a 1D surface or its path.
        metric: the left-axis metric.
        second: the right-axis metric (skipped if None or absent).
        log: logarithmic left axis.
        markers: (coordinate, label) pairs drawn as vertical lines (e.g. the models).
        title: figure title (default from the surface's metadata).

    Returns:
        The figure.
    """
    s = _surface(surface)
    if s.ndim != 1:
        raise ValueError(f"surface: plot_1d needs a 1D surface, this one has {s.ndim} directions")
    x = s.axes[0]
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    v = _values(s, metric)
    (line,) = ax.plot(x, v, color="tab:blue", lw=2, label=_metric_label(metric))
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_metric_label(metric), color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    if log:
        if np.nanmin(v) <= 0:
            raise ValueError(f"log: {metric} has values <= 0; use a linear axis")
        ax.set_yscale("log")
    handles = [line]
    if second and second in s.values:
        ax2 = ax.twinx()
        (line2,) = ax2.plot(x, _values(s, second), color="tab:red", lw=2, ls="--",
                            label=_metric_label(second))
        ax2.set_ylabel(_metric_label(second), color="tab:red")
        ax2.tick_params(axis="y", labelcolor="tab:red")
        if second == "accuracy":
            ax2.set_ylim(-0.02, 1.02)
        handles.append(line2)
    for pos, label in markers:
        if x[0] <= pos <= x[-1]:
            ax.axvline(pos, color="0.5", lw=0.8, ls=":")
            ax.annotate(label, (pos, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -12), textcoords="offset points", color="0.3")
    if np.any(np.isfinite(v)):
        i = int(np.nanargmin(v))
        ax.plot(x[i], v[i], marker="*", ms=12, color="gold", mec="k", zorder=5)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False,
              ncol=len(handles))
    ax.set_xlim(x[0], x[-1])
    ax.grid(alpha=0.3)
    ax.set_title(title or _title(s, metric))
    fig.tight_layout()
    return fig


def plot_interpolation(surface: Surface | str, metric: str = "loss",
                       second: str | None = "accuracy", log: bool = False,
                       labels: Sequence[str] = ("initial", "trained")) -> Figure:
    """The curve between two models (at 0 and 1), with both models marked.

    Args:
        surface: a 1D surface along `interpolation_direction(a, b)`, or its path.
        metric: the left-axis metric.
        second: the right-axis metric.
        log: logarithmic left axis.
        labels: names of the models at 0 and 1.

    Returns:
        The figure.
    """
    s = _surface(surface)
    labels = tuple(s.info.get("model_labels", labels))
    fig = plot_1d(s, metric, second, log, markers=((0.0, labels[0]), (1.0, labels[1])),
                  title=s.info.get("title") or f"{metric} from {labels[0]} to {labels[1]}")
    fig.axes[0].set_xlabel(f"\u03b1  (\u03b8 = (1 - \u03b1) {labels[0]} + \u03b1 {labels[1]})")
    return fig


def _norm(levels: np.ndarray, log: bool):
    if log:
        return mcolors.LogNorm(vmin=levels[0] / (levels[1] / levels[0]), vmax=levels[-1])
    step = levels[1] - levels[0] if len(levels) > 1 else 1.0
    return mcolors.Normalize(vmin=levels[0] - step, vmax=levels[-1])


def _mark_points(ax, s: Surface, v: np.ndarray) -> None:
    x, y = s.axes
    if x[0] <= 0 <= x[-1] and y[0] <= 0 <= y[-1]:
        ax.plot(0, 0, marker="+", ms=12, mew=2, color="k", zorder=5, label="\u03b8*")
    if np.any(np.isfinite(v)):
        i, j = np.unravel_index(int(np.nanargmin(v)), v.shape)
        ax.plot(x[i], y[j], marker="*", ms=14, color="gold", mec="k", zorder=6,
                label=f"min {v[i, j]:.3g} at ({x[i]:.2g}, {y[j]:.2g})")


def plot_contour(surface: Surface | str, metric: str = "loss", kind: str = "contour",
                 levels: int | Sequence[float] = 20, log: bool | None = None,
                 trajectory: bool = True, ax=None) -> Figure:
    """A 2D contour, filled contour or heat map, with theta* and the minimum marked.

    Args:
        surface: a 2D surface or its path.
        metric: the metric to draw.
        kind: contour (labelled lines), filled or heatmap.
        levels: number of levels, or the levels themselves.
        log: log-spaced levels and colour scale (None: automatic, see `contour_levels`).
        trajectory: overlay the stored optimiser trajectory, if the surface has one.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    s = _surface(surface)
    if s.ndim != 2:
        raise ValueError(f"surface: plot_contour needs a 2D surface, this one has {s.ndim}")
    if kind not in ("contour", "filled", "heatmap"):
        raise ValueError(f"kind: unknown value {kind!r}; choose contour, filled or heatmap")
    v = _values(s, metric)
    if isinstance(levels, int):
        lv, log = contour_levels(v, levels, log)
    else:
        lv = np.asarray(levels, np.float64)
        log = bool(log)
    x, y = s.axes
    X, Y = np.meshgrid(x, y, indexing="ij")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 5.0))
    else:
        fig = ax.figure
    norm = _norm(lv, log)
    cmap = plt.get_cmap("viridis")
    if kind == "heatmap":
        img = np.clip(v, norm.vmin, lv[-1])
        # Each pixel is centred on its grid point.
        hx = (x[-1] - x[0]) / max(len(x) - 1, 1) / 2
        hy = (y[-1] - y[0]) / max(len(y) - 1, 1) / 2
        m = ax.imshow(img.T, origin="lower", extent=(x[0] - hx, x[-1] + hx, y[0] - hy, y[-1] + hy),
                      aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    elif kind == "filled":
        m = ax.contourf(X, Y, np.clip(v, None, lv[-1]), levels=np.concatenate([[norm.vmin], lv]),
                        cmap=cmap, norm=norm, extend="max")
        ax.contour(X, Y, v, levels=lv, colors="k", linewidths=0.4, alpha=0.5)
    else:
        m = ax.contour(X, Y, v, levels=lv, cmap=cmap, norm=norm, linewidths=1.2)
        ax.clabel(m, m.levels[:: max(1, len(lv) // 5)], inline=True, fontsize=7, fmt="%.3g")
    # A continuous bar (not one tick per level) reads better, on a log or a linear scale.
    cb = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                      extend="max" if np.nanmax(v) > lv[-1] else "neither")
    cb.set_label(_metric_label(metric))
    del m
    if trajectory and "trajectory" in s.extras:
        _draw_trajectory(ax, s)
    _mark_points(ax, s, v)
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=7, ncol=4,
              frameon=False)
    ax.set_title(_title(s, metric) + ("" if kind == "contour" else f" ({kind})"))
    fig.tight_layout()
    return fig


def _draw_trajectory(ax, s: Surface, upto: int | None = None) -> None:
    t = np.asarray(s.extras["trajectory"])[:upto]
    ax.plot(t[:, 0], t[:, 1], "-", color="crimson", lw=1.5, zorder=4)
    ax.plot(t[:, 0], t[:, 1], "o", color="crimson", ms=3, zorder=4, label="trajectory")
    ax.plot(t[0, 0], t[0, 1], "s", color="crimson", mec="k", ms=7, zorder=5, label="start")


def plot_trajectory(surface: Surface | str, metric: str = "loss", kind: str = "contour",
                    log: bool | None = None, annotate_steps: int = 5) -> Figure:
    """The optimiser's path over the PCA plane's contour, with explained variance on the axes.

    The checkpoints' distances from the plane are printed: a checkpoint off the plane does not have
    the loss drawn under it.

    Args:
        surface: a 2D surface with `extras["trajectory"]` (from the PCA directions), or its path.
        metric: the metric to draw.
        kind: contour, filled or heatmap.
        log: log-spaced levels (None: automatic).
        annotate_steps: label about this many checkpoints with their training step.

    Returns:
        The figure.
    """
    s = _surface(surface)
    if "trajectory" not in s.extras:
        raise ValueError("surface: no trajectory stored; compute it with pca_directions and pass "
                         "extras={'trajectory': coords_Kx2, ...} to evaluate_grid")
    fig = plot_contour(s, metric, kind=kind, log=log, trajectory=True)
    ax = fig.axes[0]
    t = np.asarray(s.extras["trajectory"])
    steps = np.asarray(s.extras.get("trajectory_steps", np.arange(len(t))))
    for k in np.unique(np.linspace(0, len(t) - 1, max(2, annotate_steps)).astype(int)):
        ax.annotate(str(int(steps[k])), t[k], xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color="crimson")
    if "trajectory_distance" in s.extras:
        d = np.asarray(s.extras["trajectory_distance"])
        ax.set_title(f"{ax.get_title()}\ncheckpoints' distance from the plane: max {d.max():.3g},"
                     f" mean {d.mean():.3g}", fontsize=10)
    return fig


def plot_surface_3d(surface: Surface | str, metric: str = "loss", log: bool | None = None,
                    elev: float = 30.0, azim: float = -60.0) -> Figure:
    """A 3D surface plot (values above the 98% quantile are clipped to it).

    Args:
        surface: a 2D surface or its path.
        metric: the metric to draw.
        log: log colour scale (None: automatic).
        elev: elevation of the view.
        azim: azimuth of the view.

    Returns:
        The figure.
    """
    s = _surface(surface)
    if s.ndim != 2:
        raise ValueError(f"surface: plot_surface_3d needs a 2D surface, this one has {s.ndim}")
    v = _values(s, metric)
    lv, log = contour_levels(v, 20, log)
    z = np.clip(np.where(np.isfinite(v), v, lv[-1]), None, lv[-1])
    zlabel = _metric_label(metric)
    if log:
        # 3D axes have no log scale: draw log10 of the values, so the basin is not flattened.
        z, lv, zlabel = np.log10(z), np.log10(lv), f"log\u2081\u2080 {zlabel}"
    X, Y = np.meshgrid(*s.axes, indexing="ij")
    fig = plt.figure(figsize=(7.0, 5.5))
    ax = fig.add_subplot(projection="3d")
    norm = _norm(lv, False)
    m = ax.plot_surface(X, Y, z, cmap="viridis", norm=norm, linewidth=0, antialiased=True,
                        rstride=1, cstride=1)
    ax.contour(X, Y, z, levels=lv, cmap="viridis", norm=norm, offset=float(np.nanmin(z)),
               linewidths=0.6)
    ax.view_init(elev=elev, azim=azim)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    ax.set_zlabel(zlabel)
    cb = fig.colorbar(m, ax=ax, shrink=0.6, pad=0.1)
    cb.set_label(zlabel)
    ax.set_title(_title(s, metric))
    return fig


def animate_trajectory(surface: Surface | str, path: str, metric: str = "loss", fps: int = 5,
                       log: bool | None = None) -> str:
    """A GIF of the trajectory descending the PCA plane's filled contour, one frame per checkpoint.

    Args:
        surface: a 2D surface with `extras["trajectory"]`, or its path.
        path: the .gif to write.
        metric: the metric to draw.
        fps: frames per second.
        log: log-spaced levels (None: automatic).

    Returns:
        The path written.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    s = _surface(surface)
    if "trajectory" not in s.extras:
        raise ValueError("surface: no trajectory stored to animate")
    t = np.asarray(s.extras["trajectory"])
    steps = np.asarray(s.extras.get("trajectory_steps", np.arange(len(t))))
    fig = plot_contour(s, metric, kind="filled", log=log, trajectory=False)
    ax = fig.axes[0]
    (path_line,) = ax.plot([], [], "-", color="crimson", lw=1.5, zorder=4)
    (head,) = ax.plot([], [], "o", color="crimson", mec="k", ms=8, zorder=6)
    label = ax.text(0.02, 0.95, "", transform=ax.transAxes, fontsize=9, va="top",
                    bbox={"boxstyle": "round", "fc": "w", "alpha": 0.8})

    def frame(k):
        path_line.set_data(t[: k + 1, 0], t[: k + 1, 1])
        head.set_data([t[k, 0]], [t[k, 1]])
        label.set_text(f"step {int(steps[k])}")
        return path_line, head, label

    anim = FuncAnimation(fig, frame, frames=len(t), blit=False)
    try:
        # The writer wants a file name: render in a private folder, then write atomically.
        with tempfile.TemporaryDirectory() as tmp_dir:
            gif = os.path.join(tmp_dir, "animation.gif")
            anim.save(gif, writer=PillowWriter(fps=fps))
            with open(gif, "rb") as f:
                data = f.read()
    finally:
        plt.close(fig)
    atomic_write_bytes(path, data)
    return path


def export_vtp(surface: Surface | str, path: str, metric: str = "loss", log: bool = False,
               zmax: float | None = None) -> str:
    """Write a 2D surface as VTK XML PolyData (.vtp) for ParaView: one quad per grid cell.

    Points are (x, y, z) with z the metric (log10 if `log`, capped at `zmax`, non-finite values
    set to the cap); every metric is also stored as point data.

    Args:
        surface: a 2D surface or its path.
        path: the .vtp to write.
        metric: the metric used as height.
        log: use log10 of the metric as height.
        zmax: cap on the height (default: the 98% quantile).

    Returns:
        The path written.
    """
    s = _surface(surface)
    if s.ndim != 2:
        raise ValueError(f"surface: export_vtp needs a 2D surface, this one has {s.ndim}")
    v = _values(s, metric)
    if log:
        if np.nanmin(v) <= 0:
            raise ValueError(f"log: {metric} has values <= 0")
        v = np.log10(v)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ValueError(f"{metric}: no finite values to export")
    cap = float(np.quantile(finite, 0.98)) if zmax is None else float(zmax)
    z = np.where(np.isfinite(v), np.minimum(v, cap), cap)
    nx, ny = s.shape
    X, Y = np.meshgrid(*s.axes, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel(), z.ravel()], axis=1)
    idx = np.arange(nx * ny).reshape(nx, ny)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], axis=-1)
    quads = quads.reshape(-1, 4)

    def arr(a, fmt):
        return " ".join(fmt % x for x in np.asarray(a).ravel())

    lines = ['<?xml version="1.0"?>',
             '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">',
             "  <PolyData>",
             f'    <Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="0" '
             f'NumberOfStrips="0" NumberOfPolys="{len(quads)}">',
             f"      <PointData Scalars={quoteattr(metric)}>"]
    for name in s.values:
        vals = np.where(s.done, s.values[name], np.nan)
        lines.append(f'        <DataArray type="Float32" Name={quoteattr(name)} format="ascii">'
                     f"{arr(vals, '%.7g')}</DataArray>")
    lines += ["      </PointData>",
              "      <Points>",
              '        <DataArray type="Float32" NumberOfComponents="3" format="ascii">'
              f"{arr(pts, '%.7g')}</DataArray>",
              "      </Points>",
              "      <Polys>",
              '        <DataArray type="Int32" Name="connectivity" format="ascii">'
              f"{arr(quads, '%d')}</DataArray>",
              '        <DataArray type="Int32" Name="offsets" format="ascii">'
              f"{arr(4 * np.arange(1, len(quads) + 1), '%d')}</DataArray>",
              "      </Polys>",
              "    </Piece>",
              "  </PolyData>",
              "</VTKFile>", ""]
    atomic_write_text(path, "\n".join(lines))
    return path
