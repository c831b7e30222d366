"""Directions in parameter space (Li et al. 2018): random, normalised, between models, and PCA.

Every function takes and returns ordinary pytrees with the structure of the parameters, so any
model works: Flax Linen `params`, an NNX `State` from `nnx.split`, or a dict of arrays.

Parameters are classified by their path, with the rank as a veto (`param_kind`):

- `norm`: a parameter of a normalisation layer or a running statistic. The leaf has rank 0 or 1,
  is not a kernel by name (`research.tree.is_kernel`: `kernel`, `embedding`, `w`, ...), and
  either its leaf name is a statistic (`mean`, `var`, `running_mean`, `running_var`), or it
  lies in a `batch_stats` collection, or the module holding it (the path component just before
  the leaf) is named like a normalisation layer: a Flax class name with or without a suffix
  (`BatchNorm_0`, `LayerNorm_3`, `GroupNorm`, `RMSNorm_1`, `InstanceNorm_0`, also
  `batch_norm`, `layer_norm2`), a short name (`bn`, `ln`, `gn`, `norm`, alone or followed by
  digits or `_...`: `bn1`, `ln_f`, `norm_out`), or a name ending in `_norm` (`attn_norm`,
  `final_norm2`). Only the module holding the leaf counts, and the whole name must
  match: the `Dense_0/kernel` of a user's block named `Normalizer` is a weight, while a
  `LayerNorm_0` inside that block is a normalisation layer. A module of the user's own whose name
  matches none of these (say `Normalizer_0/scale`) is not recognised; pass `ignore=` a function
  of the path to leave it out. `WeightNorm` and `SpectralNorm` reparametrise a weight and are
  not normalisation layers: WeightNorm's `scale` is a weight.
- `bias`: a leaf named `bias`, `b`, `b1`, `bias_0`, `beta` (outside normalisation layers);
- `weight`: everything else (kernels, embeddings, scales of other modules, any tensor of rank
  2 or more).

With `ignore="biasbn"` (the paper's recommendation, our default) the direction is zero on `bias` and
`norm` leaves; with `ignore="none"` it equals the parameter there (the reference's choice).

Differences from the reference (tomgoldstein/loss-landscape), which decides by rank alone: it
treats every 1-D tensor as a bias or BatchNorm parameter, so a 1-D weight (a PReLU slope, a
learned scale of the user's own) gets a zero direction there and a filter-normalised one here
(one filter: the whole vector). Filters run along the last axis (Flax's output axis), so a Flax
`Embed` table `[num_embeddings, features]` is normalised per feature column here, where the
reference, on PyTorch's `[num_embeddings, dim]` weight, normalises each row (one token's vector).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from research import tree
from research.tree import is_kernel, path_str

PyTree = Any

NORMALIZATIONS = ("filter", "layer", "model", "none")
IGNORES = ("biasbn", "none")
EPS = 1e-10  # the reference's guard in ||theta|| / (||d|| + eps)

# The name of a module that is a normalisation layer (see the module docstring).
_NORM_MODULE = re.compile(
    r"(?i)^(?:(?:batch|layer|group|rms|instance)_?norm(?:_?\d+)?"  # BatchNorm_0, layer_norm
    r"|(?:bn|ln|gn|norm)(?:\d+|_\w*)?"  # bn1, ln_f, norm, norm_out
    r"|\w*_norm\d*)$")  # attn_norm, final_norm2
_BIAS_LEAF = re.compile(r"(?i)^(bias|b|beta)(_?\d+)?$")
_STAT_LEAF = re.compile(r"(?i)^(mean|var|running_mean|running_var)$")


def param_kind(path: Sequence[Any] | str, ndim: int | None = None) -> str:
    """Classify a parameter by its path and rank: 'norm', 'bias' or 'weight'.

    The rule is in the module docstring: `norm` needs a normalisation module (or a statistic)
    by name and a rank of at most 1; `bias` a bias-like leaf name; anything else is a weight.

    Args:
        path: a `jax.tree_util` key path or an 'a/b/c' string.
        ndim: the tensor's rank; a tensor of rank 2 or more is never a norm parameter. None
            (unknown) decides by the path alone.

    Returns:
        'norm', 'bias' or 'weight'.
    """
    name = path if isinstance(path, str) else path_str(path)
    parts = [p for p in name.split("/") if p]
    if not parts:
        return "weight"
    leaf = parts[-1]
    may_be_norm = (ndim is None or ndim <= 1) and not is_kernel(leaf, ndim=ndim)
    if may_be_norm and (_STAT_LEAF.match(leaf) or "batch_stats" in parts[:-1]
                        or (len(parts) > 1 and _NORM_MODULE.match(parts[-2]))):
        return "norm"
    if _BIAS_LEAF.match(leaf):
        return "bias"
    return "weight"


def _ignored(ignore: str | Callable[[str], bool]) -> Callable[[str, int], bool]:
    """A predicate (path, rank) -> zero this leaf's direction."""
    if callable(ignore):
        return lambda name, ndim: bool(ignore(name))
    if ignore not in IGNORES:
        raise ValueError(f"ignore: unknown value {ignore!r}; choose one of {', '.join(IGNORES)} "
                         "or pass a function path -> bool")
    if ignore == "none":
        return lambda name, ndim: False
    return lambda name, ndim: param_kind(name, ndim) in ("bias", "norm")


