"""The grid evaluator: f(a, b) = L(theta + a d1 + b d2) over a whole data split, fast.

Design (measured in `benchmarks/landscape.py`):

- One compiled call evaluates a chunk of grid points: `lax.map` over the points, and inside it a
  `lax.scan` over the batches of the split, so there is no Python loop and no host round trip per
  point or per batch. Memory does not grow with the number of points per call. A `vmap` over
  points turns convolutions into grouped convolutions, which measured slower (on a 2-core CPU
  here, and on an H100 in DESIGN.md section 4), and multiplies activation memory;
  `points_per_step > 1` vmaps a few points at a time, for models and devices where that pays.
- Compile once: the compiled chunk evaluator is cached at module level, keyed by the user's
  functions and the static settings (metric names, dtype, mesh, points per step, BatchNorm
  policy kind) and by the shapes of its arguments. Parameters, directions, model state, data and
  coordinates are arguments, never closed-over constants, so a second surface of the same model
  (new directions, same number of points) compiles nothing.
- Chunks are fitted to the grid: the points still to compute are split into equal chunks of at
  most `points_per_call` (a multiple of the mesh's grid axis), so a 3x3 grid costs 9 points, not
  `points_per_call`, and at most one chunk is padded.
- The split is padded to whole batches and masked, so the mean over the split is exact with a
  ragged last batch; means are computed on the device, accumulated in float32.
- The data are put on the device once, before the first chunk.
- Optional bfloat16 compute: parameters and floating inputs are cast after the perturbation (done in
  float32); metric sums stay in float32.
- A `("grid", "data")` device mesh (`research.sharding.make_mesh`): grid points are split across
  the grid axis, each batch across the data axis, partial sums added with `psum`. The numbers equal
  the single-device ones up to float32 summation order.
- Chunks are dispatched one ahead, so the host writes the surface file of chunk i while the device
  computes chunk i + 1. On a single CPU device, `concurrent_calls` chunks (one per usable core, up
  to `MAX_CPU_CALLS`) are computed at once from host threads: XLA:CPU runs a small model's
  convolutions on one core, but two executions at the same time on two.
- Several processes (`jax.distributed.initialize()`, e.g. under `mpirun`): the mesh spans the
  devices of every process (`make_mesh` uses `jax.devices()`, all of them; so does the default
  mesh then), every process runs the same calls on its share of the grid and of each batch, the
  values are gathered to every process, and process 0 alone writes the surface file. On resume
  every process reads the file process 0 opened, so all skip the same finished points.

BatchNorm at perturbed points (`BatchNormPolicy.kind`), for models with state:

- `keep`: theta*'s running statistics at every point (the reference's default);
- `interpolate`: the state moves along `state_directions` with the same coefficients (the
  reference's `states` mode; use `interpolation_direction` of the two models' statistics);
- `recompute`: at each point, a training-mode pass over `data` (default: the evaluation data)
  recomputes the statistics: each batch's statistics are averaged, weighted by batch size (as
  `torch.optim.swa_utils.update_bn`). `update_fn(params, state, batch)` is the model's own
  training-mode update of its running averages (`r <- m r + (1 - m) s` for any momentum m); the
  engine runs it from r = 0 and r = 1 to read off the batch statistic s = r0 / (1 - (r1 - r0)),
  so it works for any BatchNorm implementation and momentum. State leaves the update does not
  touch keep their value.

Both `interpolate` and `recompute` clamp leaves named `var` or `running_var` at >= 0: an
extrapolated variance can cross zero, and a model's own `E[x^2] - E[x]^2` can come out slightly
negative from cancellation on a near-constant feature with a large mean.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research import sharding as sh
from research.io import fingerprint
from research.landscape.directions import check_finite, check_same_structure, cosine, path_str
from research.landscape.surface import Surface, load_surface, open_surface, save_surface
from research.sharding import DATA_AXIS, GRID_AXIS, make_mesh, mesh_axis_sizes, single_device_mesh

PyTree = Any
Batch = Mapping[str, Any]

# The one definition of the policy names (`research.landscape.config` imports it).
BN_POLICIES = ("keep", "interpolate", "recompute")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_LEGACY_BN_ARGS = {"model_state": "state", "bn_policy": "kind",
                   "state_directions": "state_directions", "bn_update_fn": "update_fn",
                   "bn_data": "data"}
_CACHE_SIZE = 32


@dataclasses.dataclass(frozen=True, eq=False)
class BatchNormPolicy:
    """Non-trained model state (BatchNorm statistics) at the perturbed points.

    Attributes:
        kind: keep, interpolate or recompute (see the module docstring).
        state: the state at theta, e.g. `batch_stats`; when given, `fn` takes
            `(params, state, batch)`.
        state_directions: for `interpolate`: one direction per parameter direction, shaped like
            `state`.
        update_fn: for `recompute`: `(params, state, batch) -> state` after a training-mode pass
            (the new running averages).
        data: for `recompute`: the data for the statistics (default: the evaluation data);
            should be the training split.
    """

    kind: str = "keep"
    state: PyTree | None = None
    state_directions: Sequence[PyTree] | None = None
    update_fn: Callable | None = None
    data: Batch | None = None

    def __post_init__(self):
        if self.kind not in BN_POLICIES:
            raise ValueError(f"bn_policy: unknown value {self.kind!r}; "
                             f"choose one of {', '.join(BN_POLICIES)}")
        if self.kind != "keep" and self.state is None:
            raise ValueError(f"bn_policy: {self.kind!r} needs model_state (the BatchNorm "
                             "statistics)")
        if self.kind == "interpolate" and self.state_directions is None:
            raise ValueError("state_directions: the interpolate policy needs one state direction "
                             "per direction (e.g. interpolation_direction(stats_a, stats_b))")
        if self.kind == "recompute" and self.update_fn is None:
            raise ValueError("bn_update_fn: the recompute policy needs the model's training-mode "
                             "update, (params, state, batch) -> new state")

    @property
    def has_state(self) -> bool:
        """Whether the model has state (then `fn` takes it)."""
        return self.state is not None


def _batch_norm_policy(batch_norm: BatchNormPolicy | None,
                       legacy: Mapping[str, Any]) -> BatchNormPolicy:
    """The policy from `batch_norm=` or from the keyword arguments before it existed."""
    unknown = sorted(set(legacy) - set(_LEGACY_BN_ARGS))
    if unknown:
        raise TypeError(f"evaluate_grid() got unexpected keyword argument(s) {unknown}")
    if batch_norm is not None and legacy:
        raise ValueError(f"batch_norm: pass either a BatchNormPolicy or {sorted(legacy)}, "
                         "not both")
    if batch_norm is not None:
        return batch_norm
    fields = {_LEGACY_BN_ARGS[k]: v for k, v in legacy.items()}
    if fields.get("kind") is None:
        fields["kind"] = "keep"
    return BatchNormPolicy(**fields)


# ---------------------------------------------------------------------------------------------
# Validation, data layout and the settings recorded in the surface file.


def _as_tuple(x, name: str) -> tuple:
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{name}: pass a list with one entry per direction, e.g. [d1] or [d1, d2]")
    return tuple(x)


def _validate(params: PyTree, directions, axes, bn: BatchNormPolicy, sizes: Mapping[str, Any],
              dtype: str) -> tuple[tuple, tuple, tuple]:
    """Check every input before anything is computed; returns (directions, axes, sdirs)."""
    directions = _as_tuple(directions, "directions")
    axes = tuple(np.asarray(a, np.float64) for a in _as_tuple(axes, "axes"))
    if len(axes) != len(directions):
        raise ValueError(f"axes: got {len(axes)} coordinate arrays for {len(directions)} "
                         "directions; pass one per direction")
    for i, a in enumerate(axes):
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError(f"axes[{i}]: must be a non-empty 1-D array of finite coordinates")
    for i, d in enumerate(directions):
        check_same_structure(d, params, f"directions[{i}]")
        check_finite(d, f"directions[{i}]")
    check_finite(params, "params")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown value {dtype!r}; choose one of {', '.join(DTYPES)}")
    for name, v in sizes.items():
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    if bn.has_state:
        check_finite(bn.state, "model_state")
    sdirs: tuple = ()
    if bn.kind == "interpolate":
        sdirs = _as_tuple(bn.state_directions, "state_directions")
        if len(sdirs) != len(directions):
            raise ValueError(f"state_directions: got {len(sdirs)}, need {len(directions)}")
        for i, d in enumerate(sdirs):
            check_same_structure(d, bn.state, f"state_directions[{i}]", "model_state")
    return directions, axes, sdirs


def num_examples(data: Batch) -> int:
    """The number of examples of a split `{name: array}`, checking a common leading axis."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data: must be a non-empty dict of arrays with a leading example axis, "
                         "e.g. {'x': x_NxD, 'y': y_N}")
    sizes = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in data.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"data: every array needs the same leading (example) axis, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("data: the split is empty")
    return int(n)


