"""The instrument families: flute, plucked, bowed, reed, brass, mallet, organ.

Each class plays one to three notes of its family (additive, plucked-string, bowed, reed, brass,
mallet and organ synthesis); pitch and velocity vary per note.
"""

from __future__ import annotations

import numpy as np

from research.data.synth.dsp import (
    SynthFn,
    _ar_env,
    _decay,
    _harmonics,
    _lookup,
    _phase,
    _sine,
    _table,
    _vibrato,
    _white,
)

MUSIC_CLASSES = ("flute", "plucked", "bowed", "reed", "brass", "mallet", "organ")


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


SYNTHS: dict[str, SynthFn] = {name: _music(name) for name in MUSIC_CLASSES}
