"""Parameter pytrees: readable paths, the one "is this a kernel" rule, and host arithmetic.

Which leaves are kernels (`is_kernel`) decides where weight decay (`research.optim`) and the
L1/L2 penalty (`research.losses.Loss.penalty`) apply, and vetoes a leaf from being taken as a
normalisation parameter by the landscape directions (`research.landscape.directions`). The rule
reads the leaf's own name, the last path component after NNX's `.value` wrapper:

- `kernel` (Flax Linen and NNX `Dense`/`Linear`/`Conv`), `embedding` (Flax `Embed`),
  `embeddings` (Haiku `Embed`), `w` / `W` (Haiku `Linear`/`Conv`, and the usual name in a plain
  function's parameter dict): a kernel, whatever its rank;
- `weight` (PyTorch-style names, Equinox): a kernel only with a known rank >= 2, since a 1-D
  `weight` is a normalisation layer's scale there;
- anything else (biases, normalisation scales and offsets, a PReLU slope) is not.

Host arithmetic (`ravel`, `unravel`, `vdot`, `norm`) runs in float64 on the host (and compiles
nothing; `to_device` puts its results on the device the same way): the landscape
directions report cosines and norms of million-parameter trees and fingerprint the directions
they build, so their sums must be exact to float32 precision and the same on every run.
Device-side code (curvature, the grid engine) should use `optax.tree_utils` instead
(`tree_vdot`, `tree_norm`, `tree_add_scale`, `tree_scale`, ...), which computes in the leaves'
dtype on the accelerator.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any

# Wrapper keys that NNX and similar libraries add below the real parameter name.
_WRAPPER_KEYS = ("value", "raw_value")
_KERNEL_LEAF = re.compile(r"^(kernel|embedding|embeddings|w|W)$")
_MATRIX_LEAF = "weight"  # a kernel only as a matrix or higher: 1-D it is a norm layer's scale


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Sequence[Any]) -> str:
    """A readable 'a/b/c' name for a `jax.tree_util` key path (NNX `.value` wrappers dropped)."""
    names = [_key_name(k) for k in path]
    while len(names) > 1 and names[-1] in _WRAPPER_KEYS:
        names.pop()
    return "/".join(names)


def is_kernel(path: Sequence[Any] | str, leaf: Any = None, ndim: int | None = None) -> bool:
    """Whether a parameter is a kernel (the rule is in the module docstring).

    Args:
        path: a `jax.tree_util` key path or an 'a/b/c' string.
        leaf: the parameter (only its rank is read), as `jax.tree_util.tree_map_with_path`
            passes it; or give `ndim`.
        ndim: the parameter's rank, when there is no leaf at hand; None with no leaf: unknown
            (a `weight` then does not count as a kernel).

    Returns:
        True for kernels.
    """
    name = (path if isinstance(path, str) else path_str(path)).rsplit("/", 1)[-1]
    if _KERNEL_LEAF.match(name):
        return True
    if name != _MATRIX_LEAF:
        return False
    rank = np.ndim(leaf) if leaf is not None else ndim
    return rank is not None and rank >= 2


def kernel_mask(params: PyTree) -> PyTree:
    """The tree of `is_kernel` booleans (an optax `mask=`)."""
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def to_device(x, dtype=np.float32) -> jax.Array:
    """A host array on the default device as `dtype`, without compiling anything.

    `jnp.asarray` of a numpy array compiles a small program per shape in jax 0.10 (10-40 ms
    each, dozens in a landscape run); `jax.device_put` copies.
    """
    return jax.device_put(np.asarray(x, dtype))


def ravel(tree: PyTree) -> np.ndarray:
    """All leaves as one float64 host vector, in `jax.tree_util` leaf order (as `ravel_pytree`).

    Each leaf is upcast on the host (exact from any float type); nothing is compiled.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return np.zeros((0,), np.float64)
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


def unravel(vector: np.ndarray, like: PyTree) -> PyTree:
    """The inverse of `ravel`: a float32 pytree shaped like `like` from a flat vector."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    vector = np.asarray(vector)
    sizes = [int(np.size(leaf)) for leaf in leaves]
    if vector.shape != (sum(sizes),):
        raise ValueError(f"unravel: a vector of {sum(sizes)} entries is needed, "
                         f"got shape {vector.shape}")
    parts = np.split(vector, np.cumsum(sizes)[:-1]) if leaves else []
    return jax.tree_util.tree_unflatten(
        treedef, [to_device(p.reshape(np.shape(leaf))) for p, leaf in zip(parts, leaves)])


def vdot(a: PyTree, b: PyTree) -> float:
    """Inner product <a, b> over all leaves, in float64 on the host, summed leaf by leaf."""
    def leaf(x, y):
        return np.vdot(np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel())
    return float(sum(leaf(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                 jax.tree_util.tree_leaves(b))))


def norm(a: PyTree) -> float:
    """Euclidean norm over all leaves, in float64 on the host."""
    return float(np.sqrt(vdot(a, a)))


__all__ = ["is_kernel", "kernel_mask", "norm", "path_str", "ravel", "unravel", "vdot"]
