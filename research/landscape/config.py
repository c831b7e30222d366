"""`LandscapeConfig`: what `experiments/landscape.py` computes and plots, validated, with presets.

Grids are "min:max:num" strings, as in the reference (`linspace(min, max, num)`); the defaults
are the paper's: 1D `-1:1:51`, 2D `-1:1:51 x -1:1:51`, interpolation `-0.5:1.5:401`. A one-point
axis is written "c:c:1" (a single evaluation at c); "-1:1:1" is refused, since linspace would
silently drop the max. Grids whose surface would not fit in memory are refused before any
allocation (`research.landscape.surface.MAX_SURFACE_BYTES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import tyro

from research.landscape.directions import IGNORES, NORMALIZATIONS
from research.landscape.evaluate import BN_POLICIES
from research.landscape.surface import check_surface_size

# Literal types, so `--help` lists the choices; the tuples are derived from them.
# Normalization, Ignore and BnPolicy spell out `directions.NORMALIZATIONS`, `IGNORES` and
# `evaluate.BN_POLICIES` (the engine's own validation uses those; tests/test_config.py checks
# that they agree).
Plot = Literal["line", "plane", "interpolation", "pca"]
BnPolicy = Literal["keep", "interpolate", "recompute"]
Dtype = Literal["float32", "bfloat16"]
Split = Literal["train", "test"]
Format = Literal["png", "pdf", "svg"]
Normalization = Literal["filter", "layer", "model", "none"]
Ignore = Literal["biasbn", "none"]

PLOTS: tuple[str, ...] = get_args(Plot)
DTYPES: tuple[str, ...] = get_args(Dtype)
SPLITS: tuple[str, ...] = get_args(Split)
FORMATS: tuple[str, ...] = get_args(Format)


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
        run_dir: the training run's folder (config.json, checkpoints, trajectory/); '' picks
            the newest finished run under runs/ (the one whose summary.json says finished and
            was written last) and says which.
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
        formats: figure formats, any of png, pdf, svg.
        animate: write the GIF of the trajectory descending the PCA-plane contour.
        vtk: write the 2D surfaces as VTK PolyData (.vtp) for ParaView.
        progress: show progress bars.
        title: start of the figures' titles ('' : '<run name>: <model> on <data set>').
        overwrite: replace surface files that refuse the requested settings or model (by default
            such a file is kept and the analysis stops with the differing setting named).
        preset: named defaults to start from (the presets are listed above); the other options
            given override them.
    """

    run_dir: str = ""
    out_dir: str = ""
    plots: tuple[Plot, ...] = PLOTS
    line: str = "-1:1:51"
    plane_x: str = "-1:1:51"
    plane_y: str = "-1:1:51"
    interpolation: str = "-0.5:1.5:401"
    pca_num: int = 51
    pca_margin: float = 0.2
    normalization: Normalization = "filter"
    ignore: Ignore = "biasbn"
    seed: int = 0
    orthogonalize: bool = False
    bn_policy: BnPolicy = "keep"
    interpolation_bn_policy: BnPolicy = "interpolate"
    split: Split = "train"
    max_examples: int = 0
    batch_size: int = 512
    points_per_call: int = 64
    dtype: Dtype = "float32"
    grid_devices: int = 0
    data_devices: int = 1
    log: bool = False
    formats: tuple[Format, ...] = ("png", "pdf")
    animate: bool = True
    vtk: bool = True
    progress: bool = True
    title: str = ""
    overwrite: bool = False
    preset: str = "paper"

    def __post_init__(self):
        c = "LandscapeConfig"
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

        if not self.run_dir and not self.out_dir:
            raise ValueError("LandscapeConfig.run_dir: no run folder chosen yet")
        return self.out_dir or os.path.join(self.run_dir, "landscape")


@dataclass(frozen=True)
class JobLandscapeConfig(LandscapeConfig):
    """`LandscapeConfig` inside a job that trains the run itself and sets the folders.

    The job decides `run_dir`, `out_dir` and the preset, so they are left off its command line.
    """

    run_dir: tyro.conf.Suppress[str] = ""
    out_dir: tyro.conf.Suppress[str] = ""
    preset: tyro.conf.Suppress[str] = "paper"


# The one definition of each preset name, used by `experiments.landscape` and by the jobs that
# run the landscape after training (`experiments.main`), so `--preset cpu` means the same grids
# in both. `paper`: the paper's grids. `cpu`: 21 x 21 planes on a fixed subset of 256 training
# examples, log levels (the main job's landscapes in about 75 s on two cores; a Playground run
# in under a minute). `gpu`: the paper's grids, more points per compiled call. `tiny`: tests.
LANDSCAPE_PRESETS: dict[str, LandscapeConfig] = {
    "paper": LandscapeConfig(preset="paper"),
    "cpu": LandscapeConfig(line="-1:1:41", plane_x="-1:1:21", plane_y="-1:1:21",
                           interpolation="-0.5:1.5:51", pca_num=21, max_examples=256,
                           batch_size=256, points_per_call=21, log=True, preset="cpu"),
    "gpu": LandscapeConfig(batch_size=512, points_per_call=51, log=True, preset="gpu"),
    "tiny": LandscapeConfig(line="-1:1:7", plane_x="-1:1:5", plane_y="-1:1:5",
                            interpolation="-0.5:1.5:9", pca_num=5, batch_size=64,
                            points_per_call=8, formats=("png",), progress=False, preset="tiny"),
}


def job_landscape(preset: str) -> JobLandscapeConfig:
    """The landscape preset `preset` as the part of a job's config (folders set by the job).

    Args:
        preset: a name in `LANDSCAPE_PRESETS`.

    Returns:
        The same settings as `LANDSCAPE_PRESETS[preset]`, as a `JobLandscapeConfig`.
    """
    import dataclasses

    base = LANDSCAPE_PRESETS[preset]
    return JobLandscapeConfig(**{f.name: getattr(base, f.name)
                                 for f in dataclasses.fields(LandscapeConfig)})

