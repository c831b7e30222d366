"""Maps of the Hessian's extreme eigenvalues over a plane, as Li et al. (2018), Figure 6.

`plot_eigenvalue_map` draws one metric of an `eigenvalue_map` surface (`lambda_max`,
`lambda_min` or `ratio` = |lambda_min / lambda_max|) into a given matplotlib axes: a heat map
for a plane (lambda_min on a diverging scale centred at zero, so negative curvature shows in
blue; the ratio on 0..`ratio_max`, where 0 is locally convex), a curve for a line.
`plot_eigenvalue_maps` puts the three side by side and saves them through
`research.viz.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors

from research.landscape.surface import Surface, load_surface
from research.viz import save_figure

LABELS = {"lambda_max": r"$\lambda_{max}$", "lambda_min": r"$\lambda_{min}$",
          "ratio": r"$|\lambda_{min} / \lambda_{max}|$"}


def _surface(surface: Surface | str) -> Surface:
    return load_surface(surface) if isinstance(surface, str) else surface


def plot_eigenvalue_map(surface: Surface | str, metric: str = "ratio", *, ax=None,
                        ratio_max: float = 1.0, cmap: str | None = None,
                        colorbar: bool = True, title: str | None = None):
    """Draw one metric of an eigenvalue-map surface.

    Args:
        surface: a `Surface` from `hessian.eigenvalue_map`, or the path of its file.
        metric: "lambda_max", "lambda_min" or "ratio".
        ax: the matplotlib axes (default: a new figure's).
        ratio_max: upper end of the ratio's colour scale (larger values are clipped).
        cmap: colour map (default: "viridis" for lambda_max, "RdBu_r" centred at zero for
            lambda_min, "magma" for the ratio).
        colorbar: add a colour bar (planes only).
        title: axes title (default: the metric's name).

    Returns:
        The axes.
    """
    s = _surface(surface)
    if metric not in LABELS:
        raise ValueError(f"metric: must be one of {list(LABELS)}, got {metric!r}")
    if metric not in s.values:
        raise ValueError(f"metric: the surface has no {metric!r} (metrics {list(s.values)}); "
                         "is it an eigenvalue map?")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.6))
    v = np.where(s.done, s.values[metric], np.nan)
    if s.ndim == 1:
        ax.plot(s.axes[0], v, "o-", ms=3)
        ax.set_xlabel("direction 1")
        ax.set_ylabel(LABELS[metric])
        if metric != "lambda_max":
            ax.axhline(0.0, color="k", lw=0.5)
    elif s.ndim == 2:
        a, b = s.axes
        if metric == "lambda_min":
            finite = v[np.isfinite(v)]
            lim = float(np.max(np.abs(finite))) if finite.size else 1.0
            lim = lim if lim > 0 else 1.0
            norm = mcolors.TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
            cmap = cmap or "RdBu_r"
        elif metric == "ratio":
            norm = mcolors.Normalize(vmin=0.0, vmax=ratio_max)
            cmap = cmap or "magma"
            v = np.minimum(v, ratio_max)
        else:
            norm, cmap = None, cmap or "viridis"
        ha = (a[-1] - a[0]) / max(len(a) - 1, 1) / 2
        hb = (b[-1] - b[0]) / max(len(b) - 1, 1) / 2
        m = ax.imshow(v.T, origin="lower", cmap=cmap, norm=norm, interpolation="nearest",
                      extent=(a[0] - ha, a[-1] + ha, b[0] - hb, b[-1] + hb), aspect="auto")
        ax.plot(0, 0, "+", color="w" if metric != "lambda_min" else "k", ms=9, mew=1.5)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        if colorbar:
            ax.figure.colorbar(m, ax=ax, shrink=0.85, pad=0.02)
    else:
        raise ValueError(f"surface: can draw 1 or 2 directions, got {s.ndim}")
    ax.set_title(LABELS[metric] if title is None else title)
    return ax


def plot_eigenvalue_maps(surface: Surface | str, path: str | None = None, *,
                         metrics: Sequence[str] = ("lambda_min", "lambda_max", "ratio"),
                         ratio_max: float = 1.0, title: str | None = None,
                         formats: Sequence[str] = ("png", "pdf")):
    """lambda_min, lambda_max and |lambda_min / lambda_max| side by side (Li et al. Fig. 6).

    Args:
        surface: a `Surface` from `hessian.eigenvalue_map`, or the path of its file.
        path: output path without extension (written by `research.viz.save_figure`, which
            closes the figure); None returns the open figure instead.
        metrics: the panels, in order.
        ratio_max: upper end of the ratio's colour scale.
        title: figure title.
        formats: file types when `path` is given.

    Returns:
        The written paths, or the figure when `path` is None.
    """
    s = _surface(surface)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.3 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        plot_eigenvalue_map(s, metric, ax=ax, ratio_max=ratio_max)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is None:
        return fig
    return save_figure(fig, path, formats)


__all__ = ["plot_eigenvalue_map", "plot_eigenvalue_maps"]
