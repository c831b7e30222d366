"""Real recordings: the Debian sonic-pi-samples task; local ESC-50, UrbanSound8K and GTZAN copies.

Every loader returns waveforms at one sampling rate, mono, padded with zeros or cropped (from the
start) to a fixed length, with labels and a JSON-ready summary of what was loaded. Official folds
are enforced and never reshuffled. An unreadable, empty or otherwise bad file is reported by
name: by default loading stops with the list of every bad file; with `skip_bad_files` the bad
files are left out and counted in the summary (and logged). Nothing is dropped silently.

Layouts (DESIGN.md, "Data sets"):

- ESC-50: `audio/{fold}-{clip}-{take}-{target}.wav` and `meta/esc50.csv` with columns
  `filename,fold,target,category,...`; five folds.
- UrbanSound8K: `audio/fold1..fold10/<slice_file_name>` and `metadata/UrbanSound8K.csv` with
  columns `slice_file_name,fsID,start,end,salience,fold,classID,class`; ten folds.
- GTZAN: `genres/<genre>/<genre>.000NN.au` (or `.wav`; `genres_original/` and genre folders
  directly under the root are accepted too). GTZAN has no official folds, and the
  artist-filtered split of Sturm (2013) / Kereliuk et al. (2015) needs published file lists
  that are not available offline. We use ten folds of contiguous file indices: fold k holds
  files 10(k-1) .. 10k-1 of every genre. Contiguous blocks keep most runs of same-artist
  recordings (which GTZAN stores next to each other) on one side of the split, so the
  estimate is less optimistic than a random split, though not artist-disjoint.
- sonic-pi-samples: 44.1 kHz FLAC clips named `<prefix>_<name>.flac`, installed by the Debian
  package under /usr/share/sonic-pi/samples. The task: kick / snare / cymbal / tabla, classes
  chosen by file name, split by source file, each file cut into fixed-length segments.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".au", ".ogg", ".aiff", ".aif")
SONIC_PI_DIRS = ("/usr/share/sonic-pi/samples", "/usr/lib/sonic-pi/etc/samples",
                 "/opt/sonic-pi/etc/samples")

# Classes of the sonic-pi task: a file belongs to the first class whose pattern matches its name.
SONIC_PI_CLASSES: dict[str, str] = {
    "kick": r"^(bd_.*|drum_heavy_kick|drum_bass_(hard|soft)|elec_(hollow|soft)_kick)$",
    "snare": r"^(sn_.*|drum_snare_.*|elec_.*snare)$",
    "cymbal": r"^(drum_cymbal_.*|drum_splash_.*|elec_cymbal)$",
    "tabla": r"^tabla_.*$",
}


class AudioFileError(ValueError):
    """One audio file could not be used; the message names the file and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BadFilesError(ValueError):
    """Loading stopped because some files are bad; `bad` lists (path, reason) for each."""

    def __init__(self, bad: Sequence[tuple[str, str]], hint: str = ""):
        lines = "\n".join(f"  {p}: {r}" for p, r in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        super().__init__(f"{len(bad)} bad audio file(s):\n{lines}{more}"
                         f"{hint or chr(10) + 'Set DataConfig.skip_bad_files=True to skip them.'}")
        self.bad = list(bad)


@dataclasses.dataclass
class Loaded:
    """Waveforms of a split and a summary.

    Attributes:
        wave_train: training clips, float32 `wave_NxT`.
        y_train: training labels, int32.
        wave_test: test clips.
        y_test: test labels.
        class_names: one name per class id.
        info: JSON-ready summary.
        wave_val: validation clips, when the source defines them (folds, source files); None
            lets `research.data.audio.load` carve a stratified share of the training clips.
        y_val: validation labels (None with `wave_val`).
    """

    wave_train: np.ndarray
    y_train: np.ndarray
    wave_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    info: dict[str, Any]
    wave_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def read_audio(path: str, sample_rate: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an audio file as mono float32 at `sample_rate`.

    Args:
        path: audio file (anything libsndfile reads: WAV, FLAC, AU, OGG, AIFF, ...).
        sample_rate: target sampling rate in Hz; other rates are resampled (librosa, soxr).

    Returns:
        (wave_T, facts) where facts holds the file's original sample rate and channel count.

    Raises:
        AudioFileError: the file is missing, unreadable, empty, has an implausible sampling
            rate or contains non-finite samples.
    """
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioFileError(path, "file not found")
    try:
        data_TxC, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types for corrupt files
        raise AudioFileError(path, f"unreadable audio ({type(e).__name__}: {e})") from e
    if data_TxC.shape[0] == 0:
        raise AudioFileError(path, "empty audio (0 samples)")
    if sr < 1000:
        raise AudioFileError(path, f"implausible sampling rate {sr} Hz")
    if not np.all(np.isfinite(data_TxC)):
        raise AudioFileError(path, "non-finite samples (NaN or inf)")
    # Downmix as librosa does: the mean of the channels.
    wave_T = data_TxC.mean(axis=1)
    if sr != sample_rate:
        import librosa

        wave_T = librosa.resample(wave_T, orig_sr=sr, target_sr=sample_rate)
    return wave_T.astype(np.float32), {"sample_rate": int(sr), "channels": int(data_TxC.shape[1])}


def fix_length(wave_T: np.ndarray, n: int) -> np.ndarray:
    """Crop to the first n samples, or pad with zeros at the end.

    Args:
        wave_T: waveform.
        n: target length.

    Returns:
        wave of exactly n samples.
    """
    if len(wave_T) >= n:
        return wave_T[:n]
    return np.pad(wave_T, (0, n - len(wave_T)))


def segments(wave_T: np.ndarray, n: int, min_fraction: float = 0.25) -> list[np.ndarray]:
    """Cut a waveform into consecutive segments of n samples.

    The first segment is always kept (padded when the file is short); a last, partial segment
    is kept (padded) only if it holds at least `min_fraction` of n samples.

    Args:
        wave_T: waveform.
        n: segment length.
        min_fraction: shortest partial segment kept, as a fraction of n.

    Returns:
        List of segments of n samples.
    """
    out = [fix_length(wave_T, n)]
    start = n
    while start < len(wave_T):
        rest = len(wave_T) - start
        if rest >= n or rest >= min_fraction * n:
            out.append(fix_length(wave_T[start:start + n], n))
        start += n
    return out


def _read_all(items: Sequence[tuple[str, int, int]], sample_rate: int, n: int,
              skip_bad_files: bool, extra_bad: Sequence[tuple[str, str]] = (),
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read (path, label, fold) items; returns waves, labels, folds and a summary."""
    bad = list(extra_bad)
    waves, labels, folds = [], [], []
    rates: collections.Counter = collections.Counter()
    channels: collections.Counter = collections.Counter()
    for path, label, fold in items:
        try:
            wave_T, facts = read_audio(path, sample_rate)
        except AudioFileError as e:
            bad.append((path, e.reason))
            continue
        waves.append(fix_length(wave_T, n))
        labels.append(label)
        folds.append(fold)
        rates[facts["sample_rate"]] += 1
        channels[facts["channels"]] += 1
    if bad and not skip_bad_files:
        raise BadFilesError(bad)
    if bad:
        _LOG.warning("skipped %d bad audio file(s): %s", len(bad),
                     ", ".join(os.path.basename(p) for p, _ in bad[:20]))
    summary = {"files_loaded": len(waves), "bad_files_skipped": len(bad),
               "bad_files": [{"path": p, "reason": r} for p, r in bad],
               "original_sample_rates": {str(k): v for k, v in sorted(rates.items())},
               "original_channels": {str(k): v for k, v in sorted(channels.items())}}
    wave_NxT = np.stack(waves) if waves else np.zeros((0, n), np.float32)
    return wave_NxT, np.asarray(labels, np.int32), np.asarray(folds, np.int32), summary


def _split_by_fold(wave_NxT, y_N, fold_N, test_fold, class_names, info) -> Loaded:
    test = fold_N == test_fold
    if not test.any():
        raise ValueError(f"DataConfig.test_fold: no loaded file is in fold {test_fold}")
    if test.all():
        raise ValueError(f"DataConfig.test_fold: every loaded file is in fold {test_fold}; "
                         "nothing is left to train on")
    info = dict(info)
    info["counts"] = {
        "train": _counts(y_N[~test], class_names), "test": _counts(y_N[test], class_names)}
    info["folds"] = {str(k): int(v) for k, v in sorted(collections.Counter(
        fold_N.tolist()).items())}
    return Loaded(wave_NxT[~test], y_N[~test], wave_NxT[test], y_N[test], tuple(class_names),
                  info)


def _counts(y_N: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    return {name: int(np.sum(y_N == i)) for i, name in enumerate(class_names)}


def _read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; "
                             f"found {reader.fieldnames}")
        return list(reader)


def _int_field(path: str, row_no: int, row: dict[str, str], field: str) -> int:
    try:
        return int(row[field])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}, row {row_no}: field {field!r} is not an integer: "
                         f"{row.get(field)!r}") from e


