"""Training figures: learning curves, confusion matrices, and the Playground's pictures.

Figures are written with `save_figure`, atomically, as PNG and PDF by default; it is the one
function that writes figures in this project (the landscape plots use it too). Plotting needs
only arrays and metric records, so it runs after training, from files. No backend is forced:
matplotlib picks Agg on a machine without a display, and notebooks keep their inline backend.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

from research.io import atomic_write_bytes, is_writer, remove_stale_temporaries

# The Playground's diverging palette: orange for -1, near-white for 0, blue for +1.
PLAYGROUND_CMAP = LinearSegmentedColormap.from_list(
    "playground", ["#f59322", "#e8eaeb", "#0877bd"])
NEG_COLOR, POS_COLOR = "#f59322", "#0877bd"


def save_figure(fig, path: str, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 150) -> list[str]:
    """Save a figure as `<path>.<fmt>` for each format, atomically, and close it.

    The one way figures are written in this project (`research.landscape.save_figure` is this
    function). Every format is rendered to memory first and only then written, each file through
    `research.io.atomic_write_bytes`: a failure while rendering leaves existing figures as they
    were, and a killed process leaves each file old or new, never half written. Leftover
    temporaries of killed writers in the folder are removed first.

    Args:
        fig: the matplotlib figure (closed afterwards, also when saving fails).
        path: output path without extension; a figure extension given (.png, .pdf, ...) is
            dropped, other dots are kept (`plane_0.5` gives `plane_0.5.png`).
        formats: file types matplotlib can write, e.g. ("png", "pdf").
        dpi: resolution of raster formats.

    Returns:
        The written paths, in the order of `formats`.
    """
    try:
        supported = fig.canvas.get_supported_filetypes()
        bad = [fmt for fmt in formats if fmt not in supported]
        if bad or not formats:
            raise ValueError(f"formats: cannot write {bad or 'nothing'}; choose from "
                             f"{', '.join(sorted(supported))}")
        stem, ext = os.path.splitext(path)
        if ext[1:].lower() not in supported:
            stem = path
        if not is_writer():  # a multi-process run: process 0 draws and writes
            return [f"{stem}.{fmt}" for fmt in formats]
        rendered = []
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
            rendered.append((f"{stem}.{fmt}", buf.getvalue()))
    finally:
        plt.close(fig)
    remove_stale_temporaries(os.path.dirname(os.path.abspath(stem)))
    for target, data in rendered:
        atomic_write_bytes(target, data)
    return [target for target, _ in rendered]


def _axes(ax, figsize):
    """(figure, axes, own): a new figure, or the figure of the axes given (a panel)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax, True
    return ax.figure, ax, False


def _panels(ax, n: int, figsize):
    """(figure, list of n axes, own) for functions that draw several panels in a row."""
    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=figsize, squeeze=False)
        return fig, list(axes[0]), True
    axes = list(np.ravel(ax))
    if len(axes) < n:
        raise ValueError(f"ax: this plot draws {n} panels, got {len(axes)} axes")
    return axes[0].figure, axes, False


