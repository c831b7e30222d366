"""Procedural soundscapes and music: determinism, seed-disjoint splits, nuisances, loader."""

import dataclasses
import json

import numpy as np
import pytest

from research.config import DataConfig
from research.data import load_dataset, synth

SR = 8000


@pytest.mark.parametrize("set_name", list(synth.SETS))
def test_every_class_is_deterministic_per_seed_and_differs_across_seeds(set_name):
    for c in range(len(synth.SETS[set_name])):
        a = synth.synthesize(set_name, c, synth.clip_seed(0, set_name, c, 3), SR, 0.25, 0.5)
        b = synth.synthesize(set_name, c, synth.clip_seed(0, set_name, c, 3), SR, 0.25, 0.5)
        other = synth.synthesize(set_name, c, synth.clip_seed(0, set_name, c, 4), SR, 0.25, 0.5)
        assert a.dtype == np.float32 and a.shape == (2000,) and np.all(np.isfinite(a))
        assert np.array_equal(a, b)
        assert not np.allclose(a, other)


def test_split_never_shares_a_seed_or_a_clip_between_train_and_test():
    s = synth.split("soundscapes", 5, 0.6, seed=7, sample_rate=SR, seconds=0.25)
    train = {tuple(r) for r in s["seeds_train"]}
    test = {tuple(r) for r in s["seeds_test"]}
    assert len(train) == len(s["y_train"]) == 30 and len(test) == len(s["y_test"]) == 20
    assert not train & test
    # The stored seed is the generator: each test clip is regenerated from it exactly.
    for row, wave, y in zip(s["seeds_test"], s["wave_test"], s["y_test"]):
        assert row[2] == y
        np.testing.assert_array_equal(
            synth.synthesize("soundscapes", int(y), tuple(int(v) for v in row), SR, 0.25), wave)
    # No near-duplicates across the split (brute force over all pairs, any small lag).
    a = s["wave_train"] / np.linalg.norm(s["wave_train"], axis=1, keepdims=True)
    b = s["wave_test"] / np.linalg.norm(s["wave_test"], axis=1, keepdims=True)
    for lag in range(-2, 3):
        assert np.abs(a @ np.roll(b, lag, axis=1).T).max() < 0.9


def test_split_and_generate_agree_and_other_data_seeds_differ():
    s = synth.split("music", 4, 0.5, seed=1, sample_rate=SR, seconds=0.25)
    w, y, seeds = synth.generate("music", range(2, 4), seed=1, sample_rate=SR, seconds=0.25)
    np.testing.assert_array_equal(w, s["wave_test"])
    np.testing.assert_array_equal(y, s["y_test"])
    w2, _, _ = synth.generate("music", range(2, 4), seed=2, sample_rate=SR, seconds=0.25)
    assert not np.allclose(w, w2)


def test_an_identical_split_again_is_not_synthesised_again_and_copies_are_the_callers(
        monkeypatch):
    from research.data.synth import clips

    first = synth.split("music", 4, 0.5, seed=3, sample_rate=SR, seconds=0.25)
    want = first["wave_train"].copy()
    first["wave_train"][:] = 0.0  # the caller's copy: the kept split must not change
    calls = []
    real = clips.generate
    monkeypatch.setattr(clips, "generate", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
    again = synth.split("music", 4, 0.5, seed=3, sample_rate=SR, seconds=0.25)
    assert calls == []
    np.testing.assert_array_equal(again["wave_train"], want)
    other = synth.split("music", 4, 0.5, seed=4, sample_rate=SR, seconds=0.25)
    assert len(calls) == 2 and not np.allclose(other["wave_train"], want)


def test_level_is_drawn_independently_of_class_and_applied_last():
    for c in range(len(synth.SOUNDSCAPE_CLASSES)):
        for i in range(3):
            wave, params = synth.synthesize("soundscapes", c, (0, 1, c, i), SR, 0.25, 0.5,
                                            return_params=True)
            rms_db = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2))
            assert rms_db == pytest.approx(params["level_dbfs"], abs=6e-3)  # rounded to 0.01
            assert -40.0 <= rms_db <= -20.0


def test_difficulty_controls_the_nuisances():
    easy = [synth.synthesize("soundscapes", i % 10, (0, 1, i % 10, i), SR, 0.25, 0.0,
                             return_params=True)[1] for i in range(30)]
    hard = [synth.synthesize("soundscapes", i % 10, (0, 1, i % 10, i), SR, 0.25, 1.0,
                             return_params=True)[1] for i in range(30)]
    assert not any("distractor" in p for p in easy)
    assert sum("distractor" in p for p in hard) == 30  # probability min(1, 1.2 d)
    assert all(p["speed"] == 1.0 and abs(p["tilt_db_per_octave"]) <= 1.0 for p in easy)
    assert all(p["eq_gain_db"] == 0.0 and p["lowpass_hz"] >= 0.5 * SR - 1e-6 for p in easy)
    assert max(p["rt60_s"] for p in hard) > 0.3 >= max(p["rt60_s"] for p in easy)
    assert min(p["bed_snr_db"] for p in easy) >= 40 > max(p["bed_snr_db"] for p in hard) - 10
    assert any(p["distractor"] != synth.SOUNDSCAPE_CLASSES[i % 10]
               for i, p in enumerate(hard))
    assert all(p["distractor"] != synth.SOUNDSCAPE_CLASSES[i % 10] for i, p in enumerate(hard))


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


