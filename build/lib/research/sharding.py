"""Device meshes for the landscape engine: a `grid` axis (grid points) and a `data` axis (examples).

Grid points are independent, so the `grid` axis needs no communication; the `data` axis splits each
batch across devices and adds the partial sums once per grid point. On CPU, several host devices
can be simulated with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before jax starts).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

GRID_AXIS = "grid"
DATA_AXIS = "data"


def make_mesh(grid: int = 0, data: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2D device mesh with axes ("grid", "data").

    Args:
        grid: devices along the grid axis; 0 uses all devices left after `data`.
        data: devices along the data axis.
        devices: devices to use (default: `jax.devices()`).

    Returns:
        The mesh, of shape (grid, data).
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1:
        raise ValueError(f"data: must be >= 1, got {data}")
    if grid == 0:
        grid = max(1, len(devices) // data)
    if grid < 1:
        raise ValueError(f"grid: must be >= 0, got {grid}")
    if grid * data > len(devices):
        raise ValueError(f"grid x data: a {grid} x {data} mesh needs {grid * data} devices, "
                         f"only {len(devices)} are available")
    return Mesh(np.array(devices[: grid * data]).reshape(grid, data), (GRID_AXIS, DATA_AXIS))


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    """A 1 x 1 ("grid", "data") mesh on one device (default: the first)."""
    device = jax.devices()[0] if device is None else device
    return Mesh(np.array([device]).reshape(1, 1), (GRID_AXIS, DATA_AXIS))


def mesh_axis_sizes(mesh: Mesh) -> tuple[int, int]:
    """(grid, data) sizes of a mesh with those axis names, checking that both exist."""
    names = tuple(mesh.axis_names)
    if set(names) != {GRID_AXIS, DATA_AXIS}:
        raise ValueError(f"mesh: axes must be ({GRID_AXIS!r}, {DATA_AXIS!r}), got {names}; "
                         "build one with research.sharding.make_mesh")
    return int(mesh.shape[GRID_AXIS]), int(mesh.shape[DATA_AXIS])
