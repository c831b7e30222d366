"""Signal-processing building blocks of the procedural sets: oscillators, envelopes, noise.

Wavetable oscillators, noise shaped in the frequency domain, envelopes and event onsets, all
vectorised numpy in float32. Every function that draws takes the clip's generator, so a clip
stays fully determined by its seed. The names keep their leading underscore: they are shared by
the modules of `research.data.synth` and are not part of its public API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.signal

_TABLE_BITS = 11
_TABLE = 2**_TABLE_BITS  # wavetable length (a power of two: the phase indexes it by a shift)

# A class's synthesiser: (rng, n samples, sample rate) -> un-normalised float32 waveform.
SynthFn = Callable[[np.random.Generator, int, int], np.ndarray]


def _rms(x: np.ndarray) -> float:
    x = np.asarray(x, np.float32)
    # A BLAS dot product: much faster than squaring into a float64 temporary.
    return float(np.sqrt(max(float(x @ x), 0.0) / max(len(x), 1) + 1e-20))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.float32(_rms(x))).astype(np.float32, copy=False)


def _readonly(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)
    return x


@functools.lru_cache(maxsize=32)
def _arange32(n: int) -> np.ndarray:
    return _readonly(np.arange(n, dtype=np.float32))


def _t(n: int, sr: float) -> np.ndarray:
    """Sample times in seconds, float32 (sample indices when sr = 1)."""
    # Cached per length only: the speed nuisance makes the (virtual) rate vary from clip to clip.
    return _arange32(n) if sr == 1 else _arange32(n) * np.float32(1.0 / sr)


@functools.lru_cache(maxsize=32)
def _k(n: int) -> np.ndarray:
    return _readonly(np.arange(n, dtype=np.uint32))


@functools.lru_cache(maxsize=32)
def _log2_bins(n: int) -> np.ndarray:
    return _readonly(np.log2(np.maximum(np.arange(n // 2 + 1), 1e-3)).astype(np.float32))


def _log2f(n: int, sr: float) -> np.ndarray:
    """log2 of the rfft bin frequencies (floored at 20 Hz), float32, for bands and slopes."""
    return np.maximum(_log2_bins(n) + np.float32(np.log2(sr / n)), np.float32(np.log2(20.0)))


def _band(log2f_F: np.ndarray, centre: float, octaves: float) -> np.ndarray:
    """A Gaussian band on a log-frequency axis, `octaves` wide (standard deviation)."""
    z_F = (log2f_F - np.float32(np.log2(centre))) * np.float32(1.0 / octaves)
    return np.exp(np.float32(-0.5) * z_F * z_F)


def _tilt(log2f_F: np.ndarray, db_per_octave: float) -> np.ndarray:
    """A spectral slope around 1 kHz."""
    return np.exp2((log2f_F - np.float32(np.log2(1000.0))) * np.float32(db_per_octave / 6.0206))


def _noise_spectrum(rng: np.random.Generator, nf: int) -> np.ndarray:
    """Random complex spectrum with uniform real and imaginary parts.

    Uniform draws are cheaper than Gaussian ones, and the inverse FFT of many independent bins
    is Gaussian anyway (central limit theorem).
    """
    # Interleaved draws viewed as complex64: (re, im) pairs without building the complex array.
    z_2F = rng.random(2 * nf, dtype=np.float32)
    z_2F -= np.float32(0.5)
    return z_2F.view(np.complex64)


def _shaped_noise(rng: np.random.Generator, n: int, gain_F: np.ndarray) -> np.ndarray:
    """Noise with the magnitude response gain_F, drawn directly in the frequency domain."""
    return scipy.fft.irfft(_noise_spectrum(rng, n // 2 + 1) * gain_F, n)


@functools.lru_cache(maxsize=32)
def _interp_grid(n: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Left knot index and float32 fraction of n evenly spaced samples across `points` knots."""
    u_T = np.linspace(0.0, points - 1.0, n)
    left_T = np.minimum(u_T.astype(np.intp), points - 2)
    return _readonly(left_T), _readonly((u_T - left_T).astype(np.float32))


def _smooth(rng: np.random.Generator, n: int, points: int, lo: float, hi: float) -> np.ndarray:
    """A slowly varying random curve: `points` uniform values, linearly interpolated over n."""
    knots = rng.uniform(lo, hi, points).astype(np.float32)
    # np.interp on the same grid, but from a cached index and fraction in float32 (5x faster).
    left_T, frac_T = _interp_grid(n, points)
    lo_T = knots[left_T]
    return lo_T + (knots[left_T + 1] - lo_T) * frac_T


