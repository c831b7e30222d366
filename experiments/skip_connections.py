"""Skip connections vs none: loss surfaces of residual and plain CNNs of growing depth.

Reproduces the experiment of Li et al. (2018, section 6, figure 5) at CPU size: for each depth
(`depth` extra two-convolution blocks per stage of a 3-stage BatchNorm CNN) a residual and a
plain network are trained on the procedural soundscapes (log-mel), each in its own resumable
run folder `runs/<name>/<resnet|plain>_depth<d>/` (at depth 0 both are the same network, trained
once as `depth0`). Around each trained model a 2D plane along two filter-normalised random
directions (biases and BN parameters ignored, BN statistics kept at theta*'s) is evaluated on a
fixed subset of training examples. Convexity of each surface is measured by the paper's
principal-curvature ratio |lambda_min / lambda_max|, here of the 2x2 Hessian of the plotted
surface at every interior grid point (central differences; see `research.landscape.measures`),
not of the full Hessian: the share of points with significant negative curvature (ratio > 0.1)
and the mean ratio, over the whole plane, over its centre |a|, |b| <= 0.5, and over the basin
(points with loss below halfway from theta*'s to the border's mean); plus the loss rise from the
centre to the plane's border. Beside it, the paper's own measure (Figure 6): the full Hessian's
lambda_max and lambda_min at every point of a coarser grid of the same plane
(`research.landscape.hessian.eigenvalue_map`, `eig_steps` Lanczos steps over `eig_examples`
training examples, BN statistics kept; resumable `eigen.npz` per model) and the ratio
|lambda_min / lambda_max|: at theta*, its mean over the plane, over the centre and outside it,
and the share above `threshold`. Writes `contours`, `surfaces_3d`, `convexity_maps`,
`eigen_ratio_maps` and `eigen_lambda_min_maps` (PNG and PDF) and `results.json|md` under
`runs/<name>/`.

Command:
    python -m experiments.skip_connections --preset cpu
    python -m experiments.skip_connections --preset cpu --depths 0 2 4 6   # the table below
Run time (measured): 14 minutes for `--depths 0 2 4 6` (7 trained models, 25 epochs each;
7 planes of 11 x 11 points over 128 examples; 7 eigenvalue maps of 5 x 5 points, 20 Lanczos
steps over 64 examples; 32 x 32 log-mel inputs, channels 8/16/16) on an idle 2-core CPU (22
minutes in an earlier session, under load; 21 minutes in session 11, idle, as the VM's speed
moves); the deepest models take the longest, most of it the eigenvalue map (session 11: 72 /
141 / 224 s for a ResNet of depth 2 / 4 / 6, about 0.45 s a Hessian-vector product at depth
6), so the default depths 0 / 2 / 4 (5 models) take 8-12. Re-running reuses the trained runs
and both surfaces. Session 11's fresh run reproduced every figure below to the digits shown,
except the ResNet's ratio at theta* at depth 4: 0.0915 (0.092 before).
Measured (session 7, fresh run; depth 0 / 2 / 4 / 6 = 3 / 15 / 27 / 39 conv layers; the
depth-0 net is shared):
    test accuracy         ResNet 0.558 / 0.627 / 0.604 / 0.504   plain 0.558 / 0.504 / 0.477 / 0.385
    train accuracy        ResNet 0.778 / 0.887 / 0.774 / 0.726   plain 0.778 / 0.643 / 0.578 / 0.513
    plane curvature (2x2 Hessian of the plotted surface):
      non-convex share    ResNet 0.75 / 0.74 / 0.78 / 0.69       plain 0.75 / 0.64 / 0.58 / 0.63
      mean ratio          ResNet 0.65 / 0.65 / 0.66 / 0.57       plain 0.65 / 0.55 / 0.47 / 0.55
    full Hessian (the paper's measure), |lambda_min / lambda_max|:
      at theta*           ResNet 0.006 / 0.008 / 0.092 / 0.086  plain 0.006 / 0.023 / 0.083 / 0.176
      mean over plane     ResNet 1.07 / 3.92 / 5.15 / 2.68       plain 1.07 / 2.25 / 6.03 / 1.50
      mean outside centre ResNet 1.02 / 5.25 / 5.38 / 3.39       plain 1.02 / 2.43 / 8.33 / 1.54
      share > 0.1         ResNet 0.96 / 0.88 / 0.92 / 0.96       plain 0.96 / 0.96 / 0.84 / 0.76
      lambda_max at theta* ResNet 309 / 541 / 368 / 726          plain 309 / 261 / 245 / 246
The paper's finding does NOT reproduce at this size. Skip connections help training at depth
(plain nets fit worse from depth 2 on: train 0.64 / 0.58 / 0.51 vs 0.89 / 0.77 / 0.73). At
theta* the paper's measure points its way only in part: every minimum is nearly convex, the
plain nets' less so at depth 2 and 6 (ratio 0.02 / 0.18 against the ResNets' 0.008 / 0.09) but
not at depth 4 (0.08 against 0.09). Away from theta* it does not: every model, the ResNets
included, has |lambda_min| of the order of lambda_max or larger on most of the plane (out where
the loss plateaus near chance level), and the ResNets' ratios are the larger ones at depth 2
and 6 (mean 3.9 / 2.7 against 2.3 / 1.5); the plane-curvature measure also finds the ResNets'
planes no more convex. Accuracy of the maps, checked on these weights: 20 Lanczos steps agree
with 50 at the 3 x 3 central points of every model to 1.2e-5 in the ratio (lambda_max to 7e-7
relative, lambda_min to 1e-5 of lambda_max; session 5's check on the earlier weights, from a
random start: 5e-4), so these are not artefacts of the map.
History: the table before this one (session 6, on weights trained in an earlier session and
reused) had the same depth-0 figures and differed at depth 2 to 6 (test accuracy ResNet 0.665
/ 0.562 / 0.408, plain 0.508 / 0.438 / 0.446; ratio at theta* ResNet 0.005 / 0.052 / 0.037,
plain 0.029 / 0.117 / 0.079): the deep nets' 175 steps amplify any change of float rounding
(here the first convolution's kernel gradient, now a stacked convolution), and with 230
training clips a single run of each is only one sample. The verdict is the same in both. The
paper's chaotic surfaces appear with 56-110 layers and full-size ResNets; this preset has at
most 39 narrow layers trained for 25 epochs. Use the `gpu` preset (3 / 21 / 57 / 111 conv
layers like the paper's ResNet-20/56/110, channels 16/32/64, 51 x 51 planes over 2000
examples; not run here) for a closer test.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker

from research import landscape as L
from research.config import Config as RunConfig
from research.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, run_cli
from research.data import load_dataset
from research.io import atomic_write_json, atomic_write_text
from research.landscape import hessian
from research.landscape.eigen_plot import plot_eigenvalue_map
from research.landscape.measures import convexity, edge_rise
from research.models import param_count
from research.reproductions import fixed_subset, state_loss_fn, state_surface
from research.tables import records_table
from research.train import train_and_evaluate
from research.viz import save_figure


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the skip-connection experiment.

    Attributes:
        depths: extra two-convolution blocks per stage, one model pair per entry.
        channels: CNN stage channels.
        clips_per_class: procedural soundscape clips per class (half train, half test).
        clip_seconds: clip length.
        n_mels: mel bands (the input's height).
        n_fft: STFT size.
        hop_length: STFT hop (the input's width is about clip length / hop).
        epochs: training epochs of every model.
        batch_size: training batch size.
        learning_rate: Adam's peak learning rate (cosine schedule).
        grid: both plane axes, "min:max:num".
        examples: training examples in the fixed landscape subset (0: all).
        eval_batch_size: examples per landscape step.
        threshold: |lambda_min / lambda_max| above which a point counts as non-convex.
        eig_grid: both axes of the full-Hessian eigenvalue map (Li et al. Figure 6),
            "min:max:num" (coarser than `grid`: each point costs `eig_steps` products).
        eig_steps: Lanczos steps (Hessian-vector products over `eig_examples`) per point.
        eig_examples: training examples (a fixed subset of the plane's) for the map.
        center: the measures are also reported on the central part |a|, |b| <= center of the
            plane (far out the loss saturates near chance level, which bends the surface down
            whatever the architecture).
        seed: training, data and direction seed (directions use seed and seed + 1).
        cache_dir: feature cache.
        progress: progress bars while training.
        name: run name.
        workdir: parent folder.
        preset: the preset these defaults came from.
    """

    depths: tuple[int, ...] = (0, 2, 4)
    channels: tuple[int, ...] = (8, 16, 16)
    clips_per_class: int = 52
    clip_seconds: float = 1.0
    n_mels: int = 32
    n_fft: int = 1024
    hop_length: int = 512
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 5e-3
    grid: str = "-1:1:11"
    examples: int = 128
    eval_batch_size: int = 128
    threshold: float = 0.1
    eig_grid: str = "-1:1:5"
    eig_steps: int = 20
    eig_examples: int = 64
    center: float = 0.5
    seed: int = 0
    cache_dir: str = ".cache/features"
    progress: bool = False
    name: str = "skip_connections"
    workdir: str = "runs"
    preset: str = "cpu"

    def __post_init__(self):
        if not self.depths or any(d < 0 for d in self.depths):
            raise ValueError(f"Config.depths: give depths >= 0, got {self.depths}")
        if len(L.parse_grid(self.grid, "Config.grid")) < 3:
            raise ValueError("Config.grid: need at least 3 points per axis for curvatures")
        if self.examples < 0:
            raise ValueError(f"Config.examples: must be >= 0, got {self.examples}")
        centre = L.parse_grid(self.grid)
        if np.sum(np.abs(centre) <= self.center + 1e-9) < 3:
            raise ValueError(f"Config.center: the grid has fewer than 3 points per axis within "
                             f"+-{self.center}")
        if len(L.parse_grid(self.eig_grid, "Config.eig_grid")) < 2 or self.eig_steps < 2:
            raise ValueError("Config.eig_grid/eig_steps: need >= 2 points and >= 2 steps")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"Config.threshold: must be in (0, 1), got {self.threshold}")