def _leaves_with_names(tree: PyTree) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [path_str(p) for p, _ in flat], [leaf for _, leaf in flat], treedef


def check_same_structure(tree: PyTree, reference: PyTree, name: str = "direction",
                         reference_name: str = "params") -> None:
    """Raise a ValueError naming the first path where two pytrees differ in structure or shape.

    Args:
        tree: the tree to check (e.g. a direction).
        reference: the tree it must match (e.g. the parameters).
        name: what `tree` is called in the message.
        reference_name: what `reference` is called in the message.
    """
    names, leaves, treedef = _leaves_with_names(tree)
    ref_names, ref_leaves, ref_treedef = _leaves_with_names(reference)
    if treedef != ref_treedef:
        missing = sorted(set(ref_names) - set(names))
        extra = sorted(set(names) - set(ref_names))
        detail = []
        if missing:
            detail.append(f"missing {missing[:5]}")
        if extra:
            detail.append(f"unexpected {extra[:5]}")
        if not detail:
            detail.append(f"{treedef} vs {ref_treedef}")
        raise ValueError(f"{name}: tree structure differs from {reference_name}: "
                         f"{'; '.join(detail)}")
    for n, a, b in zip(names, leaves, ref_leaves):
        if np.shape(a) != np.shape(b):
            raise ValueError(f"{name}: leaf {n!r} has shape {np.shape(a)}, "
                             f"but {reference_name} has {np.shape(b)}")


def check_finite(tree: PyTree, name: str = "params") -> None:
    """Raise a ValueError naming the first leaf with NaN or infinite values."""
    names, leaves, _ = _leaves_with_names(tree)
    for n, leaf in zip(names, leaves):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(f"{name}: leaf {n!r} has {bad} non-finite value(s) (NaN or inf)")


def _leaf_tag(name: str) -> int:
    # Keyed by path, so a leaf's direction does not change when other parameters are added.
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _normal(key: jax.Array, tag: jax.Array, size: int) -> jax.Array:
    return jax.random.normal(jax.random.fold_in(key, tag), (size,), jnp.float32)


# A leaf's entries are the first ones of a longer flat draw, reshaped; with JAX's default
# partitionable threefry (an entry's bits depend on its row-major index only) they are the
# same bits as `normal(key, shape)` (`tests/test_landscape_directions.py`). One program per
# size class, compiled at LLVM's optimisation level 1: XLA:CPU's default level spends 0.4-1 s
# on each random-number program, level 1 a fifth of that. Sizes are rounded up to a power
# of two, at least `_MIN_DRAW`: a CNN's 12 leaves of 7 shapes take 3 programs, a deep one's
# distinct shapes a few more; the extra entries cost at most the leaf's own draw. One program
# for all leaves compiled far longer (5.2 s for a 27-layer CNN's 50 leaves, even at level 1).
_normal_jit = jax.jit(_normal, static_argnums=2,
                      compiler_options={"xla_backend_optimization_level": 1})
