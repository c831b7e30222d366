"""Checkpoints (the only module that imports orbax) and saved parameter trajectories.

A run folder holds `checkpoints/` (the latest k training states), `best/` (the state with the
best evaluation score), `init_params.npz` (the parameters at initialisation, for interpolation
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


class Checkpointer:
    """The latest k states plus the best one, saved synchronously with orbax."""

    def __init__(self, run_dir: str, keep: int):
        """Open (or create) the checkpoint folders of a run.

        Args:
            run_dir: the run folder.
            keep: how many of the latest checkpoints to keep.
        """
        run_dir = os.path.abspath(run_dir)
        self.latest = ocp.CheckpointManager(
            os.path.join(run_dir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(
            os.path.join(run_dir, "best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 best_fn=lambda m: m["score"], best_mode="max",
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, or None."""
        return self.latest.latest_step()

    def save(self, step: int, tree: Any) -> None:
        """Save a state tree as the newest checkpoint."""
        if step not in self.latest.all_steps():
            self.latest.save(step, args=ocp.args.StandardSave(tree))

    def save_best(self, step: int, tree: Any, score: float) -> None:
        """Save a state tree that scored better than every earlier one (higher is better)."""
        if step not in self.best.all_steps():
            self.best.save(step, args=ocp.args.StandardSave(tree), metrics={"score": score})

    def restore(self, target: Any, step: int | None = None, best: bool = False) -> Any:
        """Restore a state tree shaped like `target` (newest, given step, or best)."""
        mngr = self.best if best else self.latest
        if step is None:
            step = mngr.best_step() if best else mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Finish pending work and release the managers."""
        self.latest.close()
        self.best.close()


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def save_params(path: str, params) -> None:
    """Save a parameter pytree (nested dicts) as a flat .npz, atomically."""
    atomic_save_npz(path, **_flat(jax.device_get(params)))


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
