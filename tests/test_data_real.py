"""Real-audio loaders on tiny fake ESC-50 / UrbanSound8K / GTZAN trees, and the sonic-pi task."""

import csv
import dataclasses
import json
import os

import librosa
import numpy as np
import pytest
import soundfile as sf

from research.config import DataConfig
from research.data import audio_files, load_dataset, real

SR = 8000
SONIC_PI = real.find_sonic_pi()
needs_sonic_pi = pytest.mark.skipif(
    SONIC_PI is None, reason="sonic-pi-samples is not installed (apt-get install "
    "sonic-pi-samples puts the CC0 clips in /usr/share/sonic-pi/samples)")


def _tone(value: float, seconds=0.2, sr=SR, channels=1) -> np.ndarray:
    """A constant-plus-sine signal whose mean encodes `value`, so a loaded clip names its file."""
    t = np.arange(int(seconds * sr)) / sr
    x = value + 0.05 * np.sin(2 * np.pi * 440 * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def _write(path, data, sr=SR, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, data, sr, format=fmt)


def _code(fold, target):
    return 0.1 * fold + 0.01 * target


def _esc50(root, corrupt=True, stereo=True, orphan=True):
    rows = []
    for fold in range(1, 6):
        for target, cat in enumerate(["dog", "rain", "siren"]):
            name = f"{fold}-1000{target}-A-{target}.wav"
            rows.append([name, fold, target, cat, "False", "1000", "A"])
            if stereo and fold == 2 and target == 1:
                # A stereo 48 kHz file: downmixed and resampled to SR on load.
                _write(os.path.join(root, "audio", name), _tone(_code(fold, target), sr=48000,
                                                                channels=2), sr=48000)
            else:
                _write(os.path.join(root, "audio", name), _tone(_code(fold, target)))
    if corrupt:
        rows.append(["3-99999-A-0.wav", 3, 0, "dog", "False", "99999", "A"])
        with open(os.path.join(root, "audio", "3-99999-A-0.wav"), "wb") as f:
            f.write(b"RIFF\x00\x00garbage, not a wave file")
    if orphan:
        _write(os.path.join(root, "audio", "4-55555-A-1.wav"), _tone(0.9))
    os.makedirs(os.path.join(root, "meta"), exist_ok=True)
    with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)


def test_esc50_stops_with_every_bad_file_named(tmp_path):
    _esc50(str(tmp_path))
    with pytest.raises(real.BadFilesError) as e:
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    msg = str(e.value)
    assert "3-99999-A-0.wav" in msg and "unreadable" in msg
    assert "4-55555-A-1.wav" in msg and "no row in meta/esc50.csv" in msg
    assert len(e.value.bad) == 2 and "skip_bad_files" in msg


@pytest.mark.parametrize("test_fold", [1, 2, 5])
def test_esc50_official_folds_skip_option_and_stereo_48k(tmp_path, test_fold):
    _esc50(str(tmp_path))
    d = real.load_esc50(str(tmp_path), test_fold, SR, 0.25, skip_bad_files=True)
    assert d.info["bad_files_skipped"] == 2
    assert {os.path.basename(b["path"]) for b in d.info["bad_files"]} == {"3-99999-A-0.wav",
                                                                         "4-55555-A-1.wav"}
    assert d.class_names == ("dog", "rain", "siren")
    assert d.wave_train.shape == (9, 2000) and d.wave_test.shape == (3, 2000)
    assert d.wave_val.shape == (3, 2000)
    # Each clip's mean names its (fold, target): the test split is exactly the held-out fold,
    # the validation split the next one (cyclically).
    val_fold = test_fold % 5 + 1
    for wave, y in zip(d.wave_test, d.y_test):
        assert np.mean(wave[:1600]) == pytest.approx(_code(test_fold, y), abs=2e-3)
    for wave, y in zip(d.wave_val, d.y_val):
        assert np.mean(wave[:1600]) == pytest.approx(_code(val_fold, y), abs=2e-3)
    folds = {round((np.mean(w[:1600]) - 0.01 * y) / 0.1) for w, y in zip(d.wave_train,
                                                                         d.y_train)}
    assert folds == set(range(1, 6)) - {test_fold, val_fold}
    assert d.info["original_sample_rates"] == {"8000": 14, "48000": 1}
    assert d.info["original_channels"] == {"1": 14, "2": 1}
    # The stereo 48 kHz file: mean of channels, resampled by librosa, padded to 0.25 s.
    wave = next(w for split in ("train", "val", "test") for w, f in zip(
        getattr(d, f"wave_{split}"), getattr(d, f"files_{split}")) if f.endswith("2-10001-A-1.wav"))
    # librosa.load (mono, resampled) is the reference.
    ref, _ = librosa.load(str(tmp_path / "audio" / "2-10001-A-1.wav"), sr=SR, mono=True)
    np.testing.assert_allclose(wave[:len(ref)], ref, atol=1e-5)
    assert np.all(wave[len(ref):] == 0.0)


