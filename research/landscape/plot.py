"""Plots from a surface file alone: 1D curves, contours, heat maps, 3D, trajectories, GIF, VTK.

Every function takes a `Surface` or the path of a surface file, and returns a matplotlib Figure
(or writes a file); every plot takes `ax=` to draw into one panel of a larger figure. Files are
written atomically: figures with `save_figure` (the same function
as `research.viz.save_figure`), the GIF and the VTK file through `research.io`. Figures use the
Agg backend and `fig.add_subplot(projection="3d")` for 3D, which renders with current matplotlib
(the reference's `Axes3D(fig)` gives a blank plot since matplotlib 3.4). Contour levels are round
numbers (1-2-5 per decade on a log scale, used when the values span more than a factor of 20),
capped at a high quantile, so a few huge values at the grid's corners do not flatten the
picture; numbers are printed plainly (2.5, not 2.5x10^0). Coarse grids are drawn from a bicubic
interpolation, and the titles say so; markers and heat maps show the computed points.
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

__all__ = ["animate_trajectory", "contour_levels", "export_vtp", "nice_levels", "plot_1d",
           "plot_contour", "plot_interpolation", "plot_surface_3d", "plot_trajectory",
           "save_figure"]

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


def _plain(value: float, digits: int = 4) -> str:
    """A number as a reader writes it: 0.5, 2, 1e-05 only when tiny or huge (never 4x10^0)."""
    return f"{value:.{digits}g}"


def _level_format(levels: np.ndarray):
    """The shortest `%g` precision that keeps every level distinct and exact to 1e-6."""
    levels = np.asarray(levels, np.float64)
    for digits in range(1, 10):
        texts = [f"{v:.{digits}g}" for v in levels]
        if len(set(texts)) == len(texts) and all(
                abs(float(t) - v) <= 1e-6 * max(abs(v), 1e-12) for t, v in zip(texts, levels)):
            return lambda v, d=digits: f"{v:.{d}g}"
    return _plain


def nice_levels(lo: float, hi: float, n: int = 20, log: bool = False) -> np.ndarray:
    """Round levels in (lo, hi]: 1-2-5 (or finer) steps per decade on a log scale, else 1/2/2.5/5.

    Args:
        lo: the lowest value (the first level lies above it, so the minimum's basin is closed).
        hi: the top level's bound.
        n: about how many levels.
        log: prefer levels that are round on a log scale (0.5, 1, 2, 5, 10, ...).

    Returns:
        Increasing levels; at least one.
    """
    if log and lo > 0 and hi / lo >= 3:
        best: list[float] = []
        e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
        for mantissas in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)):
            cand = sorted(float(f"{m * 10.0 ** e:.12g}") for e in range(e0, e1 + 1)
                          for m in mantissas)
            cand = [c for c in cand if lo < c <= hi]
            if not best or abs(len(cand) - n) < abs(len(best) - n):
                best = cand
        if len(best) >= 4:
            return np.array(best)
    ticks = MaxNLocator(nbins=max(n, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    levels = np.array([float(f"{t:.12g}") for t in ticks if lo < t <= hi])
    if levels.size == 0:
        levels = np.array([hi])
    return levels


def contour_levels(values: np.ndarray, n: int = 20, log: bool | None = None,
                   quantile: float = 0.98) -> tuple[np.ndarray, bool]:
    """Round contour levels from just above the minimum to a high quantile of the finite values.

    Args:
        values: the surface values.
        n: about how many levels (round numbers take precedence over the count).
        log: log-scaled levels; None chooses them when all values are positive and span more
            than a factor of 20.
        quantile: the top level is at most this quantile of the values, so extreme corners do
            not flatten the picture.

    Returns:
        (levels, log): increasing round levels (`nice_levels`) and whether the colour scale is
        logarithmic.
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
    levels = nice_levels(lo, hi, n, log)
    if len(levels) < 2:
        levels = np.linspace(lo, hi, n + 1)[1:]
    return levels, bool(log)


def _set_plain_log_ticks(axis, lo: float, hi: float, n: int = 6) -> None:
    """Round ticks with plain labels on a log axis (2, 3, 5 rather than 2x10^0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks = nice_levels(lo * 0.999, hi, n, log=True)
    fmt = _level_format(ticks)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def _new_axes(ax, figsize, projection=None):
    if ax is not None:
        if projection == "3d" and getattr(ax, "name", "") != "3d":
            raise ValueError("ax: a 3D plot needs axes made with projection='3d'")
        return ax.figure, ax, False
    fig = plt.figure(figsize=figsize)
    return fig, (fig.add_subplot(projection=projection) if projection
                 else fig.add_subplot()), True


def plot_1d(surface: Surface | str, metric: str = "loss", second: str | None = "accuracy",
            log: bool = False, markers: Sequence[tuple[float, str]] = ((0.0, "\u03b8*"),),
            title: str | None = None, ax=None) -> Figure:
    """A 1D curve of `metric` with `second` (e.g. accuracy) on a twin axis.

    Args:
        surface: a 1D surface or its path.
        metric: the left-axis metric.
        second: the right-axis metric (skipped if None or absent).
        log: logarithmic left axis.
        markers: (coordinate, label) pairs drawn as vertical lines (e.g. the models).
        title: figure title (default from the surface's metadata).
        ax: draw into this axes (e.g. one panel of a larger figure) instead of a new figure.

    Returns:
        The figure.
    """
    s = _surface(surface)
    if s.ndim != 1:
        raise ValueError(f"surface: plot_1d needs a 1D surface, this one has {s.ndim} directions")
    x = s.axes[0]
    fig, ax, own = _new_axes(ax, (6.0, 4.0))
    v = _values(s, metric)
    (line,) = ax.plot(x, v, color="tab:blue", lw=2, label=_metric_label(metric))
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_metric_label(metric) + (" (log scale)" if log else ""), color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    if log:
        if np.nanmin(v) <= 0:
            raise ValueError(f"log: {metric} has values <= 0; use a linear axis")
        ax.set_yscale("log")
        _set_plain_log_ticks(ax.yaxis, float(np.nanmin(v)), float(np.nanmax(v)))
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
        (star,) = ax.plot(x[i], v[i], marker="*", ms=12, color="gold", mec="k", zorder=5,
                          ls="none", label=f"minimum {_plain(float(v[i]))}")
        handles.append(star)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False,
              ncol=len(handles), fontsize=9)
    ax.set_xlim(x[0], x[-1])
    ax.grid(alpha=0.3)
    ax.set_title(title or _title(s, metric), fontsize=10)
    if own:
        fig.tight_layout()
    return fig


def plot_interpolation(surface: Surface | str, metric: str = "loss",
                       second: str | None = "accuracy", log: bool = False,
                       labels: Sequence[str] = ("initial", "trained"), ax=None) -> Figure:
    """The curve between two models (at 0 and 1), with both models marked.

    Args:
        surface: a 1D surface along `interpolation_direction(a, b)`, or its path.
        metric: the left-axis metric.
        second: the right-axis metric.
        log: logarithmic left axis.
        labels: names of the models at 0 and 1.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    s = _surface(surface)
    labels = tuple(s.info.get("model_labels", labels))
    title = (f"{s.info['title']}: {metric} from {labels[0]} to {labels[1]}"
             if s.info.get("title") else f"{metric} from {labels[0]} to {labels[1]}")
    fig = plot_1d(s, metric, second, log, markers=((0.0, labels[0]), (1.0, labels[1])),
                  title=title, ax=ax)
    (ax or fig.axes[0]).set_xlabel(
        f"\u03b1  (\u03b8 = (1 - \u03b1) {labels[0]} + \u03b1 {labels[1]})")
    return fig


def _norm(levels: np.ndarray, log: bool):
    if log:
        ratio = levels[1] / levels[0] if len(levels) > 1 else 2.0
        return mcolors.LogNorm(vmin=levels[0] / ratio, vmax=levels[-1])
    step = levels[1] - levels[0] if len(levels) > 1 else 1.0
    return mcolors.Normalize(vmin=levels[0] - step, vmax=levels[-1])


def _smooth(x: np.ndarray, y: np.ndarray, v: np.ndarray, log: bool, num: int = 161):
    """The surface on a finer grid by a bicubic interpolating spline, for drawing only.

    A 21 x 21 grid drawn as is gives polygons with visible corners; the spline passes through
    every computed point (in log10 when the scale is logarithmic, so it stays positive).
    Returns None when the grid is fine enough, too small, or has points not computed.
    """
    from scipy.interpolate import RectBivariateSpline

    if min(len(x), len(y)) < 4 or max(len(x), len(y)) >= num or not np.all(np.isfinite(v)):
        return None
    if log and np.min(v) <= 0:
        return None
    z = np.log10(v) if log else v
    spline = RectBivariateSpline(x, y, z, kx=3, ky=3)
    xf, yf = np.linspace(x[0], x[-1], num), np.linspace(y[0], y[-1], num)
    zf = spline(xf, yf)
    return xf, yf, (10.0 ** zf if log else zf)


def _grid_note(s: Surface, smoothed: bool) -> str:
    shape = " \u00d7 ".join(str(n) for n in s.shape)
    return (f"{shape} grid, bicubic interpolation for drawing" if smoothed
            else f"{shape} grid")


def _mark_points(ax, s: Surface, v: np.ndarray) -> None:
    x, y = s.axes
    if np.any(np.isfinite(v)):
        # The grid's minimum: a large star under theta*'s dot, so both stay visible when they
        # coincide (the usual case at the centre of a plane).
        i, j = np.unravel_index(int(np.nanargmin(v)), v.shape)
        ax.plot(x[i], y[j], marker="*", ms=16, color="gold", mec="k", zorder=7, ls="none",
                label=f"grid minimum {_plain(float(v[i, j]))} at ({x[i]:.2g}, {y[j]:.2g})")
    if x[0] <= 0 <= x[-1] and y[0] <= 0 <= y[-1]:
        ax.plot(0, 0, marker="o", ms=7, mew=1.5, mfc="white", mec="k", zorder=8, ls="none",
                label="\u03b8* (trained model)")


def plot_contour(surface: Surface | str, metric: str = "loss", kind: str = "contour",
                 levels: int | Sequence[float] = 20, log: bool | None = None,
                 trajectory: bool = True, ax=None, smooth: bool = True,
                 title: str | None = None) -> Figure:
    """A 2D contour, filled contour or heat map, with theta* and the minimum marked.

    Contours are drawn from a bicubic interpolation of the grid (`smooth`; the title says so);
    the heat map shows the computed grid points as they are.

    Args:
        surface: a 2D surface or its path.
        metric: the metric to draw.
        kind: contour (labelled lines), filled or heatmap.
        levels: about how many levels (round numbers, see `contour_levels`), or the levels.
        log: logarithmic colour scale and levels (None: automatic, see `contour_levels`).
        trajectory: overlay the stored optimiser trajectory, if the surface has one.
        ax: draw into this axes (e.g. one panel of a larger figure) instead of a new figure.
        smooth: draw contours from a bicubic interpolation of grids coarser than 161 points.
        title: the title (default: from the surface's metadata, with the grid size).

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
    spans = sorted((float(np.ptp(x)), float(np.ptp(y))))
    to_scale = spans[0] > 0 and spans[1] / spans[0] <= 4
    # Height follows the drawn box (equal units): no blank band above and below a wide grid.
    ratio = float(np.ptp(y)) / max(float(np.ptp(x)), 1e-300) if to_scale else 1.0
    fig, ax, own = _new_axes(ax, (6.4, 2.4 + 3.4 * min(1.0, max(0.4, ratio))))
    norm = _norm(lv, log)
    cmap = plt.get_cmap("viridis")
    fmt = _level_format(lv)
    fine = _smooth(x, y, v, log) if smooth and kind != "heatmap" else None
    _draw_field(ax, kind, s, v, fine, lv, norm, cmap, fmt)
    # Both axes are distances in parameter space along directions of the same norm: one unit
    # is drawn as long on both, or the basin's shape is distorted. A grid far longer than wide
    # (an old PCA grid) would become a sliver: it keeps the box and says so in the title.
    if to_scale:
        ax.set_aspect("equal", adjustable="box")
    _colorbar(fig, ax, v, lv, norm, cmap, fmt,
              _metric_label(metric) + (" (log scale)" if log else ""))
    if trajectory and "trajectory" in s.extras:
        _draw_trajectory(ax, s)
    _mark_points(ax, s, v)
    _label_plane(ax, s)
    if title is None:
        title = (f"{_title(s, metric)}{'' if kind == 'contour' else f' ({kind})'}\n"
                 f"{_grid_note(s, fine is not None)}{'' if to_scale else '; axes not to scale'}")
    ax.set_title(title, fontsize=10)
    if own:
        fig.tight_layout()
    return fig


def _draw_field(ax, kind: str, s: Surface, v: np.ndarray, fine, lv: np.ndarray, norm, cmap,
                fmt) -> None:
    """The heat map of the computed grid, or filled or labelled contours (of `fine` if given)."""
    x, y = s.axes
    xd, yd, vd = fine if fine is not None else (x, y, v)
    X, Y = np.meshgrid(xd, yd, indexing="ij")
    if kind == "heatmap":
        img = np.clip(v, norm.vmin, lv[-1])
        # Each pixel is centred on its grid point.
        hx = (x[-1] - x[0]) / max(len(x) - 1, 1) / 2
        hy = (y[-1] - y[0]) / max(len(y) - 1, 1) / 2
        ax.imshow(img.T, origin="lower", extent=(x[0] - hx, x[-1] + hx, y[0] - hy, y[-1] + hy),
                  aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    elif kind == "filled":
        ax.contourf(X, Y, np.clip(vd, None, lv[-1]), levels=np.concatenate([[norm.vmin], lv]),
                    cmap=cmap, norm=norm, extend="max")
        ax.contour(X, Y, vd, levels=lv, colors="k", linewidths=0.4, alpha=0.5)
    else:
        m = ax.contour(X, Y, vd, levels=lv, cmap=cmap, norm=norm, linewidths=1.2)
        labelled = m.levels[:: max(1, len(lv) // 8)]
        ax.clabel(m, labelled, inline=True, fontsize=8, fmt=fmt)


def _colorbar(fig, ax, v: np.ndarray, lv: np.ndarray, norm, cmap, fmt, label: str) -> None:
    """The colour bar: continuous, round levels ticked with plain numbers (never 4x10^0).

    It is as tall as the (possibly wide and flat) box of the axes.
    """
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    cax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.12)
    cb = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax,
                      extend="max" if np.nanmax(v) > lv[-1] else "neither")
    cb.set_ticks(lv[:: max(1, int(np.ceil(len(lv) / 8)))])
    cb.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda t, _: fmt(t)))
    cb.ax.minorticks_off()
    cb.set_label(label)


def _label_plane(ax, s: Surface) -> None:
    """A plane's axis labels and limits (the grid's), about five ticks each, legend below."""
    x, y = s.axes
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(5))
    # Below the axis label, at a fixed distance in points whatever the box's height.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.8, fontsize=9,
              ncol=2, frameon=False, handletextpad=0.3, columnspacing=1.2)


def _draw_trajectory(ax, s: Surface, upto: int | None = None) -> None:
    t = np.asarray(s.extras["trajectory"])[:upto]
    ax.plot(t[:, 0], t[:, 1], "-", color="crimson", lw=1.5, zorder=4)
    ax.plot(t[:, 0], t[:, 1], "o", color="crimson", ms=3, zorder=4, label="checkpoints")
    ax.plot(t[0, 0], t[0, 1], "s", color="crimson", mec="k", ms=7, zorder=5, label="start")


def _spaced_labels(points_Kx2: np.ndarray, spans: tuple[float, float], candidates: np.ndarray,
                   min_gap: float = 0.07, avoid=((0.0, 0.0),)) -> list[int]:
    """Which checkpoints to label: the first, then those `min_gap` (axes fraction) from the rest.

    A point also needs that distance from every point of `avoid` (theta*'s marker), so the last
    checkpoints, which crowd at theta*, are not labelled on top of each other.
    """
    scale = np.array([max(spans[0], 1e-12), max(spans[1], 1e-12)])
    chosen: list[int] = []
    for k in candidates:
        p = points_Kx2[k] / scale
        near = [points_Kx2[c] / scale for c in chosen] + [np.asarray(a) / scale for a in avoid]
        if k == candidates[0] or all(np.hypot(*(p - q)) >= min_gap for q in near):
            chosen.append(int(k))
    return chosen


def plot_trajectory(surface: Surface | str, metric: str = "loss", kind: str = "contour",
                    log: bool | None = None, annotate_steps: int = 6, ax=None) -> Figure:
    """The optimiser's path over the PCA plane's contour, with explained variance on the axes.

    The checkpoints' distances from the plane are printed: a checkpoint off the plane does not have
    the loss drawn under it. Step labels are kept apart: a label closer than 7% of the axes to
    another one, or to theta*, is left out.

    Args:
        surface: a 2D surface with `extras["trajectory"]` (from the PCA directions), or its path.
        metric: the metric to draw.
        kind: contour, filled or heatmap.
        log: logarithmic levels (None: automatic).
        annotate_steps: label at most about this many checkpoints with their training step.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    import matplotlib.patheffects as pe

    s = _surface(surface)
    if "trajectory" not in s.extras:
        raise ValueError("surface: no trajectory stored; compute it with pca_directions and pass "
                         "extras={'trajectory': coords_Kx2, ...} to evaluate_grid")
    fig = plot_contour(s, metric, kind=kind, log=log, trajectory=True, ax=ax)
    ax = ax or fig.axes[0]
    t = np.asarray(s.extras["trajectory"])
    steps = np.asarray(s.extras.get("trajectory_steps", np.arange(len(t))))
    spans = (float(np.ptp(s.axes[0])), float(np.ptp(s.axes[1])))
    candidates = np.unique(np.linspace(0, len(t) - 1, max(2, annotate_steps)).astype(int))
    for k in _spaced_labels(t, spans, candidates):
        ax.annotate(f"step {int(steps[k])}" if k == 0 else str(int(steps[k])), t[k],
                    xytext=(5, 5), textcoords="offset points", fontsize=8, color="crimson",
                    path_effects=[pe.withStroke(linewidth=2.5, foreground="white")], zorder=9)
    if "trajectory_distance" in s.extras:
        d = np.asarray(s.extras["trajectory_distance"])
        ax.set_title(f"{ax.get_title()}\ncheckpoints' distance from the plane: max "
                     f"{d.max():.2g}, mean {d.mean():.2g}", fontsize=10)
    return fig


def plot_surface_3d(surface: Surface | str, metric: str = "loss", log: bool | None = None,
                    elev: float = 30.0, azim: float = -60.0, ax=None,
                    trajectory: bool = True, smooth: bool = True) -> Figure:
    """A 3D surface plot (values above the 98% quantile are clipped to it).

    On a log scale the height is log10 of the values, ticked with the values themselves (3D axes
    have no log scale). The grid's minimum and, on a PCA plane, the trajectory lifted onto the
    surface are drawn over the surface, so a fold in front of them does not hide them.

    Args:
        surface: a 2D surface or its path.
        metric: the metric to draw.
        log: logarithmic height (None: automatic).
        elev: elevation of the view.
        azim: azimuth of the view.
        ax: draw into these 3D axes (`projection="3d"`) instead of a new figure.
        trajectory: draw the stored optimiser trajectory, if the surface has one.
        smooth: draw the surface from a bicubic interpolation of a coarse grid.

    Returns:
        The figure.
    """
    s = _surface(surface)
    if s.ndim != 2:
        raise ValueError(f"surface: plot_surface_3d needs a 2D surface, this one has {s.ndim}")
    v = _values(s, metric)
    lv, log = contour_levels(v, 20, log)
    cap = lv[-1]
    fine = _smooth(*s.axes, v, log, num=81) if smooth else None
    xd, yd, vd = fine if fine is not None else (*s.axes, v)
    height = (np.log10 if log else (lambda a: a))
    z = height(np.clip(np.where(np.isfinite(vd), vd, cap), None, cap))
    X, Y = np.meshgrid(xd, yd, indexing="ij")
    if ax is None:
        fig = plt.figure(figsize=(7.0, 5.5))
        # Artists in the order given (not by depth): the trajectory and the minimum drawn last
        # stay visible where the surface folds in front of them.
        ax = fig.add_subplot(projection="3d", computed_zorder=False)
    else:
        fig, ax, _ = _new_axes(ax, None, "3d")
        ax.computed_zorder = False
    zl = height(lv)
    norm = mcolors.Normalize(vmin=float(np.nanmin(z)), vmax=float(zl[-1]))
    ax.contour(X, Y, z, levels=zl, cmap="viridis", norm=norm, offset=float(np.nanmin(z)),
               linewidths=0.6, zorder=0)
    ax.plot_surface(X, Y, z, cmap="viridis", norm=norm, linewidth=0, antialiased=True,
                    rstride=1, cstride=1, alpha=0.95, zorder=1)
    if trajectory and "trajectory" in s.extras:
        t = np.asarray(s.extras["trajectory"])
        zt = _height_at(s, v, t, log, cap)
        ax.plot(t[:, 0], t[:, 1], zt, "-o", color="crimson", ms=3, lw=1.8, zorder=5,
                label="trajectory (on the surface)")
    if np.any(np.isfinite(v)):
        i, j = np.unravel_index(int(np.nanargmin(v)), v.shape)
        ax.scatter([s.axes[0][i]], [s.axes[1][j]], [height(v[i, j])], marker="*", s=220,
                   c="gold", edgecolors="k", depthshade=False, zorder=6,
                   label=f"grid minimum {_plain(float(v[i, j]))}")
    ax.view_init(elev=elev, azim=azim)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(4))
    ticks = nice_levels(float(np.nanmin(v)) * (1 - 1e-9), cap, 4, log)
    fmt = _level_format(ticks)
    ax.set_zticks(height(ticks))
    ax.zaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda t, _: fmt(10.0 ** t if log else t)))
    ax.set_xlabel(_axis_label(s, 0))
    ax.set_ylabel(_axis_label(s, 1))
    # Said once, on the height axis (the colours repeat the height, so no colour bar).
    ax.set_zlabel(_metric_label(metric) + (" (log scale)" if log else ""))
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    ax.set_title(f"{_title(s, metric)}\n{_grid_note(s, fine is not None)}", fontsize=10)
    return fig


def _height_at(s: Surface, v: np.ndarray, points_Kx2: np.ndarray, log: bool,
               cap: float) -> np.ndarray:
    """The drawn height at arbitrary points (bilinear in the grid), to lift a path onto it."""
    from scipy.interpolate import RegularGridInterpolator

    z = np.clip(np.where(np.isfinite(v), v, cap), None, cap)
    z = np.log10(z) if log else z
    f = RegularGridInterpolator(s.axes, z, bounds_error=False, fill_value=None)
    return f(points_Kx2)


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
