"""Real recordings: the Debian sonic-pi-samples task; local ESC-50, UrbanSound8K and GTZAN copies.

Every loader returns waveforms at one sampling rate, mono, padded with zeros or cropped (from the
start) to a fixed length, with labels, the source file of every clip, and a JSON-ready summary
of what was loaded. Train, validation and test come from the source: official folds (one tests,
another validates; never reshuffled), or for sonic-pi a seeded split by source file.

A bad file is reported by name: by default loading stops with the list of every bad file; with
`skip_bad_files` the bad files are left out and listed in the summary (`bad_files`,
`bad_files_skipped`) and the log. Nothing is dropped silently. Bad means: missing, unreadable,
empty, truncated (fewer frames than a WAV, AU or AIFF header declares; libsndfile itself reads
what is there without a word), non-finite or absurdly large samples, an implausible sampling
rate, no metadata row, a file name listed in two metadata rows, or the same audio as a file in
another split (found by a hash of the samples), which would leak held-out data into training.

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
  estimate is less optimistic than a random split, though not artist-disjoint. An index
  outside 0..99 (no fold) and one index present as both .au and .wav are bad files; an empty
  genre folder stops loading (it would be a class with no examples).
- sonic-pi-samples: 44.1 kHz FLAC clips named `<prefix>_<name>.flac`, installed by the Debian
  package under /usr/share/sonic-pi/samples. The task: kick / snare / cymbal / tabla, classes
  chosen by file name, split by source file, each file cut into fixed-length segments.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import logging
import os
import re
import struct
from collections.abc import Callable, Sequence
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
SPLITS = ("train", "val", "test")
# Float files hold samples near [-1, 1]; anything this large is a broken writer, and its square
# overflows float32 in the features (NaN/inf that a jitted model would silently score).
MAX_ABS_SAMPLE = 1e6


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
        files_train: the source file of each training clip (None for procedural clips), so a
            clip that turns out bad later (non-finite features) is reported by file.
        files_val: the source file of each validation clip.
        files_test: the source file of each test clip.
    """

    wave_train: np.ndarray
    y_train: np.ndarray
    wave_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    info: dict[str, Any]
    wave_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    files_train: tuple[str, ...] | None = None
    files_val: tuple[str, ...] | None = None
    files_test: tuple[str, ...] | None = None


def read_audio(path: str, sample_rate: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an audio file as mono float32 at `sample_rate`.

    Args:
        path: audio file (anything libsndfile reads: WAV, FLAC, AU, OGG, AIFF, ...).
        sample_rate: target sampling rate in Hz; other rates are resampled (librosa, soxr).

    Returns:
        (wave_T, facts) where facts holds the file's original sample rate and channel count.

    Raises:
        AudioFileError: the file is missing, unreadable, empty, truncated (fewer frames than its
            header declares), has an implausible sampling rate, or contains non-finite or
            absurdly large samples.
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
    # libsndfile shrinks its own frame count to what a cut-off file holds, so only the header
    # itself says that frames are missing.
    declared = header_frames(path)
    if declared is not None and data_TxC.shape[0] < declared:
        raise AudioFileError(path, f"truncated: the header declares {declared} frames, the file "
                             f"holds {data_TxC.shape[0]}")
    if sr < 1000:
        raise AudioFileError(path, f"implausible sampling rate {sr} Hz")
    if not np.all(np.isfinite(data_TxC)):
        raise AudioFileError(path, "non-finite samples (NaN or inf)")
    peak = float(np.max(np.abs(data_TxC)))
    if peak > MAX_ABS_SAMPLE:
        raise AudioFileError(path, f"absurd sample values (max |x| = {peak:.3g}, audio lies "
                             f"near [-1, 1]; the limit is {MAX_ABS_SAMPLE:g})")
    # Downmix as librosa does: the mean of the channels.
    wave_T = data_TxC.mean(axis=1)
    if sr != sample_rate:
        import librosa

        wave_T = librosa.resample(wave_T, orig_sr=sr, target_sr=sample_rate)
    return wave_T.astype(np.float32), {"sample_rate": int(sr), "channels": int(data_TxC.shape[1])}


# Bytes per sample of the Sun/NeXT AU encodings libsndfile reads (mu-law, 8/16/24/32-bit PCM,
# float, double, A-law).
_AU_BYTES = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 8, 27: 1}
# WAV format tags with one fixed-size block per frame: PCM, float, A-law, mu-law, extensible.
_WAV_FIXED_FRAME = (1, 3, 6, 7, 0xFFFE)


