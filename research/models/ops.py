"""Max pooling, convolutions and BatchNorm that are fast on XLA:CPU, with the same results.

All are plain JAX with the values and gradients of the operations they replace; only the
kernel gradient's chunks (below) are a CPU-only form. They exist because these operations
dominated the CPU training step of a CNN 16/32/32 on 40x64 log-mels (measured with
`jax.profiler` and by timing variants of the whole step):

- `flax.linen.max_pool` lowers to `reduce_window`, whose gradient is `select_and_scatter`, which
  XLA:CPU runs as a slow scalar loop: about two thirds of the step (78 ms with it, 24 ms
  without). When the window equals the stride the windows tile the input, so `max_pool` here
  reshapes to `B x Ho x kh x Wo x kw x C` and takes the maximum with a chain of elementwise
  selects over the `kh * kw` window positions. Its derivative is a `custom_jvp`: the tangent
  at each window's first maximum (a one-hot select), whose transpose, the gradient, is one
  fused select writing the full-size gradient; differentiating the chain itself gave nested
  selects and a pad-and-add per window position (the batch-128 step was 9-13% slower).
  Forward mode and higher derivatives work as before.
- The first convolution has one input channel, which XLA:CPU does not hand to its fast
  convolution library: its forward pass alone took a fifth of the step. `conv_general_dilated`
  computes that case as `kh * kw` shifted multiply-adds (one fused elementwise loop, 10 to 15
  times faster) and keeps a convolution for the derivatives (a `custom_jvp` whose tangent is
  a library convolution, so the kernel gradient is one too). That tangent convolves the batch
  stacked into one tall image, each image with its own padding rows (`_stacked_conv`): its
  transpose, the kernel gradient, is then a convolution of batch 1, which needs none of the
  layout transposes of the batch-as-feature form (13 ms of a 83 ms batch-128 step before,
  6.5 ms after; the whole step 1.1x faster in paired rounds, batch 32 unchanged; with the
  multi-threaded Eigen convolutions of `research.sharding.cpu_jit`, one tall
  image per core, run at once). Values agree with `lax.conv_general_dilated` to float32
  rounding (about 1e-6 relative: the sum runs in another order). Forward mode and higher
  derivatives work (no custom VJP), so the forward-over-reverse Hessian-vector products of
  `research.landscape.hessian` still apply; there the outer derivative's tangent `x * v`,
  evaluated forward and never transposed, takes the shift form too (it was a fifth of a small
  CNN's product; see `_shift_conv_jvp`).
- A convolution with several input channels keeps the library convolution for its value and
  input gradient, but on the CPU its float32 kernel gradient over more than 16 examples (per
  device) is the sum of kernel gradients over chunks of at most 16 examples and 16 output
  channels (`_chunked_conv`). That gradient is a convolution whose input features are the batch;
  for a large batch XLA:CPU's YNNPACK ran it at 8-20 GFLOP/s on the 2-core AVX2 VM of session
  13, against 55-70 for the forward pass. YNNPACK leaves convolutions with at most 16 input and
  output features to XLA's Eigen convolutions, which run the chunks at 45-60 GFLOP/s, on every
  core: the batch-128 step 1.29-1.32x faster on one core and 1.6x on two, batch 64 1.18x /
  1.37x, batch 32 unchanged on one core and 1.25x on two, 1.04-1.11x with the two cores as two
  data-parallel devices; a batch-128 Hessian-vector product 1.2x / 1.5x (paired rounds in one
  process; `benchmarks/train_history.md` has the table). Values agree with the library's to
  float32 rounding (the sum runs in another order). Accelerators keep the one library kernel
  gradient (not measured there), and so do programs compiled for Eigen's convolutions
  (`research.sharding.cpu_jit`, our training steps on a multi-core CPU), where every
  convolution, the kernel gradient included, already runs on Eigen, on every core.
- `nn.BatchNorm` computes `(x - mean) * scale / sqrt(var + eps) + bias`, and XLA keeps the
  centred full-size copy `x - mean` for the backward pass (an extra write and read of the
  largest activations). `BatchNorm` here has the same variables and statistics and computes
  `x * a + b` with per-channel `a`, `b`: 10-12% off the step at batch 32 and 128.
- In training on the CPU, `research.models.CNN` runs a one-channel first stage (conv - BatchNorm -
  ReLU - max pool) on the native kernel of `research.models.native` instead of these
  operations: with them that stage's passes over its full-size activations were about 40% of
  the 2-core batch-128 step, and no JAX formulation tried in sessions 14-19 got the step
  reliably above PyTorch eager. These operations remain the evaluation path, the reference the
  native stage is tested against, and the fallback where it cannot run.

Tie behaviour of `max_pool` (equal maxima in one window): the gradient goes to the *first*
maximum in row-major window order, exactly as with `nn.max_pool` (XLA's `select_and_scatter`,
which keeps the current element while `current >= next`) and PyTorch's `max_pool2d`. `jnp.max`
over the window axes would instead split it equally among the tied elements; after a ReLU, ties
are mostly zeros whose gradient the ReLU blocks anyway, but the same walk as
`select_and_scatter`'s keeps the gradients equal to `nn.max_pool`'s in every case, windows with
NaNs included. A NaN in a window gives a NaN value, as with `lax.max`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The shifted multiply-add form pays off for few taps; a tall kernel (Piczak's 57x6) keeps the
# library convolution.
_MAX_SHIFT_TAPS = 25
# YNNPACK (jax 0.10's XLA:CPU) hands a convolution with at most this many input and output
# features to Eigen; the kernel gradient's chunks are this small (`_chunked_conv`).
_KERNEL_GRAD_CHUNK = 16


def max_pool(x_BxHxWxC: jax.Array, window: Sequence[int],
             strides: Sequence[int] | None = None) -> jax.Array:
    """Max pooling with VALID padding, like `nn.max_pool(x, window, strides)`.

    Args:
        x_BxHxWxC: inputs, NHWC (other ranks go to `nn.max_pool`).
        window: window (height, width).
        strides: strides (height, width); None means the window (non-overlapping windows).
            Strides other than the window go to `nn.max_pool`.

    Returns:
        The pooled `B x Ho x Wo x C` with `Ho = (H - kh) // sh + 1`, as `nn.max_pool` with
        VALID padding: rows and columns that do not fill a window are dropped.
    """
    kh, kw = (int(k) for k in window)
    sh, sw = (kh, kw) if strides is None else (int(s) for s in strides)
    if (sh, sw) != (kh, kw) or x_BxHxWxC.ndim != 4:
        return nn.max_pool(x_BxHxWxC, (kh, kw), strides=(sh, sw))
    b, h, w, c = x_BxHxWxC.shape
    ho, wo = h // kh, w // kw
    return _pool_blocks(x_BxHxWxC[:, :ho * kh, :wo * kw, :].reshape(b, ho, kh, wo, kw, c))


def _position_dtype(positions: int):
    """The smallest integer type for window positions 0 .. positions - 1 (int8 up to 128)."""
    return jnp.int8 if positions <= 128 else jnp.int32


def _window_max(x_BxHoxKhxWoxKwxC):
    """The window maxima; a NaN anywhere in a window gives NaN, as `lax.max` does."""
    kh, kw = x_BxHoxKhxWoxKwxC.shape[2], x_BxHoxKhxWoxKwxC.shape[4]
    out_BxHoxWoxC = x_BxHoxKhxWoxKwxC[:, :, 0, :, 0, :]
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            s_BxHoxWoxC = x_BxHoxKhxWoxKwxC[:, :, i, :, j, :]
            # `s != s` lets a NaN through; a strict `>` keeps the first of equal maxima.
            take = (s_BxHoxWoxC > out_BxHoxWoxC) | (s_BxHoxWoxC != s_BxHoxWoxC)
            out_BxHoxWoxC = jnp.where(take, s_BxHoxWoxC, out_BxHoxWoxC)
    return out_BxHoxWoxC


def _first_position(x_BxHoxKhxWoxKwxC):
    """The row-major window position that `nn.max_pool`'s gradient goes to, per window.

    XLA's `select_and_scatter` walks the window keeping the current element while
    `current >= next`: the first maximum, and where a comparison meets a NaN, the next element
    (so with NaNs, not always the NaN). The same walk here gives the same position in every
    case, with one comparison per step where the value's walk needs two and an `or`.
    """
    kh, kw = x_BxHoxKhxWoxKwxC.shape[2], x_BxHoxKhxWoxKwxC.shape[4]
    cur_BxHoxWoxC = x_BxHoxKhxWoxKwxC[:, :, 0, :, 0, :]
    first_BxHoxWoxC = jnp.zeros(cur_BxHoxWoxC.shape, _position_dtype(kh * kw))
    for i in range(kh):
        for j in range(kw):
            if i == j == 0:
                continue
            s_BxHoxWoxC = x_BxHoxKhxWoxKwxC[:, :, i, :, j, :]
            take = ~(cur_BxHoxWoxC >= s_BxHoxWoxC)
            cur_BxHoxWoxC = jnp.where(take, s_BxHoxWoxC, cur_BxHoxWoxC)
            first_BxHoxWoxC = jnp.where(take, i * kw + j, first_BxHoxWoxC)
    return first_BxHoxWoxC


@jax.custom_jvp
def _pool_blocks(x_BxHoxKhxWoxKwxC):
    return _window_max(x_BxHoxKhxWoxKwxC)


@_pool_blocks.defjvp
def _pool_blocks_jvp(primals, tangents):
    # The tangent is the input's tangent at each window's gradient position: a one-hot mask
    # times the tangent, summed over the window. Its transpose (the gradient) is then one fused
    # select that writes the full-size gradient, where differentiating the chain of selects
    # gave three nested selects per window position and a pad-and-add per position.
    (x_BxHoxKhxWoxKwxC,), (t_BxHoxKhxWoxKwxC,) = primals, tangents
    out_BxHoxWoxC = _window_max(x_BxHoxKhxWoxKwxC)
    first_BxHoxWoxC = _first_position(x_BxHoxKhxWoxKwxC)
    kh, kw = x_BxHoxKhxWoxKwxC.shape[2], x_BxHoxKhxWoxKwxC.shape[4]
    pos_1x1xKhx1xKwx1 = jnp.arange(kh * kw, dtype=first_BxHoxWoxC.dtype).reshape(
        1, 1, kh, 1, kw, 1)
    hot = first_BxHoxWoxC[:, :, None, :, None, :] == pos_1x1xKhx1xKwx1
    return out_BxHoxWoxC, jnp.sum(jnp.where(hot, t_BxHoxKhxWoxKwxC, 0), axis=(2, 4))


def _shift_conv_value(x_BxHxWx1, k_KhxKwx1xO, pads):
    """The convolution of a one-channel input as shifted multiply-adds, accumulated in f32."""
    kh, kw = k_KhxKwx1xO.shape[:2]
    dtype = jnp.result_type(x_BxHxWx1, k_KhxKwx1xO)
    p_BxHpxWpx1 = jnp.pad(x_BxHxWx1, ((0, 0), pads[0], pads[1], (0, 0))).astype(jnp.float32)
    ho, wo = p_BxHpxWpx1.shape[1] - kh + 1, p_BxHpxWpx1.shape[2] - kw + 1
    k_KhxKwx1xO = k_KhxKwx1xO.astype(jnp.float32)
    out_BxHoxWoxO = None
    for i in range(kh):
        for j in range(kw):
            term = p_BxHpxWpx1[:, i:i + ho, j:j + wo, :] * k_KhxKwx1xO[i:i + 1, j:j + 1]
            out_BxHoxWoxO = term if out_BxHoxWoxO is None else out_BxHoxWoxO + term
    return out_BxHoxWoxO.astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _shift_conv(x_BxHxWx1, k_KhxKwx1xO, pads, precision):
    return _shift_conv_value(x_BxHxWx1, k_KhxKwx1xO, pads)


def _stacked_conv(x_BxHxWx1, k_KhxKwx1xO, pads, precision):
    """`_library_conv` over the batch's images stacked along the height into tall images.

    Each image keeps its own padding rows, so no window spans two images and the values are the
    library convolution's. What changes is its transpose, the kernel gradient of training: a
    convolution of batch 1, which XLA lays out without transposing the output gradient (the
    library form contracts over the batch as a feature axis: at batch 128, 7 ms of layout
    transposes and a 6 ms convolution, now 2.5 ms of padding and a 4 ms convolution).

    Traced under a mesh whose `data` axis splits the batch over D devices (`jax.set_mesh`, as
    `research.train.steps.compile_train_steps` does), one tall image per device: a batch-D
    convolution, split along its batch like the rest of the step. One tall image for the whole
    batch would be split along its height instead, and each device would swap edge rows with
    its neighbours in three collective permutes per step (5-7% of a data-parallel step on 2
    CPU devices). One tall image per core where XLA:CPU's convolutions are multi-threaded
    (`_stack_parts`).
    """
    b = x_BxHxWx1.shape[0]
    devices = _device_split(b)
    if devices > 1:
        return _stacked_conv_one(x_BxHxWx1, k_KhxKwx1xO, pads, precision, images=devices)
    parts = _stack_parts(b)
    if parts > 1:
        return jnp.concatenate([_stacked_conv_one(x, k_KhxKwx1xO, pads, precision)
                                for x in jnp.split(x_BxHxWx1, parts)])
    return _stacked_conv_one(x_BxHxWx1, k_KhxKwx1xO, pads, precision)


def _data_devices() -> int:
    """Devices along the `data` axis of the mesh being traced under (1 without one)."""
    from research.sharding import DATA_AXIS

    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else int(dict(mesh.shape).get(DATA_AXIS, 1))


def _device_split(batch: int) -> int:
    """The devices that split `batch` evenly along the mesh's `data` axis (1 if they do not)."""
    devices = _data_devices()
    return devices if batch % devices == 0 else 1


