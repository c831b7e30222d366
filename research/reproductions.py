"""Helpers shared by the paper reproductions (skip connections, batch size).

The surface of a trained state, the per-example loss of a trained state for the curvature
tools, and the kernels' norm; `fixed_subset` (the seeded evaluation subset) is
`research.landscape.analysis.fixed_subset`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from research import landscape as L
from research import tree
from research.landscape.analysis import fixed_subset, state_functions
from research.tree import is_kernel


def state_surface(state: Any, directions: Sequence[Any], axes: Sequence[np.ndarray],
                  data: Mapping[str, np.ndarray], path: str | None = None,
                  batch_size: int = 256, points_per_call: int = 32,
                  settings: Mapping[str, Any] | None = None,
                  info: Mapping[str, Any] | None = None) -> L.Surface:
    """The loss surface around a trained `TrainState`, BatchNorm statistics kept at theta*'s.

    Args:
        state: a `research.train.TrainState`.
        directions: one or two directions shaped like `state.params`.
        axes: one coordinate array per direction.
        data: the examples, {"x": ..., "y": ...}.
        path: resumable surface file (.npz), or None.
        batch_size: examples per step.
        points_per_call: grid points per compiled call.
        settings: settings recorded and compared on resume.
        info: descriptive metadata.

    Returns:
        The surface (metrics loss and accuracy).
    """
    has_bn = bool(state.batch_stats)
    fn, _ = state_functions(state)
    kw = {"model_state": state.batch_stats, "bn_policy": "keep"} if has_bn else {}
    return L.evaluate_grid(fn, state.params, list(directions), list(axes), data,
                           batch_size=batch_size, points_per_call=points_per_call, path=path,
                           settings=dict(settings or {}), info=dict(info or {}), **kw)


def state_loss_fn(state: Any) -> tuple[Any, dict[str, Any]]:
    """The per-example loss of a trained state, for `research.landscape.hessian`.

    The data stay an argument (never closed over), so the curvature tools compile once and
    loop over the split on the device.

    Args:
        state: a `research.train.TrainState`.

    Returns:
        (fn, kwargs): `fn(params, batch)` (or `fn(params, model_state, batch)` with BatchNorm)
        returning per-example `loss` and `accuracy` in evaluation mode, and the keyword
        arguments to pass along (`model_state`: theta*'s BatchNorm statistics, kept), e.g.
        `top_eigenvalues(fn, state.params, data, 3, batch_size=256, **kwargs)`.
    """
    has_bn = bool(state.batch_stats)
    fn, _ = state_functions(state)
    return fn, ({"model_state": state.batch_stats} if has_bn else {})


def params_norm(params: Any, kernels_only: bool = True) -> float:
    """The Euclidean norm of the parameters (of the kernels only, by default).

    Args:
        params: the parameter pytree.
        kernels_only: count only kernels (`research.tree.is_kernel`, the leaves weight decay
            shrinks), not biases or normalisation parameters.

    Returns:
        The norm.
    """
    leaves = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
              if not kernels_only or is_kernel(path, leaf)]
    return tree.norm(leaves)


__all__ = ["fixed_subset", "params_norm", "state_loss_fn", "state_surface"]
