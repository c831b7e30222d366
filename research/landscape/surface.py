"""The surface file: coordinates, every metric, a done-mask and metadata, in one atomic .npz.

Layout of `surface.npz` (plain numpy, readable without this package):

- `axis_0`, `axis_1`, ...: the coordinates along each direction (1-D arrays);
- `metric_<name>`: one array per metric, shaped like the grid (NaN where not yet computed);
- `done`: boolean grid, True where a point is computed (a NaN loss at a diverged point stays done;
  the reference's "recompute where loss <= 0" test is not used);
- `extra_<name>`: optional arrays for plots (e.g. the PCA trajectory's coordinates);
- `metadata`: a JSON string with `settings` (everything that changes the numbers: fingerprints of
  parameters, directions and data, seeds, normalisation, BatchNorm policy, dtype ...) and `info`
  (everything else: cosines, explained variance, run folder ...).

The file is rewritten atomically (temporary file, then rename) after each chunk of points, so an
interrupted run leaves a valid file, and a re-run computes only the missing points; opening it
removes the temporaries a killed write left behind. A re-run with different `settings` refuses to
mix results and says which setting changed, unless told to overwrite.

A surface lives in host memory (float64 per metric and point, plus the done-mask, the coordinates
and a copy at each save), so grids over `MAX_SURFACE_BYTES` are refused before anything is
allocated: split such a grid into several surfaces.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.io import atomic_write_bytes, remove_stale_temporaries

FORMAT = "research.landscape.surface/1"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# Generous for any grid one can evaluate (86 million points of two metrics), far below the point
# where a 2-D grid typed with one zero too many takes the machine down.
MAX_SURFACE_BYTES = 4 * 2**30


class SurfaceMismatchError(ValueError):
    """A surface file exists with settings that differ from the requested ones."""


@dataclasses.dataclass
class Surface:
    """A (partially) computed loss surface.

    Attributes:
        axes: the coordinates along each direction, one 1-D array per direction.
        values: metric name -> array shaped like the grid (NaN where not computed).
        done: boolean array shaped like the grid.
        settings: what determines the numbers; compared on resume.
        info: descriptive metadata (not compared).
        extras: extra arrays stored with the surface (e.g. a projected trajectory).
    """

    axes: tuple[np.ndarray, ...]
    values: dict[str, np.ndarray]
    done: np.ndarray
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid shape, one size per direction."""
        return tuple(len(a) for a in self.axes)

    @property
    def ndim(self) -> int:
        """Number of directions (1 for a line, 2 for a plane)."""
        return len(self.axes)

    @property
    def complete(self) -> bool:
        """Whether every grid point is computed."""
        return bool(np.all(self.done))

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names."""
        return tuple(self.values)

    def coords(self) -> np.ndarray:
        """All grid points as `coords_GxK` in row-major (C) order of the grid."""
        mesh = np.meshgrid(*self.axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)


def empty_surface(axes, metrics, settings=None, info=None, extras=None) -> Surface:
    """A surface with nothing computed yet.

    Args:
        axes: one 1-D coordinate array per direction.
        metrics: metric names.
        settings: settings compared on resume.
        info: descriptive metadata.
        extras: extra arrays.

    Returns:
        The surface.
    """
    axes = tuple(np.asarray(a, np.float64) for a in axes)
    shape = tuple(len(a) for a in axes)
    check_surface_size(shape, len(metrics))
    for name in metrics:
        _check_name("metrics", name)
    return Surface(axes=axes, values={m: np.full(shape, np.nan, np.float64) for m in metrics},
                   done=np.zeros(shape, bool), settings=dict(settings or {}),
                   info=dict(info or {}), extras=dict(extras or {}))


def surface_bytes(shape, num_metrics: int) -> int:
    """Host memory a surface of this grid shape needs while it is computed and saved.

    Args:
        shape: points along each axis.
        num_metrics: metrics stored per point.

    Returns:
        Bytes: the float64 values and the done-mask, twice (the in-memory .npz written at each
        save), plus the float64 coordinates of every point.
    """
    points = math.prod(int(n) for n in shape)
    return points * (2 * (8 * max(1, num_metrics) + 1) + 8 * len(shape))


def check_surface_size(shape, num_metrics: int, field: str = "axes") -> None:
    """Raise a ValueError, before anything is allocated, if the surface would not fit.

    Args:
        shape: points along each axis.
        num_metrics: metrics stored per point.
        field: the field name for the message.
    """
    need = surface_bytes(shape, num_metrics)
    if need > MAX_SURFACE_BYTES:
        points = math.prod(int(n) for n in shape)
        raise ValueError(
            f"{field}: the grid {' x '.join(str(int(n)) for n in shape)} has {points:,} points; "
            f"its surface would need {_bytes_text(need)} of host memory, over the limit of "
            f"{_bytes_text(MAX_SURFACE_BYTES)} (research.landscape.surface.MAX_SURFACE_BYTES); "
            "use fewer points or split the grid into several surfaces")


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _check_name(field: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{field}: name {name!r} must be letters, digits, '_', '.' or '-'")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_surface(path: str, surface: Surface) -> None:
    """Write a surface file atomically (temporary file in the same folder, then rename).

    Args:
        path: the .npz path.
        surface: the surface.
    """
    arrays: dict[str, np.ndarray] = {}
    for i, axis in enumerate(surface.axes):
        arrays[f"axis_{i}"] = np.asarray(axis, np.float64)
    for name, value in surface.values.items():
        _check_name("metrics", name)
        arrays[f"metric_{name}"] = np.asarray(value, np.float64)
    for name, value in surface.extras.items():
        _check_name("extras", name)
        arrays[f"extra_{name}"] = np.asarray(value)
    arrays["done"] = np.asarray(surface.done, bool)
    meta = {"format": FORMAT, "metrics": list(surface.values), "ndim": surface.ndim,
            "settings": _jsonable(surface.settings), "info": _jsonable(surface.info)}
    arrays["metadata"] = np.array(json.dumps(meta, sort_keys=True))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_surface(path: str) -> Surface:
    """Read a surface file.

    Args:
        path: the .npz path.

    Returns:
        The surface.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no surface file at {path}")
    with np.load(path, allow_pickle=False) as f:
        if "metadata" not in f.files:
            raise ValueError(f"{path} is not a surface file (no metadata)")
        meta = json.loads(str(f["metadata"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown surface format {meta.get('format')!r}")
        axes = tuple(f[f"axis_{i}"] for i in range(int(meta["ndim"])))
        values = {m: f[f"metric_{m}"] for m in meta["metrics"]}
        extras = {k[len("extra_"):]: f[k] for k in f.files if k.startswith("extra_")}
        done = f["done"].astype(bool)
    return Surface(axes=axes, values=values, done=done, settings=meta["settings"],
                   info=meta["info"], extras=extras)


def settings_diff(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two settings dicts ('field: saved X, now Y')."""
    saved, requested = _jsonable(saved), _jsonable(requested)
    out = []
    for key in sorted(set(saved) | set(requested)):
        a, b = saved.get(key, "<absent>"), requested.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: saved {_short(a)}, now {_short(b)}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resumable(surface: Surface, axes, metrics, settings: Mapping[str, Any],
                    path: str = "surface") -> None:
    """Raise a `SurfaceMismatchError` if a saved surface was computed with other settings.

    Args:
        surface: the saved surface.
        axes: the requested coordinates.
        metrics: the requested metric names.
        settings: the requested settings.
        path: the file, for the message.
    """
    problems = settings_diff(surface.settings, settings)
    if len(axes) != surface.ndim or any(
            len(a) != len(b) or not np.array_equal(np.asarray(a, np.float64), b)
            for a, b in zip(axes, surface.axes)):
        problems.append("axes: saved "
                        + " x ".join(_grid_text(a) for a in surface.axes)
                        + ", now " + " x ".join(_grid_text(np.asarray(a)) for a in axes))
    if tuple(metrics) != surface.metrics:
        problems.append(f"metrics: saved {list(surface.metrics)}, now {list(metrics)}")
    if problems:
        raise SurfaceMismatchError(
            f"{path} was computed with different settings; refusing to mix results:\n  "
            + "\n  ".join(problems)
            + "\nUse another output path, or overwrite=True (the CLI's --overwrite) to replace "
              "it.")


def _grid_text(axis: np.ndarray) -> str:
    if len(axis) == 0:
        return "[]"
    return f"{float(axis[0]):g}:{float(axis[-1]):g}:{len(axis)}"





def open_surface(path: str | None, axes, metrics, settings: Mapping[str, Any],
                 info: Mapping[str, Any], extras: Mapping[str, Any] | None = None, *,
                 overwrite: bool = False) -> Surface:
    """The surface to fill: the saved one at `path` when it matches, else a new (saved) one.

    Args:
        path: the .npz path, or None for a surface held in memory only.
        axes: the requested coordinates.
        metrics: the requested metric names.
        settings: the requested settings (compared with the saved ones).
        info: descriptive metadata (replaces the saved keys of the same name).
        extras: extra arrays (replace the saved ones of the same name).
        overwrite: start a new surface even if a file exists (replacing it).

    Returns:
        The surface; raises `SurfaceMismatchError` if the saved one has other settings.
    """
    check_surface_size([len(a) for a in axes], len(metrics))
    if path is None:
        return empty_surface(axes, metrics, settings, info, extras)
    # A killed earlier write leaves a temporary beside the file; a live writer's is kept.
    remove_stale_temporaries(os.path.dirname(os.path.abspath(path)))
    if not overwrite and os.path.exists(path):
        surface = load_surface(path)
        check_resumable(surface, axes, metrics, settings, path)
        surface.info.update(info)
        surface.extras.update({k: np.asarray(v) for k, v in (extras or {}).items()})
        return surface
    surface = empty_surface(axes, metrics, settings, info, extras)
    save_surface(path, surface)
    return surface
