"""Small vs large batch: sharpness of the minima, with and without filter normalisation.

Reproduces the experiment of Li et al. (2018, section 5, figures 3 and 4) at CPU size: the same
BatchNorm CNN is trained on the procedural soundscapes (log-mel) with a small and a large batch
(each in its own resumable run folder `runs/<name>/batch<B>/`), the large batch for more epochs
so that both reach a similar training loss. Through each minimum, 1D curves along a random
direction drawn from the same seed are evaluated on a fixed subset of training examples, once
filter-normalised (biases/BN ignored, BN statistics kept) and once un-normalised ('none': the raw
N(0, 1) direction, identical for both models). Sharpness numbers (`research.landscape.measures`):
the loss increase at a quarter and a half of the grid's half-width (mean of both sides), the
curvature f''(0) of a quadratic fit near 0, and the top eigenvalue of the Hessian on the same
examples (power iteration on Hessian-vector products, `research.landscape.hessian`), next to the
weights' norm, test accuracy and the generalisation gap. Writes `curves.png|pdf` and
`results.json|md` under `runs/<name>/`.

The paper's claim: without normalisation, sharpness depends on the weights' scale (which batch
size and weight decay change), so comparisons mislead; with filter normalisation the flatter
minimum is the one that generalises better.

Command:
    python -m experiments.batch_size --preset cpu
Run time: 50 s on a 2-core CPU (batch 16 for 40 epochs, batch 256 for 150 epochs; four
51-point curves over 256 training examples; 20 Hessian-vector products per model); re-running
reuses the runs and curves.
Expected result (measured in session 7, cpu preset: 58 clips per class, 260 training / 30
validation / 290 test clips; small / large batch):
    train loss 0.498 / 0.327, train accuracy 0.942 / 0.985, test accuracy 0.724 / 0.755
    weight norm 11.0 / 12.0
    filter-normalised: rise at alpha = +-0.5 2.46 / 2.93, f''(0) 45.8 / 62.0
    un-normalised:     rise at alpha = +-0.05 0.87 / 1.31, f''(0) 858 / 1440
    top Hessian eigenvalue 549 / 587
With `--weight-decay 0.05 --name batch_size_wd` (AdamW): test accuracy 0.731 / 0.748, weight
norm 10.4 / 11.7, filter rise 2.37 / 2.90, filter f''(0) 44.8 / 61.9, un-normalised f''(0)
931 / 1510, top eigenvalue 595 / 629.
The paper's finding does NOT reproduce at this size. Every measure ranks the large batch's
minimum the sharper one (filter-normalised f''(0) by 35%, the rise at +-0.5 by 19%, the
un-normalised curvature by 68%, the top Hessian eigenvalue by 7%), yet the large batch
generalises as well or slightly better (3 points on 290 test clips, about one standard error).
Both minima have similar weight norms (the large batch trains with a larger learning rate for
more epochs to reach a similar training loss), so normalisation changes little.
History: with 52 clips per class (260 training clips, before a validation split was carved from
the training split) the figures were 0.719 / 0.742 test accuracy, filter f''(0) 66.6 / 63.9 and
top eigenvalue 413 / 518, the measures then disagreeing on which minimum is flatter; once the
validation split existed that preset left 230 training clips for a batch of 256 and the command
stopped after the small batch, so the preset now draws 58 clips per class. With an earlier
generator the f''(0) ranking was 55.6 / 62.5: differences of this size are within what the data
draw changes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import ticker as mticker

from research import landscape as L
from research.config import Config as RunConfig
from research.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, run_cli
from research.data import load_dataset
from research.io import atomic_write_json, atomic_write_text
from research.landscape.hessian import top_eigenvalue
from research.landscape.measures import sharpness_1d
from research.reproductions import (
    fixed_subset,
    params_norm,
    state_loss_fn,
    state_surface,
)
from research.tables import records_table
from research.train import train_and_evaluate
from research.viz import save_figure


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the batch-size experiment.

    Attributes:
        batch_sizes: the small and the large batch size.
        epochs: training epochs for each batch size (the large batch needs more).
        learning_rates: Adam's peak learning rate for each batch size (cosine schedule).
        channels: CNN stage channels.
        clips_per_class: procedural soundscape clips per class (half train, half test).
        clip_seconds: clip length.
        n_mels: mel bands.
        n_fft: STFT size.
        hop_length: STFT hop.
        weight_decay: weight decay on kernels (the paper shows it flips un-normalised plots).
        grid: 1D grid of the filter-normalised curves, "min:max:num".
        none_grid: 1D grid of the un-normalised curves (the raw direction is far larger than
            the weights, so its grid is narrower).
        fit_fraction: the quadratic fit uses |alpha| <= this fraction of the grid's half-width.
        examples: training examples in the fixed landscape subset (0: all).
        eval_batch_size: examples per landscape step.
        hessian_iters: power-iteration steps for the top Hessian eigenvalue (0 skips it).
        seed: training, data and direction seed.
        cache_dir: feature cache.
        progress: progress bars while training.
        name: run name.
        workdir: parent folder.
        preset: the preset these defaults came from.
    """

    batch_sizes: tuple[int, int] = (16, 256)
    epochs: tuple[int, int] = (40, 150)
    learning_rates: tuple[float, float] = (5e-3, 1e-2)
    channels: tuple[int, ...] = (8, 16, 16)
    clips_per_class: int = 58
    clip_seconds: float = 1.0
    n_mels: int = 32
    n_fft: int = 1024
    hop_length: int = 512
    weight_decay: float = 0.0
    grid: str = "-1:1:51"
    none_grid: str = "-0.1:0.1:51"
    fit_fraction: float = 0.25
    examples: int = 256
    eval_batch_size: int = 256
    hessian_iters: int = 20
    seed: int = 0
    cache_dir: str = ".cache/features"
    progress: bool = False
    name: str = "batch_size"
    workdir: str = "runs"
    preset: str = "cpu"

    def __post_init__(self):
        for field in ("batch_sizes", "epochs", "learning_rates"):
            v = getattr(self, field)
            if len(v) != 2 or any(x <= 0 for x in v):
                raise ValueError(f"Config.{field}: give two values > 0 (small, large), got {v}")
        if not self.batch_sizes[0] < self.batch_sizes[1]:
            raise ValueError(f"Config.batch_sizes: the first must be the smaller, "
                             f"got {self.batch_sizes}")
        for field in ("grid", "none_grid"):
            a = L.parse_grid(getattr(self, field), f"Config.{field}")
            if not (a[0] < 0 < a[-1]) or len(a) < 5:
                raise ValueError(f"Config.{field}: need >= 5 points around 0, "
                                 f"got {getattr(self, field)!r}")
        if not 0.0 < self.fit_fraction <= 1.0:
            raise ValueError(f"Config.fit_fraction: must be in (0, 1], got {self.fit_fraction}")
        if self.hessian_iters < 0 or self.examples < 0:
            raise ValueError("Config.hessian_iters and Config.examples must be >= 0")


