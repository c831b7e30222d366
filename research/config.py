"""Frozen configuration dataclasses, their validation, named presets, and the CLI entry helper.

Every experiment takes its command line from these dataclasses through tyro, so
`python -m experiments.<name> --help` lists every field with its default, and `--preset NAME`
picks the defaults. Validation runs in `__post_init__`, so a bad value fails at start with a
message that names the field. `run_cli` is every experiment's entry point: it parses the command
line, runs the experiment, and turns expected user errors (a bad path or setting, a diverged run)
into one `error: ...` line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import tyro

# Each choice is a Literal type, so `--help` lists the values; the tuple of names beside it is
# derived from the type, so the names are written once.
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "linear"]
ModelKind = Literal["mlp", "cnn", "piczak"]
Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw"]
Schedule = Literal["constant", "cosine", "warmup_cosine", "step"]
Loss = Literal["bce", "softmax_ce", "mse"]
Regularization = Literal["none", "l1", "l2"]
PlaygroundFeature = Literal["x1", "x2", "x1^2", "x2^2", "x1*x2", "sin_x1", "sin_x2"]
AudioFeature = Literal["logmel", "mfcc_stats", "mfcc"]
Frontend = Literal["librosa", "jax"]
GlobalPool = Literal["mean", "max", "none"]
DType = Literal["float32", "bfloat16"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
LOSSES: tuple[str, ...] = get_args(Loss)
REGULARIZATIONS: tuple[str, ...] = get_args(Regularization)
PLAYGROUND_FEATURES: tuple[str, ...] = get_args(PlaygroundFeature)
AUDIO_FEATURES: tuple[str, ...] = get_args(AudioFeature)
FRONTENDS: tuple[str, ...] = get_args(Frontend)
GLOBAL_POOLS: tuple[str, ...] = get_args(GlobalPool)
DTYPES: tuple[str, ...] = get_args(DType)


def _fail(cls: str, name: str, message: str) -> None:
    raise ValueError(f"{cls}.{name}: {message}")


def _check_choice(cls: str, name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        _fail(cls, name, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def _check_positive(cls: str, name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        _fail(cls, name, f"must be finite and {bound}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how to turn it into model inputs.

    Attributes:
        dataset: playground sets (circle, xor, gauss, spiral, reg-plane, reg-gauss) or audio sets
            (soundscapes, music, sonic-pi, esc50, urbansound8k, gtzan).
        n: number of examples to generate (Playground: total points; procedural audio: clips per
            class).
        noise: Playground noise level in [0, 0.5].
        train_ratio: fraction of generated examples used for training (generated sets only).
        val_fraction: share of the training split held out for validation (model selection), per
            class and seeded (Playground and procedural sets by clip, sonic-pi by source file).
        val_fold: official fold used for validation (ESC-50, UrbanSound8K, GTZAN); 0 picks the
            fold after `test_fold` (cyclically). Never the test fold.
        features: Playground input features, any of x1, x2, x1^2, x2^2, x1*x2, sin_x1, sin_x2.
        seed: data seed (generation and splits); independent of the training seed.
        root: folder of a user's local copy of ESC-50, UrbanSound8K or GTZAN.
        test_fold: official fold held out for testing (ESC-50 1..5, UrbanSound8K 1..10).
        sample_rate: audio is resampled to this rate (Hz).
        clip_seconds: clips are padded or cropped to this length.
        difficulty: procedural audio difficulty in [0, 1] (nuisance strength).
        feature: model input: logmel (x_BxFxTx1), mfcc_stats (x_BxD) or mfcc (x_BxFxTx1).
        n_fft: STFT size.
        hop_length: STFT hop.
        n_mels: mel bands.
        n_mfcc: MFCC coefficients.
        frontend: feature computation: librosa (host CPU) or jax (`research.audio.frontend` on
            the JAX device; the same features within 1e-3 dB, far faster on a GPU, no librosa).
        skip_bad_files: skip unreadable audio files (reported by count) instead of stopping.
        cache_dir: on-disk feature cache ('' disables it).
        standardize: standardise audio features with training-split statistics (per frequency
            row for spectrograms, per dimension for vectors).
    """

    dataset: str = "xor"
    n: int = 500
    noise: float = 0.0
    train_ratio: float = 0.5
    val_fraction: float = 0.1
    features: tuple[PlaygroundFeature, ...] = ("x1", "x2")
    seed: int = 0
    root: str = ""
    test_fold: int = 1
    val_fold: int = 0
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    difficulty: float = 0.5
    feature: AudioFeature = "logmel"
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 40
    n_mfcc: int = 20
    frontend: Frontend = "librosa"
    skip_bad_files: bool = False
    cache_dir: str = ".cache/features"
    standardize: bool = True

    def __post_init__(self):
        c = "DataConfig"
        _check_positive(c, "n", self.n)
        if not 0.0 <= self.noise <= 0.5:
            _fail(c, "noise", f"must be in [0, 0.5], got {self.noise!r}")
        if not 0.0 < self.train_ratio < 1.0:
            _fail(c, "train_ratio", f"must be in (0, 1), got {self.train_ratio!r}")
        if not 0.0 < self.val_fraction < 1.0:
            _fail(c, "val_fraction", f"must be in (0, 1), got {self.val_fraction!r}")
        _check_positive(c, "val_fold", self.val_fold, allow_zero=True)
        if self.val_fold and self.val_fold == self.test_fold:
            _fail(c, "val_fold", f"must differ from test_fold ({self.test_fold})")
        if not self.features:
            _fail(c, "features", "must name at least one input feature")
        for f in self.features:
            _check_choice(c, "features", f, PLAYGROUND_FEATURES)
        _check_positive(c, "sample_rate", self.sample_rate)
        _check_positive(c, "clip_seconds", self.clip_seconds)
        if not 0.0 <= self.difficulty <= 1.0:
            _fail(c, "difficulty", f"must be in [0, 1], got {self.difficulty!r}")
        _check_choice(c, "feature", self.feature, AUDIO_FEATURES)
        for name in ("n_fft", "hop_length", "n_mels", "n_mfcc"):
            _check_positive(c, name, getattr(self, name))
        _check_choice(c, "frontend", self.frontend, FRONTENDS)
        if self.feature in ("mfcc", "mfcc_stats") and self.n_mfcc > self.n_mels:
            _fail(c, "n_mfcc", f"must be <= n_mels ({self.n_mels}), got {self.n_mfcc}")
        if not isinstance(self.standardize, bool):
            _fail(c, "standardize", f"must be a bool, got {self.standardize!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Model architecture.

    Attributes:
        kind: mlp (vectors), cnn (spectrograms, CNN6-style blocks) or piczak (Piczak 2015).
        widths: MLP hidden-layer widths, input to output (the Playground's hidden layers).
        activation: relu, tanh, sigmoid, gelu or linear.
        dropout: dropout rate after each hidden layer (0 disables it).
        channels: CNN output channels of each stage.
        kernel_size: CNN convolution kernel (frequency, time).
        first_kernel: kernel of the first convolution; (0, 0) means kernel_size. Piczak: (57, 6),
            clipped to the input height.
        pool: max-pool window and stride after each stage ((1, 1) disables pooling).
        batch_norm: BatchNorm after each convolution.
        residual: residual (skip) connections in the extra blocks of each stage.
        depth: extra two-convolution blocks per stage (0 gives conv-BN-ReLU-pool stages).
        global_pool: mean, max, or none (flatten) before the dense head.
        head: hidden widths of the dense head after the convolutions.
        dtype: computation dtype, float32 or bfloat16 (mixed precision: parameters, optimiser
            state and the loss stay float32; layers compute in bfloat16).
    """

    kind: ModelKind = "mlp"
    widths: tuple[int, ...] = (4, 2)
    activation: Activation = "tanh"
    dropout: float = 0.0
    channels: tuple[int, ...] = (16, 32, 64)
    kernel_size: tuple[int, int] = (3, 3)
    first_kernel: tuple[int, int] = (0, 0)
    pool: tuple[int, int] = (2, 2)
    batch_norm: bool = True
    residual: bool = False
    depth: int = 0
    global_pool: GlobalPool = "mean"
    head: tuple[int, ...] = ()
    dtype: DType = "float32"

    def __post_init__(self):
        c = "ModelConfig"
        _check_choice(c, "dtype", self.dtype, DTYPES)
        _check_choice(c, "kind", self.kind, MODEL_KINDS)
        _check_choice(c, "activation", self.activation, ACTIVATIONS)
        if self.kind == "mlp" and not self.widths:
            _fail(c, "widths", "must list at least one hidden-layer width for an MLP")
        if any(w <= 0 for w in self.widths):
            _fail(c, "widths", f"every width must be > 0, got {self.widths}")
        if not 0.0 <= self.dropout < 1.0:
            _fail(c, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.kind != "mlp" and not self.channels:
            _fail(c, "channels", "must list at least one stage for a CNN")
        if any(ch <= 0 for ch in self.channels):
            _fail(c, "channels", f"every channel count must be > 0, got {self.channels}")
        if any(k <= 0 for k in self.kernel_size) or any(p <= 0 for p in self.pool):
            _fail(c, "kernel_size", "kernel and pool sizes must be > 0")
        if any(k < 0 for k in self.first_kernel):
            _fail(c, "first_kernel", f"must be >= 0, got {self.first_kernel}")
        _check_positive(c, "depth", self.depth, allow_zero=True)
        _check_choice(c, "global_pool", self.global_pool, GLOBAL_POOLS)
        if any(w <= 0 for w in self.head):
            _fail(c, "head", f"every width must be > 0, got {self.head}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and clipping.

    Attributes:
        name: sgd, momentum, nesterov, adam or adamw.
        learning_rate: peak learning rate.
        momentum: momentum coefficient (momentum, nesterov).
        weight_decay: decoupled weight decay on kernels (adamw; added to gradients for the others).
        schedule: constant, cosine, warmup_cosine or step.
        warmup_steps: linear warm-up steps (warmup_cosine).
        step_boundaries: fractions of training at which the step schedule multiplies by step_factor.
        step_factor: multiplier at each step boundary.
        clip_norm: clip gradients to this global norm (0 disables clipping).
    """

    name: Optimizer = "sgd"
    learning_rate: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    step_boundaries: tuple[float, ...] = (0.5, 0.75)
    step_factor: float = 0.1
    clip_norm: float = 0.0

    def __post_init__(self):
        c = "OptimConfig"
        _check_choice(c, "name", self.name, OPTIMIZERS)
        _check_positive(c, "learning_rate", self.learning_rate)
        if not 0.0 <= self.momentum < 1.0:
            _fail(c, "momentum", f"must be in [0, 1), got {self.momentum!r}")
        _check_positive(c, "weight_decay", self.weight_decay, allow_zero=True)
        _check_choice(c, "schedule", self.schedule, SCHEDULES)
        _check_positive(c, "warmup_steps", self.warmup_steps, allow_zero=True)
        if any(not 0.0 < b < 1.0 for b in self.step_boundaries):
            _fail(c, "step_boundaries", f"fractions must be in (0, 1), got {self.step_boundaries}")
        _check_positive(c, "step_factor", self.step_factor)
        _check_positive(c, "clip_norm", self.clip_norm, allow_zero=True)


@dataclass(frozen=True)
class TrainConfig:
    """Training loop, loss, checkpoints and logging.

    Attributes:
        epochs: passes over the training split.
        batch_size: examples per step (the last incomplete batch of an epoch is dropped).
        seed: training seed (initialisation, shuffling, dropout).
        loss: bce (sigmoid + binary cross-entropy), softmax_ce, or mse (the Playground's squared
            error on a tanh output for classification, on a linear output for regression).
        regularization: none, l1 or l2 penalty on kernels (the Playground's knob).
        reg_rate: penalty rate.
        eval_every: evaluate every this many epochs (and always after the last).
        eval_train: also evaluate on the whole training split (the Playground's train loss).
        eval_batch_size: examples per evaluation batch (at most the largest split; every
            split is cut into batches of this one size, so evaluation compiles once).
        checkpoint_every: save a checkpoint every this many steps (and always at the end).
        keep_checkpoints: how many of the latest checkpoints to keep (the best is kept apart).
        trajectory_every: save the parameters every this many steps for the landscape PCA
            (0 disables it).
        stop_after: stop after this many steps in total, resumable later (0 runs to the end).
        progress: show a progress bar.
        tensorboard: also write TensorBoard event files to `<run_dir>/tensorboard` (needs the
            optional `tensorboardX`; metrics.jsonl is written either way).
        steps_per_call: training steps per compiled call (a `lax.scan` on the device). A call
            never crosses an epoch end, a checkpoint, a trajectory save or `stop_after`: it is
            cut short there (each shorter length compiles once), so K need not divide anything.
            Results equal K = 1's up to float rounding and resume exactly with the same K. On
            a CPU, a model with convolutions runs its K steps unrolled (XLA:CPU takes a 30x
            slower path for convolution gradients inside a loop body): a longer compile (K = 8:
            2.5x one step's, and once per call length), 3-6% faster steps; a short CPU run
            is faster with K = 1.
        devices: devices the global batch is split over (data parallelism, all processes
            together); 0 uses all of them, or with one process and a batch size that does not
            divide by their number, the most that divide it (a printed note says so). An
            explicit count must divide the batch size.
    """

    epochs: int = 100
    batch_size: int = 10
    seed: int = 0
    loss: Loss = "bce"
    regularization: Regularization = "none"
    reg_rate: float = 0.0
    eval_every: int = 1
    eval_train: bool = True
    eval_batch_size: int = 1024
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    trajectory_every: int = 0
    stop_after: int = 0
    progress: bool = True
    tensorboard: bool = True
    steps_per_call: int = 1
    devices: int = 0

    def __post_init__(self):
        c = "TrainConfig"
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every",
                     "keep_checkpoints", "steps_per_call"):
            _check_positive(c, name, getattr(self, name))
        _check_choice(c, "loss", self.loss, LOSSES)
        _check_choice(c, "regularization", self.regularization, REGULARIZATIONS)
        _check_positive(c, "reg_rate", self.reg_rate, allow_zero=True)
        _check_positive(c, "trajectory_every", self.trajectory_every, allow_zero=True)
        _check_positive(c, "stop_after", self.stop_after, allow_zero=True)
        _check_positive(c, "devices", self.devices, allow_zero=True)
        if self.devices and self.batch_size % self.devices:
            _fail(c, "batch_size", f"{self.batch_size} does not divide by the {self.devices} "
                  "devices (TrainConfig.devices); choose a multiple of it")


@dataclass(frozen=True)
class Config:
    """One training run: data, model, optimiser and loop, plus where results go.

    Attributes:
        name: run name; results go to `workdir/name`.
        workdir: parent folder of the run's folder (checkpoints, metrics, config, figures).
        preset: named defaults to start from (the presets are listed above); the other options
            given override them.
        distributed: several processes (hosts) train together: `jax.distributed.initialize()`
            runs first (it finds Open MPI, SLURM or a Cloud TPU pod from the environment);
            every process loads the same data and feeds its devices' share; process 0 alone
            writes files. Start one process per host (e.g. `mpirun -np N python -m ...`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "run"
    workdir: str = "runs"
    preset: str = "cpu"
    distributed: bool = False

    def run_dir(self) -> str:
        """The folder this run writes to."""
        import os

        return os.path.join(self.workdir, self.name)


@dataclass(frozen=True)
class AudioDataConfig(DataConfig):
    """`DataConfig` for jobs on audio: the Playground-only options are left off the command line.

    An instance is a `DataConfig` (same fields, same validation, same saved config); only
    `--help` and the parser differ, so an audio job does not offer options it ignores.
    """

    noise: tyro.conf.Suppress[float] = 0.0
    features: tyro.conf.Suppress[tuple[PlaygroundFeature, ...]] = ("x1", "x2")


@dataclass(frozen=True)
class JobRunConfig(Config):
    """A training run inside a larger job, which sets its folder and preset.

    The job's own `--name`, `--workdir` and `--preset` decide them, so the run's copies are left
    off the command line (no `--run.name` next to `--name`).
    """

    name: tyro.conf.Suppress[str] = "train"
    workdir: tyro.conf.Suppress[str] = "runs"
    preset: tyro.conf.Suppress[str] = "cpu"


@dataclass(frozen=True)
class AudioRunConfig(JobRunConfig):
    """A training run on audio inside a job: `JobRunConfig` with `AudioDataConfig` data."""

    data: AudioDataConfig = field(default_factory=AudioDataConfig)


# Fields that control how a run is executed, not what it computes: a resumed run may change them.
RUN_CONTROL_FIELDS = ("train.stop_after", "train.progress", "train.tensorboard",
                      "train.steps_per_call", "train.devices", "workdir", "name", "preset",
                      "distributed")


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, d: Mapping) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are errors."""
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in names:
            raise ValueError(f"{cls.__name__}: unknown field {key!r} in saved config")
        ftype = names[key].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(value, Mapping):
            kwargs[key] = from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    """Dotted paths at which two config dicts differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, path + ".")
        elif va != vb:
            out.append(path)
    return out


def cli(presets: Mapping[str, Any], default: str, description: str,
        args: Sequence[str] | None = None) -> Any:
    """Parse a command line into a config: `--preset NAME` picks defaults, tyro the rest.

    Args:
        presets: preset name -> config instance (all of one dataclass type).
        default: preset used when `--preset` is not given.
        description: text shown at the top of `--help`.
        args: command-line arguments (default: sys.argv[1:]).

    Returns:
        The config, with `preset` set to the chosen preset's name.
    """
    import tyro

    args = list(sys.argv[1:] if args is None else args)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=default)
    known, _ = pre.parse_known_args(args)
    if known.preset not in presets:
        raise SystemExit(f"--preset: unknown preset {known.preset!r}; "
                         f"choose one of {', '.join(presets)}")
    base = dataclasses.replace(presets[known.preset], preset=known.preset)
    text = (f"{description}\n\nPresets (--preset NAME, default {default}): "
            f"{', '.join(presets)}. Options below show the chosen preset's defaults.")
    return tyro.cli(type(base), default=base, args=args, description=text)


# What a user causes with a bad path, a bad setting or a diverged run; `run_cli` prints their
# message instead of a traceback. The project's own BadFilesError, AudioFileError and
# SurfaceMismatchError are ValueErrors.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               FloatingPointError)
TRACEBACK_ENV = "RESEARCH_TRACEBACK"


def run_cli(main: Callable[[Any], Any], presets: Mapping[str, Any], default: str,
            description: str, args: Sequence[str] | None = None) -> Any:
    """Parse the command line with `cli` and run `main(cfg)`: every experiment's `__main__`.

    An expected user error (`USER_ERRORS`: a bad setting, a missing or unreadable file or
    folder, bad audio files, a run that diverged) prints `error: <message>` on stderr and exits
    with code 2, like a command-line parsing error. Any other exception keeps its full traceback
    (it is a bug), and so does every exception when the environment variable
    `RESEARCH_TRACEBACK=1` is set.

    First of all it calls `research.sharding.reuse_host_memory` (glibc keeps the memory
    XLA:CPU frees for the next step: no page faults on every step; no computed value changes).

    Args:
        main: the experiment's `main(cfg)`.
        presets: preset name -> config instance, as for `cli`.
        default: preset used when `--preset` is not given.
        description: text shown at the top of `--help`.
        args: command-line arguments (default: sys.argv[1:]).

    Returns:
        What `main` returns.
    """
    from research.sharding import reuse_host_memory

    reuse_host_memory()
    try:
        return main(cli(presets, default, description, args))
    except USER_ERRORS as e:
        if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        message = str(e).strip() or type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


_DATACLASSES = {c.__name__: c for c in (DataConfig, AudioDataConfig, ModelConfig, OptimConfig,
                                          TrainConfig)}


# Named presets for the Playground experiment (and `make run` until the audio main job exists).
PLAYGROUND_PRESETS: dict[str, Config] = {
    "cpu": Config(
        data=DataConfig(dataset="spiral", n=500, noise=0.0, features=("x1", "x2")),
        model=ModelConfig(kind="mlp", widths=(8, 8), activation="relu"),
        optim=OptimConfig(name="adam", learning_rate=0.01),
        train=TrainConfig(epochs=200, batch_size=10, loss="bce", checkpoint_every=1000,
                          trajectory_every=100),
        name="playground", preset="cpu"),
    "gpu": Config(
        data=DataConfig(dataset="spiral", n=2000, noise=0.1, features=("x1", "x2")),
        model=ModelConfig(kind="mlp", widths=(16, 16, 16), activation="tanh"),
        optim=OptimConfig(name="adam", learning_rate=0.005, schedule="cosine"),
        train=TrainConfig(epochs=300, batch_size=32, loss="bce", checkpoint_every=2000,
                          trajectory_every=200),
        name="playground", preset="gpu"),
    "tiny": Config(
        data=DataConfig(dataset="xor", n=100, noise=0.0),
        model=ModelConfig(kind="mlp", widths=(4, 2), activation="tanh"),
        optim=OptimConfig(name="sgd", learning_rate=0.03),
        train=TrainConfig(epochs=3, batch_size=10, loss="mse", checkpoint_every=10,
                          progress=False),
        name="playground", preset="tiny"),
}