def _decay_env(impulses_T: np.ndarray, tau_s: float, sr: float) -> np.ndarray:
    """Exponentially decaying envelopes started by impulses (a one-pole filter, in C)."""
    a = np.float32(np.exp(-1.0 / max(tau_s * sr, 1.0)))
    b = np.ones(1, np.float32)
    return scipy.signal.lfilter(b, np.array([1.0, -a], np.float32),
                                np.asarray(impulses_T, np.float32))


def _table(amps_H: np.ndarray) -> np.ndarray:
    """One period of a waveform with harmonic amplitudes amps_H (harmonics 1..H, sine phase)."""
    spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    h = min(len(amps_H), _TABLE // 2 - 1)
    spec[1:h + 1] = -0.5j * _TABLE * np.asarray(amps_H[:h])
    return np.fft.irfft(spec, _TABLE).astype(np.float32)


def _phase(f: np.ndarray | float, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    """Phase of a frequency track as a 32-bit fixed-point accumulator (one unit = 2**-32 cycle).

    Unsigned integer arithmetic wraps exactly at one cycle, so the phase never loses precision
    however long the clip, and it costs a multiply (constant frequency) or a cumulative sum.
    """
    start = np.uint32(int(phase0 * 2**32) % 2**32)
    if np.ndim(f) == 0:
        return _k(n) * np.uint32(int(round(float(f) / sr * 2**32)) % 2**32) + start
    inc_T = (np.asarray(f, np.float32) * np.float32(2**32 / sr)).astype(np.uint32)
    return np.cumsum(inc_T, dtype=np.uint32) + start


def _lookup(table: np.ndarray, phase_T: np.ndarray) -> np.ndarray:
    return table[phase_T >> np.uint32(32 - _TABLE_BITS)]


def _sin(phase_T: np.ndarray) -> np.ndarray:
    return np.sin(phase_T.astype(np.float32) * np.float32(2.0 * np.pi / 2**32))


def _sine(f: float, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    return _sin(_phase(f, n, sr, phase0))


def _harmonics(f0_max: float, sr: int, limit: int = 40) -> int:
    """How many harmonics of f0_max fit below 0.45 sr (band-limited, so no aliasing)."""
    return int(max(1, min(limit, np.floor(0.45 * sr / max(f0_max, 1.0)))))


def _trapezoid(n: int, start: float, rise: float, stop: float, fall: float) -> np.ndarray:
    """0 before `start`, linear up over `rise` samples, 1, linear down to 0 at `stop`."""
    k_T = _t(n, 1)
    up = (k_T - np.float32(start)) * np.float32(1.0 / max(rise, 1.0))
    down = (np.float32(stop) - k_T) * np.float32(1.0 / max(fall, 1.0))
    return np.clip(np.minimum(up, down), np.float32(0.0), np.float32(1.0))


def _fades(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A random start and end for a stationary sound (the onset nuisance)."""
    ramp = rng.uniform(0.01, 0.15) * sr
    return _trapezoid(n, rng.uniform(0.0, 0.3) * n, ramp, rng.uniform(0.7, 1.0) * n, ramp)


def _events(rng: np.random.Generator, n: int, sr: int, rate_hz: float, lo: int = 1,
            hi: int = 1000) -> np.ndarray:
    """Sorted random event onsets (samples): a Poisson count, at least `lo`."""
    k = int(np.clip(rng.poisson(rate_hz * n / sr), lo, hi))
    return np.sort(rng.integers(0, n, k))


def _vibrato(rng: np.random.Generator, length: int, sr: int, depth: float) -> np.ndarray:
    """Frequency multiplier of a delayed vibrato (it fades in over the first 0.1-0.4 s)."""
    onset = np.minimum(_t(length, sr) * np.float32(1.0 / rng.uniform(0.1, 0.4)), np.float32(1.0))
    wobble = _sine(rng.uniform(4.5, 7.0), length, sr, rng.uniform())
    return 1.0 + np.float32(depth) * onset * wobble


def _ar_env(length: int, sr: int, attack_s: float, release_s: float = 0.02) -> np.ndarray:
    """Linear attack and release."""
    a = min(max(attack_s * sr, 1.0), length / 2)
    r = min(max(release_s * sr, 1.0), length / 2)
    return _trapezoid(length, 0.0, a, length, r)


def _white(rng: np.random.Generator, length: int, scale: float) -> np.ndarray:
    return (rng.random(length, dtype=np.float32) - np.float32(0.5)) * np.float32(scale * 3.46)


def _decay(length: int, sr: int, tau_s: float) -> np.ndarray:
    return np.exp(_t(length, sr) * np.float32(-1.0 / tau_s))