def plot_learning_curves(records: list[dict], title: str = "", log_loss: bool = False, ax=None):
    """Loss (and accuracy when present) against epochs: training steps, train, val, test.

    Args:
        records: metric records from `metrics.jsonl` (splits train_steps, train, val, test).
        title: figure title.
        log_loss: log scale for the loss axis.
        ax: one axes (loss only) or a pair (loss, accuracy) to draw into instead of a new
            figure.

    Returns:
        The figure.
    """
    has_acc = any("accuracy" in r for r in records)
    if ax is None:
        fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 3.8),
                                 squeeze=False)
        axes = list(axes[0])
    else:
        axes = list(np.ravel(ax))
        fig = axes[0].figure
    styles = {"train_steps": ("training steps (mean over the epoch)", "0.6", ":"),
              "train": ("train", "C0", "-"), "val": ("validation", "C2", "--"),
              "test": ("test", "C1", "-")}
    epochs = sorted({r["epoch"] for r in records if "epoch" in r})
    for a, key in zip(axes, ["loss", "accuracy"][: 1 + has_acc]):
        for split, (label, color, ls) in styles.items():
            rs = [r for r in records if r.get("split") == split and key in r and "epoch" in r]
            if rs:
                a.plot([r["epoch"] for r in rs], [r[key] for r in rs], ls, color=color,
                       label=label, lw=1.5, marker="o" if len(rs) < 8 else None, ms=3)
        a.set_xlabel("epoch")
        a.set_ylabel(key)
        # Epochs are whole numbers: no 1.2, 1.4 ticks on a short run.
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if epochs and len(epochs) > 1:
            a.set_xlim(epochs[0], epochs[-1])
        if key == "loss" and log_loss:
            a.set_yscale("log")
            a.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        if key == "accuracy":
            a.set_ylim(-0.02, 1.02)
        a.grid(alpha=0.3)
    if axes:
        axes[0].legend(frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    if ax is None:
        fig.tight_layout()
    return fig


def plot_confusion(confusion_CxC, class_names: Sequence[str], title: str = "Confusion matrix",
                   ax=None):
    """A confusion matrix (rows true, columns predicted) with counts and row-normalised colour.

    Args:
        confusion_CxC: counts, rows true class, columns predicted.
        class_names: the class names.
        title: the title.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    conf = np.asarray(confusion_CxC, np.float64)
    frac = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1.0)
    n = len(class_names)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    else:
        fig = ax.figure
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    if own:
        fig.tight_layout()
    return fig


def grid_points(resolution: int = 100, domain: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A square grid over [-domain, domain]^2: coordinates_R and points_(R*R)x2 (x1 fastest)."""
    c_R = np.linspace(-domain, domain, resolution)
    g1, g2 = np.meshgrid(c_R, c_R)
    return c_R, np.stack([g1.ravel(), g2.ravel()], axis=1)


def _scatter(ax, points_Nx2, labels_N, edge: str, label: str):
    colors = np.where(np.asarray(labels_N) > 0, POS_COLOR, NEG_COLOR)
    ax.scatter(points_Nx2[:, 0], points_Nx2[:, 1], c=colors, s=14, edgecolors=edge,
               linewidths=0.8)
    # A neutral proxy, so the legend shows the edge that marks the split, not a class colour.
    ax.scatter([], [], c="0.6", s=14, edgecolors=edge, linewidths=0.8, label=label)


def draw_decision_boundary(ax, score_fn: Callable[[np.ndarray], np.ndarray], train, test,
                           resolution: int = 120, domain: float = 6.0, regression: bool = False,
                           legend: bool = True):
    """Draw the Playground's output heat map with train and test points into an axis.

    Args:
        ax: the matplotlib axis.
        score_fn: maps points_Nx2 to outputs in [-1, 1] (the Playground's colour scale).
        train: (points_Nx2, labels_N) with labels -1/+1 (or float targets for regression).
        test: likewise for the test split.
        resolution: grid points per side.
        domain: half-width of the square shown.
        regression: colour points by target value instead of by class.
        legend: show which edge marks train (white) and test (black) points.

    Returns:
        The heat map's image, for a colorbar.
    """
    c_R, pts = grid_points(resolution, domain)
    s_RxR = np.asarray(score_fn(pts)).reshape(resolution, resolution)
    im = ax.imshow(s_RxR, origin="lower", extent=(-domain, domain, -domain, domain),
                   cmap=PLAYGROUND_CMAP, vmin=-1, vmax=1, interpolation="bilinear")
    if not regression and s_RxR.min() < 0 < s_RxR.max():
        ax.contour(c_R, c_R, s_RxR, levels=[0.0], colors="k", linewidths=1.0)
    for (pts_, lab), edge, name in ((train, "white", "train"), (test, "black", "test")):
        if regression:
            ax.scatter(pts_[:, 0], pts_[:, 1], c=lab, cmap=PLAYGROUND_CMAP, vmin=-1, vmax=1,
                       s=14, edgecolors=edge, linewidths=0.8)
            ax.scatter([], [], c="0.6", s=14, edgecolors=edge, linewidths=0.8, label=name)
        else:
            _scatter(ax, pts_, lab, edge, name)
    ax.set_xlim(-domain, domain)
    ax.set_ylim(-domain, domain)
    if legend:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8, facecolor="0.3",
                  labelcolor="w")
    return im


