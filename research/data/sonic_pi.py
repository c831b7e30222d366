"""The sonic-pi task: kick / snare / cymbal / tabla from the Debian sonic-pi-samples clips.

The package (`apt-get install sonic-pi-samples`) installs 44.1 kHz CC0 FLAC clips named
`<prefix>_<name>.flac` under /usr/share/sonic-pi/samples. The task picks its classes by file
name (`SONIC_PI_CLASSES`), splits each class's files with a seeded shuffle into train,
validation and test (`split_files`), and cuts each file into fixed-length segments, so all
segments of a file stay in one split. Bad files are handled as in
`research.data.audio_files.read_splits`.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from research.data.audio_files import SPLITS, Loaded, list_audio, read_splits

SONIC_PI_DIRS = ("/usr/share/sonic-pi/samples", "/usr/lib/sonic-pi/etc/samples",
                 "/opt/sonic-pi/etc/samples")

# Classes of the sonic-pi task: a file belongs to the first class whose pattern matches its name.
SONIC_PI_CLASSES: dict[str, str] = {
    "kick": r"^(bd_.*|drum_heavy_kick|drum_bass_(hard|soft)|elec_(hollow|soft)_kick)$",
    "snare": r"^(sn_.*|drum_snare_.*|elec_.*snare)$",
    "cymbal": r"^(drum_cymbal_.*|drum_splash_.*|elec_cymbal)$",
    "tabla": r"^tabla_.*$",
}
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
    for path in list_audio(folder):
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
    loaded = read_splits(items, sample_rate, n, True, class_names, skip_bad_files)
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