def _check_root(root: str, name: str) -> str:
    if not root:
        raise ValueError(f"DataConfig.root: set it to the folder of your local copy of {name}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"DataConfig.root: folder not found: {root}")
    return root


def _orphans(audio_files: Sequence[str], listed: set[str], meta: str) -> list[tuple[str, str]]:
    """Audio files on disk that have no metadata row: bad files, reported like the others."""
    return [(p, f"no row in {meta}") for p in audio_files if os.path.abspath(p) not in listed]


def _audio_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(AUDIO_EXTENSIONS))


def _metadata_items(meta: str, rows: list[dict], label_key: str, name_key: str, num_folds: int,
                    path_of) -> tuple[list, set, tuple[str, ...]]:
    """(path, label, fold) per metadata row, the listed paths, and the class names.

    Args:
        meta: the metadata file (for error messages).
        rows: its rows.
        label_key: column of the integer class id.
        name_key: column of the class name.
        num_folds: folds are 1..num_folds.
        path_of: maps (row, fold) to the audio file's path.

    Returns:
        items, the set of absolute listed paths, class names by id.
    """
    names: dict[int, str] = {}
    items, listed = [], set()
    for i, row in enumerate(rows, start=2):
        label = _int_field(meta, i, row, label_key)
        fold = _int_field(meta, i, row, "fold")
        if not 1 <= fold <= num_folds:
            raise ValueError(f"{meta}, row {i}: fold {fold} is not in 1..{num_folds}")
        if names.setdefault(label, row[name_key]) != row[name_key]:
            raise ValueError(f"{meta}, row {i}: {label_key} {label} is {row[name_key]!r} here "
                             f"but {names[label]!r} earlier")
        path = path_of(row, fold)
        items.append((path, label, fold))
        listed.add(os.path.abspath(path))
    return items, listed, _dense_names(names, meta)