def _stack_parts(batch: int) -> int:
    """Into how many tall images `_stacked_conv` stacks a batch: 1, or one per usable core.

    A batch-1 kernel gradient is one convolution no library splits over threads (4 ms of a
    50-60 ms batch-128 step on 2 cores, single-threaded). With Eigen convolutions
    (`research.sharding.cpu_jit` or `configure_cpu_backend`, multi-threaded) and several cores,
    one tall image per core gives as many independent convolutions, which XLA:CPU runs at once:
    the step 6-13% faster at batch 128 and 5-10% at batch 32 on 2 cores (paired rounds in one
    process, session 8; within the noise in session 14). With YNNPACK's convolutions it made no
    difference on 2 cores and cost 1-2% on one, and the kernel gradient's float rounding would
    then depend on the core count, so they keep one image; so do accelerators.
    """
    from research.sharding import eigen_convolutions, usable_cpus

    if not eigen_convolutions() or jax.default_backend() != "cpu":
        return 1
    parts = min(usable_cpus(), batch)
    while batch % parts:
        parts -= 1
    return parts


def _stacked_conv_one(x_BxHxWx1, k_KhxKwx1xO, pads, precision, images: int = 1):
    """The batch as `images` tall images of consecutive examples: one convolution."""
    b, h, w, _ = x_BxHxWx1.shape
    kh = k_KhxKwx1xO.shape[0]
    (top, bottom), (left, right) = pads
    hp = h + top + bottom
    p_BxHpxWpx1 = jnp.pad(x_BxHxWx1, ((0, 0), (top, bottom), (left, right), (0, 0)))
    # kh - 1 zero rows after each tall image's last example: the output then has hp rows per
    # example.
    tall_IxRxWpx1 = jnp.pad(p_BxHpxWpx1.reshape(images, b // images * hp, w + left + right, 1),
                            ((0, 0), (0, kh - 1), (0, 0), (0, 0)))
    out_IxRxWoxO = lax.conv_general_dilated(tall_IxRxWpx1, k_KhxKwx1xO, (1, 1), "VALID",
                                            precision=precision,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out_IxRxWoxO.reshape(b, hp, out_IxRxWoxO.shape[2], -1)[:, :hp - kh + 1]


def _library_conv(x, k, pads, precision):
    return lax.conv_general_dilated(x, k, (1, 1), pads, precision=precision,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


# How many `_shift_conv_jvp` calls are running (at trace time) around the current one, per
# thread: two threads tracing at once must not see each other's nesting.
_jvp_depth = threading.local()


@functools.partial(_shift_conv.defjvp, symbolic_zeros=True)
def _shift_conv_jvp(pads, precision, primals, tangents):
    # The tangent is linear in (dx, dk), so reverse mode transposes it into the library's
    # gradient convolutions; a symbolic zero (the data's tangent) costs nothing.
    x, k = primals
    dx, dk = tangents
    # Under two derivatives (jvp of grad: a Hessian-vector product) the primal below is
    # differentiated again, and this rule runs nested in itself for the outer one. That outer
    # tangent `x * dk` is evaluated forward, never transposed, so it takes the shift form too
    # (a fifth of a CNN's Hessian-vector product with the library convolution, which XLA:CPU
    # runs slowly for one input channel). The first level keeps a library convolution, over
    # the batch stacked into one image (`_stacked_conv`), whose transpose is the fast kernel
    # gradient of training. Reverse over reverse would transpose the nested form (slower,
    # same values); a rule traced apart from its caller (inside `scan` or `remat`) sees depth
    # 0 and takes the first level's stacked convolution (same values again).
    depth = getattr(_jvp_depth, "n", 0)
    _jvp_depth.n = depth + 1
    try:
        out = _shift_conv(x, k, pads, precision)
    finally:
        _jvp_depth.n = depth
    tangent = None
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        tangent = _library_conv(dx, k, pads, precision)
    if not isinstance(dk, jax.custom_derivatives.SymbolicZero):
        if depth > 0:
            dk_out = _shift_conv(x, dk, pads, precision)
        else:
            dk_out = _stacked_conv(x, dk, pads, precision)
        tangent = dk_out if tangent is None else tangent + dk_out
    if tangent is None:
        tangent = jnp.zeros_like(out)
    return out, tangent


def _chunk_kernel_gradient(batch: int) -> bool:
    """Whether `_chunked_conv` pays: more than one chunk per device, with YNNPACK's convolutions.

    On the CPU only. Eigen's convolutions (`research.sharding.cpu_jit`) run the kernel gradient
    as one convolution as fast or faster (the 2-core batch-128 step 1.07-1.11x faster without
    the chunks, no difference at batch 32 and 64).
    """
    from research.sharding import eigen_convolutions

    return (jax.default_backend() == "cpu" and not eigen_convolutions()
            and batch // _device_split(batch) > _KERNEL_GRAD_CHUNK)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _chunked_conv(x_BxHxWxC, k_KhxKwxCxO, pads, precision):
    """The library convolution; its kernel gradient over chunks of examples and channels."""
    return _library_conv(x_BxHxWxC, k_KhxKwxCxO, pads, precision)


@functools.partial(_chunked_conv.defjvp, symbolic_zeros=True)
def _chunked_conv_jvp(pads, precision, primals, tangents):
    # Linear in (dx, dk): reverse mode transposes the dk term chunk by chunk, so the kernel
    # gradient is a sum of small convolutions (Eigen's on the CPU, see the module docstring).
    # Forward mode and higher derivatives differentiate plain convolutions.
    x, k = primals
    dx, dk = tangents
    out = _chunked_conv(x, k, pads, precision)
    tangent = None
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        tangent = _library_conv(dx, k, pads, precision)
    if not isinstance(dk, jax.custom_derivatives.SymbolicZero):
        dk_out = _kernel_tangent_in_chunks(x, dk, pads, precision)
        tangent = dk_out if tangent is None else tangent + dk_out
    if tangent is None:
        tangent = jnp.zeros_like(out)
    return out, tangent


def _kernel_tangent_in_chunks(x_BxHxWxC, dk_KhxKwxCxO, pads, precision):
    """`conv(x, dk)` as convolutions of at most 16 examples per device and 16 output channels.

    Under a data mesh of D devices (as in `_stacked_conv`) each chunk takes the same examples
    from every device's part of the batch, so the chunks split over the devices like the batch
    and nothing moves between them.
    """
    b = x_BxHxWxC.shape[0]
    devices = _device_split(b)
    per_device, o = b // devices, dk_KhxKwxCxO.shape[-1]
    step = _KERNEL_GRAD_CHUNK
    x_DxNx = x_BxHxWxC.reshape(devices, per_device, *x_BxHxWxC.shape[1:])
    chunks = []
    for start in range(0, per_device, step):
        part = x_DxNx[:, start:start + step]
        part = part.reshape(-1, *x_BxHxWxC.shape[1:])
        out = jnp.concatenate([_library_conv(part, dk_KhxKwxCxO[..., c:c + step], pads, precision)
                               for c in range(0, o, step)], axis=-1)
        chunks.append(out.reshape(devices, -1, *out.shape[1:]))
    out_DxNx = jnp.concatenate(chunks, axis=1)
    return out_DxNx.reshape(b, *out_DxNx.shape[2:])


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, with fast paths for NHWC inputs.

    A drop-in for `nn.Conv(..., conv_general_dilated=conv_general_dilated)`: the parameters and
    results stay those of `nn.Conv`. The fast paths (see the module docstring) take 2D
    NHWC/HWIO convolutions with unit strides and dilations and one group: with one input
    channel and at most 25 kernel taps, the shifted multiply-adds; with several input channels
    in float32 on the CPU and more than 16 examples per device, the chunked kernel gradient.
    Everything else goes to `lax.conv_general_dilated` unchanged.

    Args:
        lhs: inputs.
        rhs: kernel.
        window_strides: as for `lax.conv_general_dilated`.
        padding: a padding name ("SAME", "VALID") or (low, high) pairs.
        lhs_dilation: as for `lax.conv_general_dilated`.
        rhs_dilation: as for `lax.conv_general_dilated`.
        dimension_numbers: as for `lax.conv_general_dilated`.
        feature_group_count: as for `lax.conv_general_dilated`.
        batch_group_count: as for `lax.conv_general_dilated`.
        precision: as for `lax.conv_general_dilated` (used by the derivatives; the fast path's
            value is computed in float32 elementwise).
        preferred_element_type: as for `lax.conv_general_dilated`.

    Returns:
        The convolution's output.
    """
    library = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
    if lhs.ndim != 4 or rhs.ndim != 4:
        return library()
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    kh, kw, cin, _ = rhs.shape
    unit = (1, 1)
    if (dims != nhwc or cin != lhs.shape[-1] or tuple(window_strides) != unit
            or tuple(lhs_dilation or unit) != unit or tuple(rhs_dilation or unit) != unit
            or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None or lhs.dtype != rhs.dtype):
        return library()
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), unit, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        return library()
    if cin == 1 and kh * kw <= _MAX_SHIFT_TAPS:
        return _shift_conv(lhs, rhs, pads, precision)
    # float32 only: in a narrower type each chunk's partial sum would be rounded to it.
    if cin > 1 and lhs.dtype == jnp.float32 and _chunk_kernel_gradient(lhs.shape[0]):
        return _chunked_conv(lhs, rhs, pads, precision)
    return library()


class BatchNorm(nn.Module):
    """`nn.BatchNorm` over all axes but the last, as one multiply-add: `x * a + b`.

    The same variables (`params`: scale, bias; `batch_stats`: mean, var), defaults, running
    average update and statistics (`E[x^2] - E[x]^2`, Flax's fast variance) as `nn.BatchNorm`;
    only the normalisation is folded into `a = scale / sqrt(var + eps)` and `b = bias - mean * a`,
    so the backward pass keeps no centred copy of the input (a full-size tensor `nn.BatchNorm`'s
    gradient stores and reads back). Values agree to float32 rounding.

    Attributes:
        use_running_average: normalise with the running averages (evaluation mode).
        momentum: decay of the running averages.
        epsilon: added to the variance.
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalise `x_...xC` over every axis but the last.

        Args:
            x: inputs, channels last.
            use_running_average: overrides the attribute, as in `nn.BatchNorm`.

        Returns:
            The normalised inputs, same shape; the dtype of `x` promoted with the parameters'.
        """
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if use_running_average:
            mean_C, var_C = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            x32 = x.astype(jnp.float32)
            mean_C = jnp.mean(x32, axes)
            var_C = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axes) - jnp.square(mean_C))
            if not self.is_initializing():
                self.update_averages(mean_C, var_C)
        a_C = scale * lax.rsqrt(var_C + self.epsilon)
        b_C = bias - mean_C * a_C
        shape = (1,) * (x.ndim - 1) + (c,)
        # The output dtype follows nn.BatchNorm: inputs promoted with the parameters.
        dtype = jnp.result_type(x, scale, bias)
        return (x * a_C.reshape(shape) + b_C.reshape(shape)).astype(dtype)

    def update_averages(self, mean_C: jax.Array, var_C: jax.Array) -> None:
        """Move the running averages toward a batch's statistics (also those of `native`).

        Args:
            mean_C: the batch mean per channel.
            var_C: the batch variance per channel.
        """
        for name, value in (("mean", mean_C), ("var", var_C)):
            average = self.get_variable("batch_stats", name)
            self.put_variable("batch_stats", name,
                              self.momentum * average + (1 - self.momentum) * value)
