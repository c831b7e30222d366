"""Per-step host overhead of the training loop against a bare jitted step loop on the same data.

The loop (`research.train.train_and_evaluate`) does more than call the step: data order,
metrics, progress, checkpoints. On a small model the step itself takes microseconds, so any host
work per step (copying a batch to the device, waiting for the device to fetch metrics) shows up
directly. This script reads the loop's own clock: the `time` field of the per-epoch
`train_steps` records in `metrics.jsonl`, from the end of epoch 2 to the end of the last epoch
(so compilation, start-up, the final evaluation and checkpoint are left out); the bare loop runs
the same jitted `train_step_donated` over the same batches, already on the device, timed the same
way.

The loop is timed in four variants: `TrainConfig.steps_per_call` K = 1 and K = 8 (K steps in
one compiled `lax.scan`, batches gathered on the device), each on one device and data-parallel
on 4 devices (host CPU devices here: `XLA_FLAGS=--xla_force_host_platform_device_count=4` is set
by this script unless XLA_FLAGS is already set; on a GPU or TPU host the real devices are used).

Run (about two minutes on a 2-core CPU):

    python -m benchmarks.train_loop
    python -m benchmarks.train_loop --epochs 60 --repeats 5

Prints microseconds per step for each loop variant and the bare loop (minimum and median over
`--repeats` rounds; each round times all, so load from other processes hits every side of a
round's ratio) and the median ratio of each variant to the bare loop.

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

Device-resident loop and data parallelism (same machine and load, jax 0.10.2, batch 8, 28 steps
per epoch, `python -m benchmarks.train_loop --repeats 3`; min / median us per step over the
rounds, bare loop 167 / 179):
- K=1, 1 device: 363 / 531 (2.6x the bare loop). A first version put each call's batch indices
  on the device (a ~90 us `device_put` per call) and measured 709 / 863; the epoch's order now
  goes to the device once per epoch and each call slices it.
- K=8, 1 device: 67 / 115 (0.65x: faster than the bare one-step-per-call loop, since 8 steps
  share one dispatch and the metrics come back once per call).
- K=1, 4 host devices: 1293 / 1627; K=8, 4 host devices: 730 / 799. On a 2-core CPU the 4
  simulated devices share the cores and every step adds an all-reduce between them, so data
  parallelism here only shows that it runs (and that K=8 halves its per-step overhead); the
  speed-up is for real accelerators.
"""

from __future__ import annotations

import os

# 4 host devices for the data-parallel variants; must be set before jax starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from research.config import PLAYGROUND_PRESETS  # noqa: E402
from research.data import load_dataset  # noqa: E402
from research.train import build_state, train_and_evaluate  # noqa: E402
from research.train.steps import train_step_donated  # noqa: E402
from research.writers import read_jsonl  # noqa: E402

# (steps per call, devices)
VARIANTS = ((1, 1), (8, 1), (1, 4), (8, 4))


def _config(epochs: int, batch_size: int, steps_per_call: int = 1, devices: int = 1):
    base = PLAYGROUND_PRESETS["cpu"]
    # Evaluation, checkpoints and trajectory only at the end, so only per-step work differs.
    train = dataclasses.replace(base.train, epochs=epochs, eval_every=10**6, eval_train=False,
                                checkpoint_every=10**9, trajectory_every=0, progress=False,
                                tensorboard=False, batch_size=batch_size,
                                steps_per_call=steps_per_call, devices=devices)
    return dataclasses.replace(base, train=train)


def _loop_us(epochs: int, batch_size: int, steps_per_call: int, devices: int) -> float:
    cfg = _config(epochs, batch_size, steps_per_call, devices)
    with tempfile.TemporaryDirectory() as tmp:
        train_and_evaluate(cfg, tmp)
        recs = [r for r in read_jsonl(os.path.join(tmp, "metrics.jsonl"))
                if r["split"] == "train_steps"]
    first, last = recs[1], recs[-1]
    return 1e6 * (last["time"] - first["time"]) / (last["step"] - first["step"])


def _bare_us(epochs: int, batch_size: int) -> float:
    cfg = _config(epochs, batch_size)
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
    """Time every loop variant and the bare loop; print microseconds per step."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=60,
                   help="epochs per timed run (timing starts at the end of epoch 2)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds, each timing every loop variant and the bare loop")
    p.add_argument("--batch-size", type=int, default=8, help="a multiple of 4 (the devices)")
    args = p.parse_args()
    variants = [v for v in VARIANTS if v[1] <= jax.device_count()]
    loop_us: dict[tuple[int, int], list[float]] = {v: [] for v in variants}
    bare_us: list[float] = []
    for _ in range(args.repeats):
        for v in variants:
            loop_us[v].append(_loop_us(args.epochs, args.batch_size, *v))
        bare_us.append(_bare_us(args.epochs, args.batch_size))
        print("round: " + ", ".join(f"K={k} x{d} dev {loop_us[(k, d)][-1]:.0f}"
                                    for k, d in variants)
              + f", bare {bare_us[-1]:.0f} us/step", flush=True)
    # The minimum is the figure least disturbed by other processes on a shared machine.
    print(f"bare jitted step loop (1 device): min {min(bare_us):.0f} us/step, median "
          f"{statistics.median(bare_us):.0f}")
    for k, d in variants:
        us = loop_us[(k, d)]
        ratio = statistics.median(a / b for a, b in zip(us, bare_us))
        print(f"loop K={k}, {d} device(s): min {min(us):.0f} us/step, median "
              f"{statistics.median(us):.0f}, ratio to bare {ratio:.2f}x")
    print(f"(backend {jax.default_backend()}, {jax.device_count()} devices, batch "
          f"{args.batch_size}, {args.epochs} epochs)")


if __name__ == "__main__":
    main()