def load_esc50(root: str, test_fold: int = 1, sample_rate: int = 44100,
               seconds: float = 5.0, skip_bad_files: bool = False) -> Loaded:
    """ESC-50 from a local copy, with the official five folds.

    Args:
        root: folder holding `audio/` and `meta/esc50.csv`.
        test_fold: held-out fold, 1..5.
        sample_rate: target sampling rate.
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.

    Returns:
        The split and its summary.
    """
    _check_root(root, "ESC-50")
    if not 1 <= test_fold <= 5:
        raise ValueError(f"DataConfig.test_fold: ESC-50 has folds 1..5, got {test_fold}")
    meta = os.path.join(root, "meta", "esc50.csv")
    rows = _read_csv(meta, ("filename", "fold", "target", "category"))
    items, listed, class_names = _metadata_items(
        meta, rows, "target", "category", 5,
        lambda row, fold: os.path.join(root, "audio", row["filename"]))
    orphans = _orphans(_audio_files(os.path.join(root, "audio")), listed, "meta/esc50.csv")
    n = int(round(seconds * sample_rate))
    wave, y, folds, summary = _read_all(items, sample_rate, n, skip_bad_files, orphans)
    info = {"dataset": "esc50", "root": os.path.abspath(root), "metadata": meta,
            "split": f"official fold {test_fold} held out", **summary}
    return _split_by_fold(wave, y, folds, test_fold, class_names, info)


