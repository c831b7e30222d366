"""The soundscape classes, one parametric synthesiser each.

Rain, wind, sea waves, birdsong, crickets, siren, car horn, engine idle, dog bark, clock tick.
Each synthesiser returns an un-normalised float32 waveform of n samples, its parameters drawn at
random from the clip's generator.
"""

from __future__ import annotations

import numpy as np

from research.data.synth.dsp import (
    SynthFn,
    _arange32,
    _band,
    _decay_env,
    _events,
    _fades,
    _harmonics,
    _log2f,
    _lookup,
    _phase,
    _shaped_noise,
    _sin,
    _sine,
    _smooth,
    _table,
    _tilt,
    _trapezoid,
    _unit,
)

SOUNDSCAPE_CLASSES = ("rain", "wind", "sea_waves", "birdsong", "crickets", "siren", "car_horn",
                      "engine_idle", "dog_bark", "clock_tick")


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


SYNTHS: dict[str, SynthFn] = {
    "rain": _rain, "wind": _wind, "sea_waves": _sea_waves, "birdsong": _birdsong,
    "crickets": _crickets, "siren": _siren, "car_horn": _car_horn, "engine_idle": _engine_idle,
    "dog_bark": _dog_bark, "clock_tick": _clock_tick}