def _split_batches(data: Batch, batch_size: int, multiple: int) -> tuple[dict, np.ndarray, int]:
    """Pad the split to whole batches: ({name: [nb, B, ...]}, mask [nb, B], B)."""
    n = num_examples(data)
    b = min(batch_size, n)
    b = int(math.ceil(b / multiple) * multiple)
    nb = int(math.ceil(n / b))
    pad = nb * b - n
    out = {}
    for k, v in data.items():
        v = np.asarray(v)
        if pad:
            v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
        out[k] = v.reshape((nb, b) + v.shape[1:])
    mask = np.arange(nb * b).reshape(nb, b) < n
    return out, mask, b


def _bn_batches(data: Batch, batch_size: int) -> tuple[dict, dict, int]:
    """Whole batches [nb, B, ...] plus the ragged tail [r, ...] (empty dict when r = 0).

    BatchNorm statistics must not see padding, so the tail is its own (smaller) batch.
    """
    n = num_examples(data)
    b = min(batch_size, n)
    nb, r = n // b, n % b
    full = {k: np.asarray(v)[: nb * b].reshape((nb, b) + np.shape(v)[1:]) for k, v in data.items()}
    tail = {k: np.asarray(v)[nb * b:] for k, v in data.items()} if r else {}
    return full, tail, b