PRESETS = {
    "cpu": Config(),
    # 3 / 21 / 57 / 111 conv layers: the depths of the paper's ResNet-20, -56 and -110.
    "gpu": Config(depths=(0, 3, 9, 18), channels=(16, 32, 64), clips_per_class=200, n_mels=40,
                  hop_length=256, epochs=40, grid="-1:1:51", examples=2000, eval_batch_size=500,
                  eig_grid="-1:1:21", eig_steps=20, eig_examples=500,
                  preset="gpu"),
    "tiny": Config(depths=(0, 1), channels=(2, 4), clips_per_class=4, clip_seconds=0.5,
                   n_mels=16, n_fft=256, hop_length=128, epochs=2, batch_size=8, grid="-1:1:5",
                   examples=16, eval_batch_size=16, eig_grid="-1:1:3", eig_steps=4,
                   eig_examples=8, preset="tiny"),
}


def run_config(cfg: Config, depth: int, residual: bool) -> RunConfig:
    """The training configuration of one model of the experiment.

    Args:
        cfg: experiment settings.
        depth: extra blocks per stage.
        residual: skip connections around the blocks.

    Returns:
        The run's `research.config.Config`.
    """
    # At depth 0 there are no blocks to skip: both variants are the same network, trained once.
    tag = "depth0" if depth == 0 else f"{'resnet' if residual else 'plain'}_depth{depth}"
    residual = residual and depth > 0
    return RunConfig(
        data=DataConfig(dataset="soundscapes", n=cfg.clips_per_class, feature="logmel",
                        clip_seconds=cfg.clip_seconds, n_mels=cfg.n_mels, n_fft=cfg.n_fft,
                        hop_length=cfg.hop_length, seed=cfg.seed, cache_dir=cfg.cache_dir),
        model=ModelConfig(kind="cnn", channels=cfg.channels, depth=depth, residual=residual,
                          batch_norm=True),
        optim=OptimConfig(name="adam", learning_rate=cfg.learning_rate, schedule="cosine"),
        train=TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                          loss="softmax_ce", eval_every=cfg.epochs, eval_train=False,
                          eval_batch_size=256, checkpoint_every=10_000, keep_checkpoints=1,
                          progress=cfg.progress),
        name=tag, workdir=os.path.join(cfg.workdir, cfg.name), preset=cfg.preset)


