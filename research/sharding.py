"""Device meshes: ("data",) for training, ("grid", "data") for the landscape engine; processes.

Training is data-parallel: the global batch is split along `data`, the parameters, optimiser
and model state are replicated (`param_sharding` is the seam for sharding them), and the step is
compiled once with these shardings; XLA adds the gradient all-reduce. BatchNorm statistics in a
training step are therefore over the whole global batch, as on one device.

Landscape engine: a `grid` axis (grid points) and a `data` axis (examples).

Grid points are independent, so the `grid` axis needs no communication; the `data` axis splits each
batch across devices and adds the partial sums once per grid point. On CPU, several host devices
can be simulated with `XLA_FLAGS=--xla_force_host_platform_device_count=4` (set before jax starts).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


# --- The CPU backend ---------------------------------------------------------------------------

# jax 0.10's XLA:CPU runs convolutions as YNNPACK fusions, single-threaded: with one CPU that is
# the faster choice, but with two it leaves the second core mostly idle (1.3-1.6 CPUs busy
# against PyTorch's 1.96). Its Eigen convolutions use every core: the training step runs
# 1.1-1.35x faster on 2 cores (1.7-1.9 CPUs busy; `cpu_jit`), while on one core they are
# 0.6-0.9x YNNPACK's. The option is experimental, and XLA aborts on a flag it does not know, so
# it is used only with the jaxlib series it was measured on. As a flag it reaches every program
# of a process (`configure_cpu_backend`); as a compiler option, one program (`cpu_jit`: jax
# 0.10's default fusion types, YNNPACK's reductions and dots, without its convolutions).
EIGEN_CONVOLUTIONS = ("--xla_cpu_experimental_ynn_fusion_type="
                      "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
_EIGEN_CONVOLUTION_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                              "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_MEASURED_JAXLIB = ("0.10.",)
# Set while `cpu_jit` traces a function for Eigen's convolutions (per thread).
_tracing_for_eigen = threading.local()


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask; all CPUs on macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def _eigen_convolutions_pay() -> bool:
    """Two or more usable CPUs, a measured jaxlib, and no YNNPACK choice of the user's."""
    from jaxlib import version

    return ("xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", "")
            and usable_cpus() >= 2 and version.__version__.startswith(_MEASURED_JAXLIB))


def configure_cpu_backend() -> bool:
    """Opt in to XLA:CPU convolutions that use every core, in every program of this process.

    Programs compiled with `cpu_jit` (our training steps and the loop's evaluation) get them
    anyway; this extends them to everything else (`eval_step_jit`, landscapes, curvature).
    Call it first in a script, before JAX starts its backends (later it only reaches child
    processes);
    `XLA_FLAGS="--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_..."`
    (`EIGEN_CONVOLUTIONS`) does the same from the shell. It appends `EIGEN_CONVOLUTIONS` to
    `XLA_FLAGS` when the process may use two or more CPUs, the installed jaxlib is a measured
    series, and `XLA_FLAGS` does not already choose YNNPACK fusions. Accelerators are
    unaffected. It is not the default because results then change by float rounding with the
    number of cores (the same on one machine, run after run), and the landscape engine already
    runs grid points on every core.

    Returns:
        Whether the flag was added.
    """
    if not _eigen_convolutions_pay():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True


def eigen_convolutions() -> bool:
    """Whether the program being traced will run XLA:CPU's Eigen convolutions.

    True under `EIGEN_CONVOLUTIONS` in `XLA_FLAGS` and while `cpu_jit` traces for them;
    `research.models.ops` then keeps forms that only pay with YNNPACK's convolutions out.
    """
    return (EIGEN_CONVOLUTIONS in os.environ.get("XLA_FLAGS", "")
            or getattr(_tracing_for_eigen, "on", False))


def cpu_jit(fun: Callable, **jit_kwargs) -> Callable:
    """`jax.jit(fun, **jit_kwargs)`, with Eigen's multi-threaded convolutions on a multi-core CPU.

    On the CPU backend with two or more usable CPUs and a measured jaxlib (and no YNNPACK choice
    in `XLA_FLAGS`), the program is compiled with Eigen's convolutions instead of YNNPACK's
    single-threaded ones, and traced with `eigen_convolutions()` true. Elsewhere (one CPU, an
    accelerator) it is plain `jax.jit`. Results differ from `jax.jit(fun)`'s by float rounding
    (the same run after run on one machine and core count). Decide after JAX has its devices
    (it asks for the default backend).

    Args:
        fun: the function to compile (traced apart from other jits of it: JAX caches a trace
            per function, whatever the compiler options, so `fun` is wrapped).
        **jit_kwargs: passed to `jax.jit`.

    Returns:
        The jitted function (with `lower`); inside another trace it is a plain nested jit.
    """
    if jax.default_backend() != "cpu" or not _eigen_convolutions_pay():
        return jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def traced_for_eigen(*args, **kwargs):
        before = getattr(_tracing_for_eigen, "on", False)
        _tracing_for_eigen.on = True
        try:
            return fun(*args, **kwargs)
        finally:
            _tracing_for_eigen.on = before

    eigen = jax.jit(traced_for_eigen, compiler_options=_EIGEN_CONVOLUTION_OPTIONS, **jit_kwargs)
    nested = jax.jit(fun, **jit_kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        # JAX takes compiler options only for a top-level program; called inside another
        # trace (jit, grad, vmap of the caller's), this is a plain nested jit.
        if any(isinstance(leaf, jax.core.Tracer)
               for leaf in jax.tree_util.tree_leaves((args, kwargs))):
            return nested(*args, **kwargs)
        return eigen(*args, **kwargs)

    call.lower = eigen.lower
    return call


# glibc `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_HOST_MEMORY = {"configured": None}


def reuse_host_memory() -> bool:
    """Keep the memory XLA:CPU frees for its next call instead of returning it to the system.

    XLA:CPU allocates each call's temporary buffers with malloc and frees them afterwards;
    glibc hands large blocks, and blocks of its per-thread arenas, back to the kernel, so the
    next call touches fresh pages and takes a page fault for every 4 KiB. For a CNN training
    step at batch 128 (40 x 64 log-mels, one core) that was 19,200 faults and 44 ms of system
    time per step of 155 ms; with this setting there are none and the step takes 106-109 ms
    (batch 32: no faults either way). The setting is glibc's `mallopt`: one arena for all
    threads, no `mmap` for large blocks, no trimming of the heap below 2 GiB free; the process
    keeps its peak host memory until it exits. It changes no computed value.

    Call it first in a script, before JAX starts its backends and threads (threads that have
    already allocated keep their arenas). Only glibc systems (Linux) are affected; elsewhere it
    does nothing.

    Returns:
        Whether the setting is in effect.
    """
    if _HOST_MEMORY["configured"] is None:
        import ctypes
        import platform

        ok = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL("libc.so.6")
            # mallopt takes C ints: the largest trim threshold is 2 GiB - 1.
            ok = all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
                     for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                          (_M_TRIM_THRESHOLD, 2**31 - 1)))
        _HOST_MEMORY["configured"] = ok
    return _HOST_MEMORY["configured"]


