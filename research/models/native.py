"""A CNN's first stage as one native CPU kernel for training: conv - BatchNorm - ReLU - max pool.

Why: on the CPU, the first stage of a CNN on one-channel spectrograms (a 3x3 convolution to 16
channels, BatchNorm with batch statistics, ReLU and 2x2 max pooling on 40x64 log-mels) is
memory-bound work over its full-size activations, which XLA:CPU runs as a dozen separate passes
(the pooling gradient's select, BatchNorm's forward and backward sums, the kernel gradient's
padded input), mostly on one thread: about 40% of a batch-128 training step on 2 cores, and the
reason that step stayed at 0.8-1.0x PyTorch eager through sessions 13-19 whatever was tried in
JAX (`benchmarks/train_history.md`). `first_stage.cc` computes the whole stage in two XLA FFI
handlers that never store a full-size tensor:

- BatchNorm's statistics come from the input's tap sums `S` and Gram matrix `G` of kernel taps
  (`sum z = k'S`, `sum z^2 = k'Gk`, in float64), so the forward pass is one sweep computing the
  convolution, the affine map, the ReLU and the pooling together, keeping each pooled output's
  window position (one byte) and `z` there.
- The backward pass needs the pooled gradient only where it lands (each window's first maximum,
  where the ReLU passed it): with `dL/dz = a g + beta + gamma z` (BatchNorm's chain rule), the
  kernel gradient is `a sum(g patch) + beta S + gamma G k`, so it reads pooled-size data and
  the input's patches at the maxima, and reuses `S` and `G` from the forward pass.

The benchmark CNN's 2-thread training step was 1.02-1.27x faster with it than with the JAX
composite in four runs of `python -m benchmarks.train` (session 20), and 1.16-1.34x PyTorch
eager. Work is split over the batch on XLA's intra-op thread pool and partial sums are combined
in batch order, so results do not depend on the thread count. Values agree with the JAX
composite (`reference`: `research.models.ops`' convolution, `BatchNorm`'s fast-variance
statistics, `jax.nn.relu`, `max_pool`) to float32 rounding: the statistics are summed in float64
here.

The kernel is compiled on first use with the system's C++ compiler (`CXX`, else `c++`) against
jaxlib's FFI headers, into `$XDG_CACHE_HOME/research-native` (else `~/.cache/research-native`),
keyed by the source, the compiler, the flags, the jax version and the CPU model; building takes
about 10 s once. Where it cannot be built (no compiler), where `RESEARCH_NATIVE=0`, on
accelerators, with several devices along the data axis, or for any other stage shape,
`research.models.CNN` uses the JAX composite, with the same variables (`RESEARCH_NATIVE` is read
when a program is traced: set it before the first step). The native stage has a reverse-mode
derivative only (a `custom_vjp`); the model uses it in training mode only, and forward-mode
derivatives (Hessian-vector products) run in evaluation mode, on the JAX composite; a second
derivative of a training-mode loss (with batch statistics) needs `RESEARCH_NATIVE=0`. A gradient
with respect to the input (rarely wanted in training) is computed by differentiating the JAX
composite.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from research.models.ops import _data_devices, conv_general_dilated, max_pool

_SOURCE = Path(__file__).with_name("first_stage.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_TARGETS = ("FirstStageForward", "FirstStageBackward")
_CHANNELS = (8, 16, 32, 64)
_MAX_TAPS = 25
_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "research-native"


def _cpu_model() -> bytes:
    """The CPU's model and instruction sets (not its clock, which moves), where Linux says."""
    try:
        lines = Path("/proc/cpuinfo").read_bytes().split(b"\n\n")[0].splitlines()
    except OSError:
        return platform.processor().encode()
    return b"\n".join(line for line in lines if line.startswith((b"model name", b"flags")))


