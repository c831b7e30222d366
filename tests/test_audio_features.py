"""librosa features (against per-clip librosa calls), standardisation and the on-disk cache."""

import glob
import logging
import os

import librosa
import numpy as np
import pytest

from research.audio import features as F

SR = 8000


def _waves(n=3, seconds=0.25, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    levels = np.array([1.0, 1e-2, 1e-4])[:, None][:n]
    tones = np.sin(2 * np.pi * rng.uniform(200, 2000, (n, 1)) * t[None, :])
    return ((tones + 0.1 * rng.standard_normal((n, len(t)))) * levels).astype(np.float32)


def test_logmel_equals_librosa_called_clip_by_clip():
    # Clips 40 dB apart: a batch-wide top_db would floor the quiet ones; ours is per clip.
    w = _waves()
    ours = F.logmel(w, SR, n_fft=256, hop_length=64, n_mels=32)
    for i in range(len(w)):
        ref = librosa.power_to_db(librosa.feature.melspectrogram(
            y=w[i], sr=SR, n_fft=256, hop_length=64, n_mels=32))
        np.testing.assert_allclose(ours[i], ref, atol=1e-4)
    assert ours.dtype == np.float32 and ours.shape == (3, 32, 1 + w.shape[1] // 64)


def test_mfcc_and_stats_equal_librosa():
    w = _waves()
    m = F.mfcc(w, SR, n_mfcc=13, n_fft=256, hop_length=64, n_mels=32)
    s = F.mfcc_stats(w, SR, n_mfcc=13, n_fft=256, hop_length=64, n_mels=32)
    for i in range(len(w)):
        ref = librosa.feature.mfcc(y=w[i], sr=SR, n_mfcc=13, n_fft=256, hop_length=64,
                                   n_mels=32)
        np.testing.assert_allclose(m[i], ref, atol=1e-3)
        np.testing.assert_allclose(s[i, :13], ref.mean(axis=1), atol=1e-3)
        np.testing.assert_allclose(s[i, 13:], ref.std(axis=1), atol=1e-3)
    assert s.shape == (3, 26)


def test_librosa_defaults_are_the_defaults():
    w = _waves(1, seconds=0.5)
    ours = F.logmel(w, 22050)
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=w[0], sr=22050))
    assert ours.shape[1] == 128
    np.testing.assert_allclose(ours[0], ref, atol=1e-4)


def test_loudness_is_hand_rms():
    w = _waves()
    loud = F.loudness(w, n_fft=256, hop_length=64)
    expect = 10 * np.log10(np.mean(w.astype(np.float64) ** 2, axis=1) + 1e-12)
    np.testing.assert_allclose(loud[:, 0], expect, atol=1e-4)
    frame_rms = librosa.feature.rms(y=w[1], frame_length=256, hop_length=64)[0]
    np.testing.assert_allclose(loud[1, 1], np.mean(20 * np.log10(frame_rms + 1e-6)), atol=1e-3)


def test_nan_audio_is_refused_with_the_clip_index():
    w = _waves()
    w[1, 10] = np.nan
    with pytest.raises(ValueError, match=r"clips \[1\]"):
        F.logmel(w, SR, 256, 64, 32)


def test_standardizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(20, 4, 6, 1)) * np.arange(1, 5)[None, :, None, None]
    x_test = rng.normal(-1.0, 1.0, size=(5, 4, 6, 1))
    st = F.Standardizer.fit(x_train)
    for f in range(4):  # per frequency row, pooled over examples and time
        vals = x_train[:, f].ravel()
        assert st.mean[f, 0, 0] == pytest.approx(vals.mean(), rel=1e-5)
        assert st.std[f, 0, 0] == pytest.approx(vals.std(), rel=1e-5)
    z = st(x_test)
    np.testing.assert_allclose(z, (x_test - st.mean[None]) / st.std[None], rtol=1e-5)
    zt = st(x_train)
    np.testing.assert_allclose(zt.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    # Vectors: per dimension.
    v = rng.normal(size=(30, 5)) * 7 + 2
    sv = F.Standardizer.fit(v)
    np.testing.assert_allclose(sv.mean, v.mean(axis=0), rtol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        F.Standardizer.fit(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="do not match"):
        sv(np.ones((2, 6)))


def test_cache_writes_atomically_and_is_reused(tmp_path, monkeypatch):
    w = _waves()
    settings = F.settings_of("logmel", SR, 256, 64, 32)
    first = F.cached_compute(w, settings, str(tmp_path))
    assert not first.hit and os.path.exists(first.path)
    assert not glob.glob(str(tmp_path / ".tmp-*"))
    # The second run reads the file: prove it by making computation impossible.
    monkeypatch.setattr(F, "compute", lambda *a, **k: pytest.fail("recomputed a cached entry"))
    second = F.cached_compute(w, settings, str(tmp_path))
    assert second.hit and second.path == first.path
    np.testing.assert_array_equal(second.features, first.features)
    monkeypatch.undo()
    # Any change of setting or of a single sample is a different entry.
    other = F.cached_compute(w, F.settings_of("logmel", SR, 256, 64, 24), str(tmp_path))
    w2 = w.copy()
    w2[0, 0] += 1e-3
    changed = F.cached_compute(w2, settings, str(tmp_path))
    assert not other.hit and not changed.hit
    assert len({first.path, other.path, changed.path}) == 3


def test_corrupt_cache_entry_is_recomputed_not_trusted(tmp_path, caplog):
    w = _waves()
    settings = F.settings_of("mfcc_stats", SR, 256, 64, 32, n_mfcc=8)
    first = F.cached_compute(w, settings, str(tmp_path))
    with open(first.path, "wb") as f:
        f.write(b"not a numpy file")
    with caplog.at_level(logging.WARNING):
        again = F.cached_compute(w, settings, str(tmp_path))
    assert not again.hit and "unreadable" in caplog.text
    np.testing.assert_allclose(again.features, first.features)
    assert F.cached_compute(w, settings, str(tmp_path)).hit


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        F.save_atomic(str(tmp_path / "x.npy"), np.ones(3))
    assert os.listdir(tmp_path) == []


def test_unknown_feature():
    with pytest.raises(ValueError, match="unknown feature"):
        F.settings_of("chroma", SR)


@pytest.mark.parametrize("feature", ["logmel", "mfcc", "mfcc_stats"])
def test_jax_backend_matches_librosa_backend(feature):
    # 70 clips: more than one front-end batch, the last one ragged.
    w = np.concatenate([_waves(3, seed=s) for s in range(24)])[:70]
    lib = F.compute(w, F.settings_of(feature, SR, 256, 64, 32, n_mfcc=13))
    jx = F.compute(w, F.settings_of(feature, SR, 256, 64, 32, n_mfcc=13, backend="jax"))
    assert jx.shape == lib.shape and jx.dtype == np.float32
    if feature == "logmel":
        # Within 70 dB of each clip's maximum (see the front end's parity tests).
        keep = lib > lib.max(axis=(1, 2), keepdims=True) - 70
        assert np.abs(jx - lib)[keep].max() < 1e-3
    else:
        np.testing.assert_allclose(jx, lib, atol=2e-3)


def test_backends_have_separate_cache_entries(tmp_path):
    w = _waves()
    a = F.cached_compute(w, F.settings_of("logmel", SR, 256, 64, 32), str(tmp_path))
    b = F.cached_compute(w, F.settings_of("logmel", SR, 256, 64, 32, backend="jax"),
                         str(tmp_path))
    assert not b.hit and a.path != b.path
    with pytest.raises(ValueError, match="backend"):
        F.settings_of("logmel", SR, backend="torch")
