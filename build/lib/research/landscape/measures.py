"""Numbers read off computed surfaces: convexity of a 2D plane, sharpness of a 1D curve.

Li et al. (2018, section 6) judge convexity by the principal curvatures: at each point, the ratio
|lambda_min / lambda_max| of the Hessian's extreme eigenvalues; near zero (or lambda_min >= 0)
means locally convex, a large ratio means significant negative curvature. Here the Hessian is the
2x2 Hessian of the plotted surface `f(a, b)` itself, i.e. of the loss restricted to the plane,
taken by central finite differences at every interior grid point (exact for quadratics). This is
cheaper than the paper's full-Hessian Lanczos at each point and measures exactly what the contour
plot shows.

Sharpness of a 1D curve `f(alpha)` through a minimum: the loss increase at `alpha = +-r` (mean
of both sides, linearly interpolated between grid points), and the curvature `f''(0)` from a
least-squares quadratic fit over `|alpha| <= fit_radius`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _uniform_step(axis: np.ndarray, name: str) -> float:
    axis = np.asarray(axis, np.float64)
    if axis.ndim != 1 or len(axis) < 3:
        raise ValueError(f"{name}: need a 1-D grid of at least 3 points, got shape {axis.shape}")
    steps = np.diff(axis)
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-12) or steps[0] <= 0:
        raise ValueError(f"{name}: grid must be increasing and evenly spaced")
    return float(steps[0])


def plane_hessians(values_AxB: np.ndarray, x_A: np.ndarray, y_B: np.ndarray) -> np.ndarray:
    """The 2x2 Hessian of a surface at every interior grid point, by central differences.

    Args:
        values_AxB: surface values, `values_AxB[i, j] = f(x_A[i], y_B[j])`.
        x_A: evenly spaced coordinates of the first axis.
        y_B: evenly spaced coordinates of the second axis.

    Returns:
        hess_IxJx2x2 for the (A - 2) x (B - 2) interior points.
    """
    f = np.asarray(values_AxB, np.float64)
    if f.shape != (len(x_A), len(y_B)):
        raise ValueError(f"values_AxB: shape {f.shape} does not match the axes "
                         f"({len(x_A)}, {len(y_B)})")
    hx, hy = _uniform_step(x_A, "x_A"), _uniform_step(y_B, "y_B")
    c = f[1:-1, 1:-1]
    fxx = (f[2:, 1:-1] - 2 * c + f[:-2, 1:-1]) / hx**2
    fyy = (f[1:-1, 2:] - 2 * c + f[1:-1, :-2]) / hy**2
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * hx * hy)
    return np.stack([np.stack([fxx, fxy], -1), np.stack([fxy, fyy], -1)], -2)


def principal_curvatures(values_AxB: np.ndarray, x_A: np.ndarray,
                         y_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalues of the surface's 2x2 Hessian at every interior grid point.

    Args:
        values_AxB: surface values.
        x_A: coordinates of the first axis.
        y_B: coordinates of the second axis.

    Returns:
        (lambda_min_IxJ, lambda_max_IxJ), for the interior points.
    """
    eig_IxJx2 = np.linalg.eigvalsh(plane_hessians(values_AxB, x_A, y_B))
    return eig_IxJx2[..., 0], eig_IxJx2[..., 1]


