"""Curvature of a loss over a whole data split, after PyHessian (Yao et al. 2020), compiled once.

Every tool takes the grid evaluator's function and data (`research.landscape.evaluate_grid`):
`fn(params, batch)` (or `fn(params, model_state, batch)` with `model_state=`) returning the
per-example losses `loss_B`, a dict whose `"loss"` entry is that, or a scalar (the batch mean,
accepted for backwards compatibility), and `data`, one batch or a whole split (`{name: array}`
with a common leading example axis) cut into batches of `batch_size`. The curvature is that of
the mean loss over all examples of the split: the split is padded to whole batches with a mask,
so a ragged last batch counts each real example once (a scalar `fn` is then evaluated one
example at a time, as the grid does).

Tools:

- `hvp(loss_fn, params, v)`: the primitive, forward-over-reverse (`jvp` of `grad`) of a scalar
  `loss_fn(params)`, about two gradient evaluations.
- `top_eigenvalues` (and `top_eigenvalue`): the k eigenvalues of largest magnitude by power
  iteration with deflation, as PyHessian; eigenvectors as parameter pytrees.
- `hutchinson_trace`: the trace from Rademacher probes, `E[v^T H v]`.
- `lanczos` / `spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019).
- `extreme_eigenvalues`: lambda_max and lambda_min, the extreme Ritz values of one Lanczos run.
- `hessian_directions`: the top-k eigenvectors as directions for `evaluate_grid`.
- `eigenvalue_map`: lambda_max and lambda_min at every point of a 1D or 2D grid (Li et al.
  2018, Figure 6), written to a surface file.

Speed: PyHessian is a Python loop of autograd calls; a naive JAX port re-jits per call and
closes over the parameters, so it spends its time compiling. Here the compiled programs take
the parameters, the batches, the mask and the seed as arguments and live in a module-level cache
keyed by the user's `fn` and the static settings, so a second call with new parameters or new
data of the same shapes runs without tracing or compiling (`clear_cache` empties it). Keep `fn`
the same object between calls (not a new lambda each time) to benefit. Where the iterations
run is the `loop` argument of every tool (`_resolve_loop` has the measurements):

- `loop="host"` (the default on the CPU): a Python loop drives the algorithm; each product is
  one call per batch of a cached tangent program. The gradient is linearised once per point
  and batch (`jax.linearize`: the forward and backward pass are kept, each product runs only
  the tangent half, about 1.4x faster for CNNs), unless the kept residuals would exceed
  `RESIDUAL_BYTES`, in which case every product recomputes them. The vector updates (deflation,
  re-orthogonalisation, probes) run in numpy. A first call compiles two small programs, shared
  by all tools (Hutchinson evaluates one probe per product for that reason).
- `loop="device"` (the default elsewhere): each tool is one program: the data loop a
  `lax.scan`, power iteration a `lax.while_loop`, Lanczos a `lax.fori_loop` over a preallocated
  basis `[m, P]` with full re-orthogonalisation, Hutchinson probes and SLQ runs batched with
  `vmap`. On XLA:CPU this is slow for convolutions (jax-ml/jax#12868: convolutions inside
  control flow miss the fast path, measured 7x), hence the host loop there.
- `eigenvalue_map` picks its own default (`_map_loop`): the device loop on the CPU too unless
  the loss has a convolution, since a map is many Lanczos runs whose per-step host work the
  device loop saves. On a single CPU device it also computes parts of each chunk at once from
  host threads, and its host loop runs one point at a time where `vmap` over points would
  group convolutions.

Both loops draw the same probes and start vectors (a counter-based hash, bit-identical in
numpy and JAX) and agree to float32 rounding.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.extend.core
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import sharding as sh
from research.landscape.evaluate import (
    chunk_size,
    concurrent_calls,
    num_examples,
    open_surface_once,
    placer,
)
from research.sharding import GRID_AXIS, make_mesh, mesh_axis_sizes, single_device_mesh

PyTree = Any
Batch = Mapping[str, Any]

_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 64
# Relative size under which a Lanczos residual counts as a breakdown (an invariant subspace).
_BREAKDOWN = 1e-6
# Relative size under which a fresh random vector counts as lying in the basis's span.
_SPANNED = 1e-3
# A re-orthogonalisation pass that cuts a vector's norm below this share leaves rounding errors
# that size relative to what remains, so the host loop runs a second one ("twice is enough").
_TWICE = 2 ** -0.5


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """The Hessian of `loss_fn` at `params` times `v` (forward-over-reverse).

    Args:
        loss_fn: scalar function of the parameters.
        params: the point.
        v: a pytree shaped like `params`.

    Returns:
        H v, shaped like `params`.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def clear_cache() -> None:
    """Forget every compiled curvature program (they are otherwise kept, 64 at most)."""
    _CACHE.clear()


def _cached(kind: str, fn: Callable, static: tuple, build: Callable[[], Callable]) -> Callable:
    """The jitted program for (kind, fn, static settings), built on first use."""
    key = (kind, fn, static)
    try:
        hash(key)
    except TypeError:  # an unhashable callable: compile per call rather than fail
        return build()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    prog = build()
    _CACHE[key] = prog
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return prog


# ----------------------------------------------------------------------------- data and losses



