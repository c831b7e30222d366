"""Interactive, self-contained HTML pages of surface files (plotly, works offline).

`export_html("plane.npz", "plane.html")` writes one HTML file with plotly.js embedded in it (no
network needed to open it, so it can be mailed, archived or opened on an offline cluster): a 3D
surface for a 2D surface file, a curve for a 1D one. The page has a linear / log10 toggle (both
versions are precomputed, so switching is instant), the grid minimum marked, and the PCA
trajectory drawn over the plane when the surface stores one (`extras["trajectory"]`, from
`experiments.landscape`). Hovering shows the exact value at each grid point, also where the 3D
view clips values above a high quantile (as `plot_surface_3d` does, so a few huge corner values
do not flatten the basin).

plotly is an optional dependency: it is imported when a page is written, and its absence gives
an error that says how to install it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from research.io import atomic_write_text
from research.landscape.plot import _axis_label, _metric_label, _surface, _title, _values
from research.landscape.surface import Surface

_TRAJECTORY_COLOR = "crimson"
_MINIMUM_COLOR = "white"


def _plotly():
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # an optional dependency: say which package to install
        raise ImportError("export_html needs the optional dependency plotly, which is not "
                          "installed; install it with `pip install plotly` (or `pip install "
                          "-e .`), then run again") from e
    return go


def _log10(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def _bilinear(axes: tuple[np.ndarray, ...], z_AxB: np.ndarray, pts_Kx2: np.ndarray) -> np.ndarray:
    """The grid's bilinear interpolation at points (clamped to the grid), NaN-propagating."""
    a, b = axes
    out_K = np.empty(len(pts_Kx2))
    for k, (x, y) in enumerate(pts_Kx2):
        i = int(np.clip(np.searchsorted(a, x) - 1, 0, max(len(a) - 2, 0)))
        j = int(np.clip(np.searchsorted(b, y) - 1, 0, max(len(b) - 2, 0)))
        i1, j1 = min(i + 1, len(a) - 1), min(j + 1, len(b) - 1)
        u = 0.0 if i1 == i else float(np.clip((x - a[i]) / (a[i1] - a[i]), 0.0, 1.0))
        w = 0.0 if j1 == j else float(np.clip((y - b[j]) / (b[j1] - b[j]), 0.0, 1.0))
        out_K[k] = ((1 - u) * (1 - w) * z_AxB[i, j] + u * (1 - w) * z_AxB[i1, j]
                    + (1 - u) * w * z_AxB[i, j1] + u * w * z_AxB[i1, j1])
    return out_K


