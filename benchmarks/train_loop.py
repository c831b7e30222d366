"""Per-step host overhead of the training loop against a bare jitted step loop on the same data.

The loop (`research.train.train_and_evaluate`) does more than call the step: data order,
metrics, progress, checkpoints. On a small model the step itself takes microseconds, so any host
work per step (copying a batch to the device, waiting for the device to fetch metrics) shows up
directly. This script reads the loop's own clock: the `time` field of the per-epoch
`train_steps` records in `metrics.jsonl`, from the end of epoch 2 to the end of the last epoch
(so compilation, start-up, the final evaluation and checkpoint are left out); the bare loop runs
the same jitted `train_step_donated` over the same batches, already on the device, timed the same
way.

Run (about a minute on a 2-core CPU):

    python -m benchmarks.train_loop
    python -m benchmarks.train_loop --epochs 60 --repeats 5

Prints microseconds per step for the loop and the bare loop (minimum and median over
`--repeats` rounds; each round times both, so load from other processes hits both sides of a
round's ratio) and the median ratio.

Measured (2-core CPU shared with six other jobs, so rounds vary by 2x; jax 0.10.2, Playground
spiral, MLP [8, 8], batch 10, 225 training examples, 22 steps per epoch, `--repeats 3`, run
twice each, alternating):
- before (the host fetched each step's metrics one step behind, which waits for the device
  every step, and copied every batch from the host): loop min 571 / 327 us per step, median
  677 / 715; bare min 147 / 123, median 185 / 216.
- after (metrics stay on the device until an epoch ends or a file is written; the training
  split is put on the device once and each batch gathered there): loop min 356 / 391, median
  511 / 497; bare min 102 / 117, median 192 / 140.
The loop body alone, timed in one process with the variants interleaved (7 rounds, 440 steps,
min / median us per step): before 294 / 415, after 262 / 303, bare 233 / 277. What is left is
the per-epoch fetch of the step metrics (a wait for the device; about 90 us per step at 22
steps per epoch without evaluation, and free when an evaluation waits for the device at the
same epoch end anyway) and one extra dispatch per step for the on-device gather.
Results are bit-identical to before (parameters, optimiser state and every metric record).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from research.config import PLAYGROUND_PRESETS
from research.data import load_dataset
from research.train import build_state, train_and_evaluate
from research.train.steps import train_step_donated
from research.writers import read_jsonl


def _config(epochs: int):
    base = PLAYGROUND_PRESETS["cpu"]
    # Evaluation, checkpoints and trajectory only at the end, so only per-step work differs.
    train = dataclasses.replace(base.train, epochs=epochs, eval_every=10**6, eval_train=False,
                                checkpoint_every=10**9, trajectory_every=0, progress=False)
    return dataclasses.replace(base, train=train)


def _loop_us(epochs: int) -> float:
    cfg = _config(epochs)
    with tempfile.TemporaryDirectory() as tmp:
        train_and_evaluate(cfg, tmp)
        recs = [r for r in read_jsonl(os.path.join(tmp, "metrics.jsonl"))
                if r["split"] == "train_steps"]
    first, last = recs[1], recs[-1]
    return 1e6 * (last["time"] - first["time"]) / (last["step"] - first["step"])


def _bare_us(epochs: int) -> float:
    cfg = _config(epochs)
    data = load_dataset(cfg.data)
    state, spe = build_state(cfg, data)
    tc = cfg.train
    key = jax.random.fold_in(jax.random.PRNGKey(tc.seed), 1)
    x_dev, y_dev = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    batches = []
    for epoch in range(epochs):
        perm = np.random.default_rng([tc.seed, epoch]).permutation(len(data.x_train))
        for i in range(spe):
            idx = jnp.asarray(perm[i * tc.batch_size:(i + 1) * tc.batch_size])
            batches.append({"x": x_dev[idx], "y": y_dev[idx]})
    jax.block_until_ready(batches)
    metrics = None
    for i, batch in enumerate(batches):
        if i == 2 * spe:  # as for the loop: from the end of epoch 2
            jax.block_until_ready((state, metrics))
            t0 = time.perf_counter()
        state, metrics = train_step_donated(state, batch, key)
    jax.block_until_ready((state, metrics))
    return 1e6 * (time.perf_counter() - t0) / (len(batches) - 2 * spe)


def main() -> None:
    """Time both loops and print microseconds per step."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    loop_us, bare_us = [], []
    for _ in range(args.repeats):
        loop_us.append(_loop_us(args.epochs))
        bare_us.append(_bare_us(args.epochs))
        print(f"round: loop {loop_us[-1]:.0f} us/step, bare {bare_us[-1]:.0f} us/step", flush=True)
    ratios = [a / b for a, b in zip(loop_us, bare_us)]
    # The minimum is the figure least disturbed by other processes on a shared machine.
    print(f"min: loop {min(loop_us):.0f} us/step, bare {min(bare_us):.0f} us/step; median: "
          f"loop {statistics.median(loop_us):.0f}, bare {statistics.median(bare_us):.0f}, ratio "
          f"{statistics.median(ratios):.2f}x (backend {jax.default_backend()})")


if __name__ == "__main__":
    main()