def _surface_settings(params, directions, data, bn: BatchNormPolicy, sdirs, dtype: str,
                      bn_batch: int, settings: Mapping[str, Any] | None) -> dict:
    """Everything that changes the numbers (compared when a surface file is resumed)."""
    out = {
        "params_fingerprint": fingerprint(params),
        "directions_fingerprint": [fingerprint(d) for d in directions],
        "data_fingerprint": fingerprint(dict(data)),
        "num_examples": num_examples(data),
        "model_state_fingerprint": fingerprint(bn.state) if bn.has_state else None,
        "bn_policy": bn.kind if bn.has_state else "none",
        "dtype": dtype,
    }
    if bn.kind == "interpolate":
        out["state_directions_fingerprint"] = [fingerprint(d) for d in sdirs]
    if bn.kind == "recompute":
        out["bn_data_fingerprint"] = fingerprint(dict(data if bn.data is None else bn.data))
        out["bn_batch_size"] = bn_batch
    for key, value in (settings or {}).items():
        if key in out:
            raise ValueError(f"settings: {key!r} is recorded by the engine; use another name")
        out[key] = value
    return out


def _surface_info(info: Mapping[str, Any] | None, directions, batch: int, mesh) -> dict:
    """Descriptive metadata (not compared on resume)."""
    out = dict(info or {})
    if len(directions) == 2 and "cosine" not in out:
        out["cosine"] = cosine(directions[0], directions[1])
    n_grid, n_data = mesh_axis_sizes(mesh)
    out.update({"batch_size": batch, "mesh": {"grid": n_grid, "data": n_data}})
    return out


# ---------------------------------------------------------------------------------------------
# The compiled chunk evaluator, built once per (functions, static settings, shapes).


def _lru(cache: collections.OrderedDict, key, make: Callable):
    """`cache[key]`, made on a miss; least recently used entries go first (bounded size)."""
    try:
        hit = cache.get(key)
    except TypeError:  # an unhashable user function: no caching, but still correct
        return make()
    if hit is None:
        hit = cache[key] = make()
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit


def _signature(tree: PyTree) -> tuple:
    """The tree structure and (shape, dtype, weak type) of every leaf: what jit specialises on."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(x), str(x.dtype if hasattr(x, "dtype") else np.result_type(x)),
                           bool(getattr(x, "weak_type", False))) for x in leaves)


_METRICS_CACHE: collections.OrderedDict = collections.OrderedDict()
_EVALUATOR_CACHE: collections.OrderedDict = collections.OrderedDict()
_COMPILED_CACHE: collections.OrderedDict = collections.OrderedDict()


def _metric_spec(fn: Callable, has_state: bool, params: PyTree, state: PyTree,
                 batch: Batch) -> tuple[tuple[str, ...], bool]:
    """(metric names, whether `fn` returns scalars), checked from `fn`'s output shapes."""
    key = (fn, has_state, _signature((params, state, batch)))
    return _lru(_METRICS_CACHE, key, lambda: _check_outputs(fn, has_state, params, state, batch))


def _call(fn: Callable, has_state: bool, p, s, b):
    out = fn(p, s, b) if has_state else fn(p, b)
    return dict(out) if isinstance(out, Mapping) else {"loss": out}


