"""Calibration of the procedural sets: MLP on MFCC statistics vs CNN on log-mel vs loudness only.

The procedural sets are meant to be easy to get started with and hard to solve with shortcuts:
at the default difficulty a CNN on log-mel should clearly beat an MLP on MFCC mean/std
statistics, the MLP should be far from 100%, and a classifier that sees only loudness (overall
and mean frame RMS in dB) should be near chance. This script measures the three accuracies on
the test split (split by generator seed).

Run (a few minutes on a 2-core CPU for the defaults):

    python -m benchmarks.calibrate_synth --dataset soundscapes
    python -m benchmarks.calibrate_synth --dataset music

The models are the repository's (`research.models.make_model`): an MLP 128-128 (ReLU, dropout
0.2; 200 epochs, Adam 1e-3) on the 40 MFCC mean/std statistics, and a CNN with stages of
16/32/32 channels (conv 3x3, BatchNorm, ReLU, max-pool 2x2; global mean pooling; 30 epochs,
Adam 3e-3) on standardised 40x63 log-mel; both batch 32 with a cosine-decayed step. Training
is a plain loop here, so the figures do not depend on any other part of the training
machinery. The loudness-only and NB baselines are Gaussian naive Bayes (per-class mean and
variance of each feature).

Measured (2-core CPU shared with other jobs, jax 0.10.2; 100 clips per class of 1 s at 16 kHz,
80 train / 20 test per class, difficulty 0.5; `--seed` sets the data and the training seed):

| set (chance), seed | RMS | RMS + frame RMS | NB, MFCC stats | MLP, MFCC stats | CNN, log-mel |
| --- | --- | --- | --- | --- | --- |
| soundscapes (0.10), 0 | 0.09 | 0.155 | 0.705 | 0.805 | 0.90 |
| soundscapes (0.10), 1 | 0.10 | 0.175 | 0.71 | 0.81 | 0.905 |
| music (0.143), 0 | 0.157 | 0.179 | 0.486 | 0.671 | 0.886 |

(1.5-2 minutes of wall time each). One test clip is 0.5 points
(soundscapes) or 0.7 points (music).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.audio import features
from research.config import DataConfig, ModelConfig
from research.data import load_dataset, synth
from research.models import make_model


def gaussian_nb_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                         y_test: np.ndarray) -> float:
    """Accuracy of Gaussian naive Bayes (per-class mean and variance of each feature).

    Args:
        x_train: training features x_NxD.
        y_train: training labels.
        x_test: test features.
        y_test: test labels.

    Returns:
        Test accuracy.
    """
    classes = np.unique(y_train)
    mean_CxD = np.stack([x_train[y_train == c].mean(0) for c in classes])
    var_CxD = np.stack([x_train[y_train == c].var(0) for c in classes]) + 1e-6
    prior_C = np.log(np.array([np.mean(y_train == c) for c in classes]))
    diff_NxCxD = x_test[:, None, :] - mean_CxD[None]
    loglik_NxC = -0.5 * np.sum(diff_NxCxD**2 / var_CxD[None] + np.log(var_CxD)[None], axis=2)
    pred = classes[np.argmax(loglik_NxC + prior_C[None], axis=1)]
    return float(np.mean(pred == y_test))


def train_classifier(model_cfg: ModelConfig, x_train: np.ndarray, y_train: np.ndarray,
                     x_test: np.ndarray, y_test: np.ndarray, num_classes: int, epochs: int,
                     batch_size: int, learning_rate: float, seed: int) -> np.ndarray:
    """Train with Adam (cosine-decayed step) and softmax cross-entropy; predict the test split.

    Args:
        model_cfg: model configuration.
        x_train: training inputs.
        y_train: training labels.
        x_test: test inputs.
        y_test: test labels.
        num_classes: number of classes.
        epochs: passes over the training split.
        batch_size: examples per step.
        learning_rate: Adam learning rate.
        seed: initialisation, shuffling and dropout seed.

    Returns:
        Predicted test labels after the last epoch.
    """
    model = make_model(model_cfg, num_classes)
    key = jax.random.key(seed)
    variables = model.init({"params": key, "dropout": key}, jnp.asarray(x_train[:2]),
                           train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    steps = epochs * (len(x_train) // batch_size)
    # Cosine decay: the last epochs average out the noise of a constant step size.
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(steps, 1)))
    opt_state = tx.init(params)

    def loss_fn(params, batch_stats, x, y, k):
        out, upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                               rngs={"dropout": k}, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
        return loss, upd.get("batch_stats", batch_stats)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y, k):
        (_, batch_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x,
                                                                         y, k)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    @jax.jit
    def predict(params, batch_stats, x):
        return jnp.argmax(model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=False), axis=-1)

    rng = np.random.default_rng(seed)
    n = len(x_train)
    for epoch in range(epochs):
        order = rng.permutation(n)
        for i in range(n // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            k = jax.random.fold_in(key, epoch * n + i)
            params, batch_stats, opt_state = step(params, batch_stats, opt_state,
                                                  jnp.asarray(x_train[idx]),
                                                  jnp.asarray(y_train[idx]), k)
    preds = np.concatenate([np.asarray(predict(params, batch_stats, jnp.asarray(x_test[i:i + 256])))
                            for i in range(0, len(x_test), 256)])
    return preds


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    """Confusion matrix, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm.tolist()


