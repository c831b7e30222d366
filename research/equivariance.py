"""Shift equivariance of convolutions and shift invariance from pooling, measured.

A convolution commutes with shifts: `conv(shift(x)) = shift(conv(x))` (exactly, for circular
shifts and circular padding). Max-pooling with stride p keeps this only for shifts that are
multiples of p, and global pooling turns equivariance into invariance: the pooled embedding does
not move when the input is shifted. These functions measure each property on a model's sown
intermediates (`research.models.CNN`), for shifts along the time axis of `x_BxFxTxC`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def shift_time(x_BxFxTxC: jax.Array, shift: int) -> jax.Array:
    """Circularly shift spectrograms (or feature maps) along time by `shift` frames."""
    return jnp.roll(x_BxFxTxC, shift, axis=2)


def intermediates(model, variables: dict, x_BxFxTxC: jax.Array) -> dict[str, jax.Array]:
    """A CNN's sown feature maps and embedding for inputs, in evaluation mode.

    Args:
        model: a `research.models.CNN`.
        variables: its variables.
        x_BxFxTxC: inputs.

    Returns:
        name -> array (`stage<i>_features`, `stage<i>_pooled`, `embedding`) plus `output`.
    """
    out, state = model.apply(variables, x_BxFxTxC, train=False, mutable=["intermediates"])
    maps = {k: v[0] for k, v in state["intermediates"].items()}
    maps["output"] = out
    return maps


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-12))


def shift_errors(model, variables: dict, x_BxFxTxC: jax.Array, shifts, pool: int,
                 stage: int = 0) -> dict[str, np.ndarray]:
    """Relative errors of equivariance and invariance for each shift.

    The model runs as one compiled program for every shift; the shifts and norms are taken on
    the host (eagerly, each shift and each norm was a program of its own).

    Args:
        model: a `research.models.CNN` (circular padding gives exact equivariance).
        variables: its variables.
        x_BxFxTxC: inputs.
        shifts: time shifts in frames.
        pool: the pooling stride along time after `stage`.
        stage: which stage's feature maps to test.

    Returns:
        `conv`: |f(Sx) - S f(x)| / |f(x)| for the stage's features (equivariance);
        `pooled`: the same after pooling, comparing with a shift of round(s / pool);
        `embedding`: |e(Sx) - e(x)| / |e(x)| for the pooled embedding (invariance);
        `output`: the same for the network output; each an array over shifts.
    """
    apply = jax.jit(functools.partial(intermediates, model))
    x = np.asarray(x_BxFxTxC)

    def maps(x_in):
        return {k: np.asarray(v) for k, v in apply(variables, x_in).items()}

    ref = maps(x)
    feat, pooled = f"stage{stage}_features", f"stage{stage}_pooled"
    out = {k: [] for k in ("conv", "pooled", "embedding", "output")}
    for s in shifts:
        got = maps(np.roll(x, s, axis=2))
        out["conv"].append(_rel(got[feat], np.roll(ref[feat], s, axis=2)))
        out["pooled"].append(_rel(got[pooled], np.roll(ref[pooled], int(round(s / pool)), axis=2)))
        out["embedding"].append(_rel(got["embedding"], ref["embedding"]))
        out["output"].append(_rel(got["output"], ref["output"]))
    return {k: np.asarray(v) for k, v in out.items()}
