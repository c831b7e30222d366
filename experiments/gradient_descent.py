"""Gradient descent and the learning rate, drawn over an exact two-parameter loss contour.

One neuron with two weights on Playground data (a quadratic bowl by default, see
`research.paths.neuron_problem`). Plain gradient descent runs with learning rates that are
fractions of the stability limit `2 / lambda_max` of the Hessian at the minimum (too small,
good, oscillating, divergent); then SGD, momentum and Adam run from the same start. Writes
`runs/<name>/gd_learning_rates.png|pdf`, `gd_optimizers.png|pdf`, `gd_loss_vs_step.png` and
`results.json` (lambda_max, the limit, each path's final loss).

Command:
    python -m experiments.gradient_descent --preset cpu
    python -m experiments.gradient_descent --problem bce --name gd_bce
Run time: a few seconds on a 2-core CPU.
Expected result: rates below 2/lambda_max converge to the minimum (0.1, 0.4), the rate above it
diverges; momentum and Adam reach the minimum in fewer steps than SGD at the same rate.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import optax

from research.config import run_cli
from research.io import atomic_write_json
from research.paths import loss_grid, minimum_and_curvature, neuron_problem, optimizer_path
from research.viz import plot_loss_vs_step, plot_paths_on_contour, save_figure


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the gradient-descent experiment.

    Attributes:
        problem: mse (linear neuron, quadratic bowl) or bce (sigmoid neuron, logistic loss).
        steps: updates per path.
        start: starting weights (w1, w2).
        lr_fractions: gradient-descent learning rates as fractions of 2 / lambda_max.
        optimizer_lr_fraction: the rate shared by SGD, momentum and Adam, as a fraction of
            2 / lambda_max (Adam uses `adam_lr` instead, since its steps are scale-free).
        adam_lr: Adam's learning rate.
        momentum: momentum coefficient.
        grid: contour resolution per side.
        name: run name.
        workdir: parent folder of the run.
        preset: the preset these defaults came from.
    """

    problem: str = "mse"
    steps: int = 40
    start: tuple[float, float] = (-0.6, -0.1)
    lr_fractions: tuple[float, ...] = (0.05, 0.5, 0.95, 1.05)
    optimizer_lr_fraction: float = 0.05
    adam_lr: float = 0.05
    momentum: float = 0.9
    grid: int = 160
    name: str = "gradient_descent"
    workdir: str = "runs"
    preset: str = "cpu"

    def __post_init__(self):
        if self.problem not in ("mse", "bce"):
            raise ValueError(f"Config.problem: choose mse or bce, got {self.problem!r}")
        if self.steps <= 0 or self.grid < 8:
            raise ValueError("Config.steps must be > 0 and Config.grid >= 8")
        if any(f <= 0 for f in self.lr_fractions) or self.optimizer_lr_fraction <= 0:
            raise ValueError("Config.lr_fractions: learning-rate fractions must be > 0")


PRESETS = {"cpu": Config(), "gpu": Config(grid=300),
           "tiny": Config(steps=10, grid=24, preset="tiny")}


def _window(points: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A square-ish window around the minimum that holds the start and the converging paths."""
    half = 1.3 * np.max(np.abs(points - center[None, :]), axis=0) + 1e-3
    return center[0] + half[0] * np.array([-1, 1]), center[1] + half[1] * np.array([-1, 1])


def main(cfg: Config) -> dict:
    """Run the paths and draw them.

    Args:
        cfg: experiment settings.

    Returns:
        The results written to results.json.
    """
    run_dir = os.path.join(cfg.workdir, cfg.name)
    loss_fn = neuron_problem(cfg.problem)
    theta_star, eig = minimum_and_curvature(loss_fn, jnp.zeros(2))
    limit = 2.0 / eig[-1]
    start = jnp.asarray(cfg.start, jnp.float32)
    min_loss = float(loss_fn(jnp.asarray(theta_star)))

    gd_paths, gd_losses, results = {}, {}, {"lambda": eig.tolist(), "lr_limit": limit,
                                           "theta_star": theta_star.tolist(),
                                           "min_loss": min_loss, "paths": {}}
    for frac in cfg.lr_fractions:
        lr = frac * limit
        thetas, losses = optimizer_path(loss_fn, start, optax.sgd(lr), cfg.steps)
        label = f"GD lr={lr:.3g} ({frac:g} x 2/$\\lambda_{{max}}$)"
        gd_paths[label], gd_losses[label] = np.asarray(thetas), np.asarray(losses)
        results["paths"][f"gd_{frac:g}"] = {"lr": lr, "final_loss": float(losses[-1]),
                                            "final_theta": np.asarray(thetas[-1]).tolist()}
    lr = cfg.optimizer_lr_fraction * limit
    txs = {f"SGD lr={lr:.3g}": optax.sgd(lr),
           f"momentum {cfg.momentum} lr={lr:.3g}": optax.sgd(lr, momentum=cfg.momentum),
           f"Adam lr={cfg.adam_lr:g}": optax.adam(cfg.adam_lr)}
    opt_paths, opt_losses = {}, {}
    for label, tx in txs.items():
        thetas, losses = optimizer_path(loss_fn, start, tx, cfg.steps)
        opt_paths[label], opt_losses[label] = np.asarray(thetas), np.asarray(losses)
        results["paths"][label.split(" ")[0].lower()] = {"final_loss": float(losses[-1])}

    # The window follows the converging paths; a divergent path leaves it, as it should.
    finite = [p for p, losses in zip(gd_paths.values(), gd_losses.values())
              if losses[-1] <= losses[0]] + list(opt_paths.values())
    w1_lim, w2_lim = _window(np.concatenate(finite), theta_star)
    w1_R = np.linspace(*w1_lim, cfg.grid)
    w2_S = np.linspace(*w2_lim, cfg.grid)
    grid = loss_grid(loss_fn, w1_R, w2_S)
    what = ("linear neuron, squared error" if cfg.problem == "mse"
            else "sigmoid neuron, binary cross-entropy")
    figures = save_figure(plot_paths_on_contour(
        w1_R, w2_S, grid, gd_paths, theta_star,
        f"Gradient descent, {what}: learning rate vs the limit 2/$\\lambda_{{max}}$={limit:.3g}"),
        os.path.join(run_dir, "gd_learning_rates"), ("png", "pdf"))
    figures += save_figure(plot_paths_on_contour(
        w1_R, w2_S, grid, opt_paths, theta_star, f"SGD vs momentum vs Adam ({what})"),
        os.path.join(run_dir, "gd_optimizers"), ("png", "pdf"))
    figures += save_figure(plot_loss_vs_step({**gd_losses, **opt_losses}, min_loss,
                                             "Loss above the minimum"),
                           os.path.join(run_dir, "gd_loss_vs_step"), ("png",))
    results["figures"] = figures
    atomic_write_json(os.path.join(run_dir, "results.json"), results)
    print(json.dumps({k: results[k] for k in ("lambda", "lr_limit", "theta_star")}))
    for k, v in results["paths"].items():
        print(f"{k:>12}: final loss {v['final_loss']:.4g}")
    return results


if __name__ == "__main__":
    run_cli(main, PRESETS, "cpu", __doc__.split("\n\n")[0])
