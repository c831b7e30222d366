"""Loss landscapes (Li et al. 2018): directions, fast grid evaluation, surface files, plots.

Typical use::

    from research import landscape as L

    d1 = L.random_direction(params, seed=0)            # filter-normalised, biases/BN ignored
    d2 = L.random_direction(params, seed=1)
    surface = L.evaluate_grid(loss_fn, params, [d1, d2],
                              [np.linspace(-1, 1, 51), np.linspace(-1, 1, 51)],
                              {"x": x_train, "y": y_train}, path="plane.npz")
    L.save_figure(L.plot_contour(surface), "plane_contour")
"""

from research.io import fingerprint
from research.landscape import curves, hessian, interactive, measures
from research.landscape.config import LANDSCAPE_PRESETS, LandscapeConfig, parse_grid
from research.landscape.directions import (
    PCADirections,
    cosine,
    gaussian_direction,
    interpolation_direction,
    normalize_direction,
    orthogonalize,
    param_kind,
    pca_directions,
    plane_directions,
    random_direction,
)
from research.landscape.eigen_plot import plot_eigenvalue_map, plot_eigenvalue_maps
from research.landscape.evaluate import (
    BN_POLICIES,
    BatchNormPolicy,
    evaluate_grid,
    evaluate_point,
    linen_functions,
)
from research.landscape.plot import (
    animate_trajectory,
    contour_levels,
    export_vtp,
    plot_1d,
    plot_contour,
    plot_interpolation,
    plot_surface_3d,
    plot_trajectory,
    save_figure,
)
from research.landscape.surface import (
    Surface,
    SurfaceMismatchError,
    load_surface,
    save_surface,
)

__all__ = [
    "animate_trajectory", "BatchNormPolicy", "BN_POLICIES", "contour_levels", "cosine", "curves",
    "evaluate_grid", "evaluate_point", "export_vtp", "fingerprint", "gaussian_direction",
    "hessian", "interactive", "interpolation_direction", "LANDSCAPE_PRESETS", "LandscapeConfig",
    "linen_functions", "load_surface", "measures", "normalize_direction", "orthogonalize",
    "param_kind", "parse_grid", "pca_directions", "PCADirections", "plane_directions", "plot_1d",
    "plot_contour", "plot_eigenvalue_map", "plot_eigenvalue_maps", "plot_interpolation",
    "plot_surface_3d", "plot_trajectory", "random_direction", "save_figure", "save_surface",
    "Surface", "SurfaceMismatchError",
]