def _check_outputs(fn, has_state, params, state, batch) -> tuple[tuple[str, ...], bool]:
    shapes = jax.eval_shape(lambda p, s, b: _call(fn, has_state, p, s, b), params, state, batch)
    bsz = num_examples(batch)
    if not shapes:
        raise ValueError("fn: returned no metrics")
    kinds = set()
    for name, s in shapes.items():
        if not hasattr(s, "shape") or s.shape not in ((), (bsz,)):
            raise ValueError(f"fn: metric {name!r} has shape {getattr(s, 'shape', s)}; return a "
                             f"scalar (mean over the batch) or one value per example ({bsz},)")
        kinds.add(s.shape)
    if len(kinds) > 1:
        raise ValueError("fn: return either all scalars or all per-example arrays, not a mix")
    return tuple(shapes), kinds == {()}


def _per_example_fn(fn: Callable, has_state: bool, names: tuple[str, ...], scalar: bool):
    """`fn` as (params, state, batch) -> {name: [B] float32}."""
    def per_example(p, s, b):
        if scalar:
            # A scalar is taken as a mean of per-example terms: evaluate it one example at a time
            # (vmap, so still one batched computation) to keep the split mean exact with padding.
            out = jax.vmap(lambda ex: _call(fn, has_state, p, s, jax.tree_util.tree_map(
                lambda a: a[None], ex)))(b)
        else:
            out = _call(fn, has_state, p, s, b)
        return {k: out[k].astype(jnp.float32) for k in names}
    return per_example


def _combine(base: PyTree, directions: Sequence[PyTree], coef_K: jax.Array) -> PyTree:
    """Return base + sum_k coef_K[k] * directions[k], in float32."""
    def leaf(b, *ds):
        out = b.astype(jnp.float32)
        for k, d in enumerate(ds):
            out = out + coef_K[k] * d.astype(jnp.float32)
        return out
    return jax.tree_util.tree_map(leaf, base, *directions)


def _cast_floats(tree: PyTree, dtype) -> PyTree:
    def leaf(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree_util.tree_map(leaf, tree)


def _clamp_variances(state: PyTree) -> PyTree:
    """Keep variance leaves >= 0 (see the module docstring for how they go negative)."""
    def leaf(path, x):
        name = path_str(path).rsplit("/", 1)[-1].lower()
        return jnp.maximum(x, 0.0) if name in ("var", "running_var") else x
    return jax.tree_util.tree_map_with_path(leaf, state)


def _batch_statistics(update_fn: Callable, params: PyTree, state: PyTree, batch: Batch) -> PyTree:
    """The statistic s each running average would absorb from this batch (any momentum)."""
    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), state)
    ones = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, jnp.float32), state)
    r0 = update_fn(params, zeros, batch)
    r1 = update_fn(params, ones, batch)
    check_same_structure(r0, state, "bn_update_fn(...)", "model_state")

    def leaf(a, b, old):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        keep = (b - a) == 1.0  # the pass did not update this leaf
        return jnp.where(keep, old.astype(jnp.float32), a / jnp.where(keep, 1.0, 1.0 - (b - a)))
    return jax.tree_util.tree_map(leaf, r0, r1, state)


def _recompute_state(update_fn, compute_dtype, p, state, bn_full, bn_tail, bn_examples):
    """Training-mode statistics at parameters p: batch statistics averaged by batch size."""
    p_c = _cast_floats(p, compute_dtype)

    def add(acc, batch):
        stats = _batch_statistics(update_fn, p_c, state, _cast_floats(batch, compute_dtype))
        w = float(jax.tree_util.tree_leaves(batch)[0].shape[0])
        return jax.tree_util.tree_map(lambda a, x: a + w * x, acc, stats)

    zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, jnp.float32), state)
    acc, _ = jax.lax.scan(lambda a, batch: (add(a, batch), None), zeros, bn_full)
    if bn_tail:  # a static test: the tail's presence is part of the argument structure
        acc = add(acc, bn_tail)
    mean = jax.tree_util.tree_map(lambda a, old: (a / bn_examples).astype(old.dtype), acc, state)
    return _clamp_variances(mean)