def main(cfg: Config) -> dict[str, Any]:
    """Train the residual and plain CNNs, compute their planes, measure and draw them.

    Args:
        cfg: experiment settings.

    Returns:
        {"rows": one dict of numbers per model, "figures": paths}, as in results.json.
    """
    out_dir = os.path.join(cfg.workdir, cfg.name)
    axis = L.parse_grid(cfg.grid)
    rows, surfaces, eigen = [], {}, {}
    for residual in (True, False):
        for depth in cfg.depths:
            rc = run_config(cfg, depth, residual)
            if (rc.name, "done") in surfaces:  # depth 0: one network serves both rows
                s, row = surfaces[(rc.name, "done")]
                surfaces[(residual, depth)] = s
                eigen[(residual, depth)] = eigen[(not residual, depth)]
                rows.append({**row, "residual": residual,
                             "model": f"{'resnet' if residual else 'plain'}_depth{depth}"})
                continue
            state, summary = train_and_evaluate(rc)
            data = load_dataset(rc.data)
            sub = fixed_subset(data.x_train, data.y_train, cfg.examples, cfg.seed)
            d1 = L.random_direction(state.params, cfg.seed)
            d2 = L.random_direction(state.params, cfg.seed + 1)
            s = state_surface(state, [d1, d2], [axis, axis], sub,
                              path=os.path.join(rc.run_dir(), "plane.npz"),
                              batch_size=cfg.eval_batch_size,
                              settings={"normalization": "filter", "ignore": "biasbn",
                                        "seeds": [cfg.seed, cfg.seed + 1],
                                        "examples": cfg.examples},
                              info={"title": rc.name})
            surfaces[(residual, depth)] = s
            eig = _eigen_map(cfg, state, [d1, d2], data, rc)
            eigen[(residual, depth)] = eig
            conv = convexity(s.values["loss"], axis, axis, cfg.threshold)
            rise = edge_rise(s.values["loss"], axis, axis)
            inner = np.abs(axis) <= cfg.center + 1e-9
            # The basin: points below halfway from theta*'s loss to the border's mean loss.
            basin_level = rise["center"] + 0.5 * (rise["edge_mean"] - rise["center"])
            conv_b = convexity(s.values["loss"], axis, axis, cfg.threshold, level=basin_level)
            conv_c = convexity(s.values["loss"][np.ix_(inner, inner)], axis[inner], axis[inner],
                               cfg.threshold)
            rows.append({
                "model": f"{'resnet' if residual else 'plain'}_depth{depth}", "run": rc.name,
                "residual": residual, "depth": depth,
                "conv_layers": len(cfg.channels) * (1 + 2 * depth),
                "params": param_count(state.params),
                "train_accuracy": summary["train"]["accuracy"],
                "test_accuracy": summary["test"]["accuracy"],
                "train_loss": summary["train"]["loss"],
                "center_loss": rise["center"], "edge_mean_loss": rise["edge_mean"],
                "edge_rise": rise["rise"], "surface_min": rise["min"],
                "nonconvex_fraction": conv["nonconvex_fraction"],
                "mean_ratio": conv["mean_ratio"], "max_ratio": conv["max_ratio"],
                "center_nonconvex_fraction": conv_c["nonconvex_fraction"],
                "center_mean_ratio": conv_c["mean_ratio"],
                "basin_level": basin_level, "basin_points": conv_b["points"],
                "basin_nonconvex_fraction": conv_b["nonconvex_fraction"],
                "basin_mean_ratio": conv_b["mean_ratio"],
                **_eigen_row(cfg, eig),
                "cosine": float(s.info.get("cosine", L.cosine(d1, d2)))})
            surfaces[(rc.name, "done")] = (s, rows[-1])
            print(f"[{cfg.name}] {rc.name}: test acc {rows[-1]['test_accuracy']:.3f}, "
                  f"non-convex {conv['nonconvex_fraction']:.2f}, mean ratio "
                  f"{conv['mean_ratio']:.3f}, edge rise {rise['rise']:.3g}; full Hessian: "
                  f"mean |lmin/lmax| {rows[-1]['eig_mean_ratio']:.3f} (centre "
                  f"{rows[-1]['eig_center_ratio']:.3f}, outside "
                  f"{rows[-1]['eig_outer_mean_ratio']:.3f})", flush=True)

    surfaces = {k: v for k, v in surfaces.items() if v is not None and k[1] != "done"}
    figures = _draw(cfg, axis, surfaces, out_dir)
    figures += _draw_eigen(cfg, eigen, out_dir)
    results = {"rows": rows, "figures": figures, "grid": cfg.grid, "examples": cfg.examples,
               "threshold": cfg.threshold}
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    atomic_write_text(os.path.join(out_dir, "results.md"), _markdown(cfg, rows))
    return results