def header_frames(path: str) -> int | None:
    """The number of frames a WAV, AU or AIFF header declares; None when it declares none.

    Streaming writers leave the size at 0 or 0xFFFFFFFF ("unknown"), and compressed WAV
    blocks hold many frames each: both give None, as do other formats.

    Args:
        path: audio file.

    Returns:
        Declared frame count, or None.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            return _wav_frames(f)
        if head[:4] == b".snd" and len(head) == 12:
            size = struct.unpack(">I", head[8:12])[0]
            fields = f.read(12)
            if len(fields) < 12 or size in (0, 0xFFFFFFFF):
                return None
            encoding, _, channels = struct.unpack(">III", fields)
            width = _AU_BYTES.get(encoding, 0) * channels
            return size // width if width else None
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return _aiff_frames(f)
    return None


def _wav_frames(f) -> int | None:
    block = 0
    while len(chunk := f.read(8)) == 8:
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            fmt = f.read(size)
            f.seek(size % 2, os.SEEK_CUR)  # chunks are padded to even sizes
            if len(fmt) < 14:
                return None
            tag, block = struct.unpack("<H", fmt[:2])[0], struct.unpack("<H", fmt[12:14])[0]
            if tag not in _WAV_FIXED_FRAME:
                return None
        elif cid == b"data":
            return size // block if block and size not in (0, 0xFFFFFFFF) else None
        else:
            f.seek(size + size % 2, os.SEEK_CUR)
    return None


def _aiff_frames(f) -> int | None:
    while len(chunk := f.read(8)) == 8:
        cid, size = chunk[:4], struct.unpack(">I", chunk[4:])[0]
        if cid == b"COMM":
            comm = f.read(size)
            frames = struct.unpack(">I", comm[2:6])[0] if len(comm) >= 6 else 0
            return frames or None
        f.seek(size + size % 2, os.SEEK_CUR)
    return None


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


def _read_splits(items: Sequence[tuple[str, int, str]], sample_rate: int, n: int,
                 segmented: bool, class_names: Sequence[str], skip_bad_files: bool,
                 known_bad: Sequence[tuple[str, str]] = ()) -> Loaded:
    """Read (path, label, split) items into the train, val and test splits.

    Each file gives one clip of n samples (cropped or padded), or with `segmented` all its
    segments of n samples. Bad files (unreadable, truncated, ..., or the same audio as a file
    in another split, which would leak held-out data into training) stop loading with every
    one of them named; with `skip_bad_files` they are left out and listed in the summary.

    Args:
        items: (path, class id, split name) per file.
        sample_rate: target sampling rate.
        n: clip length in samples.
        segmented: cut each file into segments instead of one clip.
        class_names: one name per class id.
        skip_bad_files: skip bad files instead of stopping.
        known_bad: (path, reason) of files found bad before reading (names, metadata).

    Returns:
        The splits, the source file of each clip, and a summary in `info`.
    """
    bad: dict[str, list[str]] = {}
    for path, reason in known_bad:
        bad.setdefault(path, []).append(reason)
    read = []
    first_of: dict[bytes, tuple[str, str]] = {}
    for path, label, split in items:
        try:
            wave_T, facts = read_audio(path, sample_rate)
        except AudioFileError as e:
            bad.setdefault(path, []).append(e.reason)
            continue
        # Copies under another name are found by the hash of their samples, for the price of
        # one pass over each clip.
        other, other_split = first_of.setdefault(
            hashlib.sha256(wave_T.tobytes()).digest(), (path, split))
        if other_split != split:
            bad.setdefault(path, []).append(f"same audio as {other} ({other_split} split), "
                                            f"but in the {split} split")
            bad.setdefault(other, []).append(f"same audio as {path} ({split} split), but in "
                                             f"the {other_split} split")
        read.append((path, label, split, wave_T, facts))
    bad_list = [(p, "; ".join(reasons)) for p, reasons in bad.items()]
    if bad_list and not skip_bad_files:
        raise BadFilesError(bad_list)
    if bad_list:
        _LOG.warning("skipped %d bad audio file(s): %s", len(bad_list),
                     ", ".join(os.path.basename(p) for p, _ in bad_list[:20]))
    waves: dict[str, list] = {s: [] for s in SPLITS}
    labels: dict[str, list] = {s: [] for s in SPLITS}
    files: dict[str, list] = {s: [] for s in SPLITS}
    rates: collections.Counter = collections.Counter()
    channels: collections.Counter = collections.Counter()
    for path, label, split, wave_T, facts in read:
        if path in bad:
            continue
        clips = segments(wave_T, n) if segmented else [fix_length(wave_T, n)]
        waves[split] += clips
        labels[split] += [label] * len(clips)
        files[split] += [path] * len(clips)
        rates[facts["sample_rate"]] += 1
        channels[facts["channels"]] += 1
    wave = {s: np.stack(w) if w else np.zeros((0, n), np.float32) for s, w in waves.items()}
    y = {s: np.asarray(v, np.int32) for s, v in labels.items()}
    untrained = [c for i, c in enumerate(class_names) if not np.any(y["train"] == i)]
    if untrained:
        raise ValueError(f"no training clips for class(es) {', '.join(untrained)}: all their "
                         "files are bad or held out")
    info = {"files_loaded": sum(rates.values()), "bad_files_skipped": len(bad_list),
            "bad_files": [{"path": p, "reason": r} for p, r in bad_list],
            "original_sample_rates": {str(k): v for k, v in sorted(rates.items())},
            "original_channels": {str(k): v for k, v in sorted(channels.items())},
            "counts": {s: _counts(y[s], class_names) for s in SPLITS}}
    return Loaded(wave["train"], y["train"], wave["test"], y["test"], tuple(class_names), info,
                  wave_val=wave["val"], y_val=y["val"], files_train=tuple(files["train"]),
                  files_val=tuple(files["val"]), files_test=tuple(files["test"]))


def _val_fold(test_fold: int, val_fold: int, num_folds: int, name: str) -> int:
    """The validation fold: `val_fold`, or with 0 the fold after `test_fold`, cyclically."""
    if not 1 <= test_fold <= num_folds:
        raise ValueError(f"DataConfig.test_fold: {name} has folds 1..{num_folds}, got "
                         f"{test_fold}")
    val = val_fold or test_fold % num_folds + 1
    if not 1 <= val <= num_folds or val == test_fold:
        raise ValueError(f"DataConfig.val_fold: {name} has folds 1..{num_folds} and fold "
                         f"{test_fold} tests, got {val_fold}")
    return val


def _load_folds(items: Sequence[tuple[str, int, int]], known_bad: Sequence[tuple[str, str]],
                class_names: Sequence[str], test_fold: int, val_fold: int, sample_rate: int,
                seconds: float, skip_bad_files: bool, info: dict[str, Any]) -> Loaded:
    """Read (path, label, fold) items; fold `test_fold` tests, `val_fold` validates."""
    side = {test_fold: "test", val_fold: "val"}
    n = int(round(seconds * sample_rate))
    loaded = _read_splits([(p, y, side.get(k, "train")) for p, y, k in items], sample_rate, n,
                          False, class_names, skip_bad_files, known_bad)
    for split, fold, field in (("test", test_fold, "test_fold"), ("val", val_fold, "val_fold")):
        if not len(loaded.y_val if split == "val" else loaded.y_test):
            raise ValueError(f"DataConfig.{field}: no loaded file is in fold {fold}")
    skipped = {b["path"] for b in loaded.info["bad_files"]}
    folds = collections.Counter(k for p, _, k in items if p not in skipped)
    info = {**info, **loaded.info,
            "folds": {str(k): int(v) for k, v in sorted(folds.items())}}
    return dataclasses.replace(loaded, info=info)


def _fold_text(test_fold: int, val_fold: int, num_folds: int) -> str:
    train = ", ".join(str(k) for k in range(1, num_folds + 1) if k not in (test_fold, val_fold))
    return f"fold {test_fold} tests, fold {val_fold} validates, folds {train} train"


def _counts(y_N: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    return {name: int(np.sum(y_N == i)) for i, name in enumerate(class_names)}


def _read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata file not found: {path}")
    # utf-8-sig: spreadsheet programs save CSVs with a byte-order mark, which would otherwise
    # become part of the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
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


def _metadata_items(meta: str, rows: list[dict], label_key: str, name_key: str, file_key: str,
                    num_folds: int, path_of: Callable[[dict, int], str],
                    ) -> tuple[list, set, tuple[str, ...], list[tuple[str, str]]]:
    """(path, label, fold) per metadata row, the listed paths, the class names, bad files.

    A file name listed in two rows is a bad file (its rows may put it in two folds, so in
    training and in testing); neither row is used.

    Args:
        meta: the metadata file (for error messages).
        rows: its rows.
        label_key: column of the integer class id.
        name_key: column of the class name.
        file_key: column of the audio file name.
        num_folds: folds are 1..num_folds.
        path_of: maps (row, fold) to the audio file's path.

    Returns:
        items, the set of absolute listed paths, class names by id, (path, reason) of files
        listed more than once.
    """
    names: dict[int, str] = {}
    items, listed = [], set()
    rows_of: dict[str, list[tuple[int, int, str]]] = {}
    for i, row in enumerate(rows, start=2):
        label = _int_field(meta, i, row, label_key)
        fold = _int_field(meta, i, row, "fold")
        if not 1 <= fold <= num_folds:
            raise ValueError(f"{meta}, row {i}: fold {fold} is not in 1..{num_folds}")
        if names.setdefault(label, row[name_key]) != row[name_key]:
            raise ValueError(f"{meta}, row {i}: {label_key} {label} is {row[name_key]!r} here "
                             f"but {names[label]!r} earlier")
        path = path_of(row, fold)
        rows_of.setdefault(row[file_key], []).append((i, fold, path))
        items.append((path, label, fold))
        listed.add(os.path.abspath(path))
    bad, twice = [], set()
    for where in rows_of.values():
        if len(where) > 1:
            listed_at = " and ".join(f"row {i} (fold {k})" for i, k, _ in where)
            bad.append((where[0][2], f"listed {len(where)} times in {os.path.basename(meta)}: "
                                     f"{listed_at}"))
            twice.update(p for _, _, p in where)
    items = [it for it in items if it[0] not in twice]
    return items, listed, _dense_names(names, meta), bad


def load_esc50(root: str, test_fold: int = 1, sample_rate: int = 44100,
               seconds: float = 5.0, skip_bad_files: bool = False, val_fold: int = 0) -> Loaded:
    """ESC-50 from a local copy, with the official five folds.

    Args:
        root: folder holding `audio/` and `meta/esc50.csv`.
        test_fold: held-out test fold, 1..5.
        sample_rate: target sampling rate.
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.
        val_fold: validation fold, 1..5 but not `test_fold`; 0 takes the fold after
            `test_fold` (cyclically: 5 -> 1).

    Returns:
        The split, each clip's file, and a summary.
    """
    _check_root(root, "ESC-50")
    val_fold = _val_fold(test_fold, val_fold, 5, "ESC-50")
    meta = os.path.join(root, "meta", "esc50.csv")
    rows = _read_csv(meta, ("filename", "fold", "target", "category"))
    items, listed, class_names, bad = _metadata_items(
        meta, rows, "target", "category", "filename", 5,
        lambda row, fold: os.path.join(root, "audio", row["filename"]))
    bad += _orphans(_audio_files(os.path.join(root, "audio")), listed, "meta/esc50.csv")
    info = {"dataset": "esc50", "root": os.path.abspath(root), "metadata": meta,
            "split": f"official folds: {_fold_text(test_fold, val_fold, 5)}"}
    return _load_folds(items, bad, class_names, test_fold, val_fold, sample_rate, seconds,
                       skip_bad_files, info)


def load_urbansound8k(root: str, test_fold: int = 1, sample_rate: int = 22050,
                      seconds: float = 4.0, skip_bad_files: bool = False,
                      val_fold: int = 0) -> Loaded:
    """UrbanSound8K from a local copy, with the official ten folds.

    Args:
        root: folder holding `audio/fold1..fold10/` and `metadata/UrbanSound8K.csv`.
        test_fold: held-out test fold, 1..10.
        sample_rate: target sampling rate (the files have mixed rates and channels).
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.
        val_fold: validation fold, 1..10 but not `test_fold`; 0 takes the fold after
            `test_fold` (cyclically: 10 -> 1).

    Returns:
        The split, each clip's file, and a summary.
    """
    _check_root(root, "UrbanSound8K")
    val_fold = _val_fold(test_fold, val_fold, 10, "UrbanSound8K")
    meta = os.path.join(root, "metadata", "UrbanSound8K.csv")
    rows = _read_csv(meta, ("slice_file_name", "fold", "classID", "class"))
    items, listed, class_names, bad = _metadata_items(
        meta, rows, "classID", "class", "slice_file_name", 10,
        lambda row, fold: os.path.join(root, "audio", f"fold{fold}", row["slice_file_name"]))
    on_disk = [p for k in range(1, 11) for p in _audio_files(os.path.join(root, "audio",
                                                                          f"fold{k}"))]
    bad += _orphans(on_disk, listed, "metadata/UrbanSound8K.csv")
    info = {"dataset": "urbansound8k", "root": os.path.abspath(root), "metadata": meta,
            "split": f"official folds: {_fold_text(test_fold, val_fold, 10)}"}
    return _load_folds(items, bad, class_names, test_fold, val_fold, sample_rate, seconds,
                       skip_bad_files, info)


_GTZAN_NAME = re.compile(r"^(?P<genre>[a-z]+)\.(?P<index>\d{5})\.(au|wav)$")


def load_gtzan(root: str, test_fold: int = 1, sample_rate: int = 22050, seconds: float = 30.0,
               skip_bad_files: bool = False, val_fold: int = 0) -> Loaded:
    """GTZAN from a local copy, split into ten folds of contiguous file indices (see module doc).

    Args:
        root: folder holding `genres/<genre>/` (or `genres_original/<genre>/`, or the genre
            folders themselves).
        test_fold: held-out test fold, 1..10: files with index 10(k-1) .. 10k-1 of every genre.
        sample_rate: target sampling rate.
        seconds: clip length after padding or cropping.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.
        val_fold: validation fold, 1..10 but not `test_fold`; 0 takes the fold after
            `test_fold` (cyclically: 10 -> 1).

    Returns:
        The split, each clip's file, and a summary.

    Raises:
        BadFilesError: misnamed files, indices outside 0..99 (they would fall in no fold),
            an index present as both .au and .wav, and unreadable audio.
        FileNotFoundError: no genre folders, or an empty one (a class with no examples).
    """
    _check_root(root, "GTZAN")
    val_fold = _val_fold(test_fold, val_fold, 10, "our GTZAN split")
    base = next((os.path.join(root, d) for d in ("genres", "genres_original")
                 if os.path.isdir(os.path.join(root, d))), root)
    genres = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))
                    and not d.startswith("."))
    if not genres:
        raise FileNotFoundError(f"GTZAN: no genre folders under {base}")
    items, bad = [], []
    for label, genre in enumerate(genres):
        folder = os.path.join(base, genre)
        paths = _audio_files(folder)
        if not paths:
            raise FileNotFoundError(f"GTZAN: genre folder {folder} holds no audio files; "
                                    "remove it or restore its files")
        path_of: dict[int, str] = {}
        for path in paths:
            m = _GTZAN_NAME.match(os.path.basename(path))
            if m is None or m["genre"] != genre:
                bad.append((path, f"name does not match {genre}.000NN.au or .wav"))
                continue
            index = int(m["index"])
            if index >= 100:
                bad.append((path, f"index {index} is outside 0..99 (100 files per genre), so "
                                  "it falls in no fold"))
                continue
            if index in path_of:
                # Both copies would be loaded, possibly as two different recordings.
                other = path_of[index]
                bad.append((other, f"index {index} is also {os.path.basename(path)}"))
                bad.append((path, f"index {index} is also {os.path.basename(other)}"))
                continue
            path_of[index] = path
        twice = {p for p, _ in bad}
        items += [(p, label, k // 10 + 1) for k, p in sorted(path_of.items()) if p not in twice]
    info = {"dataset": "gtzan", "root": os.path.abspath(root),
            "split": (f"contiguous-index folds (fold k = files 10(k-1)..10k-1 of every genre; "
                      f"GTZAN has no official folds): {_fold_text(test_fold, val_fold, 10)}")}
    return _load_folds(items, bad, genres, test_fold, val_fold, sample_rate, seconds,
                       skip_bad_files, info)


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


def split_files(n_files: int, train_ratio: float, val_fraction: float,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A seeded split of one class's files into train, validation and test.

    The files are shuffled; the first `round(n * train_ratio)` (at least one, leaving at least
    one) are the training share, the rest test. Validation takes `round(val_fraction * share)`
    of the training share (the test files do not depend on `val_fraction`), at least one file
    when the class has 3 or more, and never the last training file; when the training share
    is a single file, the validation file comes from the test share instead. A class of 2 files
    has no validation file: one trains, one tests.

    Args:
        n_files: files of the class (at least 2).
        train_ratio: training share (before validation is taken from it).
        val_fraction: validation share of the training share.
        rng: shuffles the files.

    Returns:
        split name -> indices into the class's files.
    """
    order = rng.permutation(n_files)
    n_train = min(max(int(round(n_files * train_ratio)), 1), n_files - 1)
    n_val = min(int(round(n_train * val_fraction)), n_train - 1)
    if n_files >= 3 and n_val == 0:
        n_val = 1
    if n_val and n_train - n_val >= 1:
        train_end, val_end = n_train - n_val, n_train
    else:  # one training file: the validation file comes from the test share
        train_end, val_end = n_train, n_train + n_val
    return {"train": order[:train_end], "val": order[train_end:val_end],
            "test": order[val_end:]}


