"""`TrainState`: everything a training step reads and writes, as one pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from research.losses import Loss


@struct.dataclass
class TrainState:
    """The training state.

    Attributes:
        step: number of optimiser updates done (int32 scalar).
        params: model parameters.
        batch_stats: BatchNorm running statistics (empty dict for models without BatchNorm).
        opt_state: optimiser state.
        apply_fn: the model's `apply` (static).
        tx: the optax transformation (static).
        loss: the loss and regulariser (static).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss: Loss = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, apply_fn: Callable, variables: dict, tx: optax.GradientTransformation,
               loss: Loss) -> TrainState:
        """A fresh state at step 0.

        Args:
            apply_fn: the model's apply function, `model.apply`.
            variables: the model's variables from `model.init`, with `params` and optionally
                `batch_stats`.
            tx: optax transformation.
            loss: the loss.

        Returns:
            The state.
        """
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                   apply_fn=apply_fn, tx=tx, loss=loss)

    def variables(self) -> dict:
        """The model variables for `apply_fn` in evaluation mode."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}

    def to_tree(self) -> dict:
        """The array part of the state, for checkpoints."""
        return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state}

    def replace_tree(self, tree: dict) -> TrainState:
        """This state with its arrays replaced by a tree from `to_tree`."""
        return self.replace(step=tree["step"], params=tree["params"],
                            batch_stats=tree["batch_stats"], opt_state=tree["opt_state"])
