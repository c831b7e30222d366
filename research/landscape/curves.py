"""Mode connectivity (Garipov et al. 2018; Draxler et al. 2018): low-loss curves between minima.

Two independently trained minima w1, w2 are usually separated by a loss barrier along the straight
line `(1 - t) w1 + t w2`, yet a simple curve with one trained control point theta connects them at
almost constant low loss:

- quadratic Bezier: `phi(t) = (1-t)^2 w1 + 2t(1-t) theta + t^2 w2`;
- polygonal chain: `w1 -> theta` for t < 1/2, `theta -> w2` after.

`train_curve` minimises `E_{t ~ U(0,1)} L(phi(t))` over theta with the ends fixed, starting from
the midpoint `(w1 + w2) / 2` (where the Bezier curve is the straight line itself), with a pure
jitted step (`t` drawn from `fold_in(key, step)`, so a run is reproducible). BatchNorm models
train with the batch statistics of phi(t) (training mode), as in the reference.

`evaluate_curve` evaluates loss and accuracy at evenly spaced t through the landscape engine
(`evaluate_grid`: the whole split, exact means, one compiled call for all t, a resumable surface
file), recomputing BatchNorm statistics at each point with a pass over training data (the
`recompute` policy). The trick: the engine moves parameters along straight directions, so the
curve's parameter t is made a parameter leaf of its own, moved by a direction that is 1 on t and 0
elsewhere, and the model function maps (t, w1, theta, w2) to phi(t).

`barrier` is Garipov's and Frankle's measure: the largest excess of the loss over the linear
interpolation of the two end losses. `curve_plane` gives the plane through w1, w2 and theta
(orthonormalised, so distances and angles in the figure are true) and the curve's coordinates in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from research import tree
from research.landscape.directions import check_finite, check_same_structure, plane_directions
from research.landscape.evaluate import evaluate_grid
from research.landscape.surface import Surface
from research.losses import Loss
from research.train.state import TrainState

# The training step's model call (parameters, train flag, BatchNorm in training mode, dropout)
# is the training loop's own, so a curve trains exactly as the models it connects.

PyTree = Any
Batch = Mapping[str, Any]

CURVES = ("bezier", "polychain", "line")


def curve_coefficients(kind: str, t):
    """The weights (a, b, c) of phi(t) = a w1 + b theta + c w2 (they sum to 1).

    Args:
        kind: bezier, polychain or line (theta unused: b = 0).
        t: the curve parameter in [0, 1] (a Python float, numpy or JAX scalar or array).

    Returns:
        (a, b, c), each shaped like t.
    """
    if kind == "bezier":
        return (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    if kind == "polychain":
        xp = jnp if isinstance(t, jax.Array) else np
        first = t < 0.5
        return (xp.where(first, 1 - 2 * t, 0 * t), xp.where(first, 2 * t, 2 - 2 * t),
                xp.where(first, 0 * t, 2 * t - 1))
    if kind == "line":
        return 1 - t, 0 * t, t
    raise ValueError(f"kind: unknown curve {kind!r}; choose one of {', '.join(CURVES)}")


def curve_point(kind: str, w1: PyTree, theta: PyTree, w2: PyTree, t) -> PyTree:
    """phi(t) on a curve between w1 and w2 through the control point theta, leaf by leaf.

    Args:
        kind: bezier, polychain or line.
        w1: the model at t = 0 (any pytree).
        theta: the control point (same structure; ignored by `line`).
        w2: the model at t = 1.
        t: a scalar in [0, 1] (may be traced).

    Returns:
        The parameters at t, float32.
    """
    a, b, c = curve_coefficients(kind, t)
    return jax.tree_util.tree_map(
        lambda x, y, z: (a * jnp.asarray(x, jnp.float32) + b * jnp.asarray(y, jnp.float32)
                         + c * jnp.asarray(z, jnp.float32)), w1, theta, w2)


def bezier(w1: PyTree, theta: PyTree, w2: PyTree, t) -> PyTree:
    """The quadratic Bezier curve (1-t)^2 w1 + 2t(1-t) theta + t^2 w2."""
    return curve_point("bezier", w1, theta, w2, t)


def polychain(w1: PyTree, theta: PyTree, w2: PyTree, t) -> PyTree:
    """The polygonal chain w1 -> theta (t < 1/2) -> w2 (t >= 1/2), at constant speed per segment."""
    return curve_point("polychain", w1, theta, w2, t)


def midpoint(w1: PyTree, w2: PyTree) -> PyTree:
    """(w1 + w2) / 2, the control point's initialisation (the Bezier curve is then the line)."""
    check_same_structure(w2, w1, "w2", "w1")
    return jax.tree_util.tree_map(
        lambda a, b: (jnp.asarray(a, jnp.float32) + jnp.asarray(b, jnp.float32)) / 2, w1, w2)