def _split(data: Batch, batch_size: int | None) -> tuple[dict, np.ndarray, int]:
    """Pad the split to whole batches: ({name: [nb, B, ...]}, mask_NBxB, number of examples)."""
    n = num_examples(data)
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ValueError(f"batch_size: must be an integer >= 1 or None, got {batch_size!r}")
    b = n if batch_size is None else min(int(batch_size), n)
    nb = -(-n // b)
    pad = nb * b - n
    out = {}
    for k, v in data.items():
        xp = jnp if isinstance(v, jax.Array) else np
        v = xp.asarray(v)
        if pad:
            v = xp.concatenate([v, xp.zeros((pad,) + v.shape[1:], v.dtype)])
        out[k] = v.reshape((nb, b) + v.shape[1:])
    mask_NBxB = np.arange(nb * b).reshape(nb, b) < n
    return out, mask_NBxB, n


def _pick_loss(out: Any) -> Any:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError(f"fn: returned a dict without a 'loss' entry (keys {list(out)})")
        return out["loss"]
    return out


def _batch_total(fn: Callable, has_state: bool, padded: bool) -> Callable:
    """(params, state, batch, mask_B) -> the sum of the real examples' losses (float32)."""
    def call(p, s, b):
        return _pick_loss(fn(p, s, b) if has_state else fn(p, b))

    def total(p, s, b, mask_B):
        bsz = mask_B.shape[0]
        out = call(p, s, b)
        shape = jnp.shape(out)
        if shape == (bsz,):
            return jnp.sum(jnp.where(mask_B, out.astype(jnp.float32), 0.0))
        if shape != ():
            raise ValueError(f"fn: the loss has shape {shape}; return one value per example "
                             f"({bsz},) or a scalar mean over the batch")
        if not padded:
            return bsz * out.astype(jnp.float32)
        # A scalar is a batch mean: padding would enter it, so evaluate one example at a time.
        one_B = jax.vmap(lambda ex: call(p, s, jax.tree_util.tree_map(lambda a: a[None], ex)))(b)
        return jnp.sum(jnp.where(mask_B, jnp.reshape(one_B, (bsz,)).astype(jnp.float32), 0.0))
    return total


def _matvec(total: Callable, flat_P: jax.Array, unravel: Callable, state: PyTree,
            batches: dict, mask_NBxB: jax.Array, n: jax.Array) -> Callable:
    """V_SxP -> (H V)_SxP, H the Hessian of the mean loss over the split at `flat_P`."""
    def apply(v_SxP):
        def body(acc_SxP, xs):
            batch, mask_B = xs
            grad = jax.grad(lambda f: total(unravel(f), state, batch, mask_B))
            # vmap over jvp: the primal (forward and backward pass) is shared by all probes.
            hv_SxP = jax.vmap(lambda v: jax.jvp(grad, (flat_P,), (v,))[1])(v_SxP)
            return acc_SxP + hv_SxP.astype(jnp.float32), None

        zeros_SxP = jnp.zeros(v_SxP.shape, jnp.float32)
        if mask_NBxB.shape[0] == 1:  # one batch: no loop (it costs compile time, not run time)
            one = jax.tree_util.tree_map(lambda a: a[0], (batches, mask_NBxB))
            return body(zeros_SxP, one)[0] / n
        acc_SxP, _ = jax.lax.scan(body, zeros_SxP, (batches, mask_NBxB))
        return acc_SxP / n
    return apply


def _prepare(fn: Callable, params: PyTree, data: Batch, batch_size: int | None,
             model_state: PyTree | None) -> tuple[tuple, tuple]:
    """Arguments of a compiled program, and the static part of its cache key."""
    if not callable(fn):
        raise ValueError(f"fn: must be callable, got {type(fn).__name__}")
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params: the pytree has no leaves")
    batches, mask_NBxB, n = _split(data, batch_size)
    padded = bool(not mask_NBxB.all())
    has_state = model_state is not None
    state = model_state if has_state else {}
    args = (params, state, batches, mask_NBxB, np.float32(n))
    return args, (has_state, padded)


def _flat(params: PyTree) -> tuple[jax.Array, Callable]:
    flat_P, unravel = jax.flatten_util.ravel_pytree(params)
    return flat_P.astype(jnp.float32), unravel


def _orth(v_SxP: jax.Array, q_KxP: jax.Array) -> jax.Array:
    """Project out the rows of q (orthonormal or zero), twice ("twice is enough")."""
    for _ in range(2):
        v_SxP = v_SxP - (v_SxP @ q_KxP.T) @ q_KxP
    return v_SxP


def _normalize(v_SxP: jax.Array) -> jax.Array:
    return v_SxP / jnp.maximum(jnp.linalg.norm(v_SxP, axis=-1, keepdims=True), 1e-30)


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection that mixes every input bit into every output."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _rademacher(seed: jax.Array, stream: jax.Array, p: int) -> jax.Array:
    """A Rademacher vector [p] (+-1) from a counter-based hash of (seed, stream, index).

    Instead of `jax.random`: threefry's code more than doubled the XLA:CPU compile time of
    these small programs, and probes only need independent, balanced signs.
    """
    salt = _fmix32(_fmix32(jnp.asarray(seed, jnp.uint32) ^ jnp.uint32(0x9E3779B9))
                   + jnp.asarray(stream, jnp.uint32))
    bits = _fmix32(_fmix32(jax.lax.iota(jnp.uint32, p) ^ salt) + salt)
    return 1.0 - 2.0 * (bits >> 31).astype(jnp.float32)


def _np_fmix32(x: np.ndarray) -> np.ndarray:
    """`_fmix32` in numpy (uint32 arrays wrap the same way), for the host-driven loops."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _np_rademacher(seed: int, streams: Any, p: int) -> np.ndarray:
    """`_rademacher` in numpy, bit for bit: one +-1 row [p] per stream, shape [S, p]."""
    streams_S = np.atleast_1d(np.asarray(streams, np.uint64) % (1 << 32)).astype(np.uint32)
    seed_1 = np.asarray([int(seed) % (1 << 32)], np.uint32)
    salt_Sx1 = _np_fmix32(_np_fmix32(seed_1 ^ np.uint32(0x9E3779B9)) + streams_S)[:, None]
    bits_SxP = _np_fmix32(_np_fmix32(np.arange(p, dtype=np.uint32)[None] ^ salt_Sx1) + salt_Sx1)
    return 1.0 - 2.0 * (bits_SxP >> np.uint32(31)).astype(np.float32)


def _np_ravel(tree: PyTree) -> np.ndarray:
    """`ravel_pytree` in numpy (float32): no eager device op, so nothing to compile."""
    return np.concatenate([np.ravel(np.asarray(leaf, np.float32))
                           for leaf in jax.tree_util.tree_leaves(tree)])


def _num_params(tree: PyTree) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def _np_unravel(flat_P: np.ndarray, like: PyTree) -> PyTree:
    """A flat vector back into the shapes and dtypes of `like` (on the device, uncompiled)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    flat_P = np.asarray(flat_P)
    out, start = [], 0
    for leaf in leaves:
        size = int(np.size(leaf))
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out.append(flat_P[start:start + size].reshape(np.shape(leaf)).astype(dtype))
        start += size
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, out))


def _np_normalize(v_SxP: np.ndarray) -> np.ndarray:
    return v_SxP / np.maximum(np.linalg.norm(v_SxP, axis=-1, keepdims=True), 1e-30)


def _np_orth(v_SxP: np.ndarray, q_KxP: np.ndarray) -> np.ndarray:
    for _ in range(2):
        v_SxP = v_SxP - (v_SxP @ q_KxP.T) @ q_KxP
    return v_SxP


# ----------------------------------------------------------------------------- where loops run

LOOPS = ("auto", "host", "device")


def _resolve_loop(loop: str) -> str:
    """"host" or "device" for `loop`; "auto" is "host" on the CPU backend, "device" elsewhere.

    Why (measured, `benchmarks/curvature.py`): XLA:CPU leaves convolutions inside any control
    flow body (`while_loop`, `fori_loop`, `scan`, `cond`) un-canonicalised (dimension labels
    such as `b01f_01oi->b01f` instead of `b01f_01io->b01f`), so they miss the Eigen fast path
    and run about 7x slower than the same product as its own call (jax-ml/jax#12868, open since
    2022). On the CPU the host drives the iterations instead: one small compiled step (a
    Hessian-vector product over one batch, accumulated into a donated buffer) called from a
    Python loop, with the vector updates in numpy (host and device memory are the same there).
    The step has no loop inside, compiles in a fraction of the time of a whole-algorithm
    program, and is shared by power iteration, Lanczos, SLQ and (for one vector) Hutchinson.
    On accelerators the whole algorithm stays one device program (`lax.while_loop`,
    `fori_loop`, `scan`), which avoids a host round trip per product; that choice is not
    measured in this repository's CPU-only benchmarks (pass `loop="host"` to compare).
    """
    if loop not in LOOPS:
        raise ValueError(f"loop: must be one of {LOOPS}, got {loop!r}")
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return loop


def _build_step(fn: Callable, has_state: bool, padded: bool) -> Callable:
    """acc_GxSxP + H(theta + c_g . D) v_gs over one batch (the masked sum, not yet / n)."""
    total = _batch_total(fn, has_state, padded)

    def step(params, dirs_KxP, state, batch, mask_B, coefs_GxK, v_GxSxP, acc_GxSxP):
        flat_P, unravel = _flat(params)

        def one(coef_K, v_SxP):
            at_P = flat_P + coef_K.astype(jnp.float32) @ dirs_KxP if coef_K.shape[0] else flat_P
            grad = jax.grad(lambda f: total(unravel(f), state, batch, mask_B))
            if v_SxP.shape[0] == 1:  # no vmap: less to trace and compile
                return jax.jvp(grad, (at_P,), (v_SxP[0],))[1][None]
            # vmap over jvp: the primal (forward and backward pass) is shared by all vectors.
            return jax.vmap(lambda v: jax.jvp(grad, (at_P,), (v,))[1])(v_SxP)

        if v_GxSxP.shape[0] == 1:
            hv_GxSxP = one(coefs_GxK[0], v_GxSxP[0])[None]
        else:
            hv_GxSxP = jax.vmap(one)(coefs_GxK, v_GxSxP)
        return acc_GxSxP + hv_GxSxP.astype(jnp.float32)
    return jax.jit(step, donate_argnums=7)


def _build_prep(fn: Callable, has_state: bool, padded: bool) -> Callable:
    """The gradient over one batch linearised at theta + c_g . D: its tangent map, a pytree.

    `jax.linearize` keeps the primal's residuals (the forward and backward pass), so each
    later product runs only the tangent half: about 1.4x faster for a CNN on XLA:CPU.
    """
    total = _batch_total(fn, has_state, padded)

    def prep(params, dirs_KxP, state, batch, mask_B, coefs_GxK):
        flat_P, unravel = _flat(params)

        def one(coef_K):
            at_P = flat_P + coef_K.astype(jnp.float32) @ dirs_KxP if coef_K.shape[0] else flat_P
            grad = jax.grad(lambda f: total(unravel(f), state, batch, mask_B))
            return jax.linearize(grad, at_P)[1]
        if coefs_GxK.shape[0] == 1:
            return one(coefs_GxK[0])
        return jax.vmap(one)(coefs_GxK)
    return jax.jit(prep)