def load_urbansound8k(root: str, test_fold: int = 1, sample_rate: int = 22050,
                      seconds: float = 4.0, skip_bad_files: bool = False) -> Loaded:
    """UrbanSound8K from a local copy, with the official ten folds.

    Args:
        root: folder holding `audio/fold1..fold10/` and `metadata/UrbanSound8K.csv`.
        test_fold: held-out fold, 1..10.
        sample_rate: target sampling rate (the files have mixed rates and channels).
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.

    Returns:
        The split and its summary.
    """
    _check_root(root, "UrbanSound8K")
    if not 1 <= test_fold <= 10:
        raise ValueError(f"DataConfig.test_fold: UrbanSound8K has folds 1..10, got {test_fold}")
    meta = os.path.join(root, "metadata", "UrbanSound8K.csv")
    rows = _read_csv(meta, ("slice_file_name", "fold", "classID", "class"))
    items, listed, class_names = _metadata_items(
        meta, rows, "classID", "class", 10,
        lambda row, fold: os.path.join(root, "audio", f"fold{fold}", row["slice_file_name"]))
    on_disk = [p for k in range(1, 11) for p in _audio_files(os.path.join(root, "audio",
                                                                          f"fold{k}"))]
    orphans = _orphans(on_disk, listed, "metadata/UrbanSound8K.csv")
    n = int(round(seconds * sample_rate))
    wave, y, folds, summary = _read_all(items, sample_rate, n, skip_bad_files, orphans)
    info = {"dataset": "urbansound8k", "root": os.path.abspath(root), "metadata": meta,
            "split": f"official fold {test_fold} held out", **summary}
    return _split_by_fold(wave, y, folds, test_fold, class_names, info)


_GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.(?P<index>\d{5})\.(au|wav)$")