PRESETS = {
    "cpu": Config(),
    "gpu": Config(batch_sizes=(32, 1024), epochs=(60, 400), channels=(16, 32, 64),
                  clips_per_class=400, n_mels=40, hop_length=256, grid="-1:1:51",
                  none_grid="-0.05:0.05:51", examples=2000, eval_batch_size=500,
                  hessian_iters=50, preset="gpu"),
    "tiny": Config(batch_sizes=(4, 16), epochs=(2, 4), channels=(2, 4), clips_per_class=8,
                   clip_seconds=0.5, n_mels=16, n_fft=256, hop_length=128, grid="-1:1:9",
                   none_grid="-0.2:0.2:9", fit_fraction=0.5, examples=16, eval_batch_size=16,
                   hessian_iters=5, preset="tiny"),
}


def run_config(cfg: Config, which: int) -> RunConfig:
    """The training configuration of the small (0) or large (1) batch model.

    Args:
        cfg: experiment settings.
        which: 0 for the small batch, 1 for the large.

    Returns:
        The run's `research.config.Config`.
    """
    bs, epochs = cfg.batch_sizes[which], cfg.epochs[which]
    return RunConfig(
        data=DataConfig(dataset="soundscapes", n=cfg.clips_per_class, feature="logmel",
                        clip_seconds=cfg.clip_seconds, n_mels=cfg.n_mels, n_fft=cfg.n_fft,
                        hop_length=cfg.hop_length, seed=cfg.seed, cache_dir=cfg.cache_dir),
        model=ModelConfig(kind="cnn", channels=cfg.channels, batch_norm=True),
        optim=OptimConfig(name="adamw" if cfg.weight_decay else "adam",
                          learning_rate=cfg.learning_rates[which], schedule="cosine",
                          weight_decay=cfg.weight_decay),
        train=TrainConfig(epochs=epochs, batch_size=bs, seed=cfg.seed, loss="softmax_ce",
                          eval_every=epochs, eval_train=False, eval_batch_size=256,
                          checkpoint_every=100_000, keep_checkpoints=1, progress=cfg.progress),
        name=f"batch{bs}", workdir=os.path.join(cfg.workdir, cfg.name), preset=cfg.preset)


