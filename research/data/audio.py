"""Audio data sets as model inputs: waveforms (procedural or real) to cached, standardised features.

`load(cfg)` is the loader `research.data.load_dataset` dispatches the audio set names to:

- soundscapes, music: procedural sets (`research.data.synth`), `cfg.n` clips per class, split by
  generator seed with `cfg.train_ratio`;
- sonic-pi: the kick / snare / cymbal / tabla task from the Debian `sonic-pi-samples` package,
  split by source file with `cfg.train_ratio`, `cfg.val_fraction` and `cfg.seed`, cut into
  segments of `cfg.clip_seconds`;
- esc50, urbansound8k, gtzan: a user's local copy at `cfg.root`; fold `cfg.test_fold` tests,
  fold `cfg.val_fold` validates (0: the fold after the test fold, cyclically).

The procedural sets carve their validation clips from the training clips (`_with_validation`).
Clips whose features come out non-finite are bad files like unreadable ones: named, or with
`cfg.skip_bad_files` left out and listed in `info["bad_files"]`.

Features (`cfg.feature`): logmel and mfcc give `x_NxFxTx1` (frequency as height, time as width),
mfcc_stats gives `x_NxD`. They are computed with librosa (`research.audio.features`), cached on
disk under `cfg.cache_dir`, and standardised with statistics of the training split only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from research.audio import features
from research.config import DataConfig
from research.data import Dataset, folds, holdout, sonic_pi, synth
from research.data.audio_files import SPLITS, BadFilesError, Loaded, class_counts

PROCEDURAL = tuple(synth.SETS)
BENCHMARKS = ("esc50", "urbansound8k", "gtzan")


def _waveforms(cfg: DataConfig) -> Loaded:
    """Waveforms and labels of both splits, with a summary of where they came from."""
    if cfg.dataset in PROCEDURAL:
        s = synth.split(cfg.dataset, cfg.n, cfg.train_ratio, cfg.seed, cfg.sample_rate,
                        cfg.clip_seconds, cfg.difficulty)
        names = synth.SETS[cfg.dataset]
        n_train = len(s["y_train"]) // len(names)
        info = {"dataset": cfg.dataset, "source": "procedural (research.data.synth)",
                "difficulty": cfg.difficulty,
                "split": (f"by generator seed: clip indices 0..{n_train - 1} of each class train, "
                          f"{n_train}..{cfg.n - 1} test; seed = (data seed {cfg.seed}, set, "
                          "class, index)"),
                "counts": {"train": class_counts(s["y_train"], names),
                           "test": class_counts(s["y_test"], names)}}
        return Loaded(s["wave_train"], s["y_train"], s["wave_test"], s["y_test"], names, info)
    if cfg.dataset == "sonic-pi":
        return sonic_pi.load_sonic_pi(cfg.root, cfg.train_ratio, cfg.seed, cfg.sample_rate,
                                      cfg.clip_seconds, cfg.skip_bad_files,
                                      val_fraction=cfg.val_fraction)
    loaders = {"esc50": folds.load_esc50, "urbansound8k": folds.load_urbansound8k,
               "gtzan": folds.load_gtzan}
    if cfg.dataset not in loaders:
        raise ValueError(f"DataConfig.dataset: {cfg.dataset!r} is not an audio data set; "
                         f"choose one of {', '.join(PROCEDURAL + ('sonic-pi',) + BENCHMARKS)}")
    return loaders[cfg.dataset](cfg.root, cfg.test_fold, cfg.sample_rate, cfg.clip_seconds,
                                cfg.skip_bad_files, val_fold=cfg.val_fold)


def feature_settings(cfg: DataConfig) -> dict[str, Any]:
    """The feature settings of a data config (librosa's defaults for everything not in it).

    Args:
        cfg: data configuration.

    Returns:
        The settings dict of `research.audio.features.settings_of`.
    """
    return features.settings_of(cfg.feature, cfg.sample_rate, cfg.n_fft, cfg.hop_length,
                                cfg.n_mels, cfg.n_mfcc, backend=cfg.frontend)


def load(cfg: DataConfig) -> Dataset:
    """Load an audio data set as features.

    Args:
        cfg: data configuration.

    Returns:
        The Dataset: `x_NxFxTx1` (logmel, mfcc) or `x_NxD` (mfcc_stats) float32, int32 labels,
        class names, and an info dict (counts per class, bad files, sources, settings, cache).
    """
    n_samples = int(round(cfg.clip_seconds * cfg.sample_rate))
    if n_samples < cfg.n_fft:
        raise ValueError(f"DataConfig.n_fft: {cfg.n_fft} is longer than a clip "
                         f"({cfg.clip_seconds} s at {cfg.sample_rate} Hz = {n_samples} samples)")
    t0 = time.perf_counter()
    loaded = _with_validation(_waveforms(cfg), cfg)
    t_audio = time.perf_counter() - t0
    settings = feature_settings(cfg)
    t0 = time.perf_counter()
    # Overflow is checked clip by clip below, where the clip's file can be named; an empty
    # split (sonic-pi classes of 2 files give no validation file) divides by zero in librosa.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        tr = features.cached_compute(loaded.wave_train, settings, cfg.cache_dir)
        va = features.cached_compute(loaded.wave_val, settings, cfg.cache_dir)
        te = features.cached_compute(loaded.wave_test, settings, cfg.cache_dir)
    t_feat = time.perf_counter() - t0
    loaded, (x_train, x_val, x_test) = _drop_nonfinite(
        loaded, (tr.features, va.features, te.features), cfg.skip_bad_files)
    if x_train.ndim == 3:
        x_train, x_val, x_test = x_train[..., None], x_val[..., None], x_test[..., None]
    info = dict(loaded.info)
    if cfg.standardize:
        std = features.Standardizer.fit(x_train)
        x_train, x_val, x_test = std(x_train), std(x_val), std(x_test)
        info["standardization"] = {"fit_on": "train", "axes": (
            "per dimension" if x_train.ndim == 2 else "per frequency row"), **std.to_dict()}
    info.update(
        features=settings, input_shape=list(x_train.shape[1:]),
        n_train=int(len(x_train)), n_val=int(len(x_val)), n_test=int(len(x_test)),
        clip_samples=n_samples,
        cache={"train": tr.path, "val": va.path, "test": te.path,
               "hit": bool(tr.hit and va.hit and te.hit)},
        seconds={"audio": round(t_audio, 3), "features": round(t_feat, 3)})
    return Dataset(x_train.astype(np.float32), loaded.y_train.astype(np.int32),
                   x_test.astype(np.float32), loaded.y_test.astype(np.int32),
                   tuple(loaded.class_names), info, x_val=x_val.astype(np.float32),
                   y_val=loaded.y_val.astype(np.int32))


def _drop_nonfinite(loaded: Loaded, feats: tuple[np.ndarray, ...], skip_bad_files: bool,
                    ) -> tuple[Loaded, tuple[np.ndarray, ...]]:
    """Treat clips whose features hold NaN or inf as bad files, named by their source.

    A jitted model scores NaN inputs as if they were numbers, and the standardiser would stop
    with no file named, so such clips are reported like unreadable files: loading stops with
    every source named, or with `skip_bad_files` all clips of those files are left out and
    the files listed in `info["bad_files"]`.

    Args:
        loaded: the waveforms, labels and source files of each split.
        feats: features of the train, val and test clips, in that order.
        skip_bad_files: leave the bad files out instead of stopping.

    Returns:
        The loaded splits and features without the bad files' clips.
    """
    sources = {}
    for split, x in zip(SPLITS, feats):
        files = getattr(loaded, f"files_{split}")
        rows = np.flatnonzero(~np.all(np.isfinite(x), axis=tuple(range(1, x.ndim))))
        for i in rows.tolist():
            # Procedural clips have no file: their split and index name them.
            sources.setdefault(files[i] if files else f"{split} clip {i}", split)
    info = dict(loaded.info)
    info.setdefault("bad_files_skipped", 0)
    info.setdefault("bad_files", [])
    if not sources:
        return dataclasses.replace(loaded, info=info), feats
    bad = [(f, f"non-finite features (NaN or inf) in the {split} split")
           for f, split in sources.items()]
    if not skip_bad_files:
        raise BadFilesError(bad)
    info["bad_files"] = info["bad_files"] + [{"path": p, "reason": r} for p, r in bad]
    info["bad_files_skipped"] = len(info["bad_files"])
    out, kept = {}, []
    for split, x in zip(SPLITS, feats):
        files = getattr(loaded, f"files_{split}")
        n = len(x)
        names = files if files else [f"{split} clip {i}" for i in range(n)]
        keep = np.asarray([name not in sources for name in names], bool).reshape(n)
        out[f"wave_{split}"] = getattr(loaded, f"wave_{split}")[keep]
        out[f"y_{split}"] = getattr(loaded, f"y_{split}")[keep]
        if files:
            out[f"files_{split}"] = tuple(f for f, k in zip(files, keep) if k)
        kept.append(x[keep])
    if "counts" in info:
        info["counts"] = {s: class_counts(out[f"y_{s}"], loaded.class_names) for s in SPLITS}
    return dataclasses.replace(loaded, info=info, **out), tuple(kept)


def _with_validation(loaded: Loaded, cfg: DataConfig) -> Loaded:
    """Carve a seeded, class-stratified validation share from the training clips if needed.

    Sources that define their own validation split (folds, source files) keep it. Procedural
    clips each have their own generator seed, so a validation clip never shares one with a
    training clip.
    """
    if loaded.wave_val is not None:
        return loaded
    keep, held = holdout(loaded.y_train, cfg.val_fraction, cfg.seed)
    info = dict(loaded.info)
    info["validation"] = (f"{cfg.val_fraction:g} of each class's training clips, seeded "
                          f"(data seed {cfg.seed}), held out for model selection")
    if "split" in info:
        info["split"] = f"{info['split']}; validation: {info['validation']}"
    if "counts" in info:
        info["counts"] = {**info["counts"],
                          "train": class_counts(loaded.y_train[keep], loaded.class_names),
                          "val": class_counts(loaded.y_train[held], loaded.class_names)}
    files = loaded.files_train
    return dataclasses.replace(
        loaded, wave_train=loaded.wave_train[keep], y_train=loaded.y_train[keep],
        wave_val=loaded.wave_train[held], y_val=loaded.y_train[held], info=info,
        files_train=None if files is None else tuple(files[i] for i in keep),
        files_val=None if files is None else tuple(files[i] for i in held))