def convexity(values_AxB: np.ndarray, x_A: np.ndarray, y_B: np.ndarray,
              threshold: float = 0.1, level: float | None = None) -> dict[str, Any]:
    """How convex a 2D surface looks: the paper's |lambda_min / lambda_max| map, summarised.

    At each interior point, `ratio = max(0, -lambda_min) / max(|lambda_min|, |lambda_max|)`: 0
    where both curvatures are >= 0 (locally convex), 1 where the most negative curvature is the
    largest in size (a saddle as strong as it is curved, or a local maximum). A point has
    significant negative curvature when `ratio > threshold`.

    Args:
        values_AxB: surface values (e.g. the loss).
        x_A: evenly spaced coordinates of the first axis.
        y_B: evenly spaced coordinates of the second axis.
        threshold: ratio above which negative curvature counts as significant.
        level: if given, the summary numbers count only interior points whose value is <= level
            (e.g. the basin around a minimum, leaving out a saturated plateau).

    Returns:
        `nonconvex_fraction` (share of the counted interior points with ratio > threshold),
        `mean_ratio`, `max_ratio`, `points` (how many were counted), `ratio_IxJ` (the map of all
        interior points), `lambda_min_IxJ`, `lambda_max_IxJ`, `threshold`.
    """
    lmin, lmax = principal_curvatures(values_AxB, x_A, y_B)
    scale = np.maximum(np.abs(lmin), np.abs(lmax))
    ratio = np.where(scale > 0, np.maximum(0.0, -lmin) / np.where(scale > 0, scale, 1.0), 0.0)
    counted = np.ones(ratio.shape, bool)
    if level is not None:
        counted = np.asarray(values_AxB, np.float64)[1:-1, 1:-1] <= level
    r = ratio[counted]
    if r.size == 0:
        nan = float("nan")
        summary = {"nonconvex_fraction": nan, "mean_ratio": nan, "max_ratio": nan}
    else:
        summary = {"nonconvex_fraction": float(np.mean(r > threshold)),
                   "mean_ratio": float(np.mean(r)), "max_ratio": float(np.max(r))}
    return {**summary, "points": int(r.size), "threshold": float(threshold), "ratio_IxJ": ratio,
            "lambda_min_IxJ": lmin, "lambda_max_IxJ": lmax}


def edge_rise(values_AxB: np.ndarray, x_A: np.ndarray, y_B: np.ndarray) -> dict[str, float]:
    """How much the loss rises from the centre of the plane to its border.

    Args:
        values_AxB: surface values.
        x_A: coordinates of the first axis (the centre is the point nearest 0).
        y_B: coordinates of the second axis.

    Returns:
        `center` (value at the point nearest the origin), `edge_mean` and `edge_min` (over the
        grid's border), `rise` (edge_mean - center), and `min` (the surface's minimum).
    """
    f = np.asarray(values_AxB, np.float64)
    i, j = int(np.argmin(np.abs(x_A))), int(np.argmin(np.abs(y_B)))
    border = np.concatenate([f[0, :], f[-1, :], f[1:-1, 0], f[1:-1, -1]])
    center = float(f[i, j])
    return {"center": center, "edge_mean": float(border.mean()), "edge_min": float(border.min()),
            "rise": float(border.mean() - center), "min": float(f.min())}


def sharpness_1d(values_A: np.ndarray, alpha_A: np.ndarray,
                 radii: Sequence[float] = (0.25, 0.5), fit_radius: float = 0.25) -> dict[str, Any]:
    """Sharpness of a 1D curve through a minimum at alpha = 0.

    Args:
        values_A: curve values f(alpha_A).
        alpha_A: increasing coordinates containing 0 in their range.
        radii: report the mean loss increase `(f(-r) + f(r)) / 2 - f(0)` at each r.
        fit_radius: fit `f ~ c0 + c1 alpha + c2 alpha^2` to the points with |alpha| <= this.

    Returns:
        `rise` {r: increase}, `curvature` (2 c2, the fitted f''(0)), `fit` [c0, c1, c2],
        `at_zero` (f(0) interpolated).
    """
    f = np.asarray(values_A, np.float64)
    a = np.asarray(alpha_A, np.float64)
    if f.shape != a.shape or a.ndim != 1:
        raise ValueError(f"values_A {f.shape} and alpha_A {a.shape} must be 1-D and alike")
    if np.any(np.diff(a) <= 0):
        raise ValueError("alpha_A: must be increasing")
    f0 = float(np.interp(0.0, a, f))
    rise = {}
    for r in radii:
        if not (a[0] <= -r and r <= a[-1]):
            raise ValueError(f"radii: +-{r} lies outside the grid [{a[0]}, {a[-1]}]")
        rise[float(r)] = float(0.5 * (np.interp(-r, a, f) + np.interp(r, a, f)) - f0)
    near = np.abs(a) <= fit_radius + 1e-12
    if near.sum() < 3:
        raise ValueError(f"fit_radius: only {int(near.sum())} grid points within +-{fit_radius}; "
                         "need 3 (use a finer grid or a larger radius)")
    c2, c1, c0 = np.polyfit(a[near], f[near], 2)
    return {"rise": rise, "curvature": float(2 * c2), "fit": [float(c0), float(c1), float(c2)],
            "at_zero": f0}


__all__ = ["convexity", "edge_rise", "plane_hessians", "principal_curvatures", "sharpness_1d"]