def curve_train_step(state: TrainState, ends: tuple[PyTree, PyTree], batch: Batch,
                     key: jax.Array, kind: str = "bezier") -> tuple[TrainState, dict]:
    """One update of the control point on one batch at one random t.

    Args:
        state: a `TrainState` whose `params` are the control point theta (its `model`, `loss`,
            `model_state` and `tx` are the model's).
        ends: (w1, w2), fixed.
        batch: `{"x": x_Bx..., "y": y_B}`.
        key: the base key; this step uses `fold_in(key, state.step)` for t and for dropout.
        kind: bezier or polychain.

    Returns:
        The new state and metrics (device scalars): loss at phi(t), objective (with the loss's
        penalty at phi(t)), t, grad_norm, and accuracy for classification.
    """
    w1, w2 = ends
    t_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
    t = jax.random.uniform(t_key, (), jnp.float32)

    def objective(theta):
        phi = curve_point(kind, w1, theta, w2, t)
        # Training mode: BatchNorm normalises with this batch's statistics at phi(t).
        out_BxO, _ = state.model(phi, state.model_state, batch["x"], True, dropout_key)
        data_loss = jnp.mean(state.loss.per_example(out_BxO, batch["y"]))
        return data_loss + state.loss.penalty(phi), (data_loss, out_BxO)

    (total, (data_loss, out_BxO)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    metrics = {"loss": data_loss, "objective": total, "t": t,
               "grad_norm": optax.global_norm(grads)}
    if state.loss.classification:
        metrics["accuracy"] = jnp.mean(
            (state.loss.predict(out_BxO) == batch["y"]).astype(jnp.float32))
    return new_state, metrics


curve_train_step_jit = jax.jit(curve_train_step, static_argnames="kind", donate_argnums=0)


def train_curve(apply_fn: Callable, loss: Loss, w1: PyTree, w2: PyTree, x: np.ndarray,
                y: np.ndarray, *, tx: optax.GradientTransformation, epochs: int,
                batch_size: int, kind: str = "bezier", seed: int = 0,
                batch_stats: PyTree | None = None, theta: PyTree | None = None,
                progress: bool = False) -> tuple[PyTree, list[dict]]:
    """Train the control point theta on E_t L(phi(t)) with the ends fixed.

    Args:
        apply_fn: the model's `apply` (Flax Linen, `apply(variables, x, train=..., rngs=...)`).
        loss: the loss (its penalty, if any, is applied at phi(t)).
        w1: the trained model at t = 0.
        w2: the trained model at t = 1.
        x: training inputs.
        y: training labels.
        tx: the optimiser for theta.
        epochs: passes over the training split (the last incomplete batch is dropped).
        batch_size: examples per step.
        kind: bezier or polychain.
        seed: shuffling and t-sampling seed.
        batch_stats: the model's BatchNorm statistics (any of the two models': training mode
            uses batch statistics, these only give the structure); None without BatchNorm.
        theta: the starting control point (default: the midpoint of w1 and w2).
        progress: show a progress bar.

    Returns:
        (theta, history): the trained control point and one record per epoch (mean loss,
        accuracy, and loss of the epoch's steps).
    """
    if kind not in ("bezier", "polychain"):
        raise ValueError(f"kind: a trainable curve is bezier or polychain, got {kind!r}")
    check_same_structure(w2, w1, "w2", "w1")
    check_finite(w1, "w1")
    check_finite(w2, "w2")
    theta = midpoint(w1, w2) if theta is None else theta
    check_same_structure(theta, w1, "theta", "w1")
    n = len(x)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size: {batch_size} is larger than the training split ({n})")
    # Copies: the jitted step donates its state, which must not delete the caller's arrays.
    variables = {"params": jax.tree_util.tree_map(jnp.array, theta)}
    if batch_stats:
        variables["batch_stats"] = jax.tree_util.tree_map(jnp.array, batch_stats)
    state = TrainState.create(apply_fn=apply_fn, variables=variables, tx=tx, loss=loss)
    # The step donates its state; ends are passed (not closed over) so the step compiles once.
    ends = (jax.tree_util.tree_map(jnp.asarray, w1), jax.tree_util.tree_map(jnp.asarray, w2))
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
    history = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc=f"{kind} curve", unit="step")
    try:
        for epoch in range(epochs):
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            logs = []
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                state, metrics = curve_train_step_jit(state, ends, {"x": x[idx], "y": y[idx]},
                                                      key, kind=kind)
                logs.append(metrics)
                if bar is not None:
                    bar.update(1)
            logs = jax.device_get(logs)
            record = {"epoch": epoch + 1, "step": int(state.step)}
            for name in logs[0]:
                if name != "t":
                    record[name] = float(np.mean([m[name] for m in logs]))
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(f"curve training: non-finite loss in epoch {epoch + 1}; "
                                         "try a smaller learning rate")
            history.append(record)
    finally:
        if bar is not None:
            bar.close()
    return state.params, history


