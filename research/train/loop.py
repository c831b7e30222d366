"""The host training loop: data order, jitted steps, evaluation, logging, checkpoints, resume.

`train_and_evaluate(cfg)` is the only place with side effects (files, progress bar, printing).
A run folder holds `config.json`, `data.json` (the data's fingerprint, split shapes and the
files the loader skipped as bad), `topology.json` (processes and devices the run trained on),
`metrics.jsonl`, `summary.json`, `checkpoints/`, `best/` (the state with the best validation
score), `init_params.npz` and optionally `trajectory/`. Running the same config again resumes
from the newest checkpoint and writes the same files as an uninterrupted run (except wall-clock
times); other settings, other data, or another number of processes or devices are refused.

Scale: training is data-parallel over a ("data",) mesh of all devices (`TrainConfig.devices`):
the global batch is split along `data`, the state is replicated (`sharding.param_sharding` is
the seam for sharding parameters), and the step is compiled once with these shardings
(`jax.jit` with `in_shardings`/`out_shardings`), so XLA inserts the gradient all-reduce and
BatchNorm statistics are over the whole global batch, as on one device. The same run on 1 and
on 4 devices gives the same parameters up to float32 summation order. `TrainConfig.
steps_per_call` = K runs K steps per compiled `lax.scan`, each batch gathered on the device from
the resident training split; a call is cut short at every epoch end, checkpoint, trajectory
save and stop, so K changes the results only by float rounding (XLA:CPU compiles the
convolutions of a loop body on another path: after 4 steps of a 16/32/32 CNN at batch 16 the
parameters agree to 5e-6 of each array's largest value), and a run resumes bit for bit with
the same K. Evaluation splits each batch along `data` too (the last batch padded with mask 0),
with one batch size for every split (one compiled program), from splits kept on the device.
With `Config.distributed`, `jax.distributed.initialize()` runs first, every process builds the
same data and feeds its devices' shards, all processes take part in the checkpoints (orbax),
and process 0 alone writes every other file and the progress bar.

metrics.jsonl holds one JSON record per line, each with `step`, `epoch` and `split`:
`train_steps` (means of the epoch's step metrics: loss, objective, grad_norm, learning_rate,
accuracy; and `time`, training seconds so far), then at each evaluation `train` (when
`TrainConfig.eval_train`), `val` and `test` (loss; accuracy, balanced_accuracy, macro_f1 for
classification). Only `val` chooses the best checkpoint; `test` is there for learning curves.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections import defaultdict

import jax
import numpy as np
from tqdm import tqdm

import research.io
from research import checkpoint as ckpt
from research import metrics as M
from research import sharding as sh
from research.config import RUN_CONTROL_FIELDS, Config, config_diff, from_dict, to_dict
from research.data import Dataset, load_dataset
from research.io import atomic_write_json, fingerprint
from research.losses import Loss
from research.models import make_model, param_count
from research.optim import make_optimizer
from research.train.state import TrainState
from research.train.steps import compile_train_steps, eval_step, state_sharding
from research.writers import JsonlWriter, TensorBoardWriter, log_record, read_jsonl, truncate_after


def _steps_per_epoch(cfg: Config, n_train: int) -> int:
    spe = n_train // cfg.train.batch_size
    if spe == 0:
        raise ValueError(f"TrainConfig.batch_size: {cfg.train.batch_size} is larger than the "
                         f"training split ({n_train} examples)")
    return spe


def init_variables(model, key: jax.Array, x: jax.Array) -> dict:
    """`model.init({"params": key, "dropout": key}, x, train=False)`, compiled cheaply.

    One compilation at LLVM's optimisation level 1, where eager initialisation compiles every
    operation: XLA:CPU's default level spends about 1 s on each random-number program, level 1
    a fifth of that (a small CNN's initialisation 2.2-3.2 s eager or compiled at the default
    level, 0.7-0.9 s here). The program runs once, so its speed does not matter; its values
    are those of eager initialisation and of a default-level compile, bit for bit, for our
    MLP, CNN and Piczak CNN (`tests/test_train_steps.py` checks the latter).

    Args:
        model: a Linen module whose `__call__` takes `train`.
        key: the initialisation key (also used for dropout).
        x: an example input batch.

    Returns:
        The model's variables.
    """
    rngs = {"params": key, "dropout": key}
    if any(isinstance(a, jax.core.Tracer) for a in (key, x)):
        # Inside another trace (`jax.eval_shape` in `load_run`), where compiler options are
        # refused and nothing is compiled anyway.
        return model.init(rngs, x, train=False)
    try:
        init = _compiled_init(model)
    except TypeError:  # a module with an unhashable field: compiled for this call only
        init = _compiled_init.__wrapped__(model)
    return init(rngs, x)


@functools.lru_cache(maxsize=16)
def _compiled_init(model):
    # Linen modules hash and compare by their fields: the same model configuration initialised
    # again in one process (a run, then its interpolation plot) reuses the program.
    return jax.jit(functools.partial(model.init, train=False),
                   compiler_options={"xla_backend_optimization_level": 1})


def build_state(cfg: Config, dataset: Dataset) -> tuple[TrainState, int]:
    """A fresh training state for a config and data set.

    Args:
        cfg: the run's configuration.
        dataset: the loaded data (for input shape and number of classes).

    Returns:
        The state at step 0 and the number of steps per epoch.
    """
    if len(dataset.x_train) == 0 or len(dataset.x_test) == 0:
        raise ValueError(f"DataConfig.dataset: {cfg.data.dataset!r} gave an empty split "
                         f"(train {len(dataset.x_train)}, test {len(dataset.x_test)})")
    loss = Loss(cfg.train.loss, dataset.num_classes, cfg.train.regularization, cfg.train.reg_rate)
    model = make_model(cfg.model, loss.num_outputs)
    init_key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0)
    variables = init_variables(model, init_key, jax.device_put(dataset.x_train[:1]))
    spe = _steps_per_epoch(cfg, len(dataset.x_train))
    tx = make_optimizer(cfg.optim, spe * cfg.train.epochs)
    return TrainState.create(apply_fn=model.apply, variables=variables, tx=tx, loss=loss), spe


class _EvalSplit:
    """A split cut into evaluation batches split along the mesh's `data` axis.

    The batch size is rounded up to a multiple of the data axis; the last batch is padded with
    `mask = 0` rows. A split of at most `_DEVICE_DATA_BYTES` goes to the device once and stays
    there; a larger one is copied a batch at a time.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, mesh):
        self.x, self.y, self.mesh, self.n = x, y, mesh, len(x)
        n_dev = int(mesh.shape[sh.DATA_AXIS])
        self.bs = -(-batch_size // n_dev) * n_dev
        self.nb = -(-self.n // self.bs)
        fits = (x[:1].nbytes + y[:1].nbytes) * self.nb * self.bs <= _DEVICE_DATA_BYTES
        self._cached = [self._batch(i) for i in range(self.nb)] if fits else None

    def _batch(self, i: int) -> dict:
        lo, hi = i * self.bs, min(self.n, (i + 1) * self.bs)
        xb = np.zeros((self.bs, *self.x.shape[1:]), self.x.dtype)
        yb = np.zeros((self.bs, *self.y.shape[1:]), self.y.dtype)
        mask = np.zeros((self.bs,), np.float32)
        xb[:hi - lo], yb[:hi - lo], mask[:hi - lo] = self.x[lo:hi], self.y[lo:hi], 1.0
        where = sh.batch_sharding(self.mesh)
        return {k: sh.put(v, where) for k, v in (("x", xb), ("y", yb), ("mask", mask))}

    def batches(self):
        if self._cached is not None:
            yield from self._cached
            return
        for i in range(self.nb):
            yield self._batch(i)


@functools.lru_cache(maxsize=8)
def _eval_fn(mesh):
    # One program per batch shape: a run evaluates all its splits with one batch size
    # (`_Run.ev`), so it compiles this once, where a scan over each split's stacked batches
    # compiled once per split (3 programs, 0.4-0.7 s each, in `make run`). Batches are
    # dispatched one after another and fetched together, so the host does not wait per batch.
    # Replicated outputs: every process reads the predictions from a local copy. On a
    # multi-core CPU Eigen's convolutions (`cpu_jit`) evaluated the benchmark CNN 1.27x /
    # 1.39x faster (batches of 128 / 32, 2 cores), and compiled in 0.8 s against 1.0 s.
    return sh.cpu_jit(eval_step, out_shardings=sh.replicated(mesh))


def _evaluate_split(state: TrainState, split: _EvalSplit, with_confusion: bool = False) -> dict:
    where = state_sharding(split.mesh, state).to_tree()
    state = state.replace_tree(jax.device_put(state.to_tree(), where))
    step = _eval_fn(split.mesh)
    outs = sh.fetch([step(state, batch) for batch in split.batches()])
    n = split.n
    result = {"loss": float(np.sum([o["loss_sum"] for o in outs], dtype=np.float64)) / n}
    if state.loss.classification:
        pred = np.concatenate([o["pred"].reshape(-1) for o in outs])[:n]
        conf = np.asarray(M.confusion_matrix(pred, split.y, state.loss.num_classes))
        correct = float(np.sum([o["correct_sum"] for o in outs], dtype=np.float64))
        result.update(accuracy=correct / n,
                      balanced_accuracy=float(M.balanced_accuracy(conf)),
                      macro_f1=float(M.macro_f1(conf)))
        if with_confusion:
            result["confusion"] = conf.tolist()
    return result


def evaluate(state: TrainState, x: np.ndarray, y: np.ndarray, batch_size: int,
             with_confusion: bool = False, mesh=None) -> dict:
    """Metrics over a whole split; the last batch is padded and masked, so the mean is exact.

    Batches are split across the devices of the mesh's `data` axis (the batch size rounded up
    to a multiple of it); a split of at most 1 GiB is put on the devices once.

    Args:
        state: the training state.
        x: inputs of the split.
        y: labels of the split.
        batch_size: examples per evaluation batch (at most the split's size).
        with_confusion: also return the confusion matrix.
        mesh: a ("data",) mesh (default: all devices, `research.sharding.data_mesh`).

    Returns:
        loss, and for classification accuracy, balanced_accuracy, macro_f1 (and confusion).
    """
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"evaluate: x and y need the same number (> 0) of examples, got "
                         f"{len(x)} and {len(y)}")
    mesh = sh.data_mesh() if mesh is None else mesh
    split = _EvalSplit(x, y, max(1, min(batch_size, len(x))), mesh)
    return _evaluate_split(state, split, with_confusion)


# Settings that do not change what a run computes, beyond those a resumed run may change anyway:
# moving the feature cache must not refuse a resume.
_IDENTITY_IGNORED = (*RUN_CONTROL_FIELDS, "data.cache_dir")
# The training split goes to the device once when it is at most this big; batches are then
# gathered there instead of being copied from the host every step.
_DEVICE_DATA_BYTES = 1 << 30
# Step metrics stay on the device until an epoch ends, a file is written, or this many pile up.
_MAX_PENDING = 1024
# Bump when summary.json changes shape: an older one is recomputed, keeping its `seconds`.
_SUMMARY_VERSION = 2


def _check_config(run_dir: str, cfg: Config) -> dict:
    """Refuse to resume a run folder that holds different settings; return ours to record."""
    path = os.path.join(run_dir, "config.json")
    ours = to_dict(cfg)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        try:  # fields added since that run was written take their defaults
            theirs = to_dict(from_dict(type(cfg), theirs))
        except (TypeError, ValueError):
            pass
        diff = [d for d in config_diff(ours, theirs) if d not in _IDENTITY_IGNORED]
        if diff:
            raise ValueError(f"{run_dir} holds a run with different settings ({', '.join(diff)}); "
                             "choose another --name or --workdir, or delete that folder")
    return ours


def _check_data(run_dir: str, data: Dataset) -> dict:
    """Refuse to resume on other data than the run was trained on; return the record to write.

    The settings can match while the data do not: a generator that changed between versions, a
    user's folder with files added or removed. Resuming would then mix two data sets in one run.
    The record also keeps the files the loader skipped as bad, so they are not only in a log.
    """
    path = os.path.join(run_dir, "data.json")
    ours = {"fingerprint": fingerprint({"x_train": data.x_train, "y_train": data.y_train,
                                        "x_val": data.x_val, "y_val": data.y_val,
                                        "x_test": data.x_test, "y_test": data.y_test}),
            "train": list(np.shape(data.x_train)), "val": list(np.shape(data.x_val)),
            "test": list(np.shape(data.x_test)),
            "bad_files_skipped": int(data.info.get("bad_files_skipped", 0)),
            "bad_files": list(data.info.get("bad_files", []))}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        if theirs.get("fingerprint") != ours["fingerprint"]:
            raise ValueError(f"{run_dir} was trained on other data (data fingerprint "
                             f"{theirs.get('fingerprint')}, shapes train {theirs.get('train')} "
                             f"test {theirs.get('test')}; now {ours['fingerprint']}, train "
                             f"{ours['train']} test {ours['test']}): the data changed since "
                             "(generator version, files, feature settings). Choose another "
                             "--name or --workdir, or delete that folder")
    return ours


def _batch_problem(x_bad: np.ndarray) -> str:
    """A hint about non-finite inputs in a batch, for the error message."""
    bad = ~np.isfinite(np.asarray(x_bad, np.float64)).reshape(len(x_bad), -1).all(1)
    if bad.any():
        return f"; the batch has {int(bad.sum())} example(s) with NaN/inf inputs: check the data"
    return "; the inputs are finite: try a smaller learning rate or gradient clipping"


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training order of one epoch (seeded by epoch, so a resumed run sees the same)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _call_length(step: int, k: int, spe: int, stop_at: int, checkpoint_every: int,
                 trajectory_every: int) -> int:
    """Steps of the next compiled call: at most k, up to the next boundary.

    A call never crosses an epoch end, a checkpoint, a trajectory save or the stop, so
    evaluation and saving see the same states for any k.
    """
    end = min(stop_at, (step // spe + 1) * spe, (step // checkpoint_every + 1) * checkpoint_every)
    if trajectory_every:
        end = min(end, (step // trajectory_every + 1) * trajectory_every)
    return min(k, end - step)


def _check_topology(run_dir: str, mesh) -> dict:
    """Refuse to resume on another number of processes or devices; return the record to write.

    The global batch is split over the devices, so their number changes the order of the
    floating-point sums: a resumed run would not equal the uninterrupted one.
    """
    path = os.path.join(run_dir, "topology.json")
    ours = {"processes": jax.process_count(), "devices": int(mesh.devices.size)}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        if theirs != ours:
            raise ValueError(
                f"{run_dir} was trained on {theirs.get('processes')} process(es) with "
                f"{theirs.get('devices')} device(s) in all; this run has {ours['processes']} "
                f"process(es) with {ours['devices']} device(s). Resume with the same number of "
                "processes and devices (the batch is split across devices, so results depend "
                "on their number), or choose another --name or --workdir")
    return ours


def selection_score(record: dict, classification: bool) -> float:
    """How good a validation record is for model selection (higher is better).

    Classification: the accuracy, ties broken by the lower loss (a small validation split ties
    often, and the first of equals is usually the less trained). The loss term is below 1e-6,
    so it never outweighs one example of a validation split under a million examples.
    Regression: minus the loss.
    """
    if not classification:
        return -float(record["loss"])
    loss = float(record["loss"])
    return float(record["accuracy"]) - 1e-6 * loss / (1.0 + loss)


def _best_from_records(records: list[dict], classification: bool) -> tuple[float, int]:
    """The best validation score and its step; the first of equal scores wins."""
    best, best_step = -math.inf, 0
    for r in records:
        if r["split"] == "val" and selection_score(r, classification) > best:
            best, best_step = selection_score(r, classification), r["step"]
    return best, best_step


def _to_default_device(state: TrainState) -> TrainState:
    """With one process, the state on the default device, as `build_state` and `load_run` give.

    States of runs split over different numbers of devices can then be mixed freely (an
    interpolation between a batch-10 run on 2 devices and a batch-8 run on 4, say). With several
    processes the state stays a global array on the run's mesh.
    """
    if jax.process_count() > 1:
        return state
    return state.replace_tree(jax.device_put(state.to_tree(), jax.devices()[0]))


@dataclasses.dataclass
class _Run:
    """The running state of one `train_and_evaluate` call, handed from phase to phase."""

    cfg: Config
    run_dir: str
    mesh: object
    data: Dataset
    state: TrainState
    spe: int
    total: int
    stop_at: int
    n_params: int
    checkpointer: ckpt.Checkpointer
    writer_proc: bool
    step: int = 0
    loop_record: dict = dataclasses.field(default_factory=dict)
    best: float = -math.inf
    best_step: int = 0
    writer: JsonlWriter | None = None
    tb: TensorBoardWriter | None = None
    key: jax.Array | None = None
    on_device: bool = False
    x_dev: jax.Array | None = None
    y_dev: jax.Array | None = None
    run_steps: object = None
    split_steps: object = None
    eval_splits: dict[str, _EvalSplit] = dataclasses.field(default_factory=dict)
    sums: dict[str, float] = dataclasses.field(default_factory=lambda: defaultdict(float))
    count: int = 0
    pending: list[tuple[int, int, dict]] = dataclasses.field(default_factory=list)
    perm: np.ndarray | None = None
    order_dev: jax.Array | None = None
    perm_epoch: int = -1
    bar: tqdm | None = None
    seconds_before: float = 0.0
    t_start: float = 0.0

    @property
    def has_val(self) -> bool:
        return len(self.data.x_val) > 0

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    @property
    def summary_path(self) -> str:
        return os.path.join(self.run_dir, "summary.json")

    def say(self, text: str) -> None:
        _say(self.cfg, text)

    def write(self, record: dict) -> None:
        if self.writer is not None:
            self.writer.write(record)
            log_record(self.tb, record)

    def ev(self, name: str, with_confusion: bool = False, of: TrainState | None = None) -> dict:
        if name not in self.eval_splits:
            d = self.data
            x, y = {"train": (d.x_train, d.y_train), "val": (d.x_val, d.y_val),
                    "test": (d.x_test, d.y_test)}[name]
            # One batch size for every split, so evaluation compiles once per run; a smaller
            # split is padded to it (in `make run` val's 80 and test's 200 rows each become one
            # batch of 256).
            largest = max(len(d.x_train), len(d.x_val), len(d.x_test))
            bs = min(self.cfg.train.eval_batch_size, largest)
            self.eval_splits[name] = _EvalSplit(x, y, bs, self.mesh)
        return _evaluate_split(self.state if of is None else of, self.eval_splits[name],
                               with_confusion)

    def elapsed(self) -> float:
        return self.seconds_before + time.time() - self.t_start


def _say(cfg: Config, text: str) -> None:
    if sh.is_writer():
        print(f"[{cfg.name}] {text}", flush=True)


def _start(cfg: Config, workdir: str | None) -> _Run:
    """Check the settings and the run folder, write the run's identity, place the state."""
    if getattr(cfg, "distributed", False):
        sh.initialize_distributed()
    writer_proc = sh.is_writer()
    run_dir = workdir if workdir is not None else cfg.run_dir()
    tc = cfg.train
    # Check everything that can refuse the start before writing anything: a refused start must
    # leave the folder as it was, so that the corrected command is not refused in turn.
    mesh, mesh_note = sh.training_mesh(tc.batch_size, tc.devices)
    config_record = _check_config(run_dir, cfg)
    topology_record = _check_topology(run_dir, mesh)
    data = load_dataset(cfg.data)
    data_record = _check_data(run_dir, data)
    state, spe = build_state(cfg, data)
    if writer_proc:
        os.makedirs(run_dir, exist_ok=True)
        remove_stale = getattr(research.io, "remove_stale_temporaries", None)
        if remove_stale is not None:
            # Temporaries of atomic writes a kill interrupted (orbax cleans its own folders).
            for folder in (run_dir, os.path.join(run_dir, "trajectory")):
                remove_stale(folder)
        atomic_write_json(os.path.join(run_dir, "config.json"), config_record)
        atomic_write_json(os.path.join(run_dir, "data.json"), data_record)
        atomic_write_json(os.path.join(run_dir, "topology.json"), topology_record)

    total = spe * cfg.train.epochs
    stop_at = min(total, cfg.train.stop_after) if cfg.train.stop_after else total
    n_params = param_count(state.params)
    _say(cfg, f"{cfg.model.kind} with {n_params:,} parameters; {len(data.x_train)} train / "
         f"{len(data.x_val)} val / {len(data.x_test)} test examples; {total} steps ({spe} per "
         f"epoch); batches split over {mesh.devices.size} device(s) in {jax.process_count()} "
         "process(es)")
    if mesh_note:
        _say(cfg, f"note: {mesh_note}")
    if len(data.x_val) == 0:
        _say(cfg, "warning: no validation split, so no best checkpoint is chosen")

    # Data parallelism: the state goes to every device (as `state_sharding` says), batches are
    # split along the mesh's data axis.
    where = state_sharding(mesh, state).to_tree()
    state = state.replace_tree(jax.tree_util.tree_map(
        lambda x, w: sh.put(np.asarray(x), w), state.to_tree(), where))
    checkpointer = ckpt.Checkpointer(run_dir, tc.keep_checkpoints)
    return _Run(cfg=cfg, run_dir=run_dir, mesh=mesh, data=data, state=state, spe=spe,
                total=total, stop_at=stop_at, n_params=n_params, checkpointer=checkpointer,
                writer_proc=writer_proc)


def _resume(run: _Run) -> dict | None:
    """Restore the newest checkpoint (or save the initial state) and recover the best state.

    Returns the stored summary when the run is already finished, else None.
    """
    tc, checkpointer = run.cfg.train, run.checkpointer
    run.step = step = checkpointer.latest_step() or 0
    loop_record: dict | None = None
    if step:
        tree, loop_record = checkpointer.restore(run.state.to_tree())
        run.state = run.state.replace_tree(tree)
        run.say(f"resumed from step {step}")
        if loop_record is None:
            run.say("warning: a checkpoint from an older version: the step metrics of the "
                    "current epoch restart from this step")
    elif run.writer_proc:
        ckpt.save_params(os.path.join(run.run_dir, "init_params.npz"), run.state.params)
        if tc.trajectory_every:
            ckpt.save_params(ckpt.trajectory_path(run.run_dir, 0), run.state.params)
    run.loop_record = loop_record = loop_record or {}
    if run.writer_proc:
        truncate_after(run.metrics_path, step)
    sh.barrier("train_and_evaluate:start")  # the others read metrics.jsonl after truncation
    run.best, run.best_step = _best_from_records(read_jsonl(run.metrics_path),
                                                 run.state.loss.classification)
    if step and run.best_step == step and run.best_step not in checkpointer.best_steps():
        # A kill between the newest checkpoint and the best one (the order of older versions)
        # lost the best state: it is the state just restored.
        checkpointer.save_best(step, run.state.to_tree(), run.best, {"step": step})
    if step == run.total and os.path.exists(run.summary_path):
        with open(run.summary_path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("version") == _SUMMARY_VERSION and stored.get("steps") == run.total:
            return stored
        loop_record.setdefault("seconds", stored.get("seconds", 0.0))
    return None


def _open_outputs(run: _Run) -> None:
    """Open the metric writers, put the training data on the devices, compile the steps."""
    tc, mesh, data = run.cfg.train, run.mesh, run.data
    run.writer = JsonlWriter(run.metrics_path) if run.writer_proc else None
    if tc.tensorboard and run.writer_proc:
        # The event files mirror metrics.jsonl: rebuilt from its (truncated) records at every
        # start, so a killed piece's events past the checkpoint never show twice.
        tb_dir = os.path.join(run.run_dir, "tensorboard", "metrics")
        shutil.rmtree(tb_dir, ignore_errors=True)
        run.tb = TensorBoardWriter(tb_dir)
        for record in read_jsonl(run.metrics_path):
            log_record(run.tb, record)

    run.key = sh.put(np.asarray(jax.random.fold_in(jax.random.PRNGKey(tc.seed), 1)),
                     sh.replicated(mesh))
    # The training split goes to every device once when it fits; each device then gathers its
    # rows of every batch there (no host copy per step, no communication).
    run.on_device = data.x_train.nbytes + data.y_train.nbytes <= _DEVICE_DATA_BYTES
    if run.on_device:
        run.x_dev = sh.put(data.x_train, sh.replicated(mesh))
        run.y_dev = sh.put(data.y_train, sh.replicated(mesh))
    run.run_steps = compile_train_steps(mesh, run.state, resident=run.on_device)
    run.split_steps = sh.batch_sharding(mesh, leading=1)

    run.sums = defaultdict(float, run.loop_record.get("sums", {}))
    run.count = int(run.loop_record.get("count", 0))
    run.bar = tqdm(total=run.total, initial=run.step,
                   disable=not (tc.progress and run.writer_proc), desc=run.cfg.name,
                   unit="step", dynamic_ncols=True, mininterval=0.5 if os.isatty(2) else 10.0)
    run.seconds_before = float(run.loop_record.get("seconds", 0.0))
    run.t_start = time.time()


def _flush(run: _Run) -> None:
    """Fetch the pending step metrics and add them to the epoch's sums.

    Step metrics stay on the device until here, so the host never waits for a step to finish;
    every file write is preceded by a flush, so nothing on disk comes after a non-finite step.
    """
    if not run.pending:
        return
    tc, x_train = run.cfg.train, run.data.x_train
    fetched = sh.fetch([m for _, _, m in run.pending])
    calls = [(first, n) for first, n, _ in run.pending]
    run.pending.clear()
    for (first, n), metrics_k in zip(calls, fetched):
        for j in range(n):
            at = first + j
            values = {k: float(v[j]) for k, v in metrics_k.items()}
            if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
                last = run.checkpointer.latest_step()
                epoch, i = divmod(at - 1, run.spe)
                idx = _permutation(tc.seed, epoch, len(x_train))[
                    i * tc.batch_size:(i + 1) * tc.batch_size]
                raise FloatingPointError(
                    f"non-finite loss ({values['loss']}) or gradient norm "
                    f"({values['grad_norm']}) at step {at} (epoch {epoch + 1}); training "
                    f"stopped, the last good checkpoint is step {last} in "
                    f"{run.run_dir}/checkpoints{_batch_problem(x_train[idx])}")
            for k, v in values.items():
                run.sums[k] += v
            run.count += 1
    run.bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "accuracy") if k in values})


def _train_call(run: _Run) -> int:
    """Run one compiled call of up to `steps_per_call` steps; returns the call's epoch."""
    tc, x_train, y_train = run.cfg.train, run.data.x_train, run.data.y_train
    epoch, i = divmod(run.step, run.spe)
    if epoch != run.perm_epoch:
        run.perm = _permutation(tc.seed, epoch, len(x_train)).astype(np.int32)
        run.perm_epoch = epoch
        if run.on_device:  # the epoch's batches, once: no host transfer per call
            run.order_dev = sh.put(
                run.perm[:run.spe * tc.batch_size].reshape(run.spe, tc.batch_size),
                run.split_steps)
    n = _call_length(run.step, tc.steps_per_call, run.spe, run.stop_at, tc.checkpoint_every,
                     tc.trajectory_every)
    if run.on_device:
        run.state, metrics = run.run_steps(run.state, run.x_dev, run.y_dev, run.order_dev, i,
                                           run.key, n)
    else:
        idx_KxB = run.perm[i * tc.batch_size:(i + n) * tc.batch_size].reshape(n, tc.batch_size)
        batches = {"x": sh.put(x_train[idx_KxB], run.split_steps),
                   "y": sh.put(y_train[idx_KxB], run.split_steps)}
        run.state, metrics = run.run_steps(run.state, batches, run.key)
    run.pending.append((run.step + 1, n, metrics))
    run.step += n
    run.bar.update(n)
    return epoch


def _after_call(run: _Run, epoch: int) -> None:
    """Flush, save the trajectory, log and evaluate at an epoch end, checkpoint, as due."""
    tc, step = run.cfg.train, run.step
    epoch_end = step % run.spe == 0
    save_now = step % tc.checkpoint_every == 0 or step == run.stop_at
    traj_now = tc.trajectory_every and step % tc.trajectory_every == 0
    if epoch_end or save_now or traj_now or sum(p[1] for p in run.pending) >= _MAX_PENDING:
        _flush(run)
    if traj_now and run.writer_proc:
        ckpt.save_params(ckpt.trajectory_path(run.run_dir, step), run.state.params)
    if epoch_end:
        _end_epoch(run, epoch)
    if save_now:
        run.checkpointer.save(step, run.state.to_tree(),
                              {"sums": dict(run.sums), "count": run.count,
                               "seconds": run.elapsed()})


def _end_epoch(run: _Run, epoch: int) -> None:
    """Write the epoch's step metrics; evaluate when due and save a better best state."""
    tc, step = run.cfg.train, run.step
    record = {"step": step, "epoch": epoch + 1, "split": "train_steps", "time": run.elapsed()}
    record.update({k: v / max(run.count, 1) for k, v in run.sums.items()})
    run.write(record)
    run.sums.clear()
    run.count = 0
    if not ((epoch + 1) % tc.eval_every == 0 or step == run.total):
        return
    head = {"step": step, "epoch": epoch + 1}
    if tc.eval_train:
        run.write({**head, "split": "train", **run.ev("train")})
    if run.has_val:
        val = run.ev("val")
        run.write({**head, "split": "val", **val})
        val_score = selection_score(val, run.state.loss.classification)
    # Test curves are for plots only: nothing is chosen on them.
    run.write({**head, "split": "test", **run.ev("test")})
    if run.has_val and val_score > run.best:
        # Before the newest checkpoint of this step: see `train_and_evaluate`'s docstring.
        run.best, run.best_step = val_score, step
        run.checkpointer.save_best(step, run.state.to_tree(), run.best,
                                   {"step": step, "val": val})


def _summary(run: _Run) -> dict:
    """The run's summary; for a finished run with the final and best states' metrics, saved."""
    classification, has_val = run.state.loss.classification, run.has_val
    summary = {"name": run.cfg.name, "version": _SUMMARY_VERSION, "steps": run.step,
               "total_steps": run.total, "params": run.n_params, "seconds": run.elapsed(),
               "finished": run.step == run.total,
               "class_names": list(run.data.class_names),
               "selection": ({"split": "val", "metric": "accuracy" if classification else "loss",
                              "higher_is_better": classification,
                              "ties": "lower validation loss" if classification else None}
                             if has_val else None)}
    if run.step == run.total:
        summary["train"] = run.ev("train")
        if has_val:
            summary["val"] = run.ev("val")
        summary["test"] = run.ev("test", with_confusion=True)
        if has_val and run.checkpointer.best_step() is not None:
            tree, _ = run.checkpointer.restore(run.state.to_tree(), best=True)
            best_state = run.state.replace_tree(tree)
            at = run.checkpointer.best_step()
            summary["best"] = {
                "step": at, "epoch": at // run.spe, "val": run.ev("val", of=best_state),
                "test": run.ev("test", with_confusion=True, of=best_state)}
        if run.writer_proc:
            atomic_write_json(run.summary_path, summary)
    return summary


def train_and_evaluate(cfg: Config, workdir: str | None = None) -> tuple[TrainState, dict]:
    """Train a model as configured, evaluating every epoch, with checkpoints and resume.

    The best checkpoint is chosen on the validation split only (accuracy for classification,
    loss for regression); the test split is evaluated every epoch for the learning curves and at
    the end for the final and the best state, and never used to choose anything.

    Resuming is exact: every file a resumed run writes equals the uninterrupted run's, except
    the wall-clock fields (`time` in metrics.jsonl, `seconds` in summary.json, which count the
    training seconds of all pieces of a run, without the work a kill threw away). Every kill
    point is safe: records written after the newest checkpoint are dropped on resume; the best
    state is saved before the newest checkpoint of the same step, so `best/` is never behind
    the metrics of the resumed step (and a `best/` ahead of it is reached again).

    Args:
        cfg: the run's configuration.
        workdir: the run folder (default `cfg.workdir/cfg.name`).

    Returns:
        The final state (with one process, on the default device) and a summary: for a
        finished run the final state's metrics on every split (`train`, `val`, `test`), the
        best state's (`best`: step, epoch, `val`, `test`), steps, training seconds,
        parameters, class names.

    Raises:
        FloatingPointError: a step produced a non-finite loss or gradient; the message names the
            step, and the checkpoints on disk are those of earlier, finite steps.
        ValueError: a bad setting, or a run folder holding a run with other settings or data;
            a refused start writes nothing into the run folder.
    """
    run = _start(cfg, workdir)
    stored = _resume(run)
    if stored is not None:
        run.checkpointer.close()
        return _to_default_device(run.state), stored
    _open_outputs(run)
    try:
        while run.step < run.stop_at:
            _after_call(run, _train_call(run))
        _flush(run)
    finally:
        run.bar.close()
        if run.writer is not None:
            run.writer.close()
        if run.tb is not None:
            run.tb.close()
    try:
        summary = _summary(run)
    finally:
        run.checkpointer.close()
    sh.barrier("train_and_evaluate:end")
    return _to_default_device(run.state), summary


def load_run(run_dir: str, best: bool = False) -> tuple[Config, TrainState, Dataset]:
    """Rebuild a saved run: its config, its data and its newest (or best) state.

    Args:
        run_dir: a folder written by `train_and_evaluate`.
        best: restore the best-scoring checkpoint instead of the newest.

    Returns:
        (config, state, dataset).
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.json")
    with open(path, encoding="utf-8") as f:
        cfg = from_dict(Config, json.load(f))
    data = load_dataset(cfg.data)
    # Only the state's structure is needed: traced, not compiled (an initialisation is a
    # compilation of about 1 s), and restored onto the default device as `build_state` puts it.
    state = jax.eval_shape(lambda: build_state(cfg, data)[0])
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    template = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), state.to_tree())
    checkpointer = ckpt.Checkpointer(run_dir, cfg.train.keep_checkpoints)
    try:
        state = state.replace_tree(checkpointer.restore(template, best=best)[0])
    finally:
        checkpointer.close()
    return cfg, state, data