def _build_evaluator(static: tuple):
    """The jitted evaluator of one chunk, sharded over the static settings' mesh.

    Its arguments: (params, dirs, state, sdirs, batches, mask, bn_full, bn_tail, num_examples,
    bn_examples, coords_CxK); it returns {name: mean_C}.
    """
    fn, has_state, names, scalar, kind, update_fn, dtype, mesh, points_per_step = static
    per_example = _per_example_fn(fn, has_state, names, scalar)
    compute_dtype = DTYPES[dtype]

    def point(args, coef_K):
        params, dirs, state, sdirs, batches, mask, bn_full, bn_tail, bn_examples = args
        p = _combine(params, dirs, coef_K)
        if kind == "interpolate":
            s = _clamp_variances(_combine(state, sdirs, coef_K))
        elif kind == "recompute":
            s = _recompute_state(update_fn, compute_dtype, p, state, bn_full, bn_tail,
                                 bn_examples)
        else:
            s = state
        p = _cast_floats(p, compute_dtype)

        def body(acc, xs):
            batch, mask_B = xs
            out = per_example(p, s, _cast_floats(batch, compute_dtype))
            return {k: acc[k] + jnp.sum(jnp.where(mask_B, out[k], 0.0)) for k in names}, None

        zeros = {k: jnp.zeros((), jnp.float32) for k in names}
        sums, _ = jax.lax.scan(body, zeros, (batches, mask))
        return sums

    def local(params, dirs, state, sdirs, batches, mask, bn_full, bn_tail, num_examples,
              bn_examples, coords_CxK):
        args = (params, dirs, state, sdirs, batches, mask, bn_full, bn_tail, bn_examples)
        sums = jax.lax.map(lambda c: point(args, c), coords_CxK,
                           batch_size=points_per_step if points_per_step > 1 else None)
        sums = jax.lax.psum(sums, DATA_AXIS)
        return {k: v / num_examples for k, v in sums.items()}

    rep = P()
    in_specs = (rep, rep, rep, rep, P(None, DATA_AXIS), P(None, DATA_AXIS), rep, rep, rep, rep,
                P(GRID_AXIS))
    sharded = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(GRID_AXIS),
                            check_vma=False)
    return jax.jit(sharded)


def _compiled_evaluator(static: tuple, args: tuple, chunk: int, num_directions: int):
    """The compiled evaluator for these static settings, argument shapes and chunk (cached)."""
    mesh = static[7]
    coords_aval = jax.ShapeDtypeStruct((chunk, num_directions), jnp.float32,
                                       sharding=NamedSharding(mesh, P(GRID_AXIS)))
    args = args + (coords_aval,)
    evaluator = _lru(_EVALUATOR_CACHE, static, lambda: _build_evaluator(static))
    key = (static, _signature(args))
    return _lru(_COMPILED_CACHE, key, lambda: evaluator.lower(*args).compile())


def _check_scratch(compiled, max_memory_bytes: int | None) -> int | None:
    """XLA's scratch-memory estimate per device, refused over `max_memory_bytes`."""
    scratch = _scratch_bytes(compiled)
    if max_memory_bytes is not None and scratch is not None and scratch > max_memory_bytes:
        raise ValueError(f"max_memory_bytes: one call needs {scratch / 2**20:.1f} MiB of device "
                         f"scratch memory, over the limit of {max_memory_bytes / 2**20:.1f} MiB; "
                         "lower batch_size or points_per_step")
    return scratch


def clear_cache() -> None:
    """Forget every compiled grid evaluator (they hold references to the user's functions)."""
    for cache in (_METRICS_CACHE, _EVALUATOR_CACHE, _COMPILED_CACHE):
        cache.clear()


def _scratch_bytes(compiled) -> int | None:
    try:
        stats = compiled.memory_analysis()
        return int(stats.temp_size_in_bytes) if stats is not None else None
    except Exception:  # noqa: BLE001 - not every backend reports memory use
        return None


def open_surface_once(path: str | None, *args, overwrite: bool = False) -> Surface:
    """`surface.open_surface` in every process, the file opened by process 0 alone.

    Process 0 checks, creates or resets the file; the others then read it, so every process
    skips the same finished points.

    Args:
        path: the .npz path, or None (a surface in memory, opened by every process).
        *args: the rest of `open_surface`'s arguments (axes, metrics, settings, info, extras).
        overwrite: as for `open_surface`.

    Returns:
        The surface.
    """
    if jax.process_count() == 1 or path is None:
        return open_surface(path, *args, overwrite=overwrite)
    surface = open_surface(path, *args, overwrite=overwrite) if sh.is_writer() else None
    sh.barrier(f"open_surface:{path}")
    return surface if surface is not None else load_surface(path)


