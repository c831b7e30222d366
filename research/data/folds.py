"""The fold-based benchmark sets from local copies: ESC-50, UrbanSound8K and GTZAN.

Every loader returns waveforms at one sampling rate, mono, padded with zeros or cropped (from
the start) to a fixed length, with labels, the source file of every clip, and a JSON-ready
summary (a `research.data.audio_files.Loaded`). Train, validation and test are folds: one
tests, another validates (by default the next one, cyclically), the rest train; never
reshuffled. Bad files are named, or with `skip_bad_files` left out and listed, as in
`research.data.audio_files.read_splits`; on top of the reasons found by reading, a file with
no metadata row, a file name listed in two metadata rows (its rows may put it in two folds),
and for GTZAN a misnamed file, an index outside 0..99 or one index as both .au and .wav.

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
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from research.data.audio_files import Loaded, list_audio, read_splits


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
    loaded = read_splits([(p, y, side.get(k, "train")) for p, y, k in items], sample_rate, n,
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
    bad += _orphans(list_audio(os.path.join(root, "audio")), listed, "meta/esc50.csv")
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
    on_disk = [p for k in range(1, 11)
               for p in list_audio(os.path.join(root, "audio", f"fold{k}"))]
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
        paths = list_audio(folder)
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
