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

from research.data.synth.clips import SETS, clip_seed, generate, split, synthesize
from research.data.synth.instruments import MUSIC_CLASSES
from research.data.synth.soundscapes import SOUNDSCAPE_CLASSES

__all__ = ["MUSIC_CLASSES", "SETS", "SOUNDSCAPE_CLASSES", "clip_seed", "generate", "split",
           "synthesize"]
