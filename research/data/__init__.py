"""Data sets as arrays: the `Dataset` container and `load_dataset(cfg)`, a dict of loaders.

Every loader returns numpy arrays on the host: vectors `x_NxD` or spectrograms `x_NxFxTx1`, and
integer class ids `y_N` (float targets for regression, with no class names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from research.config import DataConfig


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A train/validation/test split as host arrays.

    The validation split is for model selection (best checkpoint, early stopping, tuning); the
    test split is only ever reported. Both validation arrays are keyword-only.

    Attributes:
        x_train: training inputs, `x_NxD` or `x_NxFxTx1`, float32.
        y_train: training labels, int32 class ids (float32 targets for regression).
        x_test: test inputs.
        y_test: test labels.
        class_names: one name per class id; empty for regression.
        info: a JSON-ready summary of what was loaded (sources, counts, settings).
        x_val: validation inputs (held out from training; see `DataConfig.val_fraction`).
        y_val: validation labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    x_val: np.ndarray = dataclasses.field(kw_only=True)
    y_val: np.ndarray = dataclasses.field(kw_only=True)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names)


def holdout(y_N: np.ndarray, fraction: float, seed: int,
            stratified: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified hold-out: indices that stay and indices held out.

    Within each class `round(fraction * n_c)` examples are held out (at least one when the
    class has two or more, never all of them), chosen by a permutation seeded with
    `(seed, 2)`; regression targets (`stratified=False`) are held out from one permutation.

    Args:
        y_N: labels (class ids) of the split to carve from.
        fraction: share held out, in (0, 1).
        seed: data seed.
        stratified: hold out per class (classification) or overall (regression).

    Returns:
        (keep_idx, held_idx), both sorted, disjoint, covering `range(len(y_N))`.
    """
    rng = np.random.default_rng([seed, 2])
    groups = [np.flatnonzero(y_N == c) for c in np.unique(y_N)] if stratified else [
        np.arange(len(y_N))]
    held = []
    for idx in groups:
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep_idx = np.setdiff1d(np.arange(len(y_N)), held_idx)
    return keep_idx, held_idx


def _playground(cfg: DataConfig) -> Dataset:
    from research.data import playground

    return playground.load(cfg)


def _audio(cfg: DataConfig) -> Dataset:
    from research.data import audio

    return audio.load(cfg)


PLAYGROUND_SETS = ("circle", "xor", "gauss", "spiral", "reg-plane", "reg-gauss")
AUDIO_SETS = ("soundscapes", "music", "sonic-pi", "esc50", "urbansound8k", "gtzan")

LOADERS: dict[str, Callable[[DataConfig], Dataset]] = {
    **{name: _playground for name in PLAYGROUND_SETS},
    **{name: _audio for name in AUDIO_SETS},
}


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the data set named by `cfg.dataset`.

    Args:
        cfg: data configuration.

    Returns:
        The train/test split as host arrays.
    """
    if cfg.dataset not in LOADERS:
        raise ValueError(f"DataConfig.dataset: unknown data set {cfg.dataset!r}; "
                         f"choose one of {', '.join(LOADERS)}")
    return LOADERS[cfg.dataset](cfg)