def _extended(kind: str, w1: PyTree, theta: PyTree, w2: PyTree) -> tuple[dict, dict]:
    """Parameters {t, w1, theta, w2} and the direction that moves t alone."""
    ext = {"t": jnp.zeros((), jnp.float32), "w1": w1, "theta": theta, "w2": w2}
    zeros = jax.tree_util.tree_map(lambda v: jnp.zeros(jnp.shape(v), jnp.float32), ext)
    return ext, {**zeros, "t": jnp.ones((), jnp.float32)}


def evaluate_curve(fn: Callable, kind: str, w1: PyTree, w2: PyTree, ts: Sequence[float],
                   data: Batch, *, theta: PyTree | None = None, model_state: PyTree | None = None,
                   bn_update_fn: Callable | None = None, bn_data: Batch | None = None,
                   batch_size: int = 256, path: str | None = None,
                   settings: Mapping[str, Any] | None = None,
                   info: Mapping[str, Any] | None = None, progress: bool = False) -> Surface:
    """Metrics at each t along a curve (or the straight line), over a whole split.

    Args:
        fn: the model's metrics, as for `evaluate_grid`: `fn(params, batch)`, or
            `fn(params, state, batch)` with `model_state` (`linen_functions` builds both).
        kind: bezier, polychain or line.
        w1: the model at t = 0.
        w2: the model at t = 1.
        ts: the values of t (e.g. `np.linspace(0, 1, 21)`).
        data: the split to evaluate on.
        theta: the control point (needed by bezier and polychain).
        model_state: BatchNorm statistics (structure and fallback); with `bn_update_fn` they are
            recomputed at every t from `bn_data` (the `recompute` policy).
        bn_update_fn: the model's training-mode statistics update, `(params, state, batch) ->
            state`.
        bn_data: the data for the statistics; should be (a subset of) the training split.
        batch_size: examples per step.
        path: surface file (resumable; refuses other settings).
        settings: extra settings to record.
        info: extra metadata to record.
        progress: progress bar.

    Returns:
        A 1D `Surface` over t.
    """
    if kind not in CURVES:
        raise ValueError(f"kind: unknown curve {kind!r}; choose one of {', '.join(CURVES)}")
    if kind != "line" and theta is None:
        raise ValueError(f"theta: the {kind} curve needs its control point")
    check_same_structure(w2, w1, "w2", "w1")
    # The line ignores theta; w1 stands in for it so the engine's tree has one structure.
    theta = w1 if theta is None else theta
    check_same_structure(theta, w1, "theta", "w1")
    ext, direction = _extended(kind, w1, theta, w2)
    has_state = model_state is not None

    def at(p):
        return curve_point(kind, p["w1"], p["theta"], p["w2"], p["t"])

    if has_state:
        def curve_fn(p, s, batch):
            return fn(at(p), s, batch)
    else:
        def curve_fn(p, batch):
            return fn(at(p), batch)
    kw: dict[str, Any] = {}
    if has_state:
        kw = {"model_state": model_state, "bn_policy": "keep"}
        if bn_update_fn is not None:
            kw.update(bn_policy="recompute", bn_data=bn_data,
                      bn_update_fn=lambda p, s, batch: bn_update_fn(at(p), s, batch))
    return evaluate_grid(curve_fn, ext, [direction], [np.asarray(ts, np.float64)], data,
                         batch_size=batch_size, points_per_call=len(ts), path=path,
                         settings={"curve": kind, **(settings or {})},
                         info={"axis_labels": ["t (0: w1, 1: w2)"], **(info or {})},
                         progress=progress, **kw)


