"""Helpers shared by the paper reproductions (skip connections, batch size).

A fixed evaluation subset, the surface of a trained state, the per-example loss of a trained
state for the curvature tools, the weights' norm, and a markdown table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from research import landscape as L


def fixed_subset(x: np.ndarray, y: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random subset of a split (all classes represented), the same in every run.

    Args:
        x: inputs of the split.
        y: labels of the split.
        n: number of examples (0 or >= len(x): the whole split, in order).
        seed: seed of the permutation.

    Returns:
        {"x": x_subset, "y": y_subset}.
    """
    if n <= 0 or n >= len(x):
        return {"x": np.asarray(x), "y": np.asarray(y)}
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return {"x": np.asarray(x)[idx], "y": np.asarray(y)[idx]}


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
    fn, _ = L.linen_functions(state.apply_fn, state.loss, with_state=has_bn)
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
    fn, _ = L.linen_functions(state.apply_fn, state.loss, with_state=has_bn)
    return fn, ({"model_state": state.batch_stats} if has_bn else {})


def params_norm(params: Any, kernels_only: bool = True) -> float:
    """The Euclidean norm of the parameters (of the weights only, by default).

    Args:
        params: the parameter pytree.
        kernels_only: count only weight leaves (`param_kind == "weight"`), not biases or BN.

    Returns:
        The norm.
    """
    total = 0.0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if kernels_only and L.param_kind(path, np.ndim(leaf)) != "weight":
            continue
        total += float(np.sum(np.square(np.asarray(leaf, np.float64))))
    return float(np.sqrt(total))


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table.

    Args:
        rows: one mapping per row.
        columns: (key, header, format spec) per column, e.g. ("test_acc", "test acc", ".3f").

    Returns:
        The table text, ending in a newline.
    """
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(format(r[k], f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


__all__ = ["fixed_subset", "markdown_table", "params_norm", "state_loss_fn", "state_surface"]