def load_gtzan(root: str, test_fold: int = 1, sample_rate: int = 22050, seconds: float = 30.0,
               skip_bad_files: bool = False) -> Loaded:
    """GTZAN from a local copy, split into ten folds of contiguous file indices (see module doc).

    Args:
        root: folder holding `genres/<genre>/` (or `genres_original/<genre>/`, or the genre
            folders themselves).
        test_fold: held-out fold, 1..10: files with index 10(k-1) .. 10k-1 of every genre.
        sample_rate: target sampling rate.
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.

    Returns:
        The split and its summary.
    """
    _check_root(root, "GTZAN")
    if not 1 <= test_fold <= 10:
        raise ValueError(f"DataConfig.test_fold: our GTZAN split has folds 1..10, got "
                         f"{test_fold}")
    base = next((os.path.join(root, d) for d in ("genres", "genres_original")
                 if os.path.isdir(os.path.join(root, d))), root)
    genres = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
                    and not d.startswith("."))
    if not genres:
        raise FileNotFoundError(f"GTZAN: no genre folders under {base}")
    items, bad = [], []
    for label, genre in enumerate(genres):
        for path in _audio_files(os.path.join(base, genre)):
            m = _GTZAN_NAME.match(os.path.basename(path))
            if m is None or m["genre"] != genre:
                bad.append((path, f"name does not match {genre}.000NN.au or .wav"))
                continue
            items.append((path, label, int(m["index"]) // 10 + 1))
    n = int(round(seconds * sample_rate))
    wave, y, folds, summary = _read_all(items, sample_rate, n, skip_bad_files, bad)
    info = {"dataset": "gtzan", "root": os.path.abspath(root),
            "split": (f"fold {test_fold} held out: files {10 * (test_fold - 1):05d}.."
                      f"{10 * test_fold - 1:05d} of every genre (contiguous-index folds; "
                      "GTZAN has no official folds)"), **summary}
    return _split_by_fold(wave, y, folds, test_fold, genres, info)


def _dense_names(names: dict[int, str], meta: str) -> list[str]:
    ids = sorted(names)
    if ids != list(range(len(ids))):
        raise ValueError(f"{meta}: class ids must be 0..{len(ids) - 1}, got {ids}")
    return [names[i] for i in ids]


def find_sonic_pi(root: str = "") -> str | None:
    """The sonic-pi-samples folder: `root` when given, else the Debian package's location.

    Args:
        root: an explicit folder ('' searches the usual install locations).

    Returns:
        The folder, or None when the package is not installed.
    """
    for d in ([root] if root else list(SONIC_PI_DIRS)):
        if os.path.isdir(d) and any(f.endswith(".flac") for f in os.listdir(d)):
            return d
    return None


def sonic_pi_files(folder: str) -> dict[str, list[str]]:
    """Files of each class of the sonic-pi task, sorted by name.

    Args:
        folder: the samples folder.

    Returns:
        class name -> list of paths.
    """
    out: dict[str, list[str]] = {c: [] for c in SONIC_PI_CLASSES}
    for path in _audio_files(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        for cls, pattern in SONIC_PI_CLASSES.items():
            if re.match(pattern, stem):
                out[cls].append(path)
                break
    return out


def load_sonic_pi(root: str = "", train_ratio: float = 0.5, seed: int = 0,
                  sample_rate: int = 16000, seconds: float = 1.0,
                  skip_bad_files: bool = False) -> Loaded:
    """The kick / snare / cymbal / tabla task from the CC0 sonic-pi samples, split by file.

    Within each class the files are shuffled with `seed` and the first `round(n * train_ratio)`
    (at least one, and leaving at least one) go to training; each file is then cut into
    segments of `seconds`, so all segments of a file stay on one side of the split.

    Args:
        root: samples folder ('' uses the Debian package's location).
        train_ratio: fraction of each class's files used for training.
        seed: shuffles the files before the split.
        sample_rate: target sampling rate.
        seconds: segment length.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.

    Returns:
        The split and its summary.
    """
    folder = find_sonic_pi(root)
    if folder is None:
        where = root or " or ".join(SONIC_PI_DIRS)
        raise FileNotFoundError(f"sonic-pi samples not found in {where}; install the Debian "
                                "package: apt-get install sonic-pi-samples")
    files = sonic_pi_files(folder)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    class_names = tuple(files)
    split_waves: dict[str, list] = {"train": [], "test": []}
    split_labels: dict[str, list] = {"train": [], "test": []}
    split_files: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    bad = []
    for label, cls in enumerate(class_names):
        paths = files[cls]
        if len(paths) < 2:
            raise ValueError(f"sonic-pi class {cls!r} has {len(paths)} file(s) in {folder}; "
                             "at least 2 are needed to split by file")
        order = rng.permutation(len(paths))
        n_train = min(max(int(round(len(paths) * train_ratio)), 1), len(paths) - 1)
        for rank, j in enumerate(order):
            side = "train" if rank < n_train else "test"
            try:
                wave_T, _ = read_audio(paths[j], sample_rate)
            except AudioFileError as e:
                bad.append((paths[j], e.reason))
                continue
            segs = segments(wave_T, n)
            split_waves[side] += segs
            split_labels[side] += [label] * len(segs)
            split_files[side].setdefault(cls, []).append(os.path.basename(paths[j]))
    if bad and not skip_bad_files:
        raise BadFilesError(bad)
    y = {k: np.asarray(v, np.int32) for k, v in split_labels.items()}
    info = {"dataset": "sonic-pi", "root": folder, "split": "by source file, seeded shuffle",
            "segment_seconds": seconds, "bad_files_skipped": len(bad),
            "bad_files": [{"path": p, "reason": r} for p, r in bad],
            "files": {k: {c: sorted(v) for c, v in d.items()} for k, d in split_files.items()},
            "counts": {k: _counts(y[k], class_names) for k in y}}
    return Loaded(np.stack(split_waves["train"]), y["train"], np.stack(split_waves["test"]),
                  y["test"], class_names, info)