COLUMNS = (("model", "model", "s"), ("conv_layers", "conv layers", "d"),
           ("params", "params", ",d"), ("train_accuracy", "train acc", ".3f"),
           ("test_accuracy", "test acc", ".3f"), ("center_loss", "loss at theta*", ".3f"),
           ("edge_mean_loss", "mean loss on border", ".3f"), ("edge_rise", "edge rise", ".3f"),
           ("nonconvex_fraction", "non-convex share", ".3f"),
           ("mean_ratio", "mean abs(lmin/lmax)", ".3f"),
           ("center_nonconvex_fraction", "non-convex share, centre", ".3f"),
           ("center_mean_ratio", "mean ratio, centre", ".3f"),
           ("basin_points", "basin points", "d"),
           ("basin_nonconvex_fraction", "non-convex share, basin", ".3f"),
           ("basin_mean_ratio", "mean ratio, basin", ".3f"),
           ("eig_lambda_max_center", "Hessian lmax at theta*", ".3g"),
           ("eig_lambda_min_center", "Hessian lmin at theta*", ".3g"),
           ("eig_mean_ratio", "Hessian mean abs(lmin/lmax)", ".3f"),
           ("eig_inner_mean_ratio", "Hessian ratio, centre", ".3f"),
           ("eig_outer_mean_ratio", "Hessian ratio, outside centre", ".3f"),
           ("eig_nonconvex_fraction", "Hessian non-convex share", ".3f"))


