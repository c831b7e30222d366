"""Checkpoints (the only module that imports orbax) and saved parameter trajectories.

A run folder holds `checkpoints/` (the latest k training states), `best/` (the state with the
best validation score), `init_params.npz` (the parameters at initialisation, for interpolation
plots) and, when enabled, `trajectory/step_<8 digits>.npz` (parameters every k steps, for the
landscape PCA). Parameter files are flat .npz archives keyed by '/'-joined parameter paths.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from research.io import atomic_save_npz

_LEGACY_ITEM = "default"


class Checkpointer:
    """The latest k states plus the best one, saved synchronously with orbax.

    Each checkpoint has two items: `state` (the arrays of the training state) and `loop` (a small
    JSON dict the host loop needs to resume exactly: the running sums of the current epoch's
    step metrics, their count, the elapsed training seconds; for the best checkpoint, its
    validation metrics). Checkpoints written before the `loop` item existed (one unnamed item)
    still restore, with `loop` None.

    Several processes: every process calls every method with the same global `jax.Array`s
    (orbax writes each shard once, from the process holding its primary replica, writes the
    JSON item from process 0 only, and waits for all processes at each save); `restore` gives
    arrays with the shardings of `target`'s arrays.
    """

    def __init__(self, run_dir: str, keep: int):
        """Open (or create) the checkpoint folders of a run.

        Args:
            run_dir: the run folder.
            keep: how many of the latest checkpoints to keep.
        """
        run_dir = os.path.abspath(run_dir)
        self._options = {
            "latest": ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                   enable_async_checkpointing=False),
            "best": ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 best_fn=lambda m: m["score"], best_mode="max",
                                                 enable_async_checkpointing=False)}
        self._dirs = {"latest": os.path.join(run_dir, "checkpoints"),
                      "best": os.path.join(run_dir, "best")}
        self.latest, self.best = (
            ocp.CheckpointManager(self._dirs[k], options=self._options[k],
                                  item_names=("state", "loop")) for k in ("latest", "best"))

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, or None."""
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        """The step of the best-scoring checkpoint, or None."""
        return self.best.best_step()

    def best_steps(self) -> list[int]:
        """Every step in `best/` (one, or two while a replacement is being made)."""
        return list(self.best.all_steps())

    def save(self, step: int, tree: Any, loop: dict) -> None:
        """Save a state tree and the loop's JSON record as the newest checkpoint."""
        if step not in self.latest.all_steps():
            self.latest.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), loop=ocp.args.JsonSave(loop)))

    def save_best(self, step: int, tree: Any, score: float, info: dict) -> None:
        """Save a state tree that scored better than every earlier one (higher is better).

        A step at or before one already in `best/` is not saved: `best/` can only be ahead of
        the newest checkpoint when a run was killed between the two saves, and the resumed run
        then reaches that better step again.
        """
        if all(step > s for s in self.best.all_steps()):
            self.best.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), loop=ocp.args.JsonSave(info)),
                metrics={"score": score})

    def restore(self, target: Any, step: int | None = None,
                best: bool = False) -> tuple[Any, dict | None]:
        """Restore a state tree shaped like `target` (newest, given step, or best).

        Returns:
            (tree, loop): the state's arrays and the loop's JSON record (None for a checkpoint
            written before that record existed).
        """
        which = "best" if best else "latest"
        mngr = self.best if best else self.latest
        if step is None:
            step = mngr.best_step() if best else mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        if os.path.isdir(os.path.join(self._dirs[which], str(step), _LEGACY_ITEM)):
            # A manager is either single-item or composite: a separate one reads the old layout.
            legacy = ocp.CheckpointManager(self._dirs[which], options=self._options[which])
            try:
                return legacy.restore(step, args=ocp.args.StandardRestore(abstract)), None
            finally:
                legacy.close()
        out = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()))
        return out["state"], out["loop"]

    def close(self) -> None:
        """Finish pending work and release the managers."""
        self.latest.close()
        self.best.close()


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def save_params(path: str, params) -> None:
    """Save a parameter pytree (nested dicts) as a flat .npz, atomically.

    Parameters may be global arrays of several processes (replicated ones are read from a local
    copy); with several processes only process 0 should call this.
    """
    from research.sharding import fetch

    atomic_save_npz(path, **_flat(fetch(params)))


def load_params(path: str) -> dict:
    """Load a parameter pytree saved by `save_params`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no parameter file at {path}")
    with np.load(path) as data:
        flat = {tuple(k.split("/")): data[k] for k in data.files}
    return traverse_util.unflatten_dict(flat)


def trajectory_path(run_dir: str, step: int) -> str:
    """Where the parameters of `step` are saved."""
    return os.path.join(run_dir, "trajectory", f"step_{step:08d}.npz")


def load_trajectory(run_dir: str) -> list[tuple[int, dict]]:
    """All saved (step, params) of a run's trajectory, in step order.

    Args:
        run_dir: the run folder (trained with `TrainConfig.trajectory_every > 0`).

    Returns:
        A list of (step, params); step 0 is the initialisation.
    """
    paths = glob.glob(os.path.join(run_dir, "trajectory", "step_*.npz"))
    if not paths:
        raise FileNotFoundError(f"no trajectory in {run_dir}: train with "
                                "--train.trajectory-every K to save one")
    steps = sorted(int(re.search(r"step_(\d+)\.npz$", p).group(1)) for p in paths)
    return [(s, load_params(trajectory_path(run_dir, s))) for s in steps]


def load_init_params(run_dir: str) -> dict:
    """The parameters a run started from."""
    return load_params(os.path.join(run_dir, "init_params.npz"))
