"""Audio features: log-mel, MFCC, MFCC statistics with librosa or the JAX front end; cache.

All settings default to librosa's (see DESIGN.md, "Audio features"); batches of clips are computed
in one vectorised librosa call. With `backend="jax"` the same features come from
`research.audio.frontend` (jitted, batched, on the default JAX device: a GPU computes them in a
fraction of librosa's time, and no librosa is needed), within 1e-3 dB of librosa's. `top_db`
floors each clip at its own maximum, exactly as calling librosa on one clip at a time. Features
are cached on disk under a key made of the feature settings, the backend's version and the audio
samples themselves, written atomically (a temporary file, then `os.replace`), so an interrupted
run never leaves a half-written cache entry and a change of any setting or of any sample
recomputes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from research.io import atomic_write_bytes

FEATURES = ("logmel", "mfcc", "mfcc_stats")
BACKENDS = ("librosa", "jax")
_JAX_BATCH = 64  # clips per front-end call: one compiled shape, bounded device memory
_LOG = logging.getLogger(__name__)


def _librosa():
    try:
        import librosa
    except ImportError as e:  # pragma: no cover - librosa is a declared dependency
        raise ImportError("research.audio.features needs librosa (pip install librosa); the JAX "
                          "front end research.audio.frontend works without it") from e
    return librosa


def _check_waves(wave_NxT: np.ndarray) -> np.ndarray:
    wave_NxT = np.asarray(wave_NxT)
    if wave_NxT.ndim != 2:
        raise ValueError(f"expected waveforms wave_NxT (clips x samples), got shape "
                         f"{wave_NxT.shape}")
    if not np.all(np.isfinite(wave_NxT)):
        bad = np.flatnonzero(~np.all(np.isfinite(wave_NxT), axis=1))
        raise ValueError(f"non-finite samples (NaN or inf) in clips {bad[:10].tolist()}"
                         f"{' ...' if len(bad) > 10 else ''}")
    return wave_NxT.astype(np.float32, copy=False)


def logmel(wave_NxT: np.ndarray, sample_rate: int, n_fft: int = 2048, hop_length: int = 512,
           n_mels: int = 128, fmin: float = 0.0, fmax: float | None = None,
           top_db: float | None = 80.0) -> np.ndarray:
    """Log-mel spectrograms in dB: `librosa.power_to_db(librosa.feature.melspectrogram(...))`.

    Args:
        wave_NxT: clips of equal length.
        sample_rate: sampling rate in Hz.
        n_fft: FFT size.
        hop_length: hop between frames.
        n_mels: mel bands.
        fmin: lowest mel band edge in Hz.
        fmax: highest mel band edge in Hz (default sample_rate / 2).
        top_db: dynamic range kept below each clip's maximum (None: no floor).

    Returns:
        spec_NxFxT float32 (F = n_mels, T frames).
    """
    librosa = _librosa()
    wave_NxT = _check_waves(wave_NxT)
    mel_NxFxT = librosa.feature.melspectrogram(y=wave_NxT, sr=sample_rate, n_fft=n_fft,
                                               hop_length=hop_length, n_mels=n_mels, fmin=fmin,
                                               fmax=fmax)
    db_NxFxT = librosa.power_to_db(mel_NxFxT, ref=1.0, amin=1e-10, top_db=None)
    if top_db is not None:
        # librosa would floor the whole batch at its global maximum; per clip is what one call
        # per clip gives.
        floor_N = db_NxFxT.max(axis=(1, 2)) - top_db
        db_NxFxT = np.maximum(db_NxFxT, floor_N[:, None, None])
    return db_NxFxT.astype(np.float32)


def mfcc(wave_NxT: np.ndarray, sample_rate: int, n_mfcc: int = 20, n_fft: int = 2048,
         hop_length: int = 512, n_mels: int = 128, fmin: float = 0.0,
         fmax: float | None = None, top_db: float | None = 80.0) -> np.ndarray:
    """MFCCs (`librosa.feature.mfcc` of the dB mel spectrogram, orthonormal DCT-II).

    Args:
        wave_NxT: clips of equal length.
        sample_rate: sampling rate in Hz.
        n_mfcc: coefficients.
        n_fft: FFT size.
        hop_length: hop between frames.
        n_mels: mel bands.
        fmin: lowest mel band edge in Hz.
        fmax: highest mel band edge in Hz.
        top_db: dynamic range of the dB mel spectrogram.

    Returns:
        mfcc_NxKxT float32.
    """
    librosa = _librosa()
    db_NxFxT = logmel(wave_NxT, sample_rate, n_fft, hop_length, n_mels, fmin, fmax, top_db)
    return librosa.feature.mfcc(S=db_NxFxT, n_mfcc=n_mfcc).astype(np.float32)


def mfcc_stats(wave_NxT: np.ndarray, sample_rate: int, n_mfcc: int = 20, n_fft: int = 2048,
               hop_length: int = 512, n_mels: int = 128, fmin: float = 0.0,
               fmax: float | None = None, top_db: float | None = 80.0) -> np.ndarray:
    """MFCC summary statistics: the mean and standard deviation of each coefficient over time.

    Args:
        wave_NxT: clips of equal length.
        sample_rate: sampling rate in Hz.
        n_mfcc: coefficients.
        n_fft: FFT size.
        hop_length: hop between frames.
        n_mels: mel bands.
        fmin: lowest mel band edge in Hz.
        fmax: highest mel band edge in Hz.
        top_db: dynamic range of the dB mel spectrogram.

    Returns:
        x_Nx(2K) float32: K means, then K standard deviations.
    """
    m_NxKxT = mfcc(wave_NxT, sample_rate, n_mfcc, n_fft, hop_length, n_mels, fmin, fmax, top_db)
    return _stats(m_NxKxT)


def _stats(m_NxKxT: np.ndarray) -> np.ndarray:
    """The `mfcc_stats` vector of MFCCs from either backend: K means over time, then K stds."""
    return np.concatenate([m_NxKxT.mean(axis=2), m_NxKxT.std(axis=2)], axis=1).astype(np.float32)


def loudness(wave_NxT: np.ndarray, n_fft: int = 2048, hop_length: int = 512) -> np.ndarray:
    """Loudness only: the clip's overall RMS and the mean of its frame RMS, both in dB.

    The features of the loudness-only baseline: they say how loud a clip is and nothing about
    its spectrum.

    Args:
        wave_NxT: clips of equal length.
        n_fft: frame length for the frame RMS (`librosa.feature.rms`).
        hop_length: hop between frames.

    Returns:
        x_Nx2 float32: [overall RMS dB, mean frame RMS dB].
    """
    librosa = _librosa()
    wave_NxT = _check_waves(wave_NxT)
    overall_N = 10.0 * np.log10(np.mean(np.square(wave_NxT, dtype=np.float64), axis=1) + 1e-12)
    rms_NxT = librosa.feature.rms(y=wave_NxT, frame_length=n_fft, hop_length=hop_length)[:, 0]
    frames_N = np.mean(20.0 * np.log10(rms_NxT + 1e-6), axis=1)
    return np.stack([overall_N, frames_N], axis=1).astype(np.float32)


def settings_of(feature: str, sample_rate: int, n_fft: int = 2048, hop_length: int = 512,
                n_mels: int = 128, n_mfcc: int = 20, fmin: float = 0.0,
                fmax: float | None = None, top_db: float | None = 80.0,
                backend: str = "librosa") -> dict[str, Any]:
    """The settings that define a feature (and its cache key), as a JSON-ready dict.

    Args:
        feature: logmel, mfcc or mfcc_stats.
        sample_rate: sampling rate in Hz.
        n_fft: FFT size.
        hop_length: hop between frames.
        n_mels: mel bands.
        n_mfcc: MFCC coefficients (ignored for logmel).
        fmin: lowest mel band edge in Hz.
        fmax: highest mel band edge in Hz (None: sample_rate / 2).
        top_db: dynamic range of the dB mel spectrogram.
        backend: "librosa" (host) or "jax" (`research.audio.frontend` on the JAX device).

    Returns:
        The settings dict.
    """
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown feature backend {backend!r}; choose one of "
                         f"{', '.join(BACKENDS)}")
    out = {"feature": feature, "backend": backend, "sample_rate": int(sample_rate),
           "n_fft": int(n_fft), "hop_length": int(hop_length), "n_mels": int(n_mels),
           "fmin": float(fmin),
           "fmax": None if fmax is None else float(fmax),
           "top_db": None if top_db is None else float(top_db)}
    if feature != "logmel":
        out["n_mfcc"] = int(n_mfcc)
    return out


def compute(wave_NxT: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """Compute the feature named in `settings` (from `settings_of`).

    Args:
        wave_NxT: clips of equal length.
        settings: feature settings.

    Returns:
        spec_NxFxT (logmel, mfcc) or x_NxD (mfcc_stats), float32.
    """
    s = dict(settings)
    feature = s.pop("feature")
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
    if s.pop("backend", "librosa") == "jax":
        return _jax_compute(_check_waves(wave_NxT), feature, s)
    if feature == "logmel":
        s.pop("n_mfcc", None)
        return logmel(wave_NxT, **s)
    return (mfcc if feature == "mfcc" else mfcc_stats)(wave_NxT, **s)


def _jax_compute(wave_NxT: np.ndarray, feature: str, s: dict[str, Any]) -> np.ndarray:
    """The features of `compute` from the JAX front end, in fixed-size batches."""
    import jax

    from research.audio import frontend as fe

    fn = fe.make_frontend(s["sample_rate"], s["n_fft"], s["hop_length"], s["n_mels"],
                          feature="logmel" if feature == "logmel" else "mfcc",
                          n_mfcc=s.get("n_mfcc", 20), fmin=s["fmin"], fmax=s["fmax"],
                          top_db=s["top_db"])
    n = len(wave_NxT)
    batch = min(_JAX_BATCH, n)
    out = []
    for i in range(0, n, batch):
        chunk_BxT = wave_NxT[i:i + batch]
        real = len(chunk_BxT)
        # The last batch is padded to the same shape, so there is one compilation.
        chunk_BxT = np.pad(chunk_BxT, ((0, batch - real), (0, 0)))
        out.append(np.asarray(jax.device_get(fn(chunk_BxT)))[:real, ..., 0])
    feats = np.concatenate(out) if out else np.zeros((0,), np.float32)
    return _stats(feats) if feature == "mfcc_stats" else feats.astype(np.float32)


def cache_key(wave_NxT: np.ndarray, settings: Mapping[str, Any]) -> str:
    """A hash of the feature settings, the backend's version and the exact audio samples.

    Args:
        wave_NxT: clips.
        settings: feature settings.

    Returns:
        A hex digest.
    """
    if settings.get("backend", "librosa") == "jax":
        import jax
        version = {"jax": jax.__version__}
    else:
        version = {"librosa": _librosa().__version__}
    wave_NxT = np.ascontiguousarray(wave_NxT, dtype=np.float32)
    h = hashlib.sha256()
    head = {"settings": dict(settings), **version,
            "shape": list(wave_NxT.shape), "dtype": "float32", "format": 1}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(wave_NxT.tobytes())
    return h.hexdigest()


def save_atomic(path: str, array: np.ndarray) -> None:
    """Write a .npy file atomically (`research.io.atomic_write_bytes`).

    Args:
        path: destination.
        array: the array to save.
    """
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@dataclasses.dataclass(frozen=True)
class CacheResult:
    """Features and where they came from.

    Attributes:
        features: the feature array.
        path: the cache file ('' when caching is off).
        hit: whether the features were read from the cache.
    """

    features: np.ndarray
    path: str
    hit: bool


def cached_compute(wave_NxT: np.ndarray, settings: Mapping[str, Any],
                   cache_dir: str = "") -> CacheResult:
    """Compute features, or read them from the on-disk cache when the same key was computed.

    An unreadable or inconsistent cache file (for instance from another program) is logged and
    recomputed, never trusted.

    Args:
        wave_NxT: clips.
        settings: feature settings (from `settings_of`).
        cache_dir: cache folder ('' disables caching).

    Returns:
        A CacheResult.
    """
    wave_NxT = _check_waves(wave_NxT)
    if not cache_dir:
        return CacheResult(compute(wave_NxT, settings), "", False)
    key = cache_key(wave_NxT, settings)
    path = os.path.join(cache_dir, f"{settings['feature']}-{key[:32]}.npy")
    if os.path.exists(path):
        try:
            feats = np.load(path, allow_pickle=False)
            if feats.shape[0] == wave_NxT.shape[0] and np.all(np.isfinite(feats)):
                return CacheResult(feats, path, True)
            _LOG.warning("feature cache %s has shape %s for %d clips or non-finite values; "
                         "recomputing", path, feats.shape, wave_NxT.shape[0])
        except (OSError, ValueError) as e:
            _LOG.warning("feature cache %s is unreadable (%s); recomputing", path, e)
    feats = compute(wave_NxT, settings)
    save_atomic(path, feats)
    return CacheResult(feats, path, False)


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Feature standardisation with statistics of the training split only.

    For vectors `x_NxD` the statistics are per dimension; for spectrograms `x_NxFxTx1` (or
    `x_NxFxT`) per frequency row, pooled over examples and time, so a clip of another length
    standardises the same way.

    Attributes:
        mean: mean, broadcastable against one example.
        std: standard deviation (floored at 1e-6 so a constant feature does not divide by 0).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x_train: np.ndarray) -> Standardizer:
        """Statistics of the training features.

        Args:
            x_train: training features, `x_NxD`, `x_NxFxT` or `x_NxFxTx1`.

        Returns:
            The fitted Standardizer.
        """
        x = np.asarray(x_train, np.float64)
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit needs a non-empty batch, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("Standardizer.fit: training features contain NaN or inf")
        axes = (0,) if x.ndim == 2 else (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)[0]
        std = np.maximum(x.std(axis=axes, keepdims=True)[0], 1e-6)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Standardise features of any split with the training statistics.

        Args:
            x: features shaped like the training features (any batch size).

        Returns:
            `(x - mean) / std`, float32.
        """
        x = np.asarray(x, np.float32)
        if x.ndim != self.mean.ndim + 1 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer: features of shape {x.shape} do not match the "
                             f"training statistics of shape {self.mean.shape}")
        return ((x - self.mean[None]) / self.std[None]).astype(np.float32)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready statistics (flattened)."""
        return {"mean": self.mean.ravel().round(6).tolist(),
                "std": self.std.ravel().round(6).tolist()}