def _markdown(cfg: Config, rows: list[dict]) -> str:
    return (f"# Skip connections vs none (Li et al. 2018, section 6)\n\n"
            f"Plane {cfg.grid} x {cfg.grid} along two filter-normalised random directions "
            f"(seeds {cfg.seed}, {cfg.seed + 1}; biases/BN ignored; BN statistics kept), over "
            f"{cfg.examples or 'all'} training examples. Non-convex share: interior grid points "
            f"where the surface's 2x2 Hessian has max(0, -lmin) / max(abs(lmin), abs(lmax)) > "
            f"{cfg.threshold}; 'centre': the same over |a|, |b| <= {cfg.center}; 'basin': over "
            f"the points whose loss is below halfway from theta*'s loss to the border's mean. "
            f"'Hessian' columns: the paper's measure (Figure 6), abs(lambda_min / lambda_max) "
            f"of the full Hessian ({cfg.eig_steps} Lanczos steps over {cfg.eig_examples} "
            f"training examples) on a {cfg.eig_grid} x {cfg.eig_grid} grid of the same plane; "
            f"'centre': |a|, |b| <= {cfg.center}; non-convex share: ratio > {cfg.threshold}."
            f"\n\n"
            + records_table(rows, COLUMNS))


def _eigen_map(cfg: Config, state: Any, directions: list, data: Any, rc: RunConfig):
    """The full Hessian's lambda_max, lambda_min and their ratio over the plane (resumable)."""
    fn, kwargs = state_loss_fn(state)
    sub = fixed_subset(data.x_train, data.y_train, cfg.eig_examples, cfg.seed)
    eaxis = L.parse_grid(cfg.eig_grid)
    # One point per chunk, so the map is saved after every point (the deep models' maps take
    # minutes). The host loop computes convolutional points one at a time in any case, and two
    # points at once from two host threads were no faster (a 5 x 5 map at depth 2: 92 against
    # 93 s on 2 cores, session 11).
    return hessian.eigenvalue_map(fn, state.params, directions, [eaxis, eaxis], sub,
                                  steps=cfg.eig_steps, batch_size=cfg.eval_batch_size,
                                  points_per_call=1, path=os.path.join(rc.run_dir(),
                                                                       "eigen.npz"),
                                  settings={"normalization": "filter", "ignore": "biasbn",
                                            "seeds": [cfg.seed, cfg.seed + 1]},
                                  info={"title": rc.name}, seed=cfg.seed, **kwargs)