def placer(mesh):
    """`put(tree, spec)`: every leaf of a pytree as a global array of `mesh` with that spec.

    Host values (the same in every process) feed each process's shards; arrays already on
    devices are moved (one process) or read back first (several processes).
    """
    multi = jax.process_count() > 1

    def leaf(x, sharding):
        if isinstance(x, jax.Array) and not (multi and x.is_fully_addressable):
            return jax.device_put(x, sharding)
        # Host values (or one process's local arrays), the same in every process.
        return sh.put(np.asarray(x), sharding)

    def put(tree, spec):
        sharding = NamedSharding(mesh, spec)
        return jax.tree_util.tree_map(lambda x: leaf(x, sharding), tree)
    return put


# ---------------------------------------------------------------------------------------------
# Chunks: sizes fitted to the grid, dispatched one ahead of the host's file writes.


def chunk_size(num_points: int, points_per_call: int, unit: int = 1) -> int:
    """Points per compiled call: equal chunks of at most `points_per_call`, a multiple of `unit`.

    Args:
        num_points: points still to compute.
        points_per_call: the most points per call (rounded down to a multiple of `unit`, and at
            least `unit`).
        unit: the mesh's grid-axis size times points per step (every call is a multiple of it).

    Returns:
        The chunk size; the chunks cover `num_points` with less than one chunk of padding (e.g.
        121 points at most 32 per call: 4 chunks of 31).
    """
    cap = max(unit, points_per_call // unit * unit)
    num_chunks = math.ceil(num_points / cap)
    return math.ceil(math.ceil(num_points / num_chunks) / unit) * unit


# XLA:CPU runs a small model's convolutions and elementwise fusions on one core, but two
# executions started from two host threads run at the same time (two calls of a convolution loop
# from two threads took 1.15x one call's time on 2 cores, from one thread 2x). So on a single CPU
# device chunks are computed this many at once, up to the usable cores.
MAX_CPU_CALLS = 4


def concurrent_calls(mesh) -> int:
    """How many chunks `evaluate_grid` computes at once on this mesh.

    Args:
        mesh: the ("grid", "data") mesh of the evaluation.

    Returns:
        The usable cores (at most `MAX_CPU_CALLS`) for a single CPU device in a single process;
        1 otherwise (accelerators and meshes already keep their devices busy, and calls of
        several processes must stay in one order).
    """
    devices = np.ravel(mesh.devices)
    if jax.process_count() > 1 or devices.size > 1 or devices[0].platform != "cpu":
        return 1
    return max(1, min(sh.usable_cpus(), MAX_CPU_CALLS))


def _run_chunks(compiled, args: tuple, put, surface: Surface, todo: np.ndarray, chunk: int,
                calls: int, path: str | None, progress: bool, on_chunk) -> None:
    """Evaluate the points `todo` (flat grid indices), storing each chunk as it arrives.

    `calls` chunks are in flight at a time: with 1, one call is dispatched ahead (asynchronous);
    with more, each runs in a host thread of its own so that XLA:CPU runs them at once.
    """
    coords_GxK = surface.coords()
    names = surface.metrics
    bar = None
    writer = sh.is_writer()
    if progress and writer:
        from tqdm import tqdm

        bar = tqdm(total=int(todo.size), unit="pt", desc="landscape",
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} points "
                              "[{elapsed}<{remaining}, {rate_fmt}]")
    pool = ThreadPoolExecutor(calls) if calls > 1 else None

    def dispatch(idx):
        # Pad a short chunk by repeating a point: one compiled shape, identical numbers.
        padded = np.concatenate([idx, np.full(chunk - idx.size, idx[-1])])
        coords = put(coords_GxK[padded].astype(np.float32), P(GRID_AXIS))
        if pool is None:
            return idx, compiled(*args, coords)
        return idx, pool.submit(lambda: jax.block_until_ready(compiled(*args, coords)))

    chunks = [todo[i:i + chunk] for i in range(0, todo.size, chunk)]
    try:
        pending = collections.deque(dispatch(c) for c in chunks[:calls])
        for i in range(len(chunks)):
            idx, out = pending.popleft()
            if i + calls < len(chunks):
                pending.append(dispatch(chunks[i + calls]))
            host = sh.fetch(out if pool is None else out.result())  # a collective: see fetch
            for k in names:
                surface.values[k].reshape(-1)[idx] = host[k][: idx.size]
            surface.done.reshape(-1)[idx] = True
            if path is not None and writer:
                save_surface(path, surface)
            if bar is not None:
                bar.update(int(idx.size))
            if on_chunk is not None:
                on_chunk(surface, int(idx.size))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------
# The public entry points.