def _trajectory(s: Surface, trajectory: Any, steps: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if trajectory is False:
        return None
    if trajectory is None or trajectory is True:
        if "trajectory" not in s.extras:
            if trajectory is True:
                raise ValueError("trajectory: the surface stores no trajectory; pass its "
                                 "coordinates as trajectory=coords_Kx2")
            return None
        trajectory = s.extras["trajectory"]
        if steps is None:
            steps = s.extras.get("trajectory_steps")
    coords_KxC = np.asarray(trajectory, np.float64)
    if coords_KxC.ndim != 2 or coords_KxC.shape[1] != s.ndim or len(coords_KxC) == 0:
        raise ValueError(f"trajectory: need coordinates shaped [K, {s.ndim}] for this "
                         f"{s.ndim}D surface, got {coords_KxC.shape}")
    steps_K = np.arange(len(coords_KxC)) if steps is None else np.asarray(steps).astype(int)
    if steps_K.shape != (len(coords_KxC),):
        raise ValueError(f"trajectory_steps: need {len(coords_KxC)} steps, got {steps_K.shape}")
    return coords_KxC, steps_K


def _view_values(v: np.ndarray, quantile: float) -> np.ndarray:
    """Values clipped to a high quantile of the finite ones (for the 3D height only)."""
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return v
    cap = float(np.quantile(finite, quantile))
    return np.where(np.isfinite(v), np.minimum(v, cap), np.nan)


def _check_values(s: Surface, metric: str, log: bool | None,
                  clip_quantile: float) -> tuple[np.ndarray, bool, bool]:
    """The metric's values, whether they have a log10 view, and the starting view (log)."""
    if s.ndim not in (1, 2):
        raise ValueError(f"surface: export_html draws 1D and 2D surfaces, this one has {s.ndim}")
    if not 0.0 < clip_quantile <= 1.0:
        raise ValueError(f"clip_quantile: must be in (0, 1], got {clip_quantile}")
    v = _values(s, metric)
    finite = np.isfinite(v)
    if not finite.any():
        raise ValueError(f"surface: no computed finite {metric!r} values to draw yet")
    has_log = bool(np.any(v[finite] > 0))
    if log is None:
        pos = v[finite & (v > 0)] if has_log else np.array([])
        log = bool(has_log and np.all(v[finite] > 0) and pos.max() / pos.min() > 20)
    if log and not has_log:
        raise ValueError(f"log: {metric!r} has no positive values, so it has no log10 view")
    return v, has_log, log


def _add_surface_traces(fig, s: Surface, v: np.ndarray, modes, log: bool, traj, imin,
                        label: str, names: list[str], zaxis: dict[str, str],
                        clip_quantile: float) -> dict[str, list[int]]:
    """A 2D surface's traces, one (surface, minimum, trajectory) group per mode; their indices."""
    go = _plotly()
    groups: dict[str, list[int]] = {"linear": [], "log": []}
    for mode, f in modes:
        z_AxB = f(_view_values(v, clip_quantile))
        zname = zaxis[mode]
        hover = (f"{names[0]} %{{x:.4g}}<br>{names[1]} %{{y:.4g}}<br>{label} "
                 "%{customdata:.5g}<extra></extra>")
        # plotly's surface takes z[row = y index][column = x index]: our grid transposed.
        groups[mode].append(len(fig.data))
        fig.add_trace(go.Surface(x=s.axes[0], y=s.axes[1], z=z_AxB.T, customdata=v.T,
                                 colorscale="Viridis", hovertemplate=hover, name=zname,
                                 colorbar={"title": {"text": zname}},
                                 visible=(mode == "log") == log))
        groups[mode].append(len(fig.data))
        fig.add_trace(go.Scatter3d(
            x=[s.axes[0][imin[0]]], y=[s.axes[1][imin[1]]], z=[z_AxB[imin]],
            mode="markers+text", text=[f"min {v[imin]:.4g}"], textposition="top center",
            marker={"size": 6, "color": _MINIMUM_COLOR, "symbol": "diamond",
                    "line": {"color": "black", "width": 2}},
            name="grid minimum", visible=(mode == "log") == log))
        if traj is not None:
            coords_Kx2, steps_K = traj
            z_K = _bilinear(s.axes, z_AxB, coords_Kx2)
            groups[mode].append(len(fig.data))
            fig.add_trace(go.Scatter3d(
                x=coords_Kx2[:, 0], y=coords_Kx2[:, 1], z=z_K, mode="lines+markers",
                line={"color": _TRAJECTORY_COLOR, "width": 5},
                marker={"size": 3, "color": _TRAJECTORY_COLOR}, customdata=steps_K,
                hovertemplate="step %{customdata}<br>(drawn on the plane; the checkpoint "
                              "lies off it)<extra></extra>",
                name="trajectory", visible=(mode == "log") == log))
    return groups


def _add_curve_traces(fig, s: Surface, v: np.ndarray, traj, imin, label: str,
                      names: list[str]) -> None:
    """A 1D surface's traces: the curve, its minimum and the trajectory on it."""
    go = _plotly()
    x = s.axes[0]
    fig.add_trace(go.Scatter(x=x, y=v, mode="lines+markers", name=label,
                             hovertemplate=f"{names[0]} %{{x:.4g}}<br>{label} "
                                           "%{y:.5g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[x[imin[0]]], y=[v[imin]], mode="markers+text",
                             text=[f"min {v[imin]:.4g}"], textposition="top center",
                             marker={"size": 10, "symbol": "diamond", "color": "black"},
                             name="grid minimum"))
    if traj is not None:
        coords_Kx1, steps_K = traj
        fig.add_trace(go.Scatter(x=coords_Kx1[:, 0], y=np.interp(coords_Kx1[:, 0], x, v),
                                 mode="markers", customdata=steps_K, name="trajectory",
                                 marker={"color": _TRAJECTORY_COLOR},
                                 hovertemplate="step %{customdata}<extra></extra>"))


def _toggle_buttons(fig, modes, groups: dict[str, list[int]] | None,
                    zaxis: dict[str, str]) -> list[dict]:
    """The linear / log10 buttons.

    A 1D curve (`groups` None) switches its y axis type; a 2D surface switches which trace group
    is visible, and the z axis title.
    """
    buttons = []
    for mode, _ in modes:
        text = "linear" if mode == "linear" else "log\u2081\u2080"
        if groups is None:
            buttons.append({"label": text, "method": "relayout",
                            "args": [{"yaxis.type": "linear" if mode == "linear" else "log"}]})
        else:
            visible = [i in groups[mode] for i in range(len(fig.data))]
            buttons.append({"label": text, "method": "update",
                            "args": [{"visible": visible},
                                     {"scene.zaxis.title.text": zaxis[mode]}]})
    return buttons


def build_figure(surface: Surface | str, metric: str = "loss", log: bool | None = None,
                 trajectory: Any = None, trajectory_steps: Any = None, title: str | None = None,
                 clip_quantile: float = 0.98):
    """The plotly figure behind `export_html` (see there for the arguments).

    Returns:
        A `plotly.graph_objects.Figure`; traces come in (linear, log10) groups whose visibility
        the two buttons switch.
    """
    go = _plotly()
    s = _surface(surface)
    v, has_log, log = _check_values(s, metric, log, clip_quantile)
    traj = _trajectory(s, trajectory, trajectory_steps)
    label = _metric_label(metric)
    names = [_axis_label(s, i) for i in range(s.ndim)]
    imin = np.unravel_index(np.nanargmin(np.where(np.isfinite(v), v, np.nan)), v.shape)
    fig = go.Figure()
    modes = [("linear", lambda x: x)] + ([("log", _log10)] if has_log else [])
    zaxis = {m: label if m == "linear" else f"log\u2081\u2080 {label}" for m, _ in modes}
    if s.ndim == 2:
        groups = _add_surface_traces(fig, s, v, modes, log, traj, imin, label, names, zaxis,
                                     clip_quantile)
        fig.update_layout(scene={"xaxis": {"title": {"text": names[0]}},
                                 "yaxis": {"title": {"text": names[1]}},
                                 "zaxis": {"title": {"text": zaxis["log" if log else "linear"]}}})
    else:
        # A 1D curve needs no precomputed log copy: plotly's log axis shows the true values.
        groups = None
        _add_curve_traces(fig, s, v, traj, imin, label, names)
        fig.update_layout(xaxis={"title": {"text": names[0]}},
                          yaxis={"title": {"text": label}, "type": "log" if log else "linear"})
    buttons = _toggle_buttons(fig, modes, groups, zaxis)
    if len(buttons) > 1:
        fig.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "x": 0.0,
                                        "y": 1.08, "xanchor": "left", "yanchor": "bottom",
                                        "showactive": True, "active": 1 if log else 0,
                                        "buttons": buttons}])
    fig.update_layout(title={"text": title if title is not None else _title(s, metric),
                             "x": 0.5}, margin={"l": 10, "r": 10, "t": 80, "b": 10},
                      template="plotly_white",
                      legend={"x": 0.0, "y": 0.0, "xanchor": "left", "yanchor": "bottom"})
    return fig