def _curve_numbers(s: L.Surface, fit_fraction: float) -> dict[str, Any]:
    alpha = s.axes[0]
    half = min(-alpha[0], alpha[-1])
    radii = (0.25 * half, 0.5 * half)
    sh = sharpness_1d(s.values["loss"], alpha, radii, fit_radius=fit_fraction * half)
    return {"radii": list(radii), "rise_quarter": sh["rise"][radii[0]],
            "rise_half": sh["rise"][radii[1]], "curvature": sh["curvature"],
            "loss_at_zero": sh["at_zero"]}


def main(cfg: Config) -> dict[str, Any]:
    """Train with both batch sizes, draw 1D curves through both minima, measure sharpness.

    Args:
        cfg: experiment settings.

    Returns:
        {"rows": one dict of numbers per batch size, "curves": the curves, "figures": paths},
        as in results.json.
    """
    out_dir = os.path.join(cfg.workdir, cfg.name)
    grids = {"filter": L.parse_grid(cfg.grid), "none": L.parse_grid(cfg.none_grid)}
    rows, curves = [], {}
    for which in (0, 1):
        rc = run_config(cfg, which)
        state, summary = train_and_evaluate(rc)
        data = load_dataset(rc.data)
        sub = fixed_subset(data.x_train, data.y_train, cfg.examples, cfg.seed)
        row = {"model": rc.name, "batch_size": cfg.batch_sizes[which],
               "epochs": cfg.epochs[which], "steps": summary["steps"],
               "learning_rate": cfg.learning_rates[which],
               "train_loss": summary["train"]["loss"],
               "train_accuracy": summary["train"]["accuracy"],
               "test_loss": summary["test"]["loss"],
               "test_accuracy": summary["test"]["accuracy"],
               "accuracy_gap": summary["train"]["accuracy"] - summary["test"]["accuracy"],
               "weight_norm": params_norm(state.params)}
        for norm, axis in grids.items():
            d = L.random_direction(state.params, cfg.seed, norm, "biasbn")
            s = state_surface(state, [d], [axis], sub,
                              path=os.path.join(rc.run_dir(), f"line_{norm}.npz"),
                              batch_size=cfg.eval_batch_size,
                              settings={"normalization": norm, "ignore": "biasbn",
                                        "seeds": [cfg.seed], "examples": cfg.examples},
                              info={"title": rc.name})
            curves[(rc.name, norm)] = s
            for k, v in _curve_numbers(s, cfg.fit_fraction).items():
                row[f"{norm}_{k}"] = v
        if cfg.hessian_iters:
            fn, kw = state_loss_fn(state)
            eig, _, used = top_eigenvalue(fn, state.params, sub, batch_size=cfg.eval_batch_size,
                                          max_iter=cfg.hessian_iters, tol=1e-4, seed=cfg.seed,
                                          **kw)
            row.update(top_eigenvalue=eig, hessian_iters_used=used)
        else:
            row.update(top_eigenvalue=float("nan"), hessian_iters_used=0)
        rows.append(row)
        print(f"[{cfg.name}] batch {row['batch_size']}: train loss {row['train_loss']:.3f}, "
              f"test acc {row['test_accuracy']:.3f}, filter curvature "
              f"{row['filter_curvature']:.3g}, none curvature {row['none_curvature']:.3g}, "
              f"top eigenvalue {row['top_eigenvalue']:.3g}", flush=True)

    figures = _draw(cfg, rows, curves, out_dir)
    results = {"rows": rows, "figures": figures,
               "curves": {f"{m}/{n}": {"alpha": s.axes[0].tolist(),
                                       "loss": s.values["loss"].tolist(),
                                       "accuracy": s.values["accuracy"].tolist()}
                          for (m, n), s in curves.items()}}
    atomic_write_json(os.path.join(out_dir, "results.json"), results)
    atomic_write_text(os.path.join(out_dir, "results.md"), _markdown(cfg, rows))
    return results