_MIN_DRAW = 4096


def _draw(key: jax.Array, tag: int, shape: tuple[int, ...]) -> jax.Array:
    size = int(np.prod(shape, dtype=np.int64))
    padded = max(_MIN_DRAW, 1 << max(size - 1, 0).bit_length())
    flat = np.asarray(_normal_jit(key, np.uint32(tag), padded))
    return tree.to_device(flat[:size].reshape(shape))


def gaussian_direction(params: PyTree, seed: int) -> PyTree:
    """I.i.d. N(0, 1) entries, one per parameter, reproducible from `seed` alone.

    Args:
        params: the parameter pytree (only shapes are used).
        seed: integer seed; each leaf's entries come from `fold_in(key(seed), crc32(path))`.

    Returns:
        A float32 pytree with the structure and shapes of `params`.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed: must be an integer, got {seed!r}")
    names, leaves, treedef = _leaves_with_names(params)
    key = jax.random.key(int(seed))
    out = [_draw(key, _leaf_tag(n), tuple(np.shape(leaf))) for n, leaf in zip(names, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def _norm_over(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True))


def normalize_direction(direction: PyTree, params: PyTree, normalization: str = "filter",
                        ignore: str | Callable[[str], bool] = "biasbn",
                        filter_axis: int = -1) -> PyTree:
    """Scale a direction to the parameters' size (Li et al. 2018, section 4).

    - `filter`: for each filter j of each weight, d_j <- d_j ||theta_j|| / (||d_j|| + 1e-10); a
      filter is everything producing one output unit, i.e. a slice along `filter_axis` (Flax puts
      the output last: Conv `[kh, kw, in, out]`, Dense `[in, out]`). A weight with fewer than two
      dimensions counts as one filter.
    - `layer`: each weight tensor scaled to ||theta_l||.
    - `model`: the whole direction scaled to the norm of the parameters it moves.
    - `none`: unchanged.

    Leaves selected by `ignore` get a zero direction; bias and norm leaves that are not ignored get
    the parameter itself under `filter` and `layer` (the reference's rule).

    Args:
        direction: pytree with the structure of `params`.
        params: the parameters theta.
        normalization: filter, layer, model or none.
        ignore: 'biasbn', 'none', or a function of the 'a/b/c' path returning True to zero a leaf.
        filter_axis: the output-unit axis of weights (-1 for Flax; 0 for PyTorch-layout weights).

    Returns:
        The normalised direction, float32.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: unknown value {normalization!r}; "
                         f"choose one of {', '.join(NORMALIZATIONS)}")
    check_same_structure(direction, params)
    is_ignored = _ignored(ignore)
    names, d_leaves, treedef = _leaves_with_names(direction)
    _, p_leaves, _ = _leaves_with_names(params)
    out = []
    for n, d, p in zip(names, d_leaves, p_leaves):
        # float64 on the host: the norms of large layers are then exact to float32 precision.
        d = np.asarray(d, np.float64)
        p = np.asarray(p, np.float64)
        if is_ignored(n, p.ndim):
            out.append(np.zeros_like(d))
        elif normalization in ("filter", "layer") and param_kind(n, p.ndim) != "weight":
            out.append(p.copy())
        elif normalization == "filter" and d.ndim >= 2:
            axis = filter_axis % d.ndim
            axes = tuple(i for i in range(d.ndim) if i != axis)
            out.append(d * _norm_over(p, axes) / (_norm_over(d, axes) + EPS))
        elif normalization in ("filter", "layer"):
            out.append(d * np.linalg.norm(p) / (np.linalg.norm(d) + EPS))
        else:
            out.append(d)
    if normalization == "model":
        kept = [i for i, n in enumerate(names) if not is_ignored(n, np.ndim(p_leaves[i]))]
        d_norm = np.sqrt(sum(np.sum(np.square(out[i])) for i in kept))
        p_norm = np.sqrt(sum(np.sum(np.square(np.asarray(p_leaves[i], np.float64)))
                             for i in kept))
        out = [o * (p_norm / (d_norm + EPS)) for o in out]
    return jax.tree_util.tree_unflatten(treedef, [tree.to_device(o) for o in out])