def test_synthesisers_put_energy_where_their_parameters_say():
    # At difficulty 0 (no speed change, no distractor) the spectral peak of a class lies in
    # the range its synthesiser draws from.
    sr = 16000
    for i in range(4):
        crickets = synth.synthesize("soundscapes", 4, (0, 1, 4, i), sr, 0.5, 0.0)
        assert 2400 <= _peak_hz(crickets, sr) <= 7100
        engine = synth.synthesize("soundscapes", 7, (0, 1, 7, i), sr, 0.5, 0.0)
        assert _peak_hz(engine, sr) < 1600
        organ = synth.synthesize("music", 6, (0, 2, 6, i), sr, 0.5, 0.0)
        assert 60 <= _peak_hz(organ, sr) <= 8 * 1050


@pytest.mark.parametrize("kwargs,match", [
    (dict(set_name="noises", class_id=0), "unknown procedural set"),
    (dict(set_name="music", class_id=7), "class_id"),
    (dict(set_name="music", class_id=0, difficulty=1.5), "difficulty"),
    (dict(set_name="music", class_id=0, sample_rate=2000), "sample_rate"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    args = dict(seed=(0, 2, 0, 0), sample_rate=SR, seconds=0.25, difficulty=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        synth.synthesize(**args)


def test_split_with_an_empty_side_is_refused():
    with pytest.raises(ValueError, match="empty split"):
        synth.split("music", 2, 0.9, sample_rate=SR, seconds=0.25)


def test_load_dataset_gives_standardised_features_and_a_summary(tmp_path):
    cfg = DataConfig(dataset="soundscapes", n=6, train_ratio=0.5, sample_rate=SR,
                     clip_seconds=0.25, n_fft=256, hop_length=64, n_mels=24,
                     cache_dir=str(tmp_path))
    d = load_dataset(cfg)
    # 3 training clips per class, one of which validates.
    assert d.x_train.shape == (20, 24, 1 + 2000 // 64, 1) and d.x_test.shape[0] == 30
    assert d.x_val.shape == (10, 24, 1 + 2000 // 64, 1)
    assert d.info["counts"]["val"] == {c: 1 for c in synth.SOUNDSCAPE_CLASSES}
    assert d.info["bad_files_skipped"] == 0 and d.info["bad_files"] == []
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert d.class_names == synth.SOUNDSCAPE_CLASSES
    assert d.info["counts"]["train"] == {c: 2 for c in synth.SOUNDSCAPE_CLASSES}
    assert json.loads(json.dumps(d.info)) == d.info  # JSON-ready
    np.testing.assert_allclose(d.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(d.x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-3)
    assert not d.info["cache"]["hit"]
    again = load_dataset(cfg)
    assert again.info["cache"]["hit"]
    np.testing.assert_array_equal(again.x_test, d.x_test)
    stats = load_dataset(dataclasses.replace(cfg, feature="mfcc_stats", n_mfcc=10))
    assert stats.x_train.shape == (20, 20)
    mfcc = load_dataset(dataclasses.replace(cfg, dataset="music", feature="mfcc", n_mfcc=10,
                                            standardize=False))
    assert mfcc.x_train.shape == (14, 10, 32, 1) and mfcc.num_classes == 7
    assert "standardization" not in mfcc.info
    # The JAX front end gives the same standardised inputs (standardisation is ~1/(10 dB)).
    on_device = load_dataset(dataclasses.replace(cfg, frontend="jax"))
    assert on_device.info["features"]["backend"] == "jax" and not on_device.info["cache"]["hit"]
    np.testing.assert_allclose(on_device.x_train, d.x_train, atol=2e-3)


def test_config_refuses_n_fft_longer_than_a_clip():
    with pytest.raises(ValueError, match="n_fft"):
        load_dataset(DataConfig(dataset="music", n=2, sample_rate=SR, clip_seconds=0.05,
                                n_fft=1024, cache_dir=""))


def test_data_config_validates_the_audio_fields():
    with pytest.raises(ValueError, match="DataConfig.n_mfcc"):
        DataConfig(dataset="music", feature="mfcc", n_mels=16, n_mfcc=20)
    with pytest.raises(ValueError, match="DataConfig.standardize"):
        DataConfig(dataset="music", standardize="yes")
    with pytest.raises(ValueError, match="DataConfig.frontend"):
        DataConfig(dataset="music", frontend="torchaudio")
    with pytest.raises(ValueError, match="DataConfig.sample_rate"):
        DataConfig(dataset="music", sample_rate=0)


def test_calibration_script_runs_end_to_end(tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "benchmarks.calibrate_synth", "--dataset", "music", "--n", "5",
           "--train-ratio", "0.8", "--epochs-mlp", "1", "--epochs-cnn", "1",
           "--cache-dir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         cwd=os.path.dirname(os.path.dirname(__file__)),
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    for key in ("loudness_rms_nb", "mlp_mfcc_stats", "cnn_logmel"):
        assert 0.0 <= out[key] <= 1.0
    # 4 training clips of each of the 7 classes, one of which validates (val_fraction 0.1).
    assert out["n_train"] == 21 and out["n_test"] == 7


def test_fft_size_is_the_smallest_2a3b_at_least_k():
    smooth = sorted(2**a * 3**b for a in range(20) for b in range(13))
    for k in list(range(1, 3000)) + [72000, 88200 + 11025]:
        assert synth.clips._fft_size(k) == next(v for v in smooth if v >= k), k
