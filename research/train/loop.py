"""The host training loop: data order, jitted steps, evaluation, logging, checkpoints, resume.

`train_and_evaluate(cfg)` is the only place with side effects (files, progress bar, printing).
A run folder holds `config.json`, `data.json` (the data's fingerprint), `metrics.jsonl`,
`summary.json`, `checkpoints/`, `best/`, `init_params.npz` and optionally `trajectory/`.
Running the same config again resumes from the newest checkpoint and gives the same numbers as
an uninterrupted run; other settings or other data are refused.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from research import checkpoint as ckpt
from research import metrics as M
from research.config import RUN_CONTROL_FIELDS, Config, config_diff, from_dict, to_dict
from research.data import Dataset, load_dataset
from research.io import atomic_write_json, fingerprint
from research.losses import Loss
from research.models import make_model, param_count
from research.optim import make_optimizer
from research.train.state import TrainState
from research.train.steps import eval_step_jit, train_step_donated
from research.writers import JsonlWriter, read_jsonl, truncate_after


def _steps_per_epoch(cfg: Config, n_train: int) -> int:
    spe = n_train // cfg.train.batch_size
    if spe == 0:
        raise ValueError(f"TrainConfig.batch_size: {cfg.train.batch_size} is larger than the "
                         f"training split ({n_train} examples)")
    return spe


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
    variables = model.init({"params": init_key, "dropout": init_key},
                           jnp.asarray(dataset.x_train[:1]), train=False)
    spe = _steps_per_epoch(cfg, len(dataset.x_train))
    tx = make_optimizer(cfg.optim, spe * cfg.train.epochs)
    return TrainState.create(apply_fn=model.apply, variables=variables, tx=tx, loss=loss), spe


def evaluate(state: TrainState, x: np.ndarray, y: np.ndarray, batch_size: int,
             with_confusion: bool = False) -> dict:
    """Metrics over a whole split; the last batch is padded and masked, so the mean is exact.

    Args:
        state: the training state.
        x: inputs of the split.
        y: labels of the split.
        batch_size: examples per evaluation call.
        with_confusion: also return the confusion matrix.

    Returns:
        loss, and for classification accuracy, balanced_accuracy, macro_f1 (and confusion).
    """
    n = len(x)
    bs = min(batch_size, n)
    loss_sum, correct_sum, preds = 0.0, 0.0, []
    for start in range(0, n, bs):
        xb, yb = x[start:start + bs], y[start:start + bs]
        real = len(xb)
        mask = np.ones(bs, np.float32)
        if real < bs:
            pad = bs - real
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
            mask[real:] = 0.0
        out = eval_step_jit(state, {"x": xb, "y": yb, "mask": mask})
        loss_sum = loss_sum + out["loss_sum"]
        correct_sum = correct_sum + out.get("correct_sum", 0.0)
        preds.append(out["pred"][:real])
    result = {"loss": float(loss_sum) / n}
    if state.loss.classification:
        pred = np.concatenate(jax.device_get(preds))
        conf = np.asarray(M.confusion_matrix(pred, y, state.loss.num_classes))
        result.update(accuracy=float(correct_sum) / n,
                      balanced_accuracy=float(M.balanced_accuracy(conf)),
                      macro_f1=float(M.macro_f1(conf)))
        if with_confusion:
            result["confusion"] = conf.tolist()
    return result


def _check_config(run_dir: str, cfg: Config) -> None:
    """Refuse to resume a run folder that holds different settings; else record ours."""
    path = os.path.join(run_dir, "config.json")
    ours = to_dict(cfg)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        diff = [d for d in config_diff(ours, theirs) if d not in RUN_CONTROL_FIELDS]
        if diff:
            raise ValueError(f"{run_dir} holds a run with different settings ({', '.join(diff)}); "
                             "choose another --name or --workdir, or delete that folder")
    atomic_write_json(path, ours)


def _check_data(run_dir: str, data: Dataset) -> None:
    """Refuse to resume on other data than the run was trained on; else record its fingerprint.

    The settings can match while the data do not: a generator that changed between versions, a
    user's folder with files added or removed. Resuming would then mix two data sets in one run.
    """
    path = os.path.join(run_dir, "data.json")
    ours = {"fingerprint": fingerprint({"x_train": data.x_train, "y_train": data.y_train,
                                        "x_test": data.x_test, "y_test": data.y_test}),
            "train": list(np.shape(data.x_train)), "test": list(np.shape(data.x_test))}
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
    atomic_write_json(path, ours)


def _batch_problem(batch: dict) -> str:
    """A hint about non-finite inputs in a batch, for the error message."""
    bad = ~np.isfinite(np.asarray(batch["x"], np.float64)).reshape(len(batch["x"]), -1).all(1)
    if bad.any():
        return f"; the batch has {int(bad.sum())} example(s) with NaN/inf inputs: check the data"
    return "; the inputs are finite: try a smaller learning rate or gradient clipping"


def train_and_evaluate(cfg: Config, workdir: str | None = None) -> tuple[TrainState, dict]:
    """Train a model as configured, evaluating every epoch, with checkpoints and resume.

    Args:
        cfg: the run's configuration.
        workdir: the run folder (default `cfg.workdir/cfg.name`).

    Returns:
        The final state and a summary (final train/test metrics, steps, seconds, parameters).

    Raises:
        FloatingPointError: a step produced a non-finite loss or gradient; the message names the
            step, and the checkpoints on disk are those of earlier, finite steps.
        ValueError: a bad setting, or a run folder holding a run with other settings.
    """
    run_dir = workdir if workdir is not None else cfg.run_dir()
    os.makedirs(run_dir, exist_ok=True)
    _check_config(run_dir, cfg)
    data = load_dataset(cfg.data)
    _check_data(run_dir, data)
    state, spe = build_state(cfg, data)
    total = spe * cfg.train.epochs
    stop_at = min(total, cfg.train.stop_after) if cfg.train.stop_after else total
    tc = cfg.train
    n_params = param_count(state.params)
    print(f"[{cfg.name}] {cfg.model.kind} with {n_params:,} parameters; "
          f"{len(data.x_train)} train / {len(data.x_test)} test examples; "
          f"{total} steps ({spe} per epoch)", flush=True)

    checkpointer = ckpt.Checkpointer(run_dir, tc.keep_checkpoints)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    step = checkpointer.latest_step() or 0
    if step:
        state = state.replace_tree(checkpointer.restore(state.to_tree()))
        print(f"[{cfg.name}] resumed from step {step}", flush=True)
    else:
        ckpt.save_params(os.path.join(run_dir, "init_params.npz"), state.params)
        if tc.trajectory_every:
            ckpt.save_params(ckpt.trajectory_path(run_dir, 0), state.params)
    truncate_after(metrics_path, step)
    score_key = "accuracy" if state.loss.classification else "loss"
    sign = 1.0 if state.loss.classification else -1.0
    best = max((sign * r[score_key] for r in read_jsonl(metrics_path) if r["split"] == "test"),
               default=-math.inf)
    writer = JsonlWriter(metrics_path)
    key = jax.random.fold_in(jax.random.PRNGKey(tc.seed), 1)
    x_train, y_train = data.x_train, data.y_train
    sums: dict[str, float] = defaultdict(float)
    count = 0
    pending = None
    perm, perm_epoch = None, -1
    bar = tqdm(total=total, initial=step, disable=not tc.progress, desc=cfg.name, unit="step",
               dynamic_ncols=True, mininterval=0.5 if os.isatty(2) else 10.0)
    t0 = time.time()

    def consume():
        # Fetch the previous step's metrics only after the next step is queued, so the host
        # never stalls the device; check them before any checkpoint that depends on them.
        nonlocal pending, count
        if pending is None:
            return
        at, metrics, batch = pending
        pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
            last = checkpointer.latest_step()
            raise FloatingPointError(
                f"non-finite loss ({values['loss']}) or gradient norm ({values['grad_norm']}) at "
                f"step {at} (epoch {(at - 1) // spe + 1}); training stopped, the last good "
                f"checkpoint is step {last} in {run_dir}/checkpoints{_batch_problem(batch)}")
        for k, v in values.items():
            sums[k] += v
        count += 1
        if count % 10 == 0 or at == stop_at:
            bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "accuracy") if k in values})

    try:
        while step < stop_at:
            epoch, i = divmod(step, spe)
            if epoch != perm_epoch:
                perm = np.random.default_rng([tc.seed, epoch]).permutation(len(x_train))
                perm_epoch = epoch
            idx = perm[i * tc.batch_size:(i + 1) * tc.batch_size]
            batch = {"x": x_train[idx], "y": y_train[idx]}
            state, metrics = train_step_donated(state, batch, key)
            step += 1
            bar.update(1)
            consume()
            pending = (step, metrics, batch)
            epoch_end = step % spe == 0
            save_now = step % tc.checkpoint_every == 0 or step == stop_at
            traj_now = tc.trajectory_every and step % tc.trajectory_every == 0
            if epoch_end or save_now or traj_now:
                consume()
            if traj_now:
                ckpt.save_params(ckpt.trajectory_path(run_dir, step), state.params)
            score = None
            if epoch_end:
                record = {"step": step, "epoch": epoch + 1, "split": "train_steps",
                          "time": time.time() - t0}
                record.update({k: v / max(count, 1) for k, v in sums.items()})
                writer.write(record)
                sums.clear()
                count = 0
                if (epoch + 1) % tc.eval_every == 0 or step == total:
                    if tc.eval_train:
                        ev = evaluate(state, x_train, y_train, tc.eval_batch_size)
                        writer.write({"step": step, "epoch": epoch + 1, "split": "train", **ev})
                    ev = evaluate(state, data.x_test, data.y_test, tc.eval_batch_size)
                    writer.write({"step": step, "epoch": epoch + 1, "split": "test", **ev})
                    if sign * ev[score_key] > best:
                        best = score = sign * ev[score_key]
            if save_now:
                checkpointer.save(step, state.to_tree())
            if score is not None:
                checkpointer.save_best(step, state.to_tree(), score)
        consume()
    finally:
        bar.close()
        writer.close()
        checkpointer.close()

    summary = {"name": cfg.name, "steps": step, "total_steps": total, "params": n_params,
               "seconds": time.time() - t0, "finished": step == total,
               "class_names": list(data.class_names)}
    if step == total:
        summary["test"] = evaluate(state, data.x_test, data.y_test, tc.eval_batch_size,
                                   with_confusion=True)
        summary["train"] = evaluate(state, x_train, y_train, tc.eval_batch_size)
        atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return state, summary


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
    state, _ = build_state(cfg, data)
    checkpointer = ckpt.Checkpointer(run_dir, cfg.train.keep_checkpoints)
    try:
        state = state.replace_tree(checkpointer.restore(state.to_tree(), best=best))
    finally:
        checkpointer.close()
    return cfg, state, data
