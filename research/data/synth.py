"""Procedural audio data sets: soundscapes and instrument families, generated from seeds, no files.

Each class is a parametric synthesiser whose parameters are drawn at random for every clip; every
clip then goes through the same chain of nuisance factors, whose strength the difficulty knob
`d` in [0, 1] sets (at d = 0 only the level, the onset and mild reverb and band limits vary):

- size and speed: every frequency and rate scaled by a factor 2^u, u ~ U(-2.4 d, 2.4 d)
  octaves, so the spectral position of a class says little and its spectro-temporal shape
  (sweeps, pulses, rhythm, harmonic structure) has to carry the decision;
- a distractor: another class of the same set mixed in with probability min(1, 1.2 d) at a
  signal-to-distractor ratio U(18 - 16 d, 30 - 16 d) dB;
- a background bed of noise at a signal-to-noise ratio U(40 - 30 d, 50 - 25 d) dB;
- reverberation: an exponentially decaying noise tail with RT60 ~ U(0.05, 0.05 + 0.9 d) s
  (snapped to a grid of 24 values; the tail comes from a fixed bank of 48) and a random
  wet level;
- a "device": random low-pass and high-pass band limits, a spectral tilt of up to
  +-(1 + 8 d) dB per octave and a peaking equaliser of up to +-15 d dB;
- a random onset (events start anywhere; stationary sounds fade in and out at random times);
- a random level, uniform in [-40, -20] dBFS RMS and drawn independently of the class, applied
  last, so the overall loudness of a clip carries no information about its class (peaks are not
  clipped; the samples are float32).

Every clip has its own generator seed, the tuple `(seed, set id, class id, index)`; a data set
puts indices `[0, n_train)` of each class in the training split and the rest in the test split,
so no generator seed (and no near-duplicate) crosses the two splits.

Everything is vectorised numpy (wavetable oscillators, noise shaped in the frequency domain, one
FFT pass for reverb and device filtering): a four-second 16 kHz clip takes a few milliseconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.signal

SOUNDSCAPE_CLASSES = ("rain", "wind", "sea_waves", "birdsong", "crickets", "siren", "car_horn",
                      "engine_idle", "dog_bark", "clock_tick")
MUSIC_CLASSES = ("flute", "plucked", "bowed", "reed", "brass", "mallet", "organ")
SETS = {"soundscapes": SOUNDSCAPE_CLASSES, "music": MUSIC_CLASSES}
# Part of every clip's seed, so the two sets never share a generator stream.
_SET_IDS = {"soundscapes": 1, "music": 2}
_TABLE_BITS = 11
_SPEED_OCTAVES = 2.4  # speed range at difficulty 1, in octaves either side
_TABLE = 2**_TABLE_BITS  # wavetable length (a power of two: the phase indexes it by a shift)

SynthFn = Callable[[np.random.Generator, int, int], np.ndarray]


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Soundscape classes: each returns an un-normalised float32 waveform of n samples.
# ----------------------------------------------------------------------------------------------


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lf_F = _log2f(n, sr)
    bed = _unit(_shaped_noise(rng, n, _band(lf_F, rng.uniform(800.0, 6000.0),
                                            rng.uniform(1.0, 2.0))))
    # Droplets: noise bursts with millisecond decays at a high Poisson rate.
    pos = _events(rng, n, sr, rng.uniform(80.0, 600.0), lo=4, hi=n // 4)
    imp_T = np.bincount(pos, weights=rng.lognormal(0.0, 0.6, len(pos)), minlength=n)
    env_T = _decay_env(imp_T, rng.uniform(0.002, 0.008), sr)
    drops = _unit((rng.random(n, dtype=np.float32) - np.float32(0.5)) * env_T)
    return (np.float32(rng.uniform(0.2, 1.0)) * bed + drops) * _fades(rng, n, sr)


def _wind(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lf_F = _log2f(n, sr)
    out = np.zeros(n, np.float32)
    # Two bands of noise, each with its own slow gusts.
    for _ in range(2):
        gain_F = _band(lf_F, rng.uniform(100.0, 2000.0), rng.uniform(0.15, 0.8))
        gust_T = np.exp(_smooth(rng, n, int(rng.integers(3, 7)), -2.0, 0.5))
        out += _unit(_shaped_noise(rng, n, gain_F)) * gust_T
    return out * _fades(rng, n, sr)


def _sea_waves(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lf_F = _log2f(n, sr)
    period = rng.uniform(0.7, 3.0)
    phase = rng.uniform(0.0, 1.0)
    swell_T = np.power(np.float32(0.5) - np.float32(0.5) * _sin(_phase(1.0 / period, n, sr,
                                                                         phase)),
                       np.float32(rng.uniform(1.0, 3.0)))
    floor = np.float32(rng.uniform(0.05, 0.3))
    low = _unit(_shaped_noise(rng, n, _tilt(lf_F, rng.uniform(-6.0, -3.0)) * _band(
        lf_F, rng.uniform(200.0, 600.0), 2.0)))
    # The wash (hiss) lags the swell: the wave breaks after it peaks.
    wash_T = np.roll(swell_T, int(rng.uniform(0.05, 0.25) * period * sr))
    hiss = _unit(_shaped_noise(rng, n, _band(lf_F, rng.uniform(2000.0, 5000.0), 1.0)))
    return (floor + swell_T) * low + np.float32(rng.uniform(0.2, 0.8)) * wash_T * hiss


def _birdsong(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f_T = np.full(n, 1000.0, np.float32)
    env_T = np.zeros(n, np.float32)
    for start in _events(rng, n, sr, rng.uniform(3.0, 10.0), lo=1, hi=60):
        length = int(rng.uniform(0.03, 0.15) * sr)
        stop = min(n, start + length)
        u_L = _arange32(n)[:stop - start] * np.float32(1.0 / max(length - 1, 1))
        f_start = rng.uniform(1500.0, 6500.0)
        f_end = f_start * 2.0 ** rng.uniform(-1.0, 1.0)
        trill_hz = rng.uniform(20.0, 80.0) * length / sr
        trill = rng.uniform(0.0, 0.1) * np.sin(np.float32(2.0 * np.pi * trill_hz) * u_L)
        f_T[start:stop] = f_start + (f_end - f_start) * u_L + trill * f_start
        env_T[start:stop] = np.maximum(env_T[start:stop], np.sin(np.float32(np.pi) * u_L) ** 2)
    phase_T = _phase(np.minimum(f_T, 0.22 * sr), n, sr)
    tone = _sin(phase_T) + np.float32(rng.uniform(0.0, 0.4)) * _sin(phase_T * np.uint32(2))
    return tone * env_T


def _crickets(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    carrier = min(rng.uniform(2500.0, 7000.0), 0.4 * sr)
    pulse_rate = rng.uniform(15.0, 60.0)
    # sin(pi u)^4 over each pulse period u in [0, 1): a half-rate sine, squared twice.
    half = _sine(pulse_rate / 2.0, n, sr)
    pulse_T = np.square(np.square(half))
    if rng.random() < 0.7:
        # Chirps: groups of pulses repeating a few times a second.
        chirp_rate = rng.uniform(1.5, 5.0)
        duty = min(0.9, rng.integers(2, 7) * chirp_rate / pulse_rate)
        gate_T = _phase(chirp_rate, n, sr, rng.uniform()) < np.uint32(duty * 2**32)
        pulse_T = pulse_T * gate_T
    phase_T = _phase(carrier, n, sr, rng.uniform())
    tone = _sin(phase_T) + np.float32(rng.uniform(0.0, 0.3)) * _sin(phase_T * np.uint32(2))
    return tone * pulse_T * _fades(rng, n, sr)


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    centre = rng.uniform(400.0, 1500.0)
    ratio = rng.uniform(1.2, 1.8)
    # Yelp (fast) to wail (slow) sweeps, fast enough that a one-second clip shows one.
    sweep_phase = _phase(1.0 / rng.uniform(0.15, 1.2), n, sr, rng.uniform())
    if rng.random() < 0.5:
        sweep_T = _sin(sweep_phase)
    else:
        # A triangle: the phase, folded.
        u_T = sweep_phase.astype(np.float32) * np.float32(2.0**-32)
        sweep_T = np.float32(2.0) * np.abs(np.float32(2.0) * u_T - np.float32(1.0)) - 1.0
    f_T = np.float32(centre) * np.exp2(np.float32(0.5 * np.log2(ratio)) * sweep_T)
    h = _harmonics(centre * ratio, sr, 8)
    table = _table(np.power(np.arange(1, h + 1), -rng.uniform(0.6, 2.0)))
    return _lookup(table, _phase(f_T, n, sr)) * _fades(rng, n, sr)


def _car_horn(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0 = rng.uniform(250.0, 700.0)
    h = _harmonics(f0 * 1.27, sr, 20)
    table = _table(np.power(np.arange(1, h + 1), -rng.uniform(0.6, 1.3)))
    wobble_T = 1.0 + np.float32(0.004) * _sine(rng.uniform(3.0, 8.0), n, sr)
    tone = _lookup(table, _phase(np.float32(f0) * wobble_T, n, sr))
    if rng.random() < 0.6:
        # Two-tone horns: a major or minor third above.
        ratio = 1.26 if rng.random() < 0.5 else 1.19
        tone = tone + _lookup(table, _phase(np.float32(f0 * ratio) * wobble_T, n, sr,
                                            rng.uniform()))
    gate_T = np.zeros(n, np.float32)
    ramp = 0.01 * sr
    for start in _events(rng, n, sr, 1.5, lo=1, hi=4):
        stop = start + max(rng.uniform(0.15, 0.8) * sr, 3 * ramp)
        lo, hi = int(start), min(n, int(stop) + 1)
        beep = _trapezoid(hi - lo, 0.0, ramp, stop - lo, ramp)
        gate_T[lo:hi] = np.maximum(gate_T[lo:hi], beep)
    return tone * gate_T


def _engine_idle(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    rate = rng.uniform(15.0, 45.0)
    f_T = np.float32(rate) * (1.0 + _smooth(rng, n, 5, -0.03, 0.03))
    h = _harmonics(rate * 1.03, sr, 60)
    harm_H = np.arange(1, h + 1) * rate
    # A pulse train shaped by one or two resonances (the exhaust and the body).
    env_H = np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(80.0, 400.0)) /
                                    rng.uniform(0.5, 1.5)))
    env_H += 0.3 * np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(400.0, 1500.0)) / 0.5))
    phase_T = _phase(f_T, n, sr)
    firing_T = _sin(phase_T)
    # Uneven firing: amplitude modulation at half the firing rate.
    uneven_T = _sin(phase_T >> np.uint32(1))
    tone = _unit(_lookup(_table(env_H), phase_T)) * (
        1.0 + np.float32(rng.uniform(0.0, 0.5)) * uneven_T)
    rumble = _unit(_shaped_noise(rng, n, _band(_log2f(n, sr), rng.uniform(60.0, 300.0), 1.0)))
    return tone + np.float32(rng.uniform(0.1, 0.5)) * rumble * (1.0 + firing_T)


def _dog_bark(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f_T = np.full(n, 400.0, np.float32)
    env_T = np.zeros(n, np.float32)
    for start in _events(rng, n, sr, 2.0, lo=1, hi=5):
        length = int(rng.uniform(0.08, 0.25) * sr)
        stop = min(n, start + length)
        u_L = np.arange(stop - start, dtype=np.float32)
        f0 = rng.uniform(300.0, 800.0)
        f_T[start:stop] = f0 * (1.0 - rng.uniform(0.1, 0.4) * u_L / length)
        attack = rng.uniform(0.005, 0.015) * sr
        env_T[start:stop] = np.minimum(u_L / attack, 1.0) * np.exp(-u_L / (0.35 * length))
    h = _harmonics(800.0, sr, 20)
    harm_H = np.arange(1, h + 1) * 550.0
    formants_H = (np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(700.0, 1500.0)) / 0.4))
                  + 0.6 * np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(1800.0, 3000.0))
                                                  / 0.3)))
    tone = _lookup(_table(formants_H + 0.05), _phase(f_T, n, sr))
    breath = (rng.random(n, dtype=np.float32) - np.float32(0.5)) * np.float32(
        rng.uniform(0.3, 2.0))
    return (tone + breath) * env_T


def _clock_tick(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    interval = rng.uniform(0.2, 0.6) * sr
    pos = np.arange(rng.uniform(0.0, interval), n, interval).astype(np.int64)
    # Tick and tock: alternate ticks differ in level.
    amps = np.where(np.arange(len(pos)) % 2 == 0, 1.0, rng.uniform(0.4, 1.0))
    imp_T = np.bincount(pos, weights=amps, minlength=n)[:n]
    env_T = _decay_env(imp_T, rng.uniform(0.002, 0.012), sr)
    centre = rng.uniform(1000.0, 6000.0)
    noise = _unit(_shaped_noise(rng, n, _band(_log2f(n, sr), centre, rng.uniform(0.3, 1.0))))
    ring = _sine(min(centre * rng.uniform(0.8, 1.2), 0.4 * sr), n, sr)
    return (noise + np.float32(rng.uniform(0.0, 1.0)) * ring) * env_T


# ----------------------------------------------------------------------------------------------
# Music classes: notes of an instrument family; pitch and velocity vary.
# ----------------------------------------------------------------------------------------------


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


def _note_flute(rng, length, sr, f0, vel):
    f_L = np.float32(f0) * _vibrato(rng, length, sr, rng.uniform(0.003, 0.01))
    h = _harmonics(f0 * 1.01, sr, 4)
    amps = np.array([1.0, rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.2), 0.03])[:h] * (
        [1.0, vel, vel, vel][:h])
    tone = _lookup(_table(amps), _phase(f_L, length, sr))
    breath = _white(rng, length, rng.uniform(0.03, 0.15))
    return (tone + breath) * _ar_env(length, sr, rng.uniform(0.04, 0.12), 0.05)


def _note_plucked(rng, length, sr, f0, vel):
    h = _harmonics(f0, sr, 40)
    k_H = np.arange(1, h + 1)
    pos = rng.uniform(0.08, 0.3)
    bright = np.abs(np.sin(np.pi * k_H * pos)) / k_H ** (1.5 - 0.5 * vel)
    dull = bright * np.exp(-(k_H - 1) / 2.0)
    phase_L = _phase(f0, length, sr, rng.uniform())
    tau = rng.uniform(0.3, 1.5) * (220.0 / f0) ** 0.3
    # Upper partials die first: crossfade from a bright to a dull waveform.
    fast = _decay(length, sr, rng.uniform(0.03, 0.15))
    env = _decay(length, sr, tau) * _ar_env(length, sr, 0.002)
    return (fast * _lookup(_table(bright), phase_L)
            + (1 - fast) * _lookup(_table(dull), phase_L)) * env


def _note_bowed(rng, length, sr, f0, vel):
    f_L = np.float32(f0) * _vibrato(rng, length, sr, rng.uniform(0.008, 0.02))
    h = _harmonics(f0 * 1.02, sr, 30)
    harm_H = np.arange(1, h + 1) * f0
    body_H = 1.0 + 2.0 * np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(400, 700)) / 0.3))
    body_H += 1.5 * np.exp(-0.5 * np.square(np.log2(harm_H / rng.uniform(2000, 3500)) / 0.4))
    amps = body_H / np.arange(1, h + 1) ** (1.3 - 0.4 * vel)
    tone = _lookup(_table(amps), _phase(f_L, length, sr))
    scratch = _white(rng, length, rng.uniform(0.02, 0.1))
    return (tone + scratch) * _ar_env(length, sr, rng.uniform(0.08, 0.25), 0.08)


def _note_reed(rng, length, sr, f0, vel):
    f_L = np.float32(f0) * _vibrato(rng, length, sr, rng.uniform(0.0, 0.004))
    h = _harmonics(f0 * 1.01, sr, 25)
    k_H = np.arange(1, h + 1)
    # A clarinet-like closed pipe: odd harmonics dominate.
    amps = np.where(k_H % 2 == 1, 1.0, rng.uniform(0.02, 0.15)) / k_H ** (1.4 - 0.5 * vel)
    tone = _lookup(_table(amps), _phase(f_L, length, sr))
    return tone * _ar_env(length, sr, rng.uniform(0.02, 0.06), 0.03)


def _note_brass(rng, length, sr, f0, vel):
    attack = rng.uniform(0.03, 0.08)
    # The lip buzz starts flat and settles within the attack.
    f_L = np.float32(f0) * (1.0 - np.float32(rng.uniform(0.01, 0.04)) * _decay(length, sr,
                                                                              attack / 2))
    h = _harmonics(f0, sr, 30)
    k_H = np.arange(1, h + 1)
    phase_L = _phase(f_L, length, sr)
    env = _ar_env(length, sr, attack, 0.05)
    # Brass brightens as it gets louder: the bright waveform follows the envelope squared.
    mix = np.float32(vel) * env * env
    return env * (mix * _lookup(_table(1.0 / k_H ** 0.7), phase_L)
                  + (1 - mix) * _lookup(_table(1.0 / k_H ** 2.5), phase_L))


def _note_mallet(rng, length, sr, f0, vel):
    out = np.zeros(length, np.float32)
    tau = rng.uniform(0.2, 0.8)
    # A marimba bar's inharmonic modes; higher modes decay faster.
    for ratio, amp in ((1.0, 1.0), (3.93, 0.5 * vel), (9.54, 0.25 * vel)):
        if ratio * f0 < 0.45 * sr:
            out += np.float32(amp) * _sine(ratio * f0, length, sr) * _decay(length, sr,
                                                                            tau / ratio)
    strike = _white(rng, length, 0.5 * vel) * _decay(length, sr, 0.004)
    return (out + strike) * _ar_env(length, sr, 0.001)


def _note_organ(rng, length, sr, f0, vel):
    h = _harmonics(f0, sr, 16)
    amps = np.zeros(h)
    for k in (1, 2, 3, 4, 6, 8):
        if k <= h:
            amps[k - 1] = rng.choice([0.0, 0.3, 0.6, 1.0])
    amps[0] = max(amps[0], 0.5)
    tremolo = 1.0 + np.float32(rng.uniform(0.0, 0.2)) * _sine(rng.uniform(5.0, 7.0), length, sr)
    return (_lookup(_table(amps), _phase(f0, length, sr)) * tremolo
            * _ar_env(length, sr, 0.005, 0.01))


_NOTES = {"flute": (_note_flute, 60, 96), "plucked": (_note_plucked, 40, 79),
          "bowed": (_note_bowed, 55, 91), "reed": (_note_reed, 50, 86),
          "brass": (_note_brass, 52, 82), "mallet": (_note_mallet, 60, 96),
          "organ": (_note_organ, 36, 84)}


def _music(name: str) -> SynthFn:
    note_fn, lo, hi = _NOTES[name]

    def synth(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        count = int(rng.integers(1, 4))
        starts = np.sort(rng.integers(0, max(1, n // 2), count))
        for i, start in enumerate(starts):
            stop = starts[i + 1] + int(0.05 * sr) if i + 1 < count else n
            stop = min(n, max(stop, start + int(0.1 * sr)))
            f0 = 440.0 * 2.0 ** ((rng.uniform(lo, hi) - 69.0) / 12.0)
            vel = rng.uniform(0.3, 1.0)
            out[start:stop] += vel * note_fn(rng, stop - start, sr, f0, vel)
        return out

    return synth


_SYNTHS: dict[str, dict[str, SynthFn]] = {
    "soundscapes": {"rain": _rain, "wind": _wind, "sea_waves": _sea_waves,
                    "birdsong": _birdsong, "crickets": _crickets, "siren": _siren,
                    "car_horn": _car_horn, "engine_idle": _engine_idle, "dog_bark": _dog_bark,
                    "clock_tick": _clock_tick},
    "music": {name: _music(name) for name in MUSIC_CLASSES},
}


# ----------------------------------------------------------------------------------------------
# Nuisance chain and the public API
# ----------------------------------------------------------------------------------------------


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
        dict with wave_train, y_train, seeds_train, wave_test, y_test, seeds_test.
    """
    n_train = int(round(n_per_class * train_ratio))
    if not 0 < n_train < n_per_class:
        raise ValueError(f"n={n_per_class} clips per class with train_ratio={train_ratio} leaves "
                         f"an empty split ({n_train} train, {n_per_class - n_train} test)")
    tr = generate(set_name, range(n_train), seed, sample_rate, seconds, difficulty)
    te = generate(set_name, range(n_train, n_per_class), seed, sample_rate, seconds, difficulty)
    return {"wave_train": tr[0], "y_train": tr[1], "seeds_train": tr[2],
            "wave_test": te[0], "y_test": te[1], "seeds_test": te[2]}