def test_esc50_missing_pieces_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        real.load_esc50(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="DataConfig.root"):
        real.load_esc50("")
    os.makedirs(tmp_path / "audio")
    with pytest.raises(FileNotFoundError, match="esc50.csv"):
        real.load_esc50(str(tmp_path))
    _esc50(str(tmp_path), corrupt=False, orphan=False)
    with pytest.raises(ValueError, match="folds 1..5"):
        real.load_esc50(str(tmp_path), test_fold=6)
    os.remove(tmp_path / "audio" / "1-10000-A-0.wav")
    with pytest.raises(real.BadFilesError, match="1-10000-A-0.wav: file not found"):
        real.load_esc50(str(tmp_path), 1, SR, 0.25)


def test_empty_and_nan_files_are_reported(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    _write(str(tmp_path / "audio" / "1-10000-A-0.wav"), np.zeros(0))
    bad = _tone(0.1)
    bad[5] = np.nan
    _write(str(tmp_path / "audio" / "1-10001-A-1.wav"), bad, fmt="WAV")
    sf.write(str(tmp_path / "audio" / "1-10001-A-1.wav"), bad.astype(np.float32), SR,
             subtype="FLOAT")
    with pytest.raises(real.BadFilesError) as e:
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    reasons = {os.path.basename(p): r for p, r in e.value.bad}
    assert reasons == {"1-10000-A-0.wav": "empty audio (0 samples)",
                       "1-10001-A-1.wav": "non-finite samples (NaN or inf)"}


def _urbansound(root):
    rows = []
    names = ["air_conditioner", "car_horn", "children_playing"]
    for fold in range(1, 11):
        for cid in range(3):
            name = f"{100 + fold}-{cid}-0-0.wav"
            sr, ch = [(SR, 1), (48000, 2), (22050, 1)][cid]
            _write(os.path.join(root, "audio", f"fold{fold}", name),
                   _tone(_code(fold, cid), seconds=0.1 + 0.05 * cid, sr=sr, channels=ch), sr=sr)
            rows.append([name, 100 + fold, 0.0, 1.0, 1, fold, cid, names[cid]])
    with open(os.path.join(root, "audio", "fold3", "999-1-0-0.wav"), "wb") as f:
        f.write(b"")  # an empty, unreadable file
    rows.append(["999-1-0-0.wav", 999, 0.0, 1.0, 1, 3, 1, "car_horn"])
    _write(os.path.join(root, "audio", "fold7", "555-0-0-0.wav"), _tone(0.5))  # no row
    os.makedirs(os.path.join(root, "metadata"))
    with open(os.path.join(root, "metadata", "UrbanSound8K.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID",
                    "class"])
        w.writerows(rows)


def test_urbansound8k_folds_mixed_rates_and_bad_files(tmp_path):
    _urbansound(str(tmp_path))
    with pytest.raises(real.BadFilesError) as e:
        real.load_urbansound8k(str(tmp_path), 4, SR, 0.2)
    assert {os.path.basename(p) for p, _ in e.value.bad} == {"999-1-0-0.wav", "555-0-0-0.wav"}
    d = real.load_urbansound8k(str(tmp_path), 4, SR, 0.2, skip_bad_files=True)
    assert d.class_names == ("air_conditioner", "car_horn", "children_playing")
    assert len(d.y_train) == 24 and len(d.y_val) == 3 and len(d.y_test) == 3
    assert d.info["bad_files_skipped"] == 2 and d.info["folds"]["4"] == 3
    assert {os.path.dirname(f)[-5:] for f in d.files_val} == {"fold5"}
    for wave, y in zip(d.wave_test, d.y_test):
        n = int((0.1 + 0.05 * y) * SR)
        assert np.mean(wave[:n - 10]) == pytest.approx(_code(4, y), abs=5e-3)
    assert d.info["original_sample_rates"] == {"8000": 10, "22050": 10, "48000": 10}
    with pytest.raises(ValueError, match="folds 1..10"):
        real.load_urbansound8k(str(tmp_path), 11)


def test_gtzan_contiguous_index_folds(tmp_path):
    genres = ["blues", "jazz"]
    for g, genre in enumerate(genres):
        for i in range(30):
            _write(str(tmp_path / "genres" / genre / f"{genre}.{i:05d}.au"),
                   _tone(0.01 * i + 0.5 * g, seconds=0.1), fmt="AU")
    _write(str(tmp_path / "genres" / "jazz" / "oops.wav"), _tone(0.0))
    # A stereo 48 kHz file in place of one .au, and a corrupt .au.
    os.remove(tmp_path / "genres" / "jazz" / "jazz.00012.au")
    _write(str(tmp_path / "genres" / "jazz" / "jazz.00012.wav"),
           _tone(0.12 + 0.5, seconds=0.1, sr=48000, channels=2), sr=48000)
    with open(tmp_path / "genres" / "blues" / "blues.00031.au", "wb") as f:
        f.write(b".snd\x00\x00\x00\x18truncated")
    with pytest.raises(real.BadFilesError) as e:
        real.load_gtzan(str(tmp_path), 2, SR, 0.1)
    reasons = {os.path.basename(p): r for p, r in e.value.bad}
    assert set(reasons) == {"oops.wav", "blues.00031.au"}
    assert reasons["oops.wav"].startswith("name does not match")
    assert reasons["blues.00031.au"].startswith("unreadable audio")
    d = real.load_gtzan(str(tmp_path), 2, SR, 0.1, skip_bad_files=True)
    assert d.info["original_channels"] == {"1": 59, "2": 1}
    assert d.class_names == tuple(genres) and len(d.y_test) == 20 and len(d.y_train) == 20
    assert len(d.y_val) == 20 and all("jazz.0002" in f or "blues.0002" in f for f in d.files_val)
    idx = sorted(round((np.mean(w) - 0.5 * y) / 0.01) for w, y in zip(d.wave_test, d.y_test))
    assert idx == sorted(list(range(10, 20)) * 2)  # fold 2 = files 10..19 of every genre
    assert "no official folds" in d.info["split"]


@needs_sonic_pi
def test_sonic_pi_task_splits_by_file_into_segments():
    d = real.load_sonic_pi("", 0.5, 0, SR, 0.5)
    assert d.class_names == ("kick", "snare", "cymbal", "tabla")
    files = d.info["files"]
    for cls in d.class_names:
        train, val, test = (set(files[s].get(cls, [])) for s in ("train", "val", "test"))
        assert train and val and test and not train & test and not val & (train | test)
        assert all(f.startswith({"kick": ("bd_", "drum_", "elec_"), "snare": ("sn_", "drum_",
                                                                              "elec_"),
                                 "cymbal": ("drum_", "elec_"), "tabla": ("tabla_",)}[cls])
                   for f in train | val | test)
    # Segment counts by hand from each file's length after librosa.load (the reference).
    seg = int(0.5 * SR)
    for side, y in (("train", d.y_train), ("val", d.y_val), ("test", d.y_test)):
        for c, cls in enumerate(d.class_names):
            expect = 0
            for f in files[side].get(cls, []):
                n = len(librosa.load(os.path.join(SONIC_PI, f), sr=SR)[0])
                full, rest = divmod(n, seg)
                expect += max(1, full + int(rest >= 0.25 * seg))
            assert np.sum(y == c) == expect
    assert d.wave_train.shape[1] == int(0.5 * SR)


@needs_sonic_pi
def test_sonic_pi_through_load_dataset(tmp_path):
    cfg = DataConfig(dataset="sonic-pi", sample_rate=SR, clip_seconds=0.5, n_fft=256,
                     hop_length=128, n_mels=24, feature="mfcc_stats", n_mfcc=8,
                     cache_dir=str(tmp_path))
    d = load_dataset(cfg)
    assert d.x_train.shape[1:] == (16,) and d.num_classes == 4
    assert d.info["root"] == SONIC_PI


def test_sonic_pi_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install sonic-pi-samples"):
        real.load_sonic_pi(str(tmp_path / "none"))


def test_benchmark_through_load_dataset(tmp_path):
    _esc50(str(tmp_path / "esc"), corrupt=False, orphan=False)
    cfg = DataConfig(dataset="esc50", root=str(tmp_path / "esc"), test_fold=3, sample_rate=SR,
                     clip_seconds=0.2, n_fft=256, hop_length=64, n_mels=16,
                     cache_dir=str(tmp_path / "cache"))
    d = load_dataset(cfg)
    assert d.x_train.shape == (9, 16, 26, 1) and d.x_test.shape == (3, 16, 26, 1)
    assert d.x_val.shape == (3, 16, 26, 1)
    assert d.info["counts"]["test"] == {"dog": 1, "rain": 1, "siren": 1}
    assert d.info["counts"]["val"] == {"dog": 1, "rain": 1, "siren": 1}
    assert d.info["split"] == "official folds: fold 3 tests, fold 4 validates, folds 1, 2, 5 train"
    assert d.info["bad_files_skipped"] == 0 and d.info["bad_files"] == []
    assert json.loads(json.dumps(d.info)) == d.info  # JSON-ready
    with pytest.raises(real.BadFilesError):
        _esc50(str(tmp_path / "esc2"))
        load_dataset(dataclasses.replace(cfg, root=str(tmp_path / "esc2")))


def _edit_esc50_rows(path, edit):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return rows


def test_esc50_inconsistent_metadata_rows_are_named(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False)
    meta = tmp_path / "meta" / "esc50.csv"
    # a fold outside 1..5 on the first data row (file row 2)
    _edit_esc50_rows(meta, lambda rows: rows[1].__setitem__(1, "7"))
    with pytest.raises(ValueError, match=r"row 2: fold 7 is not in 1\.\.5"):
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    _edit_esc50_rows(meta, lambda rows: rows[1].__setitem__(1, "1"))
    # a class id whose name disagrees with an earlier row
    rows = _edit_esc50_rows(meta, lambda rows: rows.append(
        ["1-10000-A-0.wav", "1", "0", "cat", "False", "1", "A"]))
    with pytest.raises(ValueError, match=rf"row {len(rows)}: target 0 is 'cat' here but 'dog'"):
        real.load_esc50(str(tmp_path), 1, SR, 0.25)


def _splits_of(d):
    """split name -> set of source file names of a Loaded's clips."""
    return {s: {os.path.basename(f) for f in getattr(d, f"files_{s}")}
            for s in ("train", "val", "test")}


def _assert_disjoint(d):
    files = _splits_of(d)
    assert not files["train"] & files["val"] and not files["train"] & files["test"]
    assert not files["val"] & files["test"]
    return files


@pytest.mark.parametrize("test_fold,val_fold,expect_val", [(5, 0, 1), (2, 0, 3), (1, 4, 4)])
def test_esc50_validation_fold_is_the_configured_official_fold(tmp_path, test_fold, val_fold,
                                                               expect_val):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    d = real.load_esc50(str(tmp_path), test_fold, SR, 0.25, val_fold=val_fold)
    files = _assert_disjoint(d)
    assert {int(f[0]) for f in files["val"]} == {expect_val}
    assert {int(f[0]) for f in files["test"]} == {test_fold}
    assert {int(f[0]) for f in files["train"]} == set(range(1, 6)) - {test_fold, expect_val}
    # Each clip's mean traces it back to its file: the lists name the clips' true sources.
    for wave, y, f in zip(d.wave_val, d.y_val, d.files_val):
        assert np.mean(wave[:1600]) == pytest.approx(_code(int(os.path.basename(f)[0]), y),
                                                     abs=2e-3)
    assert d.info["counts"]["val"] == {"dog": 1, "rain": 1, "siren": 1}
    assert f"fold {expect_val} validates" in d.info["split"]
    with pytest.raises(ValueError, match="DataConfig.val_fold"):
        real.load_esc50(str(tmp_path), 2, SR, 0.25, val_fold=2)


def test_urbansound8k_and_gtzan_validation_folds_through_load_dataset(tmp_path):
    _urbansound(str(tmp_path / "us"))
    cfg = DataConfig(dataset="urbansound8k", root=str(tmp_path / "us"), test_fold=10,
                     val_fold=0, sample_rate=SR, clip_seconds=0.2, n_fft=256, hop_length=64,
                     n_mels=16, cache_dir="", skip_bad_files=True)
    d = load_dataset(cfg)
    assert len(d.y_val) == 3 and len(d.y_test) == 3 and len(d.y_train) == 24
    assert "fold 10 tests, fold 1 validates" in d.info["split"]
    # The validation clips are fold 1's (each clip's mean encodes its fold).
    loaded = real.load_urbansound8k(str(tmp_path / "us"), 10, SR, 0.2, True, val_fold=7)
    assert {os.path.dirname(f)[-5:] for f in loaded.files_val} == {"fold7"}
    _assert_disjoint(loaded)


def _sonic_pi_tree(folder, sizes):
    names = {"kick": "bd_", "snare": "sn_", "cymbal": "drum_cymbal_", "tabla": "tabla_"}
    for c, (cls, k) in enumerate(sizes.items()):
        for i in range(k):
            _write(os.path.join(folder, f"{names[cls]}{i}.flac"),
                   _tone(0.1 * c + 0.01 * i, seconds=0.3), fmt="FLAC")


def test_sonic_pi_validation_by_source_file(tmp_path):
    _sonic_pi_tree(str(tmp_path), {"kick": 6, "snare": 3, "cymbal": 2, "tabla": 4})
    d = real.load_sonic_pi(str(tmp_path), 0.5, 0, SR, 0.1, val_fraction=0.4)
    files = _assert_disjoint(d)
    listing = d.info["files"]
    per_class = {s: {c: len(v) for c, v in listing[s].items()} for s in listing}
    # kick: 3 training-share files, 0.4 of them (1) validate; snare and tabla: at least one;
    # cymbal (2 files) has no validation file, and the summary says so.
    assert per_class["val"] == {"kick": 1, "snare": 1, "tabla": 1}
    assert per_class["test"] == {"kick": 3, "snare": 1, "cymbal": 1, "tabla": 2}
    assert "cymbal have 2 files" in d.info["validation"]
    assert len(d.y_val) == 3 * 3 and set(files["val"]) == {
        f for c in listing["val"].values() for f in c}
    assert d.info["counts"]["val"] == {"kick": 3, "snare": 3, "cymbal": 0, "tabla": 3}
    # The test files do not depend on val_fraction.
    d2 = real.load_sonic_pi(str(tmp_path), 0.5, 0, SR, 0.1, val_fraction=0.2)
    assert d2.info["files"]["test"] == listing["test"]
    cfg = DataConfig(dataset="sonic-pi", root=str(tmp_path), sample_rate=SR, clip_seconds=0.1,
                     n_fft=256, hop_length=128, n_mels=16, feature="mfcc_stats", n_mfcc=4,
                     val_fraction=0.4, cache_dir="")
    ds = load_dataset(cfg)
    assert ds.x_val.shape == (9, 8) and ds.info["files"]["val"] == listing["val"]


# Damaged trees: each of these loaded silently before (checked by tracing every clip to its file).

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_wav_is_a_bad_file(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    path = tmp_path / "audio" / "3-10002-A-2.wav"
    _truncate(path)
    with pytest.raises(real.BadFilesError) as e:
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    assert [os.path.basename(p) for p, _ in e.value.bad] == ["3-10002-A-2.wav"]
    assert "truncated: the header declares 1600 frames, the file holds" in str(e.value)
    d = real.load_esc50(str(tmp_path), 1, SR, 0.25, skip_bad_files=True)
    assert d.info["bad_files_skipped"] == 1 and "3-10002-A-2.wav" not in _splits_of(d)["train"]


def test_metadata_row_listed_twice_in_two_folds(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    _edit_esc50_rows(tmp_path / "meta" / "esc50.csv", lambda rows: rows.append(
        ["2-10001-A-1.wav", "1", "1", "rain", "False", "10001", "A"]))
    with pytest.raises(real.BadFilesError) as e:
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    (path, reason), = e.value.bad
    assert os.path.basename(path) == "2-10001-A-1.wav"
    assert reason == "listed 2 times in esc50.csv: row 6 (fold 2) and row 17 (fold 1)"
    d = real.load_esc50(str(tmp_path), 1, SR, 0.25, skip_bad_files=True)
    assert not any("2-10001-A-1.wav" in s for s in _splits_of(d).values())


def test_urbansound8k_slice_listed_in_two_folds(tmp_path):
    _urbansound(str(tmp_path))
    meta = tmp_path / "metadata" / "UrbanSound8K.csv"
    # The slice of fold 2 copied into fold 4 and listed there too: train and test both get it.
    (tmp_path / "audio" / "fold4" / "102-0-0-0.wav").write_bytes(
        (tmp_path / "audio" / "fold2" / "102-0-0-0.wav").read_bytes())
    with open(meta, "a", newline="") as f:
        csv.writer(f).writerow(["102-0-0-0.wav", 102, 0.0, 1.0, 1, 4, 0, "air_conditioner"])
    with pytest.raises(real.BadFilesError) as e:
        real.load_urbansound8k(str(tmp_path), 4, SR, 0.2)
    reasons = {os.path.basename(p): r for p, r in e.value.bad}
    assert "102-0-0-0.wav" in reasons  # besides the fixture's empty file and orphan
    assert reasons["102-0-0-0.wav"].endswith("(fold 2) and row 33 (fold 4)")


def test_same_audio_under_two_names_in_two_splits(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    # A copy of a test clip under a training name.
    (tmp_path / "audio" / "4-77777-A-0.wav").write_bytes(
        (tmp_path / "audio" / "1-10000-A-0.wav").read_bytes())
    _edit_esc50_rows(tmp_path / "meta" / "esc50.csv", lambda rows: rows.append(
        ["4-77777-A-0.wav", "4", "0", "dog", "False", "77777", "A"]))
    with pytest.raises(real.BadFilesError) as e:
        real.load_esc50(str(tmp_path), 1, SR, 0.25)
    reasons = {os.path.basename(p): r for p, r in e.value.bad}
    assert set(reasons) == {"1-10000-A-0.wav", "4-77777-A-0.wav"}
    assert "4-77777-A-0.wav (train split)" in reasons["1-10000-A-0.wav"]
    d = real.load_esc50(str(tmp_path), 1, SR, 0.25, skip_bad_files=True)
    assert d.info["bad_files_skipped"] == 2 and len(d.y_test) == 2


def _gtzan(root, n=30):
    for g, genre in enumerate(["blues", "jazz"]):
        for i in range(n):
            _write(os.path.join(root, "genres", genre, f"{genre}.{i:05d}.au"),
                   _tone(0.01 * i + 0.5 * g, seconds=0.1), fmt="AU")


def test_gtzan_index_outside_every_fold(tmp_path):
    _gtzan(str(tmp_path))
    _write(str(tmp_path / "genres" / "jazz" / "jazz.00123.au"), _tone(0.3, 0.1), fmt="AU")
    with pytest.raises(real.BadFilesError) as e:
        real.load_gtzan(str(tmp_path), 1, SR, 0.1)
    (path, reason), = e.value.bad
    assert os.path.basename(path) == "jazz.00123.au" and "falls in no fold" in reason
    d = real.load_gtzan(str(tmp_path), 1, SR, 0.1, skip_bad_files=True)
    assert "jazz.00123.au" not in _splits_of(d)["train"] and d.info["bad_files_skipped"] == 1


def test_gtzan_same_index_as_au_and_wav(tmp_path):
    _gtzan(str(tmp_path))
    _write(str(tmp_path / "genres" / "blues" / "blues.00025.wav"), _tone(0.7, 0.1))
    with pytest.raises(real.BadFilesError) as e:
        real.load_gtzan(str(tmp_path), 1, SR, 0.1)
    reasons = {os.path.basename(p): r for p, r in e.value.bad}
    assert reasons == {"blues.00025.au": "index 25 is also blues.00025.wav",
                       "blues.00025.wav": "index 25 is also blues.00025.au"}


def test_gtzan_truncated_au(tmp_path):
    _gtzan(str(tmp_path))
    _truncate(tmp_path / "genres" / "jazz" / "jazz.00003.au")
    with pytest.raises(real.BadFilesError, match=r"jazz.00003.au: truncated: the header "
                                                 r"declares 800 frames"):
        real.load_gtzan(str(tmp_path), 1, SR, 0.1)


def test_gtzan_empty_genre_folder(tmp_path):
    _gtzan(str(tmp_path))
    os.makedirs(tmp_path / "genres" / "rock")
    with pytest.raises(FileNotFoundError, match=r"genres/rock holds no audio files"):
        real.load_gtzan(str(tmp_path), 1, SR, 0.1, skip_bad_files=True)


def _huge_float_wav(path):
    x = _tone(0.2).astype(np.float32)
    x[100] = 1e30
    sf.write(str(path), x, SR, subtype="FLOAT")


def _esc50_cfg(root, **kw):
    return DataConfig(dataset="esc50", root=str(root), test_fold=1, sample_rate=SR,
                      clip_seconds=0.2, n_fft=256, hop_length=64, n_mels=16, cache_dir="", **kw)


# librosa's overflow warning is not what is tested: a named bad file is.
@pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", ["3-10000-A-0.wav", "1-10000-A-0.wav"])  # train, test fold
@pytest.mark.parametrize("read_limit", [True, False])
def test_float_wav_with_1e30_samples(tmp_path, monkeypatch, name, skip, read_limit):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    _huge_float_wav(tmp_path / "audio" / name)
    if not read_limit:
        # Past the read-time limit, the features come out non-finite: caught there instead.
        monkeypatch.setattr(audio_files, "MAX_ABS_SAMPLE", np.inf)
    reason = "absurd sample values" if read_limit else "non-finite features"
    cfg = _esc50_cfg(tmp_path, skip_bad_files=skip)
    if not skip:
        with pytest.raises(real.BadFilesError) as e:
            load_dataset(cfg)
        (path, why), = e.value.bad
        assert os.path.basename(path) == name and why.startswith(reason)
        return
    d = load_dataset(cfg)
    assert d.info["bad_files_skipped"] == 1
    (bad,), = [d.info["bad_files"]]
    assert os.path.basename(bad["path"]) == name and bad["reason"].startswith(reason)
    assert np.all(np.isfinite(d.x_train)) and np.all(np.isfinite(d.x_test))
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (
        (8, 3, 3) if name.startswith("3") else (9, 3, 2))
    assert sum(d.info["counts"]["train"].values()) == len(d.y_train)


def test_metadata_csv_with_byte_order_mark_loads(tmp_path):
    _esc50(str(tmp_path), corrupt=False, orphan=False, stereo=False)
    meta = tmp_path / "meta" / "esc50.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    d = real.load_esc50(str(tmp_path), 1, SR, 0.25)
    assert len(d.y_train) == 9 and d.class_names == ("dog", "rain", "siren")


def test_sonic_pi_classes_of_two_files_have_no_validation_file(tmp_path):
    _sonic_pi_tree(str(tmp_path), {"kick": 2, "snare": 2, "cymbal": 2, "tabla": 2})
    cfg = DataConfig(dataset="sonic-pi", root=str(tmp_path), sample_rate=SR, clip_seconds=0.1,
                     n_fft=256, hop_length=128, n_mels=16, cache_dir="")
    d = load_dataset(cfg)
    # An empty validation split, said so, rather than one carved from training segments (which
    # would share source files with training).
    assert d.x_val.shape == (0, 16, 7, 1) and len(d.y_train) == len(d.y_test) == 12
    assert "kick, snare, cymbal, tabla have 2 files" in d.info["validation"]
