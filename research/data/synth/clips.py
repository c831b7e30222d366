"""The nuisance chain and the public API: one clip from its seed, a set's clips, a split.

See the package docstring (`research.data.synth`) for the nuisance factors and the seeding.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

from research.data.synth import instruments, soundscapes
from research.data.synth.dsp import (
    _band,
    _decay,
    _log2_bins,
    _readonly,
    _tilt,
    _unit,
    _white,
)

SETS = {"soundscapes": soundscapes.SOUNDSCAPE_CLASSES, "music": instruments.MUSIC_CLASSES}
# Part of every clip's seed, so the two sets never share a generator stream.
_SET_IDS = {"soundscapes": 1, "music": 2}
_SPEED_OCTAVES = 2.4  # speed range at difficulty 1, in octaves either side
_SYNTHS = {"soundscapes": soundscapes.SYNTHS, "music": instruments.SYNTHS}
_TAIL_MAX_S = 0.5  # reverberation tails are cut here
_RESPONSE_STEP = 8
_RT60_GRID = np.geomspace(0.05, 0.95, 24)


@functools.lru_cache(maxsize=32)
def _fft_size(k: int) -> int:
    """The smallest 2^a 3^b >= k.

    pocketfft's real transforms are about twice as fast at such sizes as at the 5-smooth sizes
    `scipy.fft.next_fast_len` may pick (72,000 for a four-second 16 kHz clip, against 73,728).
    """
    best = 1 << max(k - 1, 0).bit_length()
    p3 = 1
    while p3 < best:
        p2 = p3 << max((k - 1) // p3, 0).bit_length()
        best = min(best, p2)
        p3 *= 3
    return best


@functools.lru_cache(maxsize=4)
def _tail_bank(m: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of reverberation tails for a grid of RT60 values, two noise realisations each.

    Exponentially decaying white noise, cut at 0.5 s, with unit energy and no direct sound.
    Drawing the tail from this bank (fixed seed: it is part of the generator) instead of
    synthesising one per clip saves an FFT per clip; 48 tails are plenty for a nuisance.

    Returns:
        (rt60_R, tails_RxKxM): the grid and the complex64 rfft (size m) of each tail.
    """
    rng = np.random.default_rng(20251125)
    length = int(_TAIL_MAX_S * sr)
    tails = np.empty((len(_RT60_GRID), 2, m // 2 + 1), np.complex64)
    for i, rt60 in enumerate(_RT60_GRID):
        for k in range(2):
            tail_L = _white(rng, length, 1.0) * _decay(length, sr, rt60 / 6.9)
            tail_L[0] = 0.0
            tail_L /= np.float32(np.sqrt(float(tail_L @ tail_L)))
            tails[i, k] = scipy.fft.rfft(tail_L, m)
    return _RT60_GRID, _readonly(tails)


def _nuisances(rng: np.random.Generator, x_T: np.ndarray, sr: int, difficulty: float,
               set_name: str, class_id: int) -> tuple[np.ndarray, dict]:
    n = len(x_T)
    d = difficulty
    x_T = _unit(x_T)
    params: dict = {}
    classes = SETS[set_name]
    if rng.random() < min(1.0, 1.2 * d):
        other = int(rng.choice([c for c in range(len(classes)) if c != class_id]))
        snr = rng.uniform(18.0 - 16.0 * d, 30.0 - 16.0 * d)
        other_T = _unit(_SYNTHS[set_name][classes[other]](rng, n, sr))
        x_T = x_T + other_T * np.float32(10.0 ** (-snr / 20.0))
        params.update(distractor=classes[other], distractor_snr_db=round(snr, 2))
    # Reverberation (the direct sound plus an exponentially decaying noise tail) and the
    # device response in one FFT pass.
    m = _fft_size(n + int(_TAIL_MAX_S * sr))
    rt60_grid, tails_RxKxM = _tail_bank(m, sr)
    rt60 = rng.uniform(0.05, 0.05 + 0.9 * d)
    i = int(np.argmin(np.abs(np.log(rt60_grid / rt60))))
    tail_M = tails_RxKxM[i, int(rng.integers(tails_RxKxM.shape[1]))]
    wet = np.float32(rng.uniform(0.1, 0.2 + 0.6 * d))
    # The background bed: white noise in the room, so the reverb and the device colour it too.
    bed_snr = rng.uniform(40.0 - 30.0 * d, 50.0 - 25.0 * d)
    x_T = x_T + _white(rng, n, 10.0 ** (-bed_snr / 20.0))
    x_M = scipy.fft.rfft(x_T, m)
    lowpass = np.exp(rng.uniform(np.log(0.5 * sr * (1.0 - 0.85 * d)), np.log(0.5 * sr)))
    highpass = rng.uniform(20.0, 20.0 + 400.0 * d)
    order = rng.uniform(1.0, 4.0)
    tilt = rng.uniform(-(1.0 + 8.0 * d), 1.0 + 8.0 * d)
    eq_gain = rng.uniform(-15.0 * d, 15.0 * d)
    eq_centre = np.exp(rng.uniform(np.log(200.0), np.log(0.4 * sr)))
    eq_width = rng.uniform(0.5, 1.5)
    # The response is smooth, so it is evaluated on every 8th bin (8 bins are about 2 Hz for a
    # four-second clip) and held in between: a fraction of the cost, no audible difference.
    lf_G = np.maximum(_log2_bins(m)[::_RESPONSE_STEP] + np.float32(np.log2(sr / m)),
                      np.float32(np.log2(20.0)))
    # Butterworth-like magnitudes |H|^2 = 1 / (1 + (f / fc)^(2 order)), on the log axis.
    lp_G = np.exp2((lf_G - np.float32(np.log2(lowpass))) * np.float32(2 * order))
    hp_G = np.exp2((np.float32(np.log2(highpass)) - lf_G) * np.float32(4.0))
    # A peaking equaliser: a Gaussian bump (or dip) in dB on the log-frequency axis.
    eq_G = np.exp2(np.float32(eq_gain / 6.0206) * _band(lf_G, eq_centre, eq_width))
    h_G = _tilt(lf_G, tilt) * eq_G / np.sqrt((1.0 + lp_G) * (1.0 + hp_G))
    # Room and device in one response, applied in place (these complex temporaries of m / 2
    # bins cost as much as the transforms).
    h_M = tail_M * wet
    h_M += np.float32(1.0)
    h_M *= np.repeat(h_G, _RESPONSE_STEP)[:len(x_M)]
    x_M *= h_M
    y_T = scipy.fft.irfft(x_M, m, overwrite_x=True)[:n]
    level = rng.uniform(-40.0, -20.0)
    y_T = _unit(y_T) * np.float32(10.0 ** (level / 20.0))
    params.update(bed_snr_db=round(bed_snr, 2), rt60_s=round(float(rt60_grid[i]), 3),
                  reverb_wet=round(float(wet), 3),
                  lowpass_hz=round(float(lowpass), 1), highpass_hz=round(highpass, 1),
                  tilt_db_per_octave=round(tilt, 2), eq_gain_db=round(eq_gain, 2),
                  eq_centre_hz=round(float(eq_centre), 1), level_dbfs=round(level, 2))
    return y_T.astype(np.float32), params


def clip_seed(seed: int, set_name: str, class_id: int, index: int) -> tuple[int, int, int, int]:
    """The generator seed of one clip: unique per (data seed, set, class, index).

    Args:
        seed: data seed.
        set_name: "soundscapes" or "music".
        class_id: class index into the set's class names.
        index: clip index within the class.

    Returns:
        The seed tuple given to `np.random.default_rng`.
    """
    if set_name not in SETS:
        raise ValueError(f"unknown procedural set {set_name!r}; choose one of {', '.join(SETS)}")
    return (int(seed), _SET_IDS[set_name], int(class_id), int(index))


def synthesize(set_name: str, class_id: int, seed: tuple[int, ...] | int, sample_rate: int = 16000,
               seconds: float = 1.0, difficulty: float = 0.5,
               return_params: bool = False) -> np.ndarray | tuple[np.ndarray, dict]:
    """One clip of a class, with its nuisance factors, fully determined by its seed.

    Args:
        set_name: "soundscapes" or "music".
        class_id: class index into `SETS[set_name]`.
        seed: the clip's generator seed (see `clip_seed`).
        sample_rate: sampling rate in Hz.
        seconds: clip length.
        difficulty: nuisance strength in [0, 1].
        return_params: also return the drawn nuisance parameters.

    Returns:
        wave_T float32 (and a dict of nuisance parameters when asked).
    """
    if set_name not in SETS:
        raise ValueError(f"unknown procedural set {set_name!r}; choose one of {', '.join(SETS)}")
    classes = SETS[set_name]
    if not 0 <= class_id < len(classes):
        raise ValueError(f"class_id must be in [0, {len(classes)}), got {class_id}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if sample_rate < 4000:
        raise ValueError(f"sample_rate must be >= 4000 Hz for these synthesisers, got "
                         f"{sample_rate}")
    n = int(round(seconds * sample_rate))
    if n < 256:
        raise ValueError(f"clip of {seconds} s at {sample_rate} Hz is too short ({n} samples)")
    rng = np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed)
    # Size and speed: synthesising at a virtual rate sr / speed and playing at sr scales every
    # frequency and rate by `speed` (a smaller dog, a faster engine) at no cost. It makes the
    # spectral position of a class uninformative while its spectro-temporal shape remains.
    speed = 2.0 ** rng.uniform(-_SPEED_OCTAVES * difficulty, _SPEED_OCTAVES * difficulty)
    x_T = _SYNTHS[set_name][classes[class_id]](rng, n, int(round(sample_rate / speed)))
    y_T, params = _nuisances(rng, x_T, sample_rate, difficulty, set_name, class_id)
    params["speed"] = round(float(speed), 4)
    if not np.all(np.isfinite(y_T)):
        raise FloatingPointError(f"non-finite samples in {set_name}/{classes[class_id]} "
                                 f"seed {seed}")
    return (y_T, params) if return_params else y_T


def generate(set_name: str, indices: range | list[int], seed: int = 0, sample_rate: int = 16000,
             seconds: float = 1.0,
             difficulty: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips `indices` of every class of a set.

    Args:
        set_name: "soundscapes" or "music".
        indices: clip indices within each class (disjoint index sets give disjoint seeds).
        seed: data seed.
        sample_rate: sampling rate in Hz.
        seconds: clip length.
        difficulty: nuisance strength in [0, 1].

    Returns:
        (wave_NxT float32, labels_N int32, seeds_Nx4 int64), class-major order.
    """
    classes = SETS.get(set_name)
    if classes is None:
        raise ValueError(f"unknown procedural set {set_name!r}; choose one of {', '.join(SETS)}")
    n = int(round(seconds * sample_rate))
    idx = list(indices)
    waves = np.zeros((len(classes) * len(idx), n), np.float32)
    labels = np.zeros(len(waves), np.int32)
    seeds = np.zeros((len(waves), 4), np.int64)
    row = 0
    for c in range(len(classes)):
        for i in idx:
            s = clip_seed(seed, set_name, c, i)
            waves[row] = synthesize(set_name, c, s, sample_rate, seconds, difficulty)
            labels[row] = c
            seeds[row] = s
            row += 1
    return waves, labels, seeds


def split(set_name: str, n_per_class: int, train_ratio: float, seed: int = 0,
          sample_rate: int = 16000, seconds: float = 1.0,
          difficulty: float = 0.5) -> dict[str, np.ndarray]:
    """A train/test split by generator seed: indices below `round(n * train_ratio)` train.

    Args:
        set_name: "soundscapes" or "music".
        n_per_class: clips per class.
        train_ratio: fraction of each class used for training.
        seed: data seed.
        sample_rate: sampling rate in Hz.
        seconds: clip length.
        difficulty: nuisance strength in [0, 1].

    Returns:
        dict with wave_train, y_train, seeds_train, wave_test, y_test, seeds_test (the
        caller's own copies: the newest split is kept for the next identical call, so a run
        and its landscape part in one process synthesise the clips once, 2.5 s in `make run`).
    """
    cached = _split(set_name, int(n_per_class), float(train_ratio), int(seed), int(sample_rate),
                    float(seconds), float(difficulty))
    return {k: v.copy() for k, v in cached.items()}


@functools.lru_cache(maxsize=1)
def _split(set_name: str, n_per_class: int, train_ratio: float, seed: int, sample_rate: int,
           seconds: float, difficulty: float) -> dict[str, np.ndarray]:
    n_train = int(round(n_per_class * train_ratio))
    if not 0 < n_train < n_per_class:
        raise ValueError(f"n={n_per_class} clips per class with train_ratio={train_ratio} leaves "
                         f"an empty split ({n_train} train, {n_per_class - n_train} test)")
    tr = generate(set_name, range(n_train), seed, sample_rate, seconds, difficulty)
    te = generate(set_name, range(n_train, n_per_class), seed, sample_rate, seconds, difficulty)
    return {"wave_train": tr[0], "y_train": tr[1], "seeds_train": tr[2],
            "wave_test": te[0], "y_test": te[1], "seeds_test": te[2]}