# --- Data-parallel training and several processes --------------------------------------------

_DISTRIBUTED = {"initialized": False}


def initialize_distributed() -> None:
    """Start JAX's multi-process runtime once (no-op when it is already running).

    `jax.distributed.initialize()` with no arguments finds the cluster from the environment:
    Open MPI (`mpirun`), SLURM (`srun`) and Cloud TPU pods. On CPU the collectives between
    processes need gloo, set here first (the setting only affects the CPU backend). Call it
    before anything else touches a JAX device.
    """
    if _DISTRIBUTED["initialized"] or jax.distributed.is_initialized():
        _DISTRIBUTED["initialized"] = True
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
    _DISTRIBUTED["initialized"] = True


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1D ("data",) mesh over all devices of all processes (default) or the given ones.

    Its axis is of the `Auto` type (shardings propagated by the compiler, as in `jax.jit` with
    `in_shardings`), not `jax.make_mesh`'s default `Explicit` one.
    """
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                             axis_types=(jax.sharding.AxisType.Auto,))
    return Mesh(np.array(list(devices)), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Examples split along the mesh's `data` axis (after `leading` unsplit axes, e.g. steps)."""
    return NamedSharding(mesh, P(*([None] * leading), DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, params):
    """The sharding of each parameter: the seam for parameter (FSDP or tensor) sharding.

    Today every parameter is replicated (pure data parallelism). To shard large kernels, return
    e.g. `NamedSharding(mesh, P(None, "data"))` for chosen leaves; the training step is compiled
    with these shardings (optimiser state follows the parameters), so nothing else changes.
    """
    return jax.tree_util.tree_map(lambda _: replicated(mesh), params)


def check_divisible(batch_size: int, mesh: Mesh, what: str = "TrainConfig.batch_size") -> None:
    """A global batch must split evenly over the data axis; say so with both numbers."""
    n = int(mesh.shape[DATA_AXIS])
    if batch_size % n:
        raise ValueError(f"{what}: {batch_size} does not divide by the {n} devices of the data "
                         f"axis; choose a multiple of {n} (e.g. {max(n, batch_size // n * n)})"
                         " or set TrainConfig.devices (--train.devices) to a divisor of it")


def training_mesh(batch_size: int, devices: int = 0) -> tuple[Mesh, str | None]:
    """The ("data",) mesh a training run uses, and a note when it is not all devices.

    Args:
        batch_size: the global batch size.
        devices: devices to use; 0 means all (several processes: all of every process). With
            one process and a batch size that does not divide by the device count, 0 uses the
            most devices that divide it (the note says so); an explicit count that does not
            divide the batch is an error naming both numbers.

    Returns:
        (mesh, note or None).
    """
    available = jax.devices()
    if devices > len(available):
        raise ValueError(f"TrainConfig.devices: {devices} requested, only {len(available)} "
                         "available")
    note = None
    if devices == 0:
        devices = len(available)
        if jax.process_count() == 1 and batch_size % devices:
            fit = max(d for d in range(1, devices + 1) if batch_size % d == 0)
            note = (f"batch size {batch_size} does not divide by the {devices} devices: "
                    f"training on {fit} of them (choose a batch size that is a multiple of "
                    f"{devices} to use all)")
            devices = fit
    mesh = data_mesh(available[:devices]) if devices < len(available) else data_mesh()
    check_divisible(batch_size, mesh)
    return mesh, note


def put(x, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full (each feeds its shards)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def fetch(tree):
    """Host numpy copies of (possibly global, multi-process) arrays.

    Replicated arrays are read from a local copy; arrays split over other processes' devices
    are gathered (a collective: every process must call it).
    """
    from jax.experimental import multihost_utils

    def leaf(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(leaf, tree)


def is_writer() -> bool:
    """Whether this process writes files, figures and progress (process 0 only)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
