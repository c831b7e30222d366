"""The TensorFlow Deep Learning Playground, reproduced in JAX.

Trains an MLP on one of the Playground's 2D data sets with its knobs (data set, noise, train
ratio, input features, hidden layers, activation, loss, learning rate, regularisation and rate,
batch size) and writes, under `runs/<name>/figures/`, the decision-boundary heat map with train
and test points, every hidden neuron's output map, and the train/test loss curves (the test
curves are for the picture only: the best checkpoint is chosen on the validation split).
`--train.stop-after N` stops early without figures; the same command without it resumes.

Command (the default `cpu` preset: spiral, two hidden layers of 8 ReLU units, Adam):
    python -m experiments.playground --preset cpu
    python -m experiments.playground --data.dataset circle --model.activation relu \
        --optim.name sgd --optim.learning-rate 0.03 --train.loss mse --name circle_relu
Run time: about 20 s on a 2-core CPU (cpu preset), a few seconds with `--preset tiny`.
Expected result: test accuracy of about 0.96 on the noise-free spiral (0.964 measured in
session 7; 0.996 before a validation split was carved from the 250 training points).
"""

from __future__ import annotations

import json
import os

import numpy as np

from research.config import PLAYGROUND_PRESETS, Config, run_cli
from research.data.playground import CLASSIFICATION, hidden_activations, model_scores
from research.train import train_and_evaluate
from research.viz import (
    grid_points,
    plot_decision_boundary,
    plot_learning_curves,
    plot_neuron_maps,
    save_figure,
)
from research.writers import read_jsonl

RESOLUTION = 100
_LOSS_TEXT = {"bce": "sigmoid + binary cross-entropy", "mse": "tanh output + squared error",
              "softmax_ce": "softmax cross-entropy"}


def main(cfg: Config) -> dict:
    """Train, then draw the Playground's pictures.

    Args:
        cfg: the run configuration (a Playground data set and an MLP).

    Returns:
        The training summary, with the written figure paths under "figures".
    """
    if cfg.data.dataset not in (*CLASSIFICATION, "reg-plane", "reg-gauss"):
        raise SystemExit(f"--data.dataset: {cfg.data.dataset!r} is not a Playground data set")
    if cfg.model.kind != "mlp":
        raise SystemExit("--model.kind: the Playground trains an MLP")
    run_dir = cfg.run_dir()
    state, summary = train_and_evaluate(cfg, run_dir)
    if not summary["finished"]:
        # Stopped early (--train.stop-after): no final evaluation to draw yet.
        print(f"training stopped at step {summary['steps']} of {summary['total_steps']}; run "
              "the same command without --train.stop-after to resume")
        return summary
    from research.data import load_dataset

    data = load_dataset(cfg.data)
    fig_dir = os.path.join(run_dir, "figures")
    regression = not state.loss.classification

    def score_fn(points):
        return model_scores(state, points, cfg.data.features)

    def signed(labels):
        return labels if regression else np.where(labels > 0, 1.0, -1.0)

    train = (np.asarray(data.info["points_train"]), signed(data.y_train))
    test = (np.asarray(data.info["points_test"]), signed(data.y_test))
    key = "loss" if regression else "accuracy"
    metric = f"final test {key} {summary['test'][key]:.3f}"
    if "best" in summary:
        metric += (f" (best on validation: step {summary['best']['step']}, test {key} "
                   f"{summary['best']['test'][key]:.3f})")
    title = (f"{cfg.data.dataset} (noise {cfg.data.noise}): MLP {list(cfg.model.widths)} "
             f"{cfg.model.activation}, {_LOSS_TEXT[cfg.train.loss]}\n{metric}")
    figures = save_figure(
        plot_decision_boundary(score_fn, train, test, title, regression=regression),
        os.path.join(fig_dir, "decision_boundary"), ("png", "pdf"))
    layers = hidden_activations(state, grid_points(RESOLUTION)[1], cfg.data.features)
    figures += save_figure(plot_neuron_maps(layers, RESOLUTION, title="Each hidden neuron's "
                                            f"output ({cfg.model.activation})"),
                           os.path.join(fig_dir, "neurons"), ("png",))
    records = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    figures += save_figure(plot_learning_curves(records, title=f"{cfg.name}: {cfg.data.dataset}"),
                           os.path.join(fig_dir, "loss_curves"), ("png", "pdf"))
    summary["figures"] = figures
    print(json.dumps({k: summary[k] for k in ("name", "steps", "params", "test", "best")
                      if k in summary}, indent=1))
    print(f"figures in {fig_dir}")
    return summary


if __name__ == "__main__":
    run_cli(main, PLAYGROUND_PRESETS, "cpu", __doc__.split("\n\n")[0])