def main() -> None:
    """Print the three accuracies (and the settings) as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="soundscapes", choices=tuple(synth.SETS),
                   help="procedural set to calibrate")
    p.add_argument("--n", type=int, default=100, help="clips per class")
    p.add_argument("--train-ratio", type=float, default=0.8,
                   help="share of each class's clips used for training (the rest is the test "
                        "split)")
    p.add_argument("--difficulty", type=float, default=DataConfig.difficulty,
                   help="nuisance strength in [0, 1]")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--epochs-mlp", type=int, default=200,
                   help="epochs of the MLP on MFCC statistics")
    p.add_argument("--epochs-cnn", type=int, default=30, help="epochs of the CNN on log-mel")
    p.add_argument("--cache-dir", default=".cache/features",
                   help="on-disk feature cache ('' disables it)")
    p.add_argument("--confusion", action="store_true", help="also print confusion matrices")
    args = p.parse_args()

    base = DataConfig(dataset=args.dataset, n=args.n, train_ratio=args.train_ratio,
                      difficulty=args.difficulty, seed=args.seed, cache_dir=args.cache_dir)
    result: dict = {"dataset": args.dataset, "data": dataclasses.asdict(base)}
    t0 = time.perf_counter()
    stats = load_dataset(dataclasses.replace(base, feature="mfcc_stats"))
    spec = load_dataset(dataclasses.replace(base, feature="logmel"))
    result["chance"] = 1.0 / stats.num_classes
    result["n_train"], result["n_test"] = len(stats.y_train), len(stats.y_test)
    result["seconds_data"] = round(time.perf_counter() - t0, 1)

    # Loudness only: the waveforms again (generation is deterministic), overall and frame RMS.
    s = synth.split(args.dataset, args.n, args.train_ratio, args.seed, base.sample_rate,
                    base.clip_seconds, args.difficulty)
    loud_tr = features.loudness(s["wave_train"], base.n_fft, base.hop_length)
    loud_te = features.loudness(s["wave_test"], base.n_fft, base.hop_length)
    # Overall RMS alone, then with the mean frame RMS (which also reflects the envelope).
    result["loudness_rms_nb"] = gaussian_nb_accuracy(loud_tr[:, :1], s["y_train"],
                                                     loud_te[:, :1], s["y_test"])
    result["loudness_rms_and_frame_rms_nb"] = gaussian_nb_accuracy(loud_tr, s["y_train"],
                                                                   loud_te, s["y_test"])
    result["mfcc_stats_nb"] = gaussian_nb_accuracy(stats.x_train, stats.y_train, stats.x_test,
                                                   stats.y_test)

    t0 = time.perf_counter()
    mlp = ModelConfig(kind="mlp", widths=(128, 128), activation="relu", dropout=0.2)
    pred_mlp = train_classifier(
        mlp, stats.x_train, stats.y_train, stats.x_test, stats.y_test, stats.num_classes,
        args.epochs_mlp, 32, 1e-3, args.seed)
    result["mlp_mfcc_stats"] = float(np.mean(pred_mlp == stats.y_test))
    result["seconds_mlp"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    cnn = ModelConfig(kind="cnn", channels=(16, 32, 32), activation="relu", global_pool="mean")
    pred_cnn = train_classifier(
        cnn, spec.x_train, spec.y_train, spec.x_test, spec.y_test, spec.num_classes,
        args.epochs_cnn, 32, 3e-3, args.seed)
    result["cnn_logmel"] = float(np.mean(pred_cnn == spec.y_test))
    result["seconds_cnn"] = round(time.perf_counter() - t0, 1)
    if args.confusion:
        result["class_names"] = list(spec.class_names)
        result["confusion_mlp"] = confusion(stats.y_test, pred_mlp, stats.num_classes)
        result["confusion_cnn"] = confusion(spec.y_test, pred_cnn, spec.num_classes)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
