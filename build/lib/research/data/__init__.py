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
    """A train/test split as host arrays.

    Attributes:
        x_train: training inputs, `x_NxD` or `x_NxFxTx1`, float32.
        y_train: training labels, int32 class ids (float32 targets for regression).
        x_test: test inputs.
        y_test: test labels.
        class_names: one name per class id; empty for regression.
        info: a JSON-ready summary of what was loaded (sources, counts, settings).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names)


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