def random_direction(params: PyTree, seed: int, normalization: str = "filter",
                     ignore: str | Callable[[str], bool] = "biasbn",
                     filter_axis: int = -1) -> PyTree:
    """A Gaussian direction from an explicit seed, normalised (the paper's default: filter-wise).

    Args:
        params: the parameters theta* at the centre of the plot.
        seed: integer seed (the same seed always gives the same direction for the same params).
        normalization: filter, layer, model or none (see `normalize_direction`).
        ignore: 'biasbn' (zero direction on biases and normalisation parameters), 'none', or a
            function of the 'a/b/c' path.
        filter_axis: output-unit axis of weights (-1 for Flax).

    Returns:
        The direction, a float32 pytree shaped like `params`.
    """
    return normalize_direction(gaussian_direction(params, seed), params, normalization, ignore,
                               filter_axis)


def cosine(d1: PyTree, d2: PyTree) -> float:
    """Cosine of the angle between two directions (near 0 for random ones in high dimension)."""
    check_same_structure(d2, d1, "d2", "d1")
    n1, n2 = tree.norm(d1), tree.norm(d2)
    if n1 == 0.0 or n2 == 0.0:
        raise ValueError("cosine: a direction is all zeros")
    return tree.vdot(d1, d2) / (n1 * n2)


def orthogonalize(d1: PyTree, d2: PyTree) -> PyTree:
    """Gram-Schmidt: d2 minus its projection on d1, so the two are exactly orthogonal.

    Apply after normalisation, so normalising does not undo it. d2 keeps its other components,
    so its filter norms change slightly.

    Args:
        d1: first direction (unchanged).
        d2: second direction.

    Returns:
        d2 - (<d1, d2> / <d1, d1>) d1, float32.
    """
    check_same_structure(d2, d1, "d2", "d1")
    n11 = tree.vdot(d1, d1)
    if n11 == 0.0:
        raise ValueError("orthogonalize: d1 is all zeros")
    coef = tree.vdot(d1, d2) / n11
    return jax.tree_util.tree_map(
        lambda a, b: tree.to_device(np.asarray(b, np.float64) - coef * np.asarray(a, np.float64)),
        d1, d2)


def interpolation_direction(params_a: PyTree, params_b: PyTree) -> PyTree:
    """The direction from model a to model b: theta_b - theta_a (a at 0, b at 1 along it).

    Works for BatchNorm statistics too (the `interpolate` policy of `evaluate_grid`).

    Args:
        params_a: the model at coordinate 0 (the origin of the plot).
        params_b: the model at coordinate 1.

    Returns:
        theta_b - theta_a, float32.
    """
    check_same_structure(params_b, params_a, "params_b", "params_a")
    return jax.tree_util.tree_map(
        lambda a, b: tree.to_device(np.asarray(b, np.float64) - np.asarray(a, np.float64)),
        params_a, params_b)


def plane_directions(params_1: PyTree, params_2: PyTree,
                     params_3: PyTree) -> tuple[PyTree, PyTree]:
    """The plane through three models, with theta_1 at the origin.

    Directions theta_2 - theta_1 and theta_3 - theta_1.

    The models sit at (0, 0), (1, 0) and (0, 1).

    Args:
        params_1: the model at the origin.
        params_2: the model at (1, 0).
        params_3: the model at (0, 1).

    Returns:
        (d1, d2).
    """
    return interpolation_direction(params_1, params_2), interpolation_direction(params_1, params_3)


@dataclasses.dataclass(frozen=True)
class PCADirections:
    """The PCA plane of an optimisation trajectory.

    Attributes:
        directions: the principal directions, unit-norm pytrees (orthonormal).
        explained_variance_ratio: share of the trajectory's variance along each direction.
        coords: each checkpoint's coordinates in the plane, `coords_KxC` (final model at 0).
        distances: each checkpoint's distance from the plane, `distances_K`.
        steps: the checkpoints' training steps, `steps_K` (or their indices if not given).
    """

    directions: tuple[PyTree, ...]
    explained_variance_ratio: np.ndarray
    coords: np.ndarray
    distances: np.ndarray
    steps: np.ndarray