def barrier(ts: Sequence[float], loss_T: Sequence[float]) -> dict[str, float]:
    """The loss barrier along a path: max over t of L(t) - ((1 - t) L(0) + t L(1)).

    Args:
        ts: increasing values of t from 0 to 1.
        loss_T: the loss at each t.

    Returns:
        barrier (>= 0 when the ends are included; 0 for a convex path), t_max (where it is
        largest) and the end losses.
    """
    ts, loss_T = np.asarray(ts, np.float64), np.asarray(loss_T, np.float64)
    if ts.ndim != 1 or ts.shape != loss_T.shape or len(ts) < 2:
        raise ValueError(f"ts, loss_T: need two 1-D arrays of one length >= 2, got {ts.shape} "
                         f"and {loss_T.shape}")
    if ts[0] != 0.0 or ts[-1] != 1.0 or np.any(np.diff(ts) <= 0):
        raise ValueError("ts: must increase from exactly 0 to exactly 1 (the two models)")
    excess_T = loss_T - ((1 - ts) * loss_T[0] + ts * loss_T[-1])
    k = int(np.nanargmax(excess_T))
    return {"barrier": float(excess_T[k]), "t_max": float(ts[k]), "loss_w1": float(loss_T[0]),
            "loss_w2": float(loss_T[-1]), "max_loss": float(np.nanmax(loss_T))}