def _eigen_row(cfg: Config, eig: L.Surface) -> dict[str, float]:
    eaxis = eig.axes[0]
    ratio = eig.values["ratio"]
    c = int(np.argmin(np.abs(eaxis)))
    inner = np.abs(eaxis) <= cfg.center + 1e-9
    inner_IxJ = inner[:, None] & inner[None, :]
    return {"eig_lambda_max_center": float(eig.values["lambda_max"][c, c]),
            "eig_lambda_min_center": float(eig.values["lambda_min"][c, c]),
            "eig_center_ratio": float(ratio[c, c]),
            "eig_mean_ratio": float(np.mean(ratio)),
            "eig_inner_mean_ratio": float(np.mean(ratio[inner_IxJ])),
            "eig_outer_mean_ratio": (float(np.mean(ratio[~inner_IxJ])) if (~inner_IxJ).any()
                                     else float("nan")),
            "eig_max_ratio": float(np.max(ratio)),
            "eig_nonconvex_fraction": float(np.mean(ratio > cfg.threshold))}


def _draw_eigen(cfg: Config, eigen: dict, out_dir: str) -> list[str]:
    """Li et al.'s Figure 6 for every model: |lambda_min / lambda_max| and lambda_min maps."""
    depths = list(cfg.depths)
    size = 3.1
    figures = []
    for metric, name in (("ratio", "eigen_ratio_maps"), ("lambda_min", "eigen_lambda_min_maps")):
        fig, axes = plt.subplots(2, len(depths), figsize=(size * len(depths) + 1.0, size * 2),
                                 squeeze=False)
        for r, residual in enumerate((True, False)):
            for c, depth in enumerate(depths):
                e = eigen[(residual, depth)]
                extra = (f"\nmean {np.mean(e.values['ratio']):.2f}" if metric == "ratio"
                         else "")
                plot_eigenvalue_map(e, metric, ax=axes[r, c], ratio_max=0.5,
                                    title=_label(residual, depth,
                                                 len(cfg.channels) * (1 + 2 * depth)) + extra)
                axes[r, c].title.set_fontsize(9)
        what = (r"$|\lambda_{min} / \lambda_{max}|$ (0: convex; colour scale capped at 0.5)"
                if metric == "ratio" else r"$\lambda_{min}$ (blue: negative curvature)")
        fig.suptitle(f"Full-Hessian {what}: ResNet (top) vs plain (bottom)")
        fig.tight_layout()
        figures += save_figure(fig, os.path.join(out_dir, name), ("png", "pdf"))
    return figures


def _label(residual: bool, depth: int, ncv: int) -> str:
    return f"{'ResNet' if residual else 'plain'}, depth {depth} ({ncv} conv)"