def _library_path() -> Path:
    """The compiled kernel, built (to a temporary file, then renamed) if not cached yet."""
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    key = hashlib.sha256(_SOURCE.read_bytes())
    key.update(" ".join(compiler + list(_FLAGS)).encode() + jax.__version__.encode())
    key.update(_cpu_model())  # -march=native: a shared cache must not hand one CPU's build on
    target = _cache_dir() / f"first_stage-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        errors = []
        # Some compilers (Apple's clang on arm64) reject -march=native: then the portable build.
        for flags in (_FLAGS, tuple(f for f in _FLAGS if f != "-march=native")):
            cmd = [*compiler, *flags, "-I", jax.ffi.include_dir(), str(_SOURCE), "-o", tmp]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as err:  # no such compiler
                raise RuntimeError(f"{' '.join(cmd)}: {err}") from err
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
            errors.append(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        raise RuntimeError("\n".join(errors))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def available() -> bool:
    """Whether the native first stage can run here (built and registered once per process).

    Returns:
        False where `RESEARCH_NATIVE=0` or the kernel cannot be built (then with a warning,
        once); the model then uses the JAX composite.
    """
    if os.environ.get("RESEARCH_NATIVE", "1") == "0":
        return False
    with _LOCK:
        if "ok" not in _LOADED:
            try:
                lib = ctypes.cdll.LoadLibrary(str(_library_path()))
                for name in _TARGETS:
                    jax.ffi.register_ffi_target(f"research_{name}",
                                                jax.ffi.pycapsule(getattr(lib, name)),
                                                platform="cpu")
                _LOADED["lib"], _LOADED["ok"] = lib, True
            except (OSError, RuntimeError) as err:
                warnings.warn(f"the native first stage is unavailable, using the JAX one: {err}",
                              RuntimeWarning, stacklevel=2)
                _LOADED["ok"] = False
        return bool(_LOADED["ok"])


def applies(x: jax.Array, features: int, kernel: Sequence[int], window: Sequence[int],
            dtype) -> bool:
    """Whether `first_stage` can compute a first stage of this shape in this program.

    Args:
        x: the stage's input `x_BxHxWxC`.
        features: the convolution's output channels.
        kernel: its kernel (height, width).
        window: the pooling window (= stride).
        dtype: the computation dtype.

    Returns:
        True for a one-channel float32 input, 8/16/32/64 channels, at most 25 kernel taps, a
        window of at most 255 positions, on the CPU backend with one device along the data
        axis, where the kernel is available.
    """
    return (x.ndim == 4 and x.shape[-1] == 1 and x.dtype == jnp.float32
            and jnp.dtype(dtype) == jnp.float32 and features in _CHANNELS
            and kernel[0] * kernel[1] <= _MAX_TAPS and 0 < window[0] * window[1] <= 255
            and x.shape[1] >= window[0] and x.shape[2] >= window[1]
            and jax.default_backend() == "cpu" and _data_devices() == 1 and available())


def reference(x_BxHxWx1, kernel_KhxKwx1xC, scale_C, bias_C, eps: float,
              window: Sequence[int]):
    """The first stage as the JAX composite: what `CNN` computes without the native kernel.

    Args:
        x_BxHxWx1: one-channel inputs.
        kernel_KhxKwx1xC: the convolution's kernel ("SAME" zero padding, stride 1, no bias).
        scale_C: BatchNorm's scale.
        bias_C: BatchNorm's bias.
        eps: BatchNorm's epsilon.
        window: the max-pooling window and stride.

    Returns:
        (pooled_BxHoxWoxC, mean_C, var_C): the stage's output and the batch statistics.
    """
    z = conv_general_dilated(x_BxHxWx1, kernel_KhxKwx1xC, (1, 1), "SAME",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean_C = jnp.mean(z, (0, 1, 2))
    var_C = jnp.maximum(0.0, jnp.mean(jnp.square(z), (0, 1, 2)) - jnp.square(mean_C))
    a_C = scale_C * lax.rsqrt(var_C + eps)
    y = jax.nn.relu(z * a_C.reshape(1, 1, 1, -1) + (bias_C - mean_C * a_C).reshape(1, 1, 1, -1))
    return max_pool(y, tuple(window)), mean_C, var_C


def _attrs(eps, window, kernel_shape):
    # A stride-1 "SAME" convolution's padding does not depend on the input's size.
    (pad_top, _), (pad_left, _) = lax.padtype_to_pads(kernel_shape[:2], kernel_shape[:2],
                                                      (1, 1), "SAME")
    return dict(eps=np.float32(eps), ph=int(window[0]), pw=int(window[1]), pad_top=pad_top,
                pad_left=pad_left)


def _require() -> None:
    if not available():
        raise RuntimeError("the native first stage is unavailable here (RESEARCH_NATIVE=0, or "
                           "it could not be built: see the warning); use `reference`")


def _forward(x, kernel, scale, bias, eps, window):
    _require()
    b, h, w, _ = x.shape
    c = kernel.shape[-1]
    pooled = (b, h // window[0], w // window[1], c)
    taps = kernel.shape[0] * kernel.shape[1]
    out = (jax.ShapeDtypeStruct(pooled, jnp.float32), jax.ShapeDtypeStruct((c,), jnp.float32),
           jax.ShapeDtypeStruct((c,), jnp.float32), jax.ShapeDtypeStruct(pooled, jnp.uint8),
           jax.ShapeDtypeStruct(pooled, jnp.float32),
           jax.ShapeDtypeStruct((2, taps + taps * taps), jnp.float32))
    return jax.ffi.ffi_call("research_FirstStageForward", out, vmap_method="sequential")(
        x, kernel, scale, bias, **_attrs(eps, window, kernel.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def first_stage(x_BxHxWx1, kernel_KhxKwx1xC, scale_C, bias_C, eps: float,
                window: tuple[int, int]):
    """The first stage in training mode on the native kernel; same contract as `reference`.

    Args and returns as `reference`; `window` must be a tuple (a static argument).
    """
    return _forward(x_BxHxWx1, kernel_KhxKwx1xC, scale_C, bias_C, eps, window)[:3]


def _first_stage_fwd(x, kernel, scale, bias, eps, window):
    pooled, mean, var, where, z_at, sums = _forward(x.value, kernel.value, scale.value,
                                                    bias.value, eps, window)
    # The input's gradient is rarely wanted in training; when it is, the JAX composite gives it.
    input_grad = jnp.zeros((), jnp.float32) if x.perturbed else None
    return (pooled, mean, var), (x.value, kernel.value, scale.value, bias.value, mean, var,
                                 where, z_at, sums, input_grad)


def _dense(g, like):
    return jnp.zeros(like.shape, like.dtype) if isinstance(g, SymbolicZero) else g


def _first_stage_bwd(eps, window, res, g):
    x, kernel, scale, bias, mean, var, where, z_at, sums, input_grad = res
    g_pooled, g_mean, g_var = (_dense(gi, like) for gi, like in zip(g, (z_at, mean, var)))
    out = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (kernel, scale, bias))
    g_k, g_s, g_b = jax.ffi.ffi_call("research_FirstStageBackward", out,
                                     vmap_method="sequential")(
        x, kernel, scale, bias, mean, var, where, z_at, sums, g_pooled, g_mean, g_var,
        **_attrs(eps, window, kernel.shape))
    g_x = None
    if input_grad is not None:
        _, vjp = jax.vjp(lambda x_: reference(x_, kernel, scale, bias, eps, window), x)
        (g_x,) = vjp((g_pooled, g_mean, g_var))
    return g_x, g_k, g_s, g_b


first_stage.defvjp(_first_stage_fwd, _first_stage_bwd, symbolic_zeros=True)

__all__ = ["applies", "available", "first_stage", "reference"]