def plot_decision_boundary(score_fn: Callable[[np.ndarray], np.ndarray], train, test,
                           title: str, resolution: int = 120, domain: float = 6.0,
                           regression: bool = False, ax=None):
    """The Playground's output heat map with train (white edge) and test (black edge) points.

    Args:
        score_fn: maps points_Nx2 to outputs in [-1, 1] (the Playground's colour scale).
        train: (points_Nx2, labels_N) with labels -1/+1 (or float targets for regression).
        test: likewise for the test split.
        title: figure title (say which loss and output the heat map shows).
        resolution: grid points per side.
        domain: half-width of the square shown.
        regression: colour points by target value instead of by class.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    fig, ax, own = _axes(ax, (5.2, 4.6))
    im = draw_decision_boundary(ax, score_fn, train, test, resolution, domain, regression)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="network output")
    if own:
        fig.tight_layout()
    return fig


def plot_neuron_maps(layers: Sequence[np.ndarray], resolution: int, domain: float = 6.0,
                     title: str = "Hidden neurons", ax=None):
    """Each hidden neuron's output over the input plane, one row per layer.

    Args:
        layers: per hidden layer, activations `a_(R*R)xW` on `grid_points(resolution, domain)`.
        resolution: grid points per side.
        domain: half-width of the square shown.
        title: figure title (only on a figure of its own).
        ax: axes to draw into instead of a new figure: a grid with one row per layer and as
            many columns as the widest layer, or a flat sequence of as many axes in row order
            (panels past a layer's width are switched off). The caller's figure keeps its
            title and layout.

    Returns:
        The figure.
    """
    cols = max(a.shape[1] for a in layers)
    if ax is None:
        fig, axes = plt.subplots(len(layers), cols, figsize=(1.7 * cols, 1.8 * len(layers)),
                                 squeeze=False)
    else:
        flat = list(np.ravel(ax))
        if len(flat) < len(layers) * cols:
            raise ValueError(f"ax: this plot draws {len(layers)} x {cols} panels, got "
                             f"{len(flat)} axes")
        fig = flat[0].figure
        axes = np.empty((len(layers), cols), dtype=object)
        for k, panel in enumerate(flat[:len(layers) * cols]):
            axes.flat[k] = panel
    for row, a in enumerate(layers):
        for col in range(cols):
            panel = axes[row, col]
            panel.set_xticks([])
            panel.set_yticks([])
            if col >= a.shape[1]:
                panel.axis("off")
                continue
            m = a[:, col].reshape(resolution, resolution)
            lim = max(float(np.abs(m).max()), 1e-6)
            panel.imshow(m, origin="lower", extent=(-domain, domain, -domain, domain),
                         cmap=PLAYGROUND_CMAP, vmin=-lim, vmax=lim)
            panel.set_title(f"layer {row + 1}, neuron {col + 1}", fontsize=7)
    if ax is None:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return fig


def plot_paths_on_contour(w1_R, w2_S, loss_SxR, paths: dict, theta_star=None, title: str = "",
                          log_levels: bool = True, ax=None):
    """Optimiser paths drawn over a two-parameter loss contour.

    Args:
        w1_R: grid of the first parameter.
        w2_S: grid of the second parameter.
        loss_SxR: loss on the grid (rows follow w2).
        paths: label -> iterates `thetas_Kx2`; points outside the grid are clipped by the axes.
        theta_star: the minimum, marked with a star.
        title: figure title.
        log_levels: log-spaced contour levels (the valley floor stays visible).
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    fig, ax, own = _axes(ax, (6.2, 5.0))
    lo, hi = float(np.min(loss_SxR)), float(np.max(loss_SxR))
    if log_levels:
        floor = max(lo, hi * 1e-5, 1e-12)
        levels = np.geomspace(floor, hi, 25)
        norm = matplotlib.colors.LogNorm(floor, hi)
    else:
        levels, norm = np.linspace(lo, hi, 25), None
    cf = ax.contourf(w1_R, w2_S, np.maximum(loss_SxR, levels[0]), levels=levels, norm=norm,
                     cmap="viridis", alpha=0.85)
    ax.contour(w1_R, w2_S, loss_SxR, levels=levels, colors="white", linewidths=0.3, alpha=0.6)
    for i, (label, thetas) in enumerate(paths.items()):
        t = np.asarray(thetas)
        inside = ((t[:, 0] >= w1_R[0]) & (t[:, 0] <= w1_R[-1]) & (t[:, 1] >= w2_S[0])
                  & (t[:, 1] <= w2_S[-1]))
        if not inside.all():  # a diverging path: draw it until it first leaves the window
            t = t[: int(np.argmin(inside)) + 1]
            label = f"{label} (diverges)"
        ax.plot(t[:, 0], t[:, 1], "-o", color=f"C{(i + 1) % 10}", ms=2.5, lw=1.2, label=label)
    if theta_star is not None:
        ax.plot(*theta_star, "*", color="white", mec="k", ms=14, label="minimum")
    starts = {tuple(np.asarray(t)[0]) for t in paths.values()}
    for s in starts:
        ax.plot(*s, "s", color="white", mec="k", ms=6)
    ax.set_xlim(w1_R[0], w1_R[-1])
    ax.set_ylim(w2_S[0], w2_S[-1])
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    if log_levels:
        # Plain numbers (0.01, 1, 100) rather than 10^-2 or 4x10^0.
        fig.colorbar(cf, ax=ax, fraction=0.046, label="loss (log scale)",
                     ticks=matplotlib.ticker.LogLocator(),
                     format=matplotlib.ticker.FormatStrFormatter("%g"))
    else:
        fig.colorbar(cf, ax=ax, fraction=0.046, label="loss")
    if own:
        fig.tight_layout()
    return fig


def plot_loss_vs_step(curves: dict, min_loss: float = 0.0, title: str = "", ax=None):
    """Loss above the minimum against step, log scale, one line per optimiser or learning rate.

    Args:
        curves: label -> losses per step.
        min_loss: the minimum subtracted.
        title: the title.
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.
    """
    fig, ax, own = _axes(ax, (5.5, 3.8))
    for i, (label, losses) in enumerate(curves.items()):
        gap = np.maximum(np.asarray(losses, np.float64) - min_loss, 1e-12)
        ax.semilogy(np.arange(len(gap)), gap, color=f"C{(i + 1) % 10}", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss - minimum")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    if own:
        fig.tight_layout()
    return fig


def plot_activations(names: Sequence[str] = ("linear", "sigmoid", "tanh", "relu", "gelu"),
                     lo: float = -4.0, hi: float = 4.0, ax=None):
    """Activation functions and their derivatives (by automatic differentiation).

    Args:
        names: activation names.
        lo: left end of the input range.
        hi: right end.
        ax: two axes (function, derivative) to draw into instead of a new figure.

    Returns:
        The figure.
    """
    import jax

    from research.models import activation_fn

    fns = [activation_fn(name) for name in names]
    z = np.linspace(lo, hi, 401, dtype=np.float32)
    # One compiled program for every curve: eagerly, each activation and derivative compiled
    # a few programs of its own (28 compilations, 1.1 s for the default five).
    curves = jax.jit(lambda z: [(f(z), jax.vmap(jax.grad(f))(z)) for f in fns])(z)
    fig, axes, own = _panels(ax, 2, (9, 3.4))
    for i, (name, (g_z, dg_z)) in enumerate(zip(names, curves)):
        axes[0].plot(z, np.asarray(g_z), color=f"C{i}", label=name)
        axes[1].plot(z, np.asarray(dg_z), color=f"C{i}", label=name)
    for ax, title in zip(axes, ("activation $g(z)$", "derivative $g'(z)$")):
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_xlabel("$z$")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-1.5, 2.5)
    axes[0].legend(frameon=False, fontsize=8)
    if own:
        fig.tight_layout()
    return fig


def plot_playground_datasets(datasets: dict, ax=None):
    """Scatter plots of Playground data sets: name -> (points_Nx2, labels_N in -1/+1 or float).

    `ax`: one axes per data set to draw into instead of a new figure. Returns the figure.
    """
    fig, axes, own = _panels(ax, len(datasets), (2.8 * len(datasets), 2.9))
    for ax, (name, (points, labels)) in zip(axes, datasets.items()):
        labels = np.asarray(labels)
        if set(np.unique(labels)) <= {-1.0, 1.0}:
            _scatter(ax, points, labels, "white", name)
        else:
            ax.scatter(points[:, 0], points[:, 1], c=labels, cmap=PLAYGROUND_CMAP, vmin=-1,
                       vmax=1, s=10)
        ax.set_xlim(-6, 6)
        ax.set_ylim(-6, 6)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if own:
        fig.tight_layout()
    return fig


def _mel_ticks(n_mels: int, sample_rate: int, fmin: float = 0.0,
               fmax: float | None = None) -> tuple[list[float], list[str]]:
    """Band positions of round frequencies on a mel axis (Slaney scale, as librosa's default)."""
    from research.audio.frontend import hz_to_mel

    fmax = sample_rate / 2 if fmax is None else fmax
    lo, hi = float(hz_to_mel(fmin)), float(hz_to_mel(fmax))
    # Band k's centre is the (k+1)-th of n_mels + 2 equally spaced mel points.
    step = (hi - lo) / (n_mels + 1)
    pos, labels = [], []
    for f in (100, 200, 500, 1000, 2000, 4000, 8000, 16000):
        p = (float(hz_to_mel(f)) - lo) / step - 1.0
        # Low frequencies crowd on a mel axis: a tick closer than 2 bands to the last is left out.
        if fmin < f <= fmax and p >= -0.5 and (not pos or p - pos[-1] >= 2.0):
            pos.append(p)
            labels.append(f"{f:g}" if f < 1000 else f"{f // 1000:g}k")
    return pos, labels


def plot_spectrogram_examples(x_NxFxTx1, y_N, class_names: Sequence[str], per_class: int = 1,
                              title: str | None = None, sample_rate: int | None = None,
                              hop_length: int | None = None,
                              standardization: dict | None = None, ax=None):
    """A grid of input spectrograms, the first `per_class` examples of every class.

    With `sample_rate` and `hop_length` the axes are time in seconds and frequency in Hz on the
    mel axis (Slaney scale, 0 to sample_rate / 2, as the features were computed). With the
    training split's `standardization` statistics (`dataset.info["standardization"]`) the
    standardised features are mapped back to dB; otherwise the colour bar is in standard
    deviations. All panels share one colour scale and one colour bar.

    Args:
        x_NxFxTx1: spectrograms (frequency as height, time as width).
        y_N: integer labels.
        class_names: the class names, indexed by label.
        per_class: examples per class.
        title: figure title (default: says what the colours are).
        sample_rate: audio sample rate (Hz), for the axes.
        hop_length: STFT hop (samples), for the time axis.
        standardization: {"mean": [...], "std": [...]} per frequency row (or one value each).
        ax: a sequence of axes to draw into (one per panel) instead of a new figure.

    Returns:
        The figure.
    """
    x = np.asarray(x_NxFxTx1, np.float64)[..., 0]
    y = np.asarray(y_N)
    n_freq, n_time = x.shape[1], x.shape[2]
    unit = "standardised log-mel (SD)"
    if standardization:
        mean = np.asarray(standardization.get("mean", []), np.float64)
        std = np.asarray(standardization.get("std", []), np.float64)
        if mean.size in (1, n_freq) and std.size == mean.size:
            x = x * std.reshape(-1, 1) + mean.reshape(-1, 1)
            unit = "log-mel power (dB)"
    picks = [(name, i) for c, name in enumerate(class_names)
             for i in np.flatnonzero(y == c)[:per_class]]
    cols = min(len(picks), 5) or 1
    rows = int(np.ceil(len(picks) / cols)) or 1
    if ax is None:
        fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols + 0.8, 2.1 * rows + 0.4),
                                 squeeze=False, sharex=True, sharey=True, layout="constrained")
        axes = list(axes.ravel())
    else:
        axes = list(np.ravel(ax))
        fig = axes[0].figure
    timed = sample_rate is not None and hop_length is not None
    seconds = hop_length / sample_rate if timed else 1.0
    # Frame t is centred at t * hop / sample_rate (librosa's center=True).
    extent = (-0.5 * seconds, (n_time - 0.5) * seconds, -0.5, n_freq - 0.5)
    shown = x[[i for _, i in picks]] if picks else x[:1]
    vmin, vmax = np.percentile(shown, [1, 99.5])
    im = None
    for a, (name, i) in zip(axes, picks):
        im = a.imshow(x[i], origin="lower", aspect="auto", cmap="magma", extent=extent,
                      vmin=vmin, vmax=vmax, interpolation="nearest")
        a.set_title(name, fontsize=9)
        if sample_rate is not None:
            pos, labels = _mel_ticks(n_freq, sample_rate)
            a.set_yticks(pos, labels)
        a.tick_params(labelsize=8)
    for a in axes[len(picks):]:
        a.axis("off")
    if ax is None:
        for a in axes[(rows - 1) * cols:]:
            a.set_xlabel("time (s)" if timed else "frame", fontsize=9)
        for a in axes[::cols]:
            a.set_ylabel("frequency (Hz, mel)" if sample_rate else "mel band", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.9, label=unit, pad=0.01)
    if ax is None:
        fig.suptitle(title or f"One training example per class ({unit})", fontsize=10)
    return fig