def _apply(lin: Callable, v_GxSxP: jax.Array, acc_GxSxP: jax.Array | None) -> jax.Array:
    """lin(v) plus acc (None: no acc), for `_build_prep`'s tangent maps (vmapped when G > 1)."""
    g, s = v_GxSxP.shape[:2]
    if g == 1:
        hv_SxP = lin(v_GxSxP[0, 0])[None] if s == 1 else jax.vmap(lin)(v_GxSxP[0])
        hv_GxSxP = hv_SxP[None].astype(jnp.float32)
    else:
        hv_GxSxP = jax.vmap(lambda f, v_SxP: jax.vmap(f)(v_SxP))(lin, v_GxSxP).astype(jnp.float32)
    return hv_GxSxP if acc_GxSxP is None else acc_GxSxP + hv_GxSxP


# One program per tangent map's structure (the map's jaxpr is part of its pytree structure,
# which stays the same as long as `_build_prep`'s program is not retraced).
_APPLY = jax.jit(_apply, donate_argnums=2)

# Largest total size of the saved residuals over a split (all batches, all points of a map
# chunk); above it the products recompute the primal each time (`_build_step`).
RESIDUAL_BYTES = 1 << 30


class _HostOperator:
    """The Hessian of the mean loss over a split as a host-callable operator (`loop="host"`).

    Built once per tool call: the parameters, directions, model state and every batch are put
    on the device once. `at(coefs)` linearises the gradient at the grid points `coefs` once
    per batch (when the residuals fit in `RESIDUAL_BYTES`); each product is then one call of
    the cached tangent program per batch, accumulated in a donated buffer.
    """

    def __init__(self, fn: Callable, params: PyTree, data: Batch, batch_size: int | None,
                 model_state: PyTree | None, directions: Sequence[PyTree] = (), mesh=None):
        args, static = _prepare(fn, params, data, batch_size, model_state)
        params, state, batches, mask_NBxB, n = args
        self.fn, self.static = fn, static
        self.prep = _cached("prep", fn, static, lambda: _build_prep(fn, *static))
        self.linearize = True
        self.p = _num_params(params)
        self.n = float(n)
        if mesh is None:
            self._points = None
            put = jax.device_put
        else:  # everything replicated over the mesh, grid points split along its grid axis
            self._points = NamedSharding(mesh, P(GRID_AXIS))
            place = placer(mesh)

            def put(tree):
                return place(tree, P())
        self.params, self.state = put(params), put(state)
        dirs = [_np_ravel(d) for d in directions]
        self.dirs_KxP = put(np.stack(dirs) if dirs else np.zeros((0, self.p), np.float32))
        self.k = len(dirs)
        nb = mask_NBxB.shape[0]
        self.batches = [put(jax.tree_util.tree_map(lambda a, i=i: a[i], batches))
                        for i in range(nb)]
        self.masks = [put(mask_NBxB[i]) for i in range(nb)]
        self._centre = None

    @property
    def sharded(self) -> bool:
        """Whether grid points are split over the devices of a mesh."""
        return self._points is not None

    def put_points(self, x: np.ndarray) -> jax.Array:
        """An array whose leading axis is the grid points, on the device(s)."""
        x = np.asarray(x, np.float32)
        return jax.device_put(x) if self._points is None else sh.put(x, self._points)

    def device_at(self, coefs_GxK: np.ndarray | None = None) -> Callable[[jax.Array], jax.Array]:
        """v_GxSxP -> the sum over the split of H_g v_gs (not yet / n), on the device.

        At the G points theta + coefs_g . D (None: theta, G = 1); `v` and the result are
        device arrays laid out as `put_points` lays them.
        """
        if coefs_GxK is None:
            coefs_GxK = np.zeros((1, self.k), np.float32)
        coefs = self.put_points(coefs_GxK)
        lins = []
        if self.linearize:
            for batch, mask_B in zip(self.batches, self.masks):
                lins.append(self.prep(self.params, self.dirs_KxP, self.state, batch, mask_B,
                                      coefs))
                size = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(lins[0]))
                if size * len(self.batches) > RESIDUAL_BYTES:
                    self.linearize, lins = False, []
                    break
        if lins:
            def matvec(v_GxSxP):
                acc = _APPLY(lins[0], v_GxSxP, None)
                for lin in lins[1:]:
                    acc = _APPLY(lin, v_GxSxP, acc)
                return acc
            return matvec

        fn, static = self.fn, self.static
        prog = _cached("step", fn, static, lambda: _build_step(fn, *static))

        def matvec(v_GxSxP):
            # zeros from numpy (no fill program to compile), placed like v
            acc = self.put_points(np.zeros(v_GxSxP.shape, np.float32))
            for batch, mask_B in zip(self.batches, self.masks):
                acc = prog(self.params, self.dirs_KxP, self.state, batch, mask_B, coefs,
                           v_GxSxP, acc)
            return acc
        return matvec

    def at(self, coefs_GxK: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """v_GxSxP -> H_g v_gs at the G points theta + coefs_g . D (None: theta, G = 1), numpy."""
        matvec = self.device_at(coefs_GxK)
        scale = np.float32(1.0 / self.n)
        return lambda v_GxSxP: sh.fetch(matvec(self.put_points(v_GxSxP))) * scale

    def one_point(self, v_SxP: np.ndarray) -> np.ndarray:
        """H V at the parameters, for S vectors at once."""
        if self._centre is None:
            self._centre = self.at()
        return self._centre(np.asarray(v_SxP)[None])[0]


def _has_convolution(jaxpr) -> bool:
    """Whether `jaxpr` (or any jaxpr inside it: jit, scan, cond, custom rules) convolves."""
    return any(eqn.primitive.name == "conv_general_dilated"
               or any(_has_convolution(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
               for eqn in jaxpr.eqns)


def _convolves(fn: Callable, args: tuple, static: tuple) -> bool:
    """Whether the loss over one batch contains a convolution (traced once, not compiled)."""
    params, state, batches, mask_NBxB, _ = args
    first = jax.tree_util.tree_map(lambda a: a[0], (batches, mask_NBxB))
    return _has_convolution(jax.make_jaxpr(_batch_total(fn, *static))(params, state, *first).jaxpr)


def _map_loop(loop: str, convolves: bool) -> str:
    """`_resolve_loop` for `eigenvalue_map`: "auto" is "device" on the CPU too if no convolution.

    The reason for the host loop on the CPU is convolutions inside control flow (the
    benchmark's CNN, a 3 x 3 map at 20 steps: 76 s on the device loop, 6 s on the host loop);
    without them the device loop (each point's whole Lanczos run inside one compiled call,
    `lax.map` over points) needs no host round trip per step and keeps one point's basis in
    the cache. A 5 x 5 map of the benchmark's MLP at 20 steps took 0.174 s against the host
    loop's 0.218 s (one thread), an 11 x 11 map of a wider MLP (85,000 parameters, 1,024
    examples) 18 s against 31 s (two threads). It compiles a larger program (once per shapes
    and settings): first calls 2.9 against 1.9 s and 20 against 36 s.
    """
    if loop != "auto" or jax.default_backend() != "cpu":
        return _resolve_loop(loop)
    return "host" if convolves else "device"


# ----------------------------------------------------------------------------- power iteration


class Eigenpairs(NamedTuple):
    """Eigenvalues with their unit eigenvectors.

    Attributes:
        values: eigenvalues, shape [k], in the order found (decreasing magnitude).
        vectors: one unit eigenvector per eigenvalue, each shaped like the parameters.
        iterations: Hessian-vector products used per eigenpair, shape [k].
    """

    values: np.ndarray
    vectors: list
    iterations: np.ndarray


def _build_power(fn: Callable, has_state: bool, padded: bool, k: int, max_iter: int,
                 tol: float) -> Callable:
    total = _batch_total(fn, has_state, padded)

    def run(params, state, batches, mask_NBxB, n, seed):
        flat_P, unravel = _flat(params)
        matvec = _matvec(total, flat_P, unravel, state, batches, mask_NBxB, n)
        p = flat_P.shape[0]

        def pair(i, carry):
            q_KxP, vals_K, iters_K = carry
            v_1xP = _rademacher(seed, i, p)[None]
            v_1xP = _normalize(_orth(v_1xP, q_KxP))

            def cond(c):
                it, _, _, done = c
                return (it < max_iter) & ~done

            def body(c):
                it, v_1xP, eig, _ = c
                # Deflation as PyHessian: iterate in the complement of the pairs found so far.
                v_1xP = _normalize(_orth(v_1xP, q_KxP))
                hv_1xP = matvec(v_1xP)
                new = jnp.sum(v_1xP * hv_1xP)
                done = (it > 0) & (jnp.abs(eig - new) / (jnp.abs(eig) + 1e-6) < tol)
                return it + 1, _normalize(hv_1xP), new, done

            it, v_1xP, eig, _ = jax.lax.while_loop(
                cond, body, (jnp.int32(0), v_1xP, jnp.float32(0.0), jnp.bool_(False)))
            v_1xP = _normalize(_orth(v_1xP, q_KxP))
            return q_KxP.at[i].set(v_1xP[0]), vals_K.at[i].set(eig), iters_K.at[i].set(it)

        init = (jnp.zeros((k, p), jnp.float32), jnp.zeros((k,), jnp.float32),
                jnp.zeros((k,), jnp.int32))
        return jax.lax.fori_loop(0, k, pair, init)
    return jax.jit(run)


def _power_host(op: _HostOperator, k: int, max_iter: int, tol: float,
                seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_build_power`'s algorithm driven from the host, step for step."""
    q_KxP = np.zeros((k, op.p), np.float32)
    vals_K, iters_K = np.zeros(k), np.zeros(k, np.int64)
    for i in range(k):
        v_1xP = _np_normalize(_np_orth(_np_rademacher(seed, i, op.p), q_KxP))
        eig, it = 0.0, 0
        while it < max_iter:
            # Deflation as PyHessian: iterate in the complement of the pairs found so far.
            v_1xP = _np_normalize(_np_orth(v_1xP, q_KxP))
            hv_1xP = op.one_point(v_1xP)
            new = float(np.sum(v_1xP.astype(np.float64) * hv_1xP))
            done = it > 0 and abs(eig - new) / (abs(eig) + 1e-6) < tol
            it, v_1xP, eig = it + 1, _np_normalize(hv_1xP), new
            if done:
                break
        q_KxP[i] = _np_normalize(_np_orth(v_1xP, q_KxP))[0]
        vals_K[i], iters_K[i] = eig, it
    return q_KxP, vals_K, iters_K


def top_eigenvalues(fn: Callable, params: PyTree, data: Batch, k: int = 1, *,
                    batch_size: int | None = None, model_state: PyTree | None = None,
                    max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                    loop: str = "auto") -> Eigenpairs:
    """The k Hessian eigenvalues of largest magnitude, by power iteration with deflation.

    As PyHessian: each pair is found by power iteration in the orthogonal complement of the
    pairs found before, stopped when the Rayleigh quotient changes by less than `tol` relative
    to its size (or after `max_iter` Hessian-vector products). With `loop="device"` all k
    pairs come from one compiled call; with `loop="host"` (the CPU default) a Python loop
    drives one compiled Hessian-vector step (see `_resolve_loop`).

    Args:
        fn: `fn(params, batch) -> loss_B` (see the module docstring).
        params: the point (any pytree).
        data: one batch, or a whole split with `batch_size`.
        k: how many eigenpairs.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given (BatchNorm stats).
        max_iter: maximum Hessian-vector products per eigenpair.
        tol: relative change of the eigenvalue at which a pair is accepted.
        seed: seed of the start vectors.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        `Eigenpairs(values, vectors, iterations)`; vectors have unit norm over all parameters.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: must be an integer >= 1, got {k!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    loop = _resolve_loop(loop)
    args, static = _prepare(fn, params, data, batch_size, model_state)
    p = _num_params(params)
    if k > p:
        raise ValueError(f"k: asked for {k} eigenpairs of a {p}-parameter Hessian")
    if loop == "host":
        op = _HostOperator(fn, params, data, batch_size, model_state)
        q_KxP, vals_K, iters_K = _power_host(op, int(k), int(max_iter), float(tol), int(seed))
    else:
        prog = _cached("power", fn, (*static, int(k), int(max_iter), float(tol)),
                       lambda: _build_power(fn, *static, int(k), int(max_iter), float(tol)))
        q_KxP, vals_K, iters_K = prog(*args, np.uint32(seed))
    q_KxP = np.asarray(q_KxP)
    vectors = [_np_unravel(q_KxP[i], params) for i in range(k)]
    return Eigenpairs(np.asarray(vals_K, np.float64), vectors, np.asarray(iters_K))


def top_eigenvalue(fn: Callable, params: PyTree, data: Batch, **kwargs) -> tuple[float, PyTree,
                                                                                 int]:
    """The Hessian eigenvalue of largest magnitude (`top_eigenvalues` with k = 1).

    Args:
        fn: `fn(params, batch) -> loss_B`.
        params: the point.
        data: one batch, or a split with `batch_size`.
        **kwargs: as `top_eigenvalues` (batch_size, model_state, max_iter, tol, seed, loop).

    Returns:
        (eigenvalue, unit eigenvector shaped like `params`, Hessian-vector products used).
    """
    pairs = top_eigenvalues(fn, params, data, 1, **kwargs)
    return float(pairs.values[0]), pairs.vectors[0], int(pairs.iterations[0])


# ----------------------------------------------------------------------------- Hutchinson


def _build_trace(fn: Callable, has_state: bool, padded: bool, chunks: int,
                 per_step: int) -> Callable:
    total = _batch_total(fn, has_state, padded)

    def run(params, state, batches, mask_NBxB, n, seed):
        flat_P, unravel = _flat(params)
        matvec = _matvec(total, flat_P, unravel, state, batches, mask_NBxB, n)
        streams_CxS = jnp.arange(chunks * per_step, dtype=jnp.uint32).reshape(chunks, per_step)

        def chunk(streams_S):
            v_SxP = jax.vmap(lambda i: _rademacher(seed, i, flat_P.shape[0]))(streams_S)
            return jnp.sum(v_SxP * matvec(v_SxP), axis=1)
        return jax.lax.map(chunk, streams_CxS).reshape(-1)
    return jax.jit(run)


def hutchinson_trace(fn: Callable, params: PyTree, data: Batch, samples: int = 100, *,
                     batch_size: int | None = None, model_state: PyTree | None = None,
                     probes_per_step: int = 10, seed: int = 0,
                     loop: str = "auto") -> tuple[float, float]:
    """Hutchinson's estimate of the Hessian's trace, `mean(v^T H v)` over Rademacher vectors v.

    A fixed number of probes (PyHessian also stops early when the running mean changes by
    less than a tolerance, which says little about its error; the standard error does).

    Args:
        fn: `fn(params, batch) -> loss_B`.
        params: the point.
        data: one batch, or a split with `batch_size`.
        samples: number of probe vectors.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given.
        probes_per_step: probes evaluated together (vmap) with `loop="device"`; memory grows
            with it. The host loop evaluates one probe per product (the same probes).
        seed: seed of the probes.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        (trace estimate, its standard error).
    """
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")
    if not isinstance(probes_per_step, (int, np.integer)) or probes_per_step < 1:
        raise ValueError(f"probes_per_step: must be an integer >= 1, got {probes_per_step!r}")
    chunks = -(-samples // probes_per_step)
    per_step = -(-samples // chunks)  # balanced chunks waste fewer than `chunks` probes
    if _resolve_loop(loop) == "host":
        # One probe per product: the same compiled program as the other tools (nothing new to
        # compile), and on XLA:CPU a vmap over probes is slower per probe for convolutions
        # (measured 1.35x for the benchmark's CNN), as the primal is already shared.
        op = _HostOperator(fn, params, data, batch_size, model_state)
        vals = np.empty(samples)
        for i in range(samples):
            v_1xP = _np_rademacher(seed, i, op.p)
            vals[i] = np.sum(v_1xP * op.one_point(v_1xP), dtype=np.float64)
    else:
        args, static = _prepare(fn, params, data, batch_size, model_state)
        prog = _cached("trace", fn, (*static, chunks, per_step),
                       lambda: _build_trace(fn, *static, chunks, per_step))
        vals = np.asarray(prog(*args, np.uint32(seed)), np.float64)[:samples]
    stderr = float(vals.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")
    return float(vals.mean()), stderr


# ----------------------------------------------------------------------------- Lanczos


def _lanczos_core(matvec: Callable, v_RxP: jax.Array, m: int,
                  seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Run m Lanczos steps from R unit start vectors at once: (alpha_RxM, beta_RxM).

    `beta[:, j]` couples steps j and j + 1 (the last one is unused). The basis is preallocated
    `[R, m, P]` and fully re-orthogonalised, so float32 keeps it orthogonal; on a breakdown (an
    invariant subspace found) the next vector is a fresh random one and beta is 0 there.
    """
    r, p = v_RxP.shape

    def step(j, carry):
        q_RxMxP, a_RxM, b_RxM = carry

        def orth(x_RxP):  # unfilled rows are zero
            for _ in range(2):
                x_RxP = x_RxP - jnp.einsum(
                    "rm,rmp->rp", jnp.einsum("rmp,rp->rm", q_RxMxP, x_RxP), q_RxMxP)
            return x_RxP

        v_RxP = q_RxMxP[:, j]
        w_RxP = matvec(v_RxP)
        alpha_R = jnp.sum(w_RxP * v_RxP, axis=1)
        scale_R = jnp.linalg.norm(w_RxP, axis=1)
        w_RxP = orth(w_RxP)
        beta_R = jnp.linalg.norm(w_RxP, axis=1)
        broken_R = beta_R <= _BREAKDOWN * jnp.maximum(scale_R, 1e-30)

        def fresh(w_RxP):
            # Streams past the start vectors' (0 .. R - 1): one fresh vector per step and run.
            streams_R = ((jnp.asarray(j, jnp.uint32) + 1) * jnp.uint32(r)
                         + jnp.arange(r, dtype=jnp.uint32) + jnp.uint32(1 << 20))
            raw_RxP = jax.vmap(lambda i: _rademacher(seed, i, p))(streams_R)
            fresh_RxP = orth(raw_RxP)
            # In a small space the random vector can lie in the basis's span; then the unit
            # vector the basis covers least (its complement's largest diagonal entry, at
            # least (P - j) / P) is used instead.
            unit_RxP = jax.nn.one_hot(jnp.argmax(1.0 - jnp.sum(q_RxMxP**2, axis=1), axis=1), p,
                                      dtype=jnp.float32)
            spanned_R = (jnp.linalg.norm(fresh_RxP, axis=1)
                         < _SPANNED * jnp.linalg.norm(raw_RxP, axis=1))
            fresh_RxP = jnp.where(spanned_R[:, None], orth(unit_RxP), fresh_RxP)
            return jnp.where(broken_R[:, None], fresh_RxP, w_RxP)
        # Breakdowns are rare: fresh vectors (as dear as the re-orthogonalisation) only then.
        nxt_RxP = _normalize(jax.lax.cond(broken_R.any(), fresh, lambda w: w, w_RxP))
        beta_R = jnp.where(broken_R, 0.0, beta_R)
        row = jnp.minimum(j + 1, m - 1)
        keep_RxP = jnp.where(j + 1 < m, nxt_RxP, q_RxMxP[:, row])
        q_RxMxP = q_RxMxP.at[:, row].set(keep_RxP)
        return q_RxMxP, a_RxM.at[:, j].set(alpha_R), b_RxM.at[:, j].set(beta_R)

    q_RxMxP = jnp.zeros((r, m, p), jnp.float32).at[:, 0].set(v_RxP)
    init = (q_RxMxP, jnp.zeros((r, m), jnp.float32), jnp.zeros((r, m), jnp.float32))
    _, a_RxM, b_RxM = jax.lax.fori_loop(0, m, step, init)
    return a_RxM, b_RxM


def _lanczos_host(op: _HostOperator, coefs_GxK: np.ndarray | None, v_GxSxP: np.ndarray, m: int,
                  seed: int, runs: int, basis: bool = False) -> tuple[np.ndarray, ...]:
    """`_lanczos_core` driven from the host: m steps for R = G x S rows at once.

    Each step is one product (`op.device_at`: S vectors at each of the G points `coefs`, None
    for theta alone) and the vector updates in numpy. Where `_lanczos_core` re-orthogonalises
    twice against its whole preallocated basis, this loop first removes the two components the
    recurrence knows (alpha v_j and beta v_j-1), then re-orthogonalises once against the filled
    part of the basis (step j costs O(j P), not O(m P)), and a second time only for the rows
    whose norm that pass cut below 1 / sqrt(2) ("twice is enough", Kahan and Parlett): the
    same eigenvalues, and for a 5 x 5 eigenvalue map the re-orthogonalisation took 17 ms
    instead of 27, the whole map 1.08x faster (the full preallocated basis, updated by a
    compiled call per step, made such a map 3x slower). Rows beyond `runs` repeat
    the fresh-vector streams (eigenvalue-map points share one start). Returns (alpha_RxM,
    beta_RxM), and with `basis` the orthonormal basis `q_RxMxP` too (for Ritz vectors).
    """
    g, s_, p = v_GxSxP.shape
    r = g * s_
    # Step-major, so that each step's vectors are one contiguous block to put on the device.
    q_MxRxP = np.zeros((m, r, p), np.float32)
    q_MxRxP[0] = v_GxSxP.reshape(r, p)
    a_RxM, b_RxM = np.zeros((r, m), np.float32), np.zeros((r, m), np.float32)
    matvec = op.device_at(coefs_GxK)
    scale = np.float32(1.0 / op.n)

    def orth(w_RxP, j, rows=None):
        # Against steps 0 .. j, a row at a time: two matrix-vector products per row go to
        # BLAS (the basis rows strided by R x P), 3x faster than numpy's stacked `matmul`
        # here (9.3 against 3.0 ms for 25 rows of a 28 x 6,922 basis, one core).
        out_RxP = w_RxP.copy()
        for i in range(r) if rows is None else rows:
            basis_JxP = q_MxRxP[: j + 1, i]
            out_RxP[i] -= (basis_JxP @ w_RxP[i]) @ basis_JxP
        return out_RxP

    def orth_twice(w_RxP, j):
        before_R = np.linalg.norm(w_RxP, axis=1)
        w_RxP = orth(w_RxP, j)
        again = np.flatnonzero(np.linalg.norm(w_RxP, axis=1) < _TWICE * before_R)
        return orth(w_RxP, j, again) if again.size else w_RxP

    for j in range(m):
        v_RxP = q_MxRxP[j]
        w_RxP = np.asarray(sh.fetch(matvec(op.put_points(v_RxP.reshape(g, s_, p)))),
                           np.float32).reshape(r, p) * scale
        alpha_R = np.einsum("rp,rp->r", w_RxP, v_RxP)
        a_RxM[:, j] = alpha_R
        scale_R = np.linalg.norm(w_RxP, axis=1)
        w_RxP -= alpha_R[:, None] * v_RxP
        if j > 0:
            w_RxP -= b_RxM[:, j - 1, None] * q_MxRxP[j - 1]
        w_RxP = orth_twice(w_RxP, j)
        beta_R = np.linalg.norm(w_RxP, axis=1)
        broken_R = beta_R <= _BREAKDOWN * np.maximum(scale_R, 1e-30)
        if j + 1 < m:
            if broken_R.any():  # a fresh random vector, as `_lanczos_core`
                streams_R = (j + 1) * runs + np.arange(r) % runs + (1 << 20)
                raw_RxP = _np_rademacher(seed, streams_R, p)
                fresh_RxP = orth(orth(raw_RxP, j), j)
                covered_RxP = np.sum(q_MxRxP[: j + 1] ** 2, axis=0)
                unit_RxP = np.eye(p, dtype=np.float32)[np.argmax(1.0 - covered_RxP, axis=1)]
                spanned_R = (np.linalg.norm(fresh_RxP, axis=1)
                             < _SPANNED * np.linalg.norm(raw_RxP, axis=1))
                fresh_RxP = np.where(spanned_R[:, None], orth(orth(unit_RxP, j), j), fresh_RxP)
                w_RxP = np.where(broken_R[:, None], fresh_RxP, w_RxP)
            q_MxRxP[j + 1] = _np_normalize(w_RxP)
        b_RxM[:, j] = np.where(broken_R, 0.0, beta_R)
    if basis:
        return a_RxM, b_RxM, np.ascontiguousarray(q_MxRxP.transpose(1, 0, 2))
    return a_RxM, b_RxM


def _build_lanczos(fn: Callable, has_state: bool, padded: bool, m: int, runs: int) -> Callable:
    total = _batch_total(fn, has_state, padded)

    def run(params, state, batches, mask_NBxB, n, seed):
        flat_P, unravel = _flat(params)
        matvec = _matvec(total, flat_P, unravel, state, batches, mask_NBxB, n)
        # Rademacher start vectors, as PyHessian's SLQ.
        v_RxP = _normalize(jax.vmap(lambda i: _rademacher(seed, i, flat_P.shape[0]))(
            jnp.arange(runs, dtype=jnp.uint32)))
        return _lanczos_core(matvec, v_RxP, m, seed)
    return jax.jit(run)


def _tridiagonal(a_M: np.ndarray, b_M: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a_M, np.float64), np.asarray(b_M, np.float64)[:-1]
    return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


def _run_lanczos(fn, params, data, steps, runs, batch_size, model_state, seed, loop):
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    if not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs: must be an integer >= 1, got {runs!r}")
    loop = _resolve_loop(loop)
    args, static = _prepare(fn, params, data, batch_size, model_state)
    m = min(int(steps), _num_params(params))
    if loop == "host":
        op = _HostOperator(fn, params, data, batch_size, model_state)
        v_RxP = _np_normalize(_np_rademacher(seed, np.arange(runs), op.p))
        return _lanczos_host(op, None, v_RxP[None], m, int(seed), int(runs))
    prog = _cached("lanczos", fn, (*static, m, int(runs)),
                   lambda: _build_lanczos(fn, *static, m, int(runs)))
    a_RxM, b_RxM = prog(*args, np.uint32(seed))
    return np.asarray(a_RxM), np.asarray(b_RxM)


def lanczos(fn: Callable, params: PyTree, data: Batch, steps: int = 80, *, runs: int = 1,
            batch_size: int | None = None, model_state: PyTree | None = None,
            seed: int = 0, loop: str = "auto") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Lanczos tridiagonalisation of the Hessian from `runs` random unit vectors (SLQ nodes).

    Args:
        fn: `fn(params, batch) -> loss_B`.
        params: the point.
        data: one batch, or a split with `batch_size`.
        steps: Lanczos steps m (capped at the number of parameters). Memory: runs x m copies
            of the parameters.
        runs: independent start vectors (Rademacher, normalised), run together.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given.
        seed: seed of the start vectors.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        (nodes, weights): per run, the Ritz values theta_m (ascending) and weights tau_m
        (squared first components of the tridiagonal matrix's eigenvectors, summing to 1).
    """
    a_RxM, b_RxM = _run_lanczos(fn, params, data, steps, runs, batch_size, model_state, seed,
                                loop)
    nodes, weights = [], []
    for a_M, b_M in zip(a_RxM, b_RxM):
        theta_M, vecs_MxM = np.linalg.eigh(_tridiagonal(a_M, b_M))
        nodes.append(theta_M)
        weights.append(vecs_MxM[0, :] ** 2)
    return nodes, weights


def spectral_density(fn: Callable, params: PyTree, data: Batch, steps: int = 80, *,
                     runs: int = 1, batch_size: int | None = None,
                     model_state: PyTree | None = None, grid: np.ndarray | None = None,
                     sigma: float | None = None, seed: int = 0,
                     loop: str = "auto") -> tuple[np.ndarray, np.ndarray, dict]:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each run gives Ritz values and weights; the density is their weighted sum of Gaussians of
    width `sigma`, averaged over runs (it integrates to 1).

    Args:
        fn: `fn(params, batch) -> loss_B`.
        params: the point.
        data: one batch, or a split with `batch_size`.
        steps: Lanczos steps per run.
        runs: independent start vectors.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given.
        grid: where to evaluate the density (default: 1000 points spanning the Ritz values).
        sigma: Gaussian width (default: 1% of the Ritz-value range).
        seed: seed of the start vectors.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        (grid, density on the grid, {"nodes": Ritz values per run, "weights": weights per run}).
    """
    nodes, weights = lanczos(fn, params, data, steps, runs=runs, batch_size=batch_size,
                             model_state=model_state, seed=seed, loop=loop)
    lo = min(float(x.min()) for x in nodes)
    hi = max(float(x.max()) for x in nodes)
    sigma = sigma or 0.01 * max(hi - lo, 1e-12)
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
    grid = np.asarray(grid, np.float64)
    density = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        g = np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)
        density += (g / (sigma * np.sqrt(2 * np.pi))) @ tau
    return grid, density / len(nodes), {"nodes": [x.tolist() for x in nodes],
                                        "weights": [w.tolist() for w in weights]}


def extreme_eigenvalues(fn: Callable, params: PyTree, data: Batch, steps: int = 30, *,
                        batch_size: int | None = None, model_state: PyTree | None = None,
                        seed: int = 0, loop: str = "auto") -> tuple[float, float]:
    """lambda_max and lambda_min of the Hessian: the extreme Ritz values of m Lanczos steps.

    Lanczos rather than the reference's shift (power iteration, then again on
    H - 0.51 lambda_max): one Krylov space gives both ends at once, converges much faster than
    power iteration at the same number of products, and does not depend on the shift being
    large enough. Ritz values lie inside the spectrum, so the estimates err inwards
    (lambda_max from below, lambda_min from above); raise `steps` to tighten them.

    Args:
        fn: `fn(params, batch) -> loss_B`.
        params: the point.
        data: one batch, or a split with `batch_size`.
        steps: Lanczos steps (Hessian-vector products).
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given.
        seed: seed of the start vector.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        (lambda_max, lambda_min).
    """
    nodes, _ = lanczos(fn, params, data, steps, runs=1, batch_size=batch_size,
                       model_state=model_state, seed=seed, loop=loop)
    return float(nodes[0][-1]), float(nodes[0][0])


# ----------------------------------------------------------------------------- directions


@dataclasses.dataclass
class HessianDirections:
    """The top Hessian eigenvectors as landscape directions.

    Attributes:
        directions: unit-norm eigenvectors shaped like the parameters (pass to `evaluate_grid`).
        eigenvalues: their eigenvalues, shape [k].
        iterations: Hessian-vector products used per pair.
        info: metadata for `evaluate_grid(..., info=...)` (the eigenvalues and how they were
            found), so the surface file records them.
    """

    directions: list
    eigenvalues: np.ndarray
    iterations: np.ndarray
    info: dict


def hessian_directions(fn: Callable, params: PyTree, data: Batch, k: int = 2, *,
                       batch_size: int | None = None, model_state: PyTree | None = None,
                       max_iter: int = 100, tol: float = 1e-4, seed: int = 0,
                       loop: str = "auto") -> HessianDirections:
    """The top-k Hessian eigenvectors (by magnitude), for PyHessian's perturbation plots.

    Along a unit eigenvector d with eigenvalue lambda, `L(theta + a d)` curves as
    `L(theta) + g.d a + lambda a^2 / 2` near a = 0: the plot shows the sharpest directions.
    The directions are unit vectors in the full parameter space (not filter-normalised; their
    scale is what makes the curvature equal lambda).

    Args:
        fn: `fn(params, batch) -> loss_B`, the same function `evaluate_grid` takes.
        params: the point.
        data: one batch, or a split with `batch_size`.
        k: how many directions.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given.
        max_iter: maximum Hessian-vector products per eigenpair.
        tol: relative change of the eigenvalue at which a pair is accepted.
        seed: seed of the start vectors.
        loop: "auto" (host on CPU, device elsewhere), "host" or "device".

    Returns:
        `HessianDirections` (directions, eigenvalues, iterations, info).
    """
    pairs = top_eigenvalues(fn, params, data, k, batch_size=batch_size, model_state=model_state,
                            max_iter=max_iter, tol=tol, seed=seed, loop=loop)
    info = {"direction_kind": "hessian_eigenvectors",
            "hessian_eigenvalues": [float(x) for x in pairs.values],
            "hessian_iterations": [int(x) for x in pairs.iterations],
            "hessian_seed": int(seed), "hessian_tol": float(tol)}
    return HessianDirections(list(pairs.vectors), pairs.values, pairs.iterations, info)


# ----------------------------------------------------------------------------- eigenvalue maps


def _build_map(fn: Callable, has_state: bool, padded: bool, m: int) -> Callable:
    total = _batch_total(fn, has_state, padded)

    def run(params, dirs, state, batches, mask_NBxB, n, seed, v_P, coords_CxK):
        flat_P, unravel = _flat(params)
        dirs_KxP = jnp.stack([_flat(d)[0] for d in dirs])
        v_1xP = v_P[None]

        def point(coef_K):
            at_P = flat_P + coef_K.astype(jnp.float32) @ dirs_KxP
            matvec = _matvec(total, at_P, unravel, state, batches, mask_NBxB, n)
            a_1xM, b_1xM = _lanczos_core(matvec, v_1xP, m, seed)
            return a_1xM[0], b_1xM[0]
        return jax.lax.map(point, coords_CxK)
    return run


MAP_METRICS = ("lambda_max", "lambda_min", "ratio")
MAP_STARTS = ("theta", "random")


def _map_start(op: _HostOperator | None, p: int, m: int, seed: int, start: str,
               copies: int = 1) -> np.ndarray:
    """The Lanczos start vector shared by every point of an eigenvalue map, unit norm.

    "random": the Rademacher vector of `seed`. "theta": that vector plus the extreme Ritz
    vectors (lambda_max's and lambda_min's) of m Lanczos steps at theta itself, from that vector.
    The extreme eigenvectors change slowly over the plane, so a start that already leans
    towards theta's converges in fewer steps at the other points, at the cost of one point's
    products; the random part keeps every eigenvector reachable where they have turned away.
    With `copies` > 1 (an operator over that many grid devices, which cannot split one point)
    theta runs once on each, the same numbers everywhere, and the first copy is used.
    """
    v_1xP = _np_normalize(_np_rademacher(seed, 0, p))
    if start == "random":
        return v_1xP[0]
    coefs_GxK = None if copies == 1 else np.zeros((copies, op.k), np.float32)
    a_GxM, b_GxM, q_GxMxP = _lanczos_host(op, coefs_GxK, np.tile(v_1xP[None], (copies, 1, 1)),
                                          m, int(seed), 1, basis=True)
    _, y_MxM = np.linalg.eigh(_tridiagonal(a_GxM[0], b_GxM[0]))
    ritz_2xP = (y_MxM[:, [0, -1]].T @ q_GxMxP[0].astype(np.float64)).astype(np.float32)
    return _np_normalize((v_1xP[0] + ritz_2xP[0] + ritz_2xP[1])[None])[0]


def _map_chunk(run: Callable, coords_CxK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lambda_max and lambda_min at a chunk of grid points (a seam for tests of resuming)."""
    return run(coords_CxK)


def _check_map_args(params: PyTree, directions: Sequence[PyTree], axes: Sequence[Any],
                    steps: Any, points_per_call: Any) -> tuple[list, list[np.ndarray]]:
    """`eigenvalue_map`'s directions and axes as lists, after checking every argument."""
    directions = list(directions)
    axes = [np.asarray(a, np.float64) for a in axes]
    if not directions or len(axes) != len(directions):
        raise ValueError(f"axes: need one coordinate array per direction, got {len(axes)} for "
                         f"{len(directions)} directions")
    for i, a in enumerate(axes):
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"axes[{i}]: must be a non-empty 1-D array of finite coordinates")
    treedef = jax.tree_util.tree_structure(params)
    for i, d in enumerate(directions):
        if jax.tree_util.tree_structure(d) != treedef:
            raise ValueError(f"directions[{i}]: not shaped like params")
    if not isinstance(points_per_call, (int, np.integer)) or points_per_call < 1:
        raise ValueError(f"points_per_call: must be an integer >= 1, got {points_per_call!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    return directions, axes


def _map_runner_host(op: _HostOperator, v_P: np.ndarray, m: int, seed: int,
                     lockstep: bool) -> Callable:
    """`run(coords_CxK) -> (hi_C, lo_C)`: a chunk's Lanczos runs, driven from the host.

    With `lockstep` the chunk's runs advance together, each product one call for all its
    points (`vmap`; over a mesh, the points split over the devices). Otherwise each point runs
    on its own: `vmap` over points turns a convolution with each point's own kernel into a
    grouped convolution, which XLA:CPU runs far more slowly (the CNN of
    `benchmarks/curvature.py`: 52 ms a product at one point, 297 per point for two at once,
    415 for five; a 3 x 3 map at 20 steps took 6 s instead of 38).
    """
    def run_points(coords_CxK):
        c = len(coords_CxK)
        return _lanczos_host(op, coords_CxK, np.tile(v_P, (c, 1, 1)), m, int(seed), 1)

    def run(coords_CxK):
        if lockstep:
            return _extremes(*run_points(coords_CxK))
        ab = [run_points(coords_CxK[i:i + 1]) for i in range(len(coords_CxK))]
        return _extremes(*(np.concatenate(x) for x in zip(*ab)))
    return run


def _extremes(a_CxM: np.ndarray, b_CxM: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and the smallest Ritz value of each of C Lanczos runs (float64)."""
    theta_CxM = np.array([np.linalg.eigvalsh(_tridiagonal(a_M, b_M))
                          for a_M, b_M in zip(a_CxM, b_CxM)])
    return theta_CxM[:, -1], theta_CxM[:, 0]


def _concurrently(run: Callable, calls: int) -> Callable:
    """`run` over equal parts of a chunk (as many of `calls` as divide it), each in its own thread.

    XLA:CPU runs a small model's product on one core, but two executions started from two host
    threads at once (see `evaluate.concurrent_calls`).
    """
    def split(coords_CxK):
        parts = math.gcd(len(coords_CxK), calls)
        if parts == 1:
            return run(coords_CxK)
        with ThreadPoolExecutor(parts) as pool:
            done = list(pool.map(run, np.split(coords_CxK, parts)))
        return tuple(np.concatenate(x) for x in zip(*done))
    return split


def _map_runner_device(fn: Callable, directions: list, args: tuple, static: tuple, m: int,
                       seed: int, v_P: np.ndarray, mesh) -> Callable:
    """`run(coords_CxK) -> (hi_C, lo_C)`: a chunk as one compiled call.

    Each device of the mesh's grid axis runs `lax.map` over its share of the chunk's points.
    """
    def build():
        run = _build_map(fn, *static, m)
        rep = P()
        return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(rep,) * 8 + (P(GRID_AXIS),),
                                     out_specs=P(GRID_AXIS), check_vma=False))
    prog = _cached("map", fn, (*static, m, mesh), build)
    place = placer(mesh)
    replicated = place((*args, directions, np.uint32(seed), v_P), P())
    points = NamedSharding(mesh, P(GRID_AXIS))

    def run(coords_CxK):
        params_, state, batches, mask_NBxB, n_, dirs, seed_, v_P_ = replicated
        a_CxM, b_CxM = sh.fetch(prog(params_, dirs, state, batches, mask_NBxB, n_, seed_, v_P_,
                                     sh.put(np.asarray(coords_CxK, np.float32), points)))
        return _extremes(a_CxM, b_CxM)
    return run


def _fill_map(surface, run: Callable, todo: np.ndarray, chunk: int,
              path: str | None) -> None:
    """Compute the points `todo` chunk by chunk, saving the surface after every chunk."""
    from research.landscape.surface import save_surface

    coords_GxK = surface.coords().astype(np.float32)
    shape = surface.shape
    for start in range(0, todo.size, chunk):
        idx = todo[start:start + chunk]
        # Pad the last chunk by repeating a point: one compiled shape.
        padded_idx = np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])
        hi_C, lo_C = _map_chunk(run, coords_GxK[padded_idx])
        at = np.unravel_index(idx, shape)
        surface.values["lambda_max"][at] = hi_C[: idx.size]
        surface.values["lambda_min"][at] = lo_C[: idx.size]
        with np.errstate(divide="ignore", invalid="ignore"):
            surface.values["ratio"][at] = np.abs(lo_C[: idx.size] / hi_C[: idx.size])
        surface.done[at] = True
        if path is not None:
            save_surface(path, surface)


def eigenvalue_map(fn: Callable, params: PyTree, directions: Sequence[PyTree],
                   axes: Sequence[Any], data: Batch, *, steps: int = 20,
                   batch_size: int | None = None, model_state: PyTree | None = None,
                   points_per_call: int = 64, path: str | None = None,
                   settings: Mapping[str, Any] | None = None,
                   info: Mapping[str, Any] | None = None, seed: int = 0,
                   start: str = "theta", loop: str = "auto", mesh=None):
    """lambda_max and lambda_min of the full Hessian at every grid point (Li et al., Figure 6).

    At theta + sum_k c_k d_k for every point c of the grid, `steps` Lanczos steps over the
    whole split give the extreme Ritz values (see `extreme_eigenvalues`). Points run in equal
    chunks of at most `points_per_call`: with `loop="host"` the chunk's Lanczos runs advance
    in lockstep, each Hessian-vector step one compiled call for all points of the chunk (`vmap`
    over points); with `loop="device"` a chunk is one compiled call (`lax.map`). Either way the
    program is compiled once per shapes and settings, and the last chunk is padded to the same
    shape. On a single CPU device a chunk is split into equal parts computed at once from host
    threads, one per usable core (`evaluate.concurrent_calls`; each part the same program).

    Sharded like the loss grid: the points of a chunk are split over the grid axis of `mesh`
    (each device runs its points' Lanczos products; chunks are a multiple of that axis), and
    with several processes every process computes its devices' share while process 0 alone
    writes the file. Resumable like the loss grid: with `path`, the surface file (with its done
    mask) is rewritten atomically after every chunk, and a re-run with the same settings
    computes only the points not yet done (a re-run with other settings raises
    `SurfaceMismatchError`). Every point's numbers are independent of the chunk it ran in.

    Accuracy: Ritz values approach the extreme eigenvalues from inside the spectrum, and
    lambda_min (often one of a cluster of negative eigenvalues) converges much more slowly than
    lambda_max. Every point starts from one vector (`start`): by default a random one plus
    the extreme Ritz vectors at theta, computed first with `steps` products at theta alone;
    the points' extreme eigenvectors lean towards theta's, so this start saves steps. On
    `benchmarks/curvature.py --map 5` (an MLP, 6,922 parameters), errors relative to
    lambda_max against converged eigenvalues were, worst / median over the 25 points:

        steps  start   lambda_max  lambda_min
        20     theta   8e-7        8.8e-3 / 2.3e-4
        24     theta   7e-8        2.2e-3 / 5.4e-5
        20     random  1.5e-6      1.7e-2 / 1.7e-3
        28     random  3e-8        1.3e-2 / 2.0e-4

    and for the reference's `eigsh(tol=1e-2)` twice per point, 5e-6 and 3.0e-3 to 1.9e-2 /
    6.6e-5 to 4.0e-4 over four runs (ARPACK's random start moves them). Raise `steps` when the
    map of lambda_min (or of the ratio) matters. Speed on that benchmark (20 steps): 11-12x the
    reference loop on PyTorch products with one thread, 14-15x with two.

    Args:
        fn: `fn(params, batch) -> loss_B`, the same function `evaluate_grid` takes.
        params: theta, the centre.
        directions: one or two directions shaped like `params`.
        axes: one 1-D coordinate array per direction; the grid is their product.
        data: one batch, or a split with `batch_size`.
        steps: Lanczos steps per point.
        batch_size: examples per step of the data loop (None: all in one batch).
        model_state: passed to `fn(params, model_state, batch)` when given (kept at theta's).
        points_per_call: grid points per chunk (memory: points x steps copies of the
            parameters for the Lanczos bases).
        path: if given, the surface file (.npz) to write and resume, with metrics
            `lambda_max`, `lambda_min` and `ratio` (|lambda_min / lambda_max|).
        settings: extra settings to record in the file (compared on resume).
        info: descriptive metadata to record (not compared).
        seed: seed of the random part of the Lanczos start vector.
        start: the start vector, the same at every point: "theta" (the default) adds to the
            random vector the extreme Ritz vectors of `steps` Lanczos steps at theta, which
            the points' extreme eigenvectors lean towards; "random" is the random vector alone.
        loop: "auto" (device, except "host" on the CPU when the loss has a convolution; see
            `_map_loop`), "host" or "device".
        mesh: a ("grid", "data") mesh from `research.sharding.make_mesh` whose data axis is 1;
            default one device (one process) or all devices (several processes).

    Returns:
        A `research.landscape.surface.Surface` with those three metrics.
    """
    from research.io import fingerprint

    directions, axes = _check_map_args(params, directions, axes, steps, points_per_call)
    if start not in MAP_STARTS:
        raise ValueError(f"start: must be one of {MAP_STARTS}, got {start!r}")
    args, static = _prepare(fn, params, data, batch_size, model_state)
    convolves = _convolves(fn, args, static)
    loop = _map_loop(loop, convolves)
    m = min(int(steps), _num_params(params))
    n = int(args[-1])

    all_settings = {"kind": "hessian_eigenvalue_map", "lanczos_steps": m, "seed": int(seed),
                    "lanczos_start": start,
                    "params_fingerprint": fingerprint(params),
                    "directions_fingerprint": [fingerprint(d) for d in directions],
                    "data_fingerprint": fingerprint(dict(data)),
                    "model_state_fingerprint": (fingerprint(model_state)
                                                if model_state is not None else None),
                    "num_examples": n, **dict(settings or {})}
    if mesh is None:
        mesh = make_mesh() if jax.process_count() > 1 else single_device_mesh()
    n_grid, n_data = mesh_axis_sizes(mesh)
    if n_data != 1:
        raise ValueError(f"mesh: eigenvalue_map splits grid points only; its data axis has "
                         f"{n_data} devices (use research.sharding.make_mesh(data=1))")
    surface = open_surface_once(path, axes, MAP_METRICS, all_settings, dict(info or {}))
    todo = np.flatnonzero(~surface.done.ravel())
    if todo.size == 0:
        return surface
    host_mesh = None if n_grid == 1 and jax.process_count() == 1 else mesh
    op = None
    if loop == "host" or start != "random":
        # One operator, so the data are on the devices once, for theta's start and the host
        # loop's grid points.
        op = _HostOperator(fn, params, data, batch_size, model_state, directions, host_mesh)
    v_P = _map_start(op, _num_params(params), m, seed, start,
                     copies=1 if host_mesh is None else n_grid)
    if loop == "host":
        # One point at a time where convolutions would be grouped, unless a mesh splits them.
        run = _map_runner_host(op, v_P, m, seed, lockstep=op.sharded or not convolves)
    else:
        op = None  # frees its copy of the data before the device loop puts its own
        run = _map_runner_device(fn, directions, args, static, m, seed, v_P, mesh)
    calls = concurrent_calls(mesh)
    run = _concurrently(run, calls)
    # Chunks a multiple of the concurrent calls, so that each runs an equal part.
    unit = n_grid * (calls if points_per_call >= calls else 1)
    _fill_map(surface, run, todo, chunk_size(todo.size, points_per_call, unit), path)
    return surface


__all__ = ["LOOPS", "Eigenpairs", "HessianDirections", "clear_cache", "eigenvalue_map",
           "extreme_eigenvalues", "hessian_directions", "hutchinson_trace", "hvp", "lanczos",
           "spectral_density", "top_eigenvalue", "top_eigenvalues"]
