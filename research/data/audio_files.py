"""Reading audio files: checked reads, header frame counts, fixed lengths, splits of files.

The file-level half of the real-audio loaders (`research.data.folds`, `research.data.sonic_pi`),
usable on its own for any list of files: `read_audio` reads one file as mono float32 at a
target rate or raises `AudioFileError` with the reason; `read_splits` reads (path, label, split)
items into a `Loaded` train / validation / test split, naming every bad file.

Bad means: missing, unreadable, empty, truncated (fewer frames than a WAV, AU or AIFF header
declares; libsndfile itself reads what is there without a word), non-finite or absurdly large
samples, an implausible sampling rate, or the same audio as a file in another split (found by a
hash of the samples), which would leak held-out data into training. The loaders add their own
reasons (no metadata row, a name listed twice, ...) through `known_bad`. By default loading
stops with `BadFilesError` listing every bad file; with `skip_bad_files` they are left out and
listed in the summary (`bad_files`, `bad_files_skipped`) and the log. Nothing is dropped
silently.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".au", ".ogg", ".aiff", ".aif")
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


def read_splits(items: Sequence[tuple[str, int, str]], sample_rate: int, n: int,
                segmented: bool, class_names: Sequence[str], skip_bad_files: bool,
                known_bad: Sequence[tuple[str, str]] = ()) -> Loaded:
    """Read (path, label, split) items into the train, val and test splits.

    Each file gives one clip of n samples (cropped or padded), or with `segmented` all its
    segments of n samples. Bad files (unreadable, truncated, ..., or the same audio as a file
    in another split, which would leak held-out data into training) stop loading with every
    one of them named; with `skip_bad_files` they are left out and listed in the summary.

    Args:
        items: (path, class id, split name) per file; split names are those of `SPLITS`.
        sample_rate: target sampling rate.
        n: clip length in samples.
        segmented: cut each file into segments instead of one clip.
        class_names: one name per class id.
        skip_bad_files: skip bad files instead of stopping.
        known_bad: (path, reason) of files found bad before reading (names, metadata).

    Returns:
        The splits, the source file of each clip, and a summary in `info`.

    Raises:
        BadFilesError: some files are bad and `skip_bad_files` is off.
        ValueError: a class has no training clip left.
    """
    read, bad = _read_checked(items, sample_rate, known_bad)
    bad_list = [(p, "; ".join(reasons)) for p, reasons in bad.items()]
    if bad_list and not skip_bad_files:
        raise BadFilesError(bad_list)
    if bad_list:
        _LOG.warning("skipped %d bad audio file(s): %s", len(bad_list),
                     ", ".join(os.path.basename(p) for p, _ in bad_list[:20]))
    return _assemble([r for r in read if r[0] not in bad], n, segmented, class_names, bad_list)


def _read_checked(items: Sequence[tuple[str, int, str]], sample_rate: int,
                  known_bad: Sequence[tuple[str, str]]) -> tuple[list, dict[str, list[str]]]:
    """Read every item, and collect the reasons of each bad file.

    Returns:
        (path, label, split, wave_T, facts) of each readable file, and path -> reasons of each
        bad file (known before, unreadable, or the same audio as a file in another split).
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
    return read, bad


def _assemble(read: Sequence[tuple], n: int, segmented: bool, class_names: Sequence[str],
              bad_list: Sequence[tuple[str, str]]) -> Loaded:
    """Clips of n samples from the good files' waveforms, stacked per split, with a summary."""
    waves: dict[str, list] = {s: [] for s in SPLITS}
    labels: dict[str, list] = {s: [] for s in SPLITS}
    files: dict[str, list] = {s: [] for s in SPLITS}
    rates: collections.Counter = collections.Counter()
    channels: collections.Counter = collections.Counter()
    for path, label, split, wave_T, facts in read:
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
            "counts": {s: class_counts(y[s], class_names) for s in SPLITS}}
    return Loaded(wave["train"], y["train"], wave["test"], y["test"], tuple(class_names), info,
                  wave_val=wave["val"], y_val=y["val"], files_train=tuple(files["train"]),
                  files_val=tuple(files["val"]), files_test=tuple(files["test"]))


def class_counts(y_N: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Clips per class name, JSON-ready."""
    return {name: int(np.sum(y_N == i)) for i, name in enumerate(class_names)}


def list_audio(folder: str) -> list[str]:
    """The audio files of a folder (by extension, not recursive), sorted; [] for no folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(AUDIO_EXTENSIONS))
