"""`TrainState`: everything a training step reads and writes, as one pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax
from flax import struct

from research import adapters


@struct.dataclass
class TrainState:
    """The training state.

    Attributes:
        step: number of optimiser updates done (int32 scalar).
        params: model parameters.
        model_state: the model's non-trained variables (Linen: every collection but `params`,
            e.g. `{"batch_stats": ...}`; NNX: the `nnx.State` of BatchNorm statistics and RNG
            streams; `{}` for none), updated by training-mode steps.
        opt_state: optimiser state.
        model: the model adapter, `research.adapters.Model` (static).
        tx: the optax transformation (static).
        loss: `loss(outputs, y) -> per-example values` (static): an optax loss as it is, or
            `research.losses.Loss` (which adds a regulariser and predictions).
    """

    step: Any
    params: Any
    model_state: Any
    opt_state: Any
    model: adapters.Model = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    loss: Callable = struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, tx: optax.GradientTransformation, loss: Callable, model: Any = None,
               params: Any = None, model_state: Any = None, apply_fn: Callable | None = None,
               variables: dict | None = None) -> TrainState:
        """A fresh state at step 0.

        Give either `model` (an adapter, a Linen module, or `f(params, x)`) with `params` (and
        `model_state`), or the Linen pair `apply_fn=module.apply, variables=module.init(...)`.

        Args:
            tx: optax transformation.
            loss: `loss(outputs, y) -> per-example values`.
            model: the model (see `research.adapters.as_model`).
            params: its parameters.
            model_state: its non-trained variables (default none).
            apply_fn: a Linen module's `apply` (instead of `model`).
            variables: that module's variables from `init` (instead of `params`).

        Returns:
            The state.
        """
        if apply_fn is not None:
            if model is not None or variables is None:
                raise ValueError("TrainState.create: give model= and params=, or apply_fn= and "
                                 "variables=")
            model = apply_fn
            params, model_state = adapters.split_variables(variables)
        elif variables is not None:
            params, model_state = adapters.split_variables(variables)
        if model is None or params is None:
            raise ValueError("TrainState.create: a model and its params are needed")
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   model_state={} if model_state is None else model_state,
                   opt_state=tx.init(params), model=adapters.as_model(model), tx=tx, loss=loss)

    @property
    def batch_stats(self) -> Any:
        """The BatchNorm statistics of a Linen model (`{}` when it has none)."""
        ms = self.model_state
        return ms.get("batch_stats", {}) if isinstance(ms, dict) else {}

    @property
    def apply_fn(self) -> Callable:
        """The wrapped Linen module's own `apply` (Linen models only)."""
        inner = getattr(self.model.apply, "apply_fn", None)
        if inner is None:
            raise AttributeError(f"apply_fn: the model is a {self.model.kind} adapter, not a "
                                 "Linen module; use state.model or state.apply(x)")
        return inner

    def variables(self) -> dict:
        """The Linen variables `{"params": ..., **model_state}` for `apply_fn`."""
        return {"params": self.params, **self.model_state}

    def apply(self, x: Any, train: bool = False) -> Any:
        """The model's outputs on `x` with this state's parameters (evaluation mode default)."""
        return self.model(self.params, self.model_state, x, train)[0]

    def to_tree(self) -> dict:
        """The array part of the state, for checkpoints."""
        return {"step": self.step, "params": self.params, "model_state": self.model_state,
                "opt_state": self.opt_state}

    def replace_tree(self, tree: dict) -> TrainState:
        """This state with its arrays replaced by a tree from `to_tree`."""
        return self.replace(step=tree["step"], params=tree["params"],
                            model_state=tree["model_state"], opt_state=tree["opt_state"])