COLUMNS = (("model", "model", "s"), ("epochs", "epochs", "d"), ("steps", "steps", "d"),
           ("train_loss", "train loss", ".3f"), ("train_accuracy", "train acc", ".3f"),
           ("test_accuracy", "test acc", ".3f"), ("accuracy_gap", "acc gap", ".3f"),
           ("weight_norm", "weight norm", ".2f"),
           ("filter_rise_half", "filter: rise at 0.5", ".3f"),
           ("filter_curvature", "filter: f''(0)", ".3f"),
           ("none_rise_half", "none: rise at half-width/2", ".3f"),
           ("none_curvature", "none: f''(0)", ".1f"),
           ("top_eigenvalue", "top Hessian eigenvalue", ".2f"))


def _markdown(cfg: Config, rows: list[dict]) -> str:
    return (f"# Small vs large batch (Li et al. 2018, section 5)\n\n"
            f"1D curves along a random direction (seed {cfg.seed}, biases/BN ignored, BN "
            f"statistics kept) over {cfg.examples or 'all'} training examples: filter-normalised "
            f"on {cfg.grid}, un-normalised on {cfg.none_grid}. Rise: mean loss increase at "
            f"+-half of the half-width; f''(0): quadratic fit over "
            f"|alpha| <= {cfg.fit_fraction} x half-width; top eigenvalue by power iteration "
            f"on the same examples.\n\n" + records_table(rows, COLUMNS))


def _draw(cfg: Config, rows: list[dict], curves: dict, out_dir: str) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ("tab:blue", "tab:red")
    titles = {"filter": "filter-normalised direction",
              "none": "un-normalised direction (raw N(0, 1))"}
    for ax, norm in zip(axes, ("filter", "none")):
        for row, color in zip(rows, colors):
            s = curves[(row["model"], norm)]
            ax.semilogy(s.axes[0], s.values["loss"], "-", color=color, lw=2,
                        label=(f"batch {row['batch_size']}: test acc {row['test_accuracy']:.3f},"
                               f" f''(0) = {row[f'{norm}_curvature']:.3g}"))
        ax.axvline(0, color="k", lw=0.6, alpha=0.5)
        ax.xaxis.set_major_locator(mticker.MaxNLocator(5))
        ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel("training loss (log scale)")
        ax.set_title(titles[norm], fontsize=11)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="upper center")
    fig.suptitle("Small vs large batch minima: 1D loss curves through each minimum, same seed",
                 fontsize=12)
    fig.tight_layout()
    return save_figure(fig, os.path.join(out_dir, "curves"), ("png", "pdf"))


if __name__ == "__main__":
    run_cli(main, PRESETS, "cpu", __doc__.split("\n\n")[0])