def evaluate_grid(fn: Callable, params: PyTree, directions: Sequence[PyTree],
                  axes: Sequence[Any], data: Batch, *, batch_norm: BatchNormPolicy | None = None,
                  batch_size: int = 256, points_per_call: int = 32, points_per_step: int = 1,
                  dtype: str = "float32", mesh=None, path: str | None = None,
                  overwrite: bool = False, settings: Mapping[str, Any] | None = None,
                  info: Mapping[str, Any] | None = None,
                  extras: Mapping[str, np.ndarray] | None = None, progress: bool = False,
                  on_chunk: Callable[[Surface, int], None] | None = None,
                  max_memory_bytes: int | None = None, **legacy_bn: Any) -> Surface:
    """Evaluate metrics at theta + sum_k c_k d_k for every point c of a grid, over a whole split.

    Args:
        fn: the model's metrics: `fn(params, batch)` (or `fn(params, state, batch)` when the
            model has state) returning a scalar loss, an array of per-example losses `loss_B`,
            or a dict of either (e.g. `{"loss": loss_B, "accuracy": correct_B}`). Scalars are
            taken as means of per-example terms and evaluated per example, so the mean over the
            split stays exact; per-example outputs are faster. Pass the same function object
            again to reuse its compiled evaluator.
        params: theta, the centre of the plot (any pytree).
        directions: one or two (or more) directions shaped like `params`.
        axes: one 1-D array of coefficients per direction; the grid is their product.
        data: the split, `{name: array}` with a common leading example axis (e.g. x and y).
        batch_norm: the model state and its policy at perturbed points (`BatchNormPolicy`).
            The keyword arguments `model_state`, `bn_policy`, `state_directions`,
            `bn_update_fn` and `bn_data` are still accepted in its place.
        batch_size: examples per step (rounded up to a multiple of the mesh's data axis); memory
            grows with `batch_size * points_per_step`, not with the grid size.
        points_per_call: the most grid points per compiled call (the file is saved after each
            call); the points are split into equal calls of at most this many.
        points_per_step: points evaluated together by `vmap` inside a call (1: one at a time).
        dtype: float32 or bfloat16 (compute; sums stay float32).
        mesh: a ("grid", "data") mesh from `research.sharding.make_mesh`; default one device
            (with several processes: all devices of all of them, along `grid`).
        path: surface file (.npz); if it exists, only missing points are computed.
        overwrite: replace the file at `path` instead of resuming it (needed when the model,
            data or settings changed).
        settings: extra settings to record and compare on resume (seeds, normalisation ...).
        info: descriptive metadata to record.
        extras: arrays to store with the surface.
        progress: show a progress bar (points done, rate, time left).
        on_chunk: called as `on_chunk(surface, n_new)` after each chunk is stored.
        max_memory_bytes: refuse to run (before computing anything) if the compiled call needs
            more device scratch memory than this, per device (XLA's own estimate); lower
            `batch_size` or `points_per_step` then. With it, chunks are computed one at a
            time (see `concurrent_calls`), so that the bound holds.
        **legacy_bn: the BatchNorm keyword arguments listed under `batch_norm`.

    Returns:
        The `Surface` (values shaped like the grid).
    """
    bn = _batch_norm_policy(batch_norm, legacy_bn)
    directions, axes, sdirs = _validate(
        params, directions, axes, bn, {"batch_size": batch_size,
                                       "points_per_call": points_per_call,
                                       "points_per_step": points_per_step}, dtype)
    if mesh is None:
        mesh = make_mesh() if jax.process_count() > 1 else single_device_mesh()
    n_grid, n_data = mesh_axis_sizes(mesh)
    n_examples = num_examples(data)
    batches, mask, b = _split_batches(data, batch_size, n_data)
    state = bn.state if bn.has_state else {}
    first = {k: v[0] for k, v in batches.items()}
    names, scalar = _metric_spec(fn, bn.has_state, params, state, first)
    bn_full, bn_tail, bn_examples, bn_batch = {}, {}, 0, 0
    if bn.kind == "recompute":
        bn_src = data if bn.data is None else bn.data
        bn_examples = num_examples(bn_src)
        bn_full, bn_tail, bn_batch = _bn_batches(bn_src, batch_size)

    surface_args = (path, axes, names, _surface_settings(params, directions, data, bn, sdirs,
                                                         dtype, bn_batch, settings),
                    _surface_info(info, directions, b, mesh), extras)
    surface = open_surface_once(*surface_args, overwrite=overwrite)
    todo = np.flatnonzero(~surface.done.ravel())
    if todo.size == 0:
        return surface

    put = placer(mesh)
    args = (put(params, P()), put(directions, P()), put(state, P()), put(sdirs, P()),
            put(batches, P(None, DATA_AXIS)), put(mask, P(None, DATA_AXIS)),
            put(bn_full, P()), put(bn_tail, P()), put(np.float32(n_examples), P()),
            put(np.float32(max(bn_examples, 1)), P()))
    # max_memory_bytes bounds one call, so with it the calls run one at a time.
    calls = concurrent_calls(mesh) if max_memory_bytes is None else 1
    # At least `calls` chunks, so that every concurrent call has one.
    chunk = chunk_size(todo.size, min(points_per_call, math.ceil(todo.size / calls)),
                       n_grid * points_per_step)
    static = (fn, bn.has_state, names, scalar, bn.kind, bn.update_fn, dtype, mesh,
              points_per_step)
    compiled = _compiled_evaluator(static, args, chunk, len(axes))
    surface.info["scratch_bytes_per_device"] = _check_scratch(compiled, max_memory_bytes)
    _run_chunks(compiled, args, put, surface, todo, chunk, calls, path, progress, on_chunk)
    return surface