def load_sonic_pi(root: str = "", train_ratio: float = 0.5, seed: int = 0,
                  sample_rate: int = 16000, seconds: float = 1.0,
                  skip_bad_files: bool = False, val_fraction: float = 0.1) -> Loaded:
    """The kick / snare / cymbal / tabla task from the CC0 sonic-pi samples, split by file.

    Within each class the files are shuffled with `seed` and split into train, validation and
    test by `split_files`; each file is then cut into segments of `seconds`, so all segments
    of a file stay in one split.

    Args:
        root: samples folder ('' uses the Debian package's location).
        train_ratio: fraction of each class's files used for training and validation.
        seed: shuffles the files before the split.
        sample_rate: target sampling rate.
        seconds: segment length.
        skip_bad_files: skip bad files (counted in the summary) instead of stopping.
        val_fraction: share of each class's training files held out for validation.

    Returns:
        The split, each segment's file, and a summary (`info["files"]` lists the files of
        each split and class).
    """
    folder = find_sonic_pi(root)
    if folder is None:
        where = root or " or ".join(SONIC_PI_DIRS)
        raise FileNotFoundError(f"sonic-pi samples not found in {where}; install the Debian "
                                "package: apt-get install sonic-pi-samples")
    files = sonic_pi_files(folder)
    rng = np.random.default_rng(seed)
    class_names = tuple(files)
    items, no_val = [], []
    for label, cls in enumerate(class_names):
        paths = files[cls]
        if len(paths) < 2:
            raise ValueError(f"sonic-pi class {cls!r} has {len(paths)} file(s) in {folder}; "
                             "at least 2 are needed to split by file")
        for split, idx in split_files(len(paths), train_ratio, val_fraction, rng).items():
            items += [(paths[j], label, split) for j in idx]
        if len(paths) == 2:
            no_val.append(cls)
    n = int(round(seconds * sample_rate))
    loaded = _read_splits(items, sample_rate, n, True, class_names, skip_bad_files)
    skipped = {b["path"] for b in loaded.info["bad_files"]}
    listing = {s: {} for s in SPLITS}
    for path, label, split in items:
        if path not in skipped:
            listing[split].setdefault(class_names[label], []).append(os.path.basename(path))
    validation = (f"by source file: {val_fraction:g} of each class's training files (at least "
                  "one when the class has 3 or more), seeded")
    if no_val:
        validation += (f"; class(es) {', '.join(no_val)} have 2 files, one training and one "
                       "test, so no validation file")
    info = {"dataset": "sonic-pi", "root": folder,
            "split": f"by source file, seeded shuffle (data seed {seed})",
            "validation": validation, "segment_seconds": seconds, **loaded.info,
            "files": {s: {c: sorted(v) for c, v in d.items()} for s, d in listing.items()}}
    return dataclasses.replace(loaded, info=info)