def pca_directions(trajectory: Sequence[PyTree] | Sequence[tuple[int, PyTree]],
                   final: PyTree | None = None, n_components: int = 2,
                   ignore: str | Callable[[str], bool] = "biasbn") -> PCADirections:
    """PCA directions of a training trajectory (Li et al. 2018, section 7).

    Forms the matrix of theta_i - theta_final over the checkpoints, centres it (as the reference's
    scikit-learn PCA does) and takes its top principal directions. Each checkpoint is projected
    onto them; its distance from the plane through theta_final is reported, because a checkpoint
    off the plane does not have the loss drawn under it.

    Args:
        trajectory: checkpoints in training order, as params pytrees or (step, params) pairs.
        final: the model at the origin (default: the last checkpoint).
        n_components: number of directions.
        ignore: leaves to leave out of the PCA ('biasbn', 'none', or a path predicate); their
            directions are zero, as in the reference.

    Returns:
        A `PCADirections`.
    """
    items = list(trajectory)
    if len(items) < 2:
        raise ValueError(f"trajectory: need at least 2 checkpoints, got {len(items)}")
    if all(isinstance(t, tuple) and len(t) == 2 and np.isscalar(t[0]) for t in items):
        steps = np.array([int(s) for s, _ in items])
        trees = [p for _, p in items]
    else:
        steps = np.arange(len(items))
        trees = items
    final = trees[-1] if final is None else final
    if not 1 <= n_components <= len(trees):
        raise ValueError(f"n_components: must be in [1, {len(trees)}] for {len(trees)} "
                         f"checkpoints, got {n_components}")
    for i, t in enumerate(trees):
        check_same_structure(t, final, f"trajectory[{i}]", "final")
    check_finite(final, "final")
    is_ignored = _ignored(ignore)
    names, leaves, _ = _leaves_with_names(final)
    keep_P = np.concatenate([np.full(int(np.size(leaf)), not is_ignored(n, np.ndim(leaf)))
                             for n, leaf in zip(names, leaves)])
    theta_P = tree.ravel(final)
    diff_KxP = np.stack([tree.ravel(t) - theta_P for t in trees])
    if not np.all(np.isfinite(diff_KxP)):
        raise ValueError("trajectory: a checkpoint has non-finite parameters")
    masked_KxP = np.where(keep_P[None, :], diff_KxP, 0.0)
    centred_KxP = masked_KxP - masked_KxP.mean(axis=0, keepdims=True)
    # The K x K Gram matrix is small (K checkpoints), the P x P covariance would not be.
    gram_KxK = centred_KxP @ centred_KxP.T
    eigval_K, eigvec_KxK = np.linalg.eigh(gram_KxK)
    order = np.argsort(eigval_K)[::-1]
    eigval_K, eigvec_KxK = np.clip(eigval_K[order], 0.0, None), eigvec_KxK[:, order]
    if eigval_K[n_components - 1] <= 1e-12 * max(eigval_K[0], 1e-300):
        raise ValueError("trajectory: the checkpoints span fewer than "
                         f"{n_components} dimensions; cannot find {n_components} directions")
    sing_C = np.sqrt(eigval_K[:n_components])
    basis_CxP = (eigvec_KxK[:, :n_components].T @ centred_KxP) / sing_C[:, None]
    basis_CxP /= np.linalg.norm(basis_CxP, axis=1, keepdims=True)
    coords_KxC = masked_KxP @ basis_CxP.T
    # Fix each sign so the first checkpoint (usually the initialisation) has coordinates >= 0.
    signs_C = np.where(coords_KxC[0] < 0, -1.0, 1.0)
    basis_CxP *= signs_C[:, None]
    coords_KxC = coords_KxC * signs_C[None, :]
    residual_KxP = diff_KxP - coords_KxC @ basis_CxP
    total = float(np.sum(eigval_K))
    return PCADirections(
        directions=tuple(tree.unravel(b, final) for b in basis_CxP),
        explained_variance_ratio=eigval_K[:n_components] / total,
        coords=coords_KxC,
        distances=np.linalg.norm(residual_KxP, axis=1),
        steps=steps,
    )