def evaluate_point(fn: Callable, params: PyTree, data: Batch, *, model_state: PyTree | None = None,
                   batch_size: int = 256, dtype: str = "float32") -> dict[str, float]:
    """Metrics of one model over a whole split (the value at the origin of every surface).

    Args:
        fn: as in `evaluate_grid`.
        params: the parameters.
        data: the split.
        model_state: model state, if `fn` takes one.
        batch_size: examples per step.
        dtype: float32 or bfloat16.

    Returns:
        metric name -> mean over the split.
    """
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    surface = evaluate_grid(fn, params, [zero], [np.zeros(1)], data,
                            batch_norm=BatchNormPolicy(state=model_state),
                            batch_size=batch_size, points_per_call=1, dtype=dtype)
    return {k: float(v[0]) for k, v in surface.values.items()}


_LINEN_CACHE: collections.OrderedDict = collections.OrderedDict()


def linen_functions(apply_fn: Callable, loss: Any, x_key: str = "x", y_key: str = "y",
                    with_state: bool = True) -> tuple[Callable, Callable]:
    """`fn` and `bn_update_fn` for a Flax Linen model and a `research.losses.Loss`.

    The same arguments give the same function objects, so surfaces of one model reuse one
    compiled evaluator.

    Args:
        apply_fn: the model's `apply`.
        loss: an object with `per_example(outputs, y)`, and optionally `predict(outputs)`,
            `classification` and `penalty(params)` (the training objective's regulariser).
        x_key: the inputs' key in a batch.
        y_key: the targets' key.
        with_state: the model has `batch_stats` (then `fn` takes `(params, state, batch)`).

    Returns:
        (fn, bn_update_fn): `fn` returns per-example `loss`, `accuracy` for classification, and
        `objective` (loss plus penalty) when the loss has a non-zero penalty.
    """
    key = (apply_fn, loss, x_key, y_key, with_state)
    return _lru(_LINEN_CACHE, key,
                lambda: _linen_functions(apply_fn, loss, x_key, y_key, with_state))


def _linen_functions(apply_fn, loss, x_key, y_key, with_state) -> tuple[Callable, Callable]:
    classification = bool(getattr(loss, "classification", hasattr(loss, "predict")))

    def metrics(params, state, batch):
        variables = {"params": params, "batch_stats": state} if with_state else {"params": params}
        out_BxO = apply_fn(variables, batch[x_key], train=False).astype(jnp.float32)
        y_B = batch[y_key]
        loss_B = loss.per_example(out_BxO, y_B).astype(jnp.float32)
        m = {"loss": loss_B}
        if classification and hasattr(loss, "predict"):
            m["accuracy"] = (loss.predict(out_BxO) == y_B).astype(jnp.float32)
        penalty = getattr(loss, "penalty", None)
        if penalty is not None and float(getattr(loss, "reg_rate", 0.0)) > 0.0:
            pen = penalty(jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params))
            m["objective"] = loss_B + pen
        return m

    def bn_update(params, state, batch):
        _, updates = apply_fn({"params": params, "batch_stats": state}, batch[x_key], train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return updates["batch_stats"]

    if with_state:
        return metrics, bn_update
    return (lambda params, batch: metrics(params, None, batch)), bn_update


__all__ = ["BN_POLICIES", "BatchNormPolicy", "chunk_size", "clear_cache", "evaluate_grid",
           "evaluate_point", "linen_functions"]