@dataclasses.dataclass(frozen=True)
class CurvePlane:
    """The plane through w1, w2 and theta, with w1 at the origin and orthonormal axes.

    Attributes:
        directions: (e1, e2): e1 along w2 - w1, e2 along the part of theta - w1 orthogonal to it;
            unit norm, so plane coordinates are distances in parameter space.
        points: coordinates of w1, w2 and theta, `points_3x2`.
    """

    directions: tuple[PyTree, PyTree]
    points: np.ndarray

    def curve(self, kind: str, ts: Sequence[float]) -> np.ndarray:
        """The curve's coordinates in the plane, `xy_Tx2` (it lies in the plane exactly)."""
        a, b, c = curve_coefficients(kind, np.asarray(ts, np.float64))
        return (a[:, None] * self.points[0] + b[:, None] * self.points[2]
                + c[:, None] * self.points[1])

    def axes(self, num: int, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """A square grid covering the three models, with `margin` of their span around them.

        Square, so that with equal axis scales (true distances) the figure is not a thin strip
        when theta lies close to the line.
        """
        lo, hi = self.points.min(axis=0), self.points.max(axis=0)
        half = (0.5 + margin) * float(np.max(hi - lo))
        mid = (lo + hi) / 2
        return (np.linspace(mid[0] - half, mid[0] + half, num),
                np.linspace(mid[1] - half, mid[1] + half, num))


def curve_plane(w1: PyTree, w2: PyTree, theta: PyTree) -> CurvePlane:
    """The plane through the two models and the control point (Garipov et al.'s figure 1).

    Args:
        w1: the model at the origin.
        w2: the other model.
        theta: the control point.

    Returns:
        A `CurvePlane`.
    """
    d1, d2 = plane_directions(w1, w2, theta)
    n1 = tree.norm(d1)
    if n1 == 0.0:
        raise ValueError("w1, w2: the two models are identical; there is no curve to draw")
    along = tree.vdot(d1, d2) / n1
    e1 = jax.tree_util.tree_map(lambda d: d / n1, d1)
    perp = jax.tree_util.tree_map(lambda d, e: d - along * e, d2, e1)
    n2 = tree.norm(perp)
    if n2 <= 1e-6 * max(n1, 1e-30):
        raise ValueError("theta: the control point lies on the line through w1 and w2 (e.g. "
                         "untrained); the three do not span a plane")
    e2 = jax.tree_util.tree_map(lambda d: d / n2, perp)
    points = np.array([[0.0, 0.0], [n1, 0.0], [along, n2]])
    return CurvePlane(directions=(e1, e2), points=points)


def plot_along(curves: Mapping[str, Surface | Mapping[str, Surface]],
               metrics: Sequence[str] = ("loss", "accuracy"), log: bool = False) -> Figure:
    """Metrics along the line and the curves, one panel per metric.

    Args:
        curves: label -> 1D surface over t, or label -> {split: surface} (e.g. train and test,
            drawn solid and dashed).
        metrics: the metrics to draw (absent ones are skipped).
        log: logarithmic loss axis.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    styles = ("-", "--", ":")
    for ax, metric in zip(axs[0], metrics):
        for k, (label, entry) in enumerate(curves.items()):
            splits = entry if isinstance(entry, Mapping) else {"": entry}
            for j, (split, s) in enumerate(splits.items()):
                if metric not in s.values:
                    continue
                ax.plot(s.axes[0], s.values[metric], styles[j % 3], color=f"C{k}", marker=".",
                        label=f"{label} ({split})" if split else label)
        ax.set_xlabel("t (0: w1, 1: w2)")
        ax.set_ylabel(metric)
        if log and metric != "accuracy":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_plane(surface: Surface, plane: CurvePlane, curves: Mapping[str, np.ndarray],
               metric: str = "loss", log: bool | None = None) -> Figure:
    """The loss over the plane through w1, w2 and theta, with the curves and the models drawn.

    Args:
        surface: the plane's 2D surface (axes from `plane.axes`, directions `plane.directions`).
        plane: the plane.
        curves: label -> `xy_Tx2` (e.g. `plane.curve("bezier", ts)` and the straight line).
        metric: the metric to draw.
        log: log-spaced levels (None: automatic).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    from research.landscape.plot import plot_contour

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    plot_contour(surface, metric, kind="filled", log=log, ax=ax)
    for line in ax.get_lines():
        if line.get_label() == "\u03b8*":  # plot_contour's origin marker: here it is w1
            line.remove()
    for k, (label, xy) in enumerate(curves.items()):
        ax.plot(xy[:, 0], xy[:, 1], "-", color=("orange", "crimson", "white")[k % 3], lw=2,
                label=label)
    for (px, py), name in zip(plane.points, ("w1", "w2", "\u03b8")):
        ax.plot(px, py, "o", ms=8, color="k", mec="white", zorder=7)
        ax.annotate(name, (px, py), xytext=(6, 6), textcoords="offset points", color="white",
                    fontsize=11, weight="bold")
    ax.set_aspect("equal")
    ax.set_xlabel("along w2 - w1 (parameter distance)")
    ax.set_ylabel("orthogonal, towards \u03b8")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=7, ncol=4, frameon=False)
    return fig


__all__ = ["CURVES", "CurvePlane", "barrier", "bezier", "curve_coefficients", "curve_plane",
           "curve_point", "curve_train_step", "curve_train_step_jit", "evaluate_curve",
           "midpoint", "plot_along", "plot_plane", "polychain", "train_curve"]
