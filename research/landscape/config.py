"""`LandscapeConfig`: what `experiments/landscape.py` computes and plots, validated, with presets.

Grids are "min:max:num" strings, as in the reference (`linspace(min, max, num)`); the defaults
are the paper's: 1D `-1:1:51`, 2D `-1:1:51 x -1:1:51`, interpolation `-0.5:1.5:401`. A one-point
axis is written "c:c:1" (a single evaluation at c); "-1:1:1" is refused, since linspace would
silently drop the max. Grids whose surface would not fit in memory are refused before any
allocation (`research.landscape.surface.MAX_SURFACE_BYTES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from research.landscape.directions import IGNORES, NORMALIZATIONS
from research.landscape.evaluate import BN_POLICIES
from research.landscape.surface import check_surface_size

PLOTS = ("line", "plane", "interpolation", "pca")
DTYPES = ("float32", "bfloat16")
SPLITS = ("train", "test")
FORMATS = ("png", "pdf")


def parse_grid(text: str, field: str = "grid") -> np.ndarray:
    """Parse "min:max:num" into `linspace(min, max, num)`.

    Args:
        text: the grid, e.g. "-1:1:51".
        field: the field name for error messages.

    Returns:
        The coordinates, float64.
    """
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"{field}: expected 'min:max:num' (e.g. '-1:1:51'), "
                         f"got {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{field}: min and max must be finite, got {text!r}")
    if num < 1:
        raise ValueError(f"{field}: num must be >= 1, got {text!r}")
    if num == 1 and lo != hi:
        raise ValueError(f"{field}: one point between two different ends is ambiguous, got "
                         f"{text!r}; write '{parts[0]}:{parts[0]}:1' for a single evaluation at "
                         f"{lo:g}, or num >= 2")
    if num > 1 and not lo < hi:
        raise ValueError(f"{field}: min must be < max, got {text!r}")
    check_surface_size((num,), 1, field)  # before linspace allocates the coordinates
    return np.linspace(lo, hi, num)


@dataclass(frozen=True)
class LandscapeConfig:
    """Loss-landscape analysis of a finished training run.

    Attributes:
        run_dir: the training run's folder (config.json, checkpoints, trajectory/).
        out_dir: where surfaces and figures go ('' means `<run_dir>/landscape`).
        plots: which analyses to run: line, plane, interpolation, pca.
        line: 1D grid along one random direction, "min:max:num".
        plane_x: 2D grid along the first random direction.
        plane_y: 2D grid along the second random direction.
        interpolation: grid from initialisation (0) to the trained model (1).
        pca_num: points per axis of the PCA-plane grid.
        pca_margin: the PCA grid covers the trajectory's projection plus this fraction on each side.
        normalization: filter, layer, model or none.
        ignore: biasbn (zero direction on biases and normalisation parameters) or none.
        seed: seed of the first random direction; the second uses seed + 1.
        orthogonalize: make the two plane directions exactly orthogonal (Gram-Schmidt).
        bn_policy: BatchNorm statistics on the line and plane: keep, interpolate or recompute
            (interpolate is not defined for random directions and is rejected there).
        interpolation_bn_policy: BatchNorm statistics along the interpolation: keep,
            interpolate (the initial statistics to the trained ones) or recompute.
        split: evaluate on the train (the paper) or test split.
        max_examples: use a fixed random subset (seed 0) of this many examples (0: the whole
            split).
        batch_size: examples per step.
        points_per_call: grid points per compiled call (the surface file is saved after each).
        dtype: float32 or bfloat16 compute.
        grid_devices: devices along the mesh's grid axis (0: all devices / data_devices).
        data_devices: devices along the mesh's data axis.
        log: logarithmic loss axis in the 1D plots and log-spaced contour levels.
        formats: figure formats, any of png, pdf.
        animate: write the GIF of the trajectory descending the PCA-plane contour.
        vtk: write the 2D surfaces as VTK PolyData (.vtp) for ParaView.
        progress: show progress bars.
        preset: the preset these defaults came from (informational).
    """

    run_dir: str = "runs/playground"
    out_dir: str = ""
    plots: tuple[str, ...] = PLOTS
    line: str = "-1:1:51"
    plane_x: str = "-1:1:51"
    plane_y: str = "-1:1:51"
    interpolation: str = "-0.5:1.5:401"
    pca_num: int = 51
    pca_margin: float = 0.2
    normalization: str = "filter"
    ignore: str = "biasbn"
    seed: int = 0
    orthogonalize: bool = False
    bn_policy: str = "keep"
    interpolation_bn_policy: str = "interpolate"
    split: str = "train"
    max_examples: int = 0
    batch_size: int = 512
    points_per_call: int = 64
    dtype: str = "float32"
    grid_devices: int = 0
    data_devices: int = 1
    log: bool = False
    formats: tuple[str, ...] = FORMATS
    animate: bool = True
    vtk: bool = True
    progress: bool = True
    preset: str = "paper"

    def __post_init__(self):
        c = "LandscapeConfig"
        if not self.run_dir:
            raise ValueError(f"{c}.run_dir: give the training run's folder")
        if not self.plots:
            raise ValueError(f"{c}.plots: choose at least one of {', '.join(PLOTS)}")
        for name, value, choices in (("plots", None, PLOTS),
                                     ("normalization", self.normalization, NORMALIZATIONS),
                                     ("ignore", self.ignore, IGNORES),
                                     ("bn_policy", self.bn_policy, BN_POLICIES),
                                     ("interpolation_bn_policy", self.interpolation_bn_policy,
                                      BN_POLICIES),
                                     ("split", self.split, SPLITS), ("dtype", self.dtype, DTYPES),
                                     ("formats", None, FORMATS)):
            values = getattr(self, name) if value is None else (value,)
            for v in values:
                if v not in choices:
                    raise ValueError(f"{c}.{name}: unknown value {v!r}; "
                                     f"choose one of {', '.join(choices)}")
        if self.bn_policy == "interpolate":
            raise ValueError(f"{c}.bn_policy: 'interpolate' needs a second model's statistics; "
                             "for random directions use keep or recompute")
        grids = {name: parse_grid(getattr(self, name), f"{c}.{name}")
                 for name in ("line", "plane_x", "plane_y", "interpolation")}
        check_surface_size((grids["plane_x"].size, grids["plane_y"].size), 1,
                           f"{c}.plane_x x plane_y")
        for name in ("pca_num", "batch_size", "points_per_call", "data_devices"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{c}.{name}: must be an integer >= 1, got {v!r}")
        for name in ("max_examples", "grid_devices", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{c}.{name}: must be an integer >= 0, got {v!r}")
        if not 0.0 <= self.pca_margin <= 10.0:
            raise ValueError(f"{c}.pca_margin: must be in [0, 10], got {self.pca_margin!r}")

    def output_dir(self) -> str:
        """The folder for surfaces and figures."""
        import os

        return self.out_dir or os.path.join(self.run_dir, "landscape")


# The paper's grids; `cpu` keeps a Playground run to a minute on two cores; `tiny` is for tests.
LANDSCAPE_PRESETS: dict[str, LandscapeConfig] = {
    "paper": LandscapeConfig(preset="paper"),
    "cpu": LandscapeConfig(line="-1:1:41", plane_x="-1:1:25", plane_y="-1:1:25",
                           interpolation="-0.5:1.5:101", pca_num=25, batch_size=256,
                           points_per_call=32, preset="cpu"),
    "tiny": LandscapeConfig(line="-1:1:7", plane_x="-1:1:5", plane_y="-1:1:5",
                            interpolation="-0.5:1.5:9", pca_num=5, batch_size=64,
                            points_per_call=8, formats=("png",), progress=False, preset="tiny"),
}