def export_html(surface: Surface | str, html_path: str, metric: str = "loss",
                log: bool | None = None, trajectory: Any = None, trajectory_steps: Any = None,
                title: str | None = None, clip_quantile: float = 0.98) -> str:
    """Write a surface as a self-contained interactive HTML page (plotly.js embedded).

    Args:
        surface: a 1D or 2D surface, or the path of a surface file (points not yet computed are
            left as gaps).
        html_path: the page to write (atomically).
        metric: the metric to draw.
        log: start in the log10 view (the linear / log10 buttons switch); None picks log when all
            values are positive and span more than a factor of 20.
        trajectory: None draws the surface's stored trajectory when it has one; False draws none;
            or coordinates shaped [K, ndim] to draw.
        trajectory_steps: the training step of each trajectory point (default: the stored steps,
            else 0..K-1), shown on hover.
        title: page title (default from the surface's metadata).
        clip_quantile: 3D heights are clipped to this quantile of the values (hover shows the
            exact value).

    Returns:
        `html_path`.

    Raises:
        ImportError: plotly is not installed (the message says how to install it).
    """
    fig = build_figure(surface, metric, log, trajectory, trajectory_steps, title, clip_quantile)
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="landscape",
                       config={"displaylogo": False, "responsive": True})
    atomic_write_text(html_path, html)
    return html_path


__all__ = ["build_figure", "export_html"]