def _draw(cfg: Config, axis: np.ndarray, surfaces: dict, out_dir: str) -> list[str]:
    depths = list(cfg.depths)
    nrow, ncol = 2, len(depths)
    allv = np.concatenate([s.values["loss"].ravel() for s in surfaces.values()])
    lo, hi = float(np.nanmin(allv)), float(np.nanquantile(allv, 0.95))
    hi = max(hi, 2 * lo)
    levels = np.geomspace(lo * 1.05, hi, 16)
    norm = mcolors.LogNorm(vmin=lo, vmax=hi)
    X, Y = np.meshgrid(axis, axis, indexing="ij")
    size = 3.1
    figures = []

    fig, axes = plt.subplots(nrow, ncol, figsize=(size * ncol + 1.2, size * nrow),
                             squeeze=False, sharex=True, sharey=True)
    for r, residual in enumerate((True, False)):
        for c, depth in enumerate(depths):
            ax = axes[r, c]
            v = surfaces[(residual, depth)].values["loss"]
            m = ax.contourf(X, Y, np.clip(v, lo, hi), levels=np.concatenate([[lo], levels]),
                            cmap="viridis", norm=norm, extend="max")
            ax.contour(X, Y, v, levels=levels, colors="k", linewidths=0.4, alpha=0.6)
            ax.plot(0, 0, "+", color="w", ms=10, mew=2)
            ax.set_title(_label(residual, depth, len(cfg.channels) * (1 + 2 * depth)),
                         fontsize=10)
            ax.set_aspect("equal")
            if r == nrow - 1:
                ax.set_xlabel("direction 1 (filter-normalised)")
            if c == 0:
                ax.set_ylabel("direction 2")
    cb = fig.colorbar(m, ax=axes, shrink=0.85, pad=0.02, ticks=levels[::3])
    cb.ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%.3g"))
    cb.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    cb.set_label("training loss (log scale, shared)")
    fig.suptitle("Loss surfaces with (top) and without (bottom) skip connections", y=1.0)
    figures += save_figure(fig, os.path.join(out_dir, "contours"), ("png", "pdf"))

    fig = plt.figure(figsize=(size * ncol + 0.5, size * nrow))
    zlo, zhi = np.log10(lo), np.log10(hi)
    for r, residual in enumerate((True, False)):
        for c, depth in enumerate(depths):
            ax = fig.add_subplot(nrow, ncol, r * ncol + c + 1, projection="3d")
            z = np.log10(np.clip(surfaces[(residual, depth)].values["loss"], lo, hi))
            ax.plot_surface(X, Y, z, cmap="viridis", vmin=zlo, vmax=zhi, linewidth=0.2,
                            edgecolor=(0, 0, 0, 0.15), antialiased=True, rstride=1, cstride=1)
            ax.set_zlim(zlo, zhi)
            ax.view_init(elev=35, azim=-55)
            ax.set_title(_label(residual, depth, len(cfg.channels) * (1 + 2 * depth)),
                         fontsize=9)
            ax.set_zlabel("log$_{10}$ loss", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Loss surfaces in 3D: ResNet (top) vs plain (bottom)")
    fig.tight_layout()
    figures += save_figure(fig, os.path.join(out_dir, "surfaces_3d"), ("png", "pdf"))

    fig, axes = plt.subplots(nrow, ncol, figsize=(size * ncol + 1.2, size * nrow),
                             squeeze=False, sharex=True, sharey=True)
    h = (axis[1] - axis[0]) / 2
    inner = axis[1:-1]
    for r, residual in enumerate((True, False)):
        for c, depth in enumerate(depths):
            ax = axes[r, c]
            conv = convexity(surfaces[(residual, depth)].values["loss"], axis, axis,
                             cfg.threshold)
            m = ax.imshow(conv["ratio_IxJ"].T, origin="lower", cmap="magma", vmin=0, vmax=1,
                          extent=(inner[0] - h, inner[-1] + h, inner[0] - h, inner[-1] + h),
                          interpolation="nearest")
            ax.set_title(f"{_label(residual, depth, len(cfg.channels) * (1 + 2 * depth))}\n"
                         f"non-convex share {conv['nonconvex_fraction']:.2f}", fontsize=9)
            if r == nrow - 1:
                ax.set_xlabel("direction 1")
            if c == 0:
                ax.set_ylabel("direction 2")
    cb = fig.colorbar(m, ax=axes, shrink=0.85, pad=0.02)
    cb.set_label(r"max(0, $-\lambda_{min}$) / max(|$\lambda$|)  (0: convex)")
    fig.suptitle("Negative curvature of each plane (Hessian of the surface)", y=1.0)
    figures += save_figure(fig, os.path.join(out_dir, "convexity_maps"), ("png", "pdf"))
    return figures


if __name__ == "__main__":
    run_cli(main, PRESETS, "cpu", __doc__.split("\n\n")[0])
