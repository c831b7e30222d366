"""The one model convention: any model as `apply(params, state, x, train, rng) -> (out, state)`.

Every part of the library (train step, evaluation, landscape grid, curvature, measures) runs a
model through a `Model` adapter, so a user's own model works everywhere once it is wrapped:

- `linen(module)`: a Flax Linen module, whatever its train flag is called (`train`, `training`,
  `is_training`, or the inverted `deterministic` / `use_running_average`), or without one; its
  mutable collections (such as `batch_stats`) are the adapter's `state` and are updated in
  training mode only.
- `nnx(module)`: a Flax NNX module through `nnx.split` / `nnx.merge`; returns the adapter, the
  parameters (`nnx.Param`) and the rest of the module's state (BatchNorm statistics, RNG
  streams). `train()` / `eval()` select the mode inside the pure function.
- `function(f)`: a plain JAX function `f(params, x) -> outputs` (no state, no mode).

A loss is a plain function `loss(outputs, y) -> per-example values` (so
`optax.softmax_cross_entropy_with_integer_labels` is one as it is, and `research.losses.Loss` is
another). `per_example_fn(model, loss, state)` turns the pair into the
`fn(params, batch) -> per-example` the landscape and curvature tools take.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[Any, Any], jax.Array]

# Train-flag names a Linen `__call__` may use, and whether the flag means "training".
_TRAIN_FLAGS = {"train": True, "training": True, "is_training": True,
                "deterministic": False, "use_running_average": False}


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as one pure function.

    Attributes:
        apply: `apply(params, state, x, train, rng) -> (outputs, new_state)`; `state` is a pytree
            of non-trained variables (`{}` when there are none), `rng` a PRNG key or None.
        kind: where the adapter came from (`linen`, `nnx` or `function`), for messages.
    """

    apply: Callable[..., tuple[Any, PyTree]]
    kind: str = "function"

    def __call__(self, params: PyTree, state: PyTree, x: Any, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[Any, PyTree]:
        """Run the model; returns (outputs, new state)."""
        return self.apply(params, state, x, train, rng)


def _train_flag(module_cls: type) -> str | None:
    params = inspect.signature(module_cls.__call__).parameters
    for name in _TRAIN_FLAGS:
        if name in params:
            return name
    return None


@dataclasses.dataclass(frozen=True)
class _LinenApply:
    """Hashable Linen apply (a static field of `TrainState`, a cache key of compiled calls)."""

    apply_fn: Callable
    flag: str | None
    rng_names: tuple[str, ...]

    def __call__(self, params, state, x, train, rng):
        variables = {"params": params, **state}
        kwargs = {}
        if self.flag is not None:
            kwargs[self.flag] = train if _TRAIN_FLAGS[self.flag] else not train
        rngs = ({name: jax.random.fold_in(rng, i) if i else rng
                 for i, name in enumerate(self.rng_names)} if rng is not None else None)
        if train and state:
            out, updates = self.apply_fn(variables, x, rngs=rngs, mutable=list(state), **kwargs)
            return out, {**state, **updates}
        return self.apply_fn(variables, x, rngs=rngs, **kwargs), state


def linen(module: Any, train_flag: str | None = "auto",
          rng_names: tuple[str, ...] = ("dropout",)) -> Model:
    """The adapter of a Flax Linen module.

    Args:
        module: a `flax.linen.Module` instance (or its bound `apply`, whose module is inspected).
        train_flag: the name of its `__call__`'s mode argument; "auto" looks for train, training,
            is_training, deterministic or use_running_average; None for a module without one.
        rng_names: RNG collections the model draws from in training (dropout); the step key
            goes to the first, fold-ins of it to the others.

    Returns:
        The `Model`; its state is every variable collection other than `params`.
    """
    owner = getattr(module, "__self__", module)
    apply_fn = module if hasattr(module, "__self__") else module.apply
    if train_flag == "auto":
        train_flag = _train_flag(type(owner))
    elif train_flag is not None and train_flag not in _TRAIN_FLAGS:
        raise ValueError(f"train_flag: {train_flag!r} is not one of {', '.join(_TRAIN_FLAGS)}")
    return Model(_LinenApply(apply_fn, train_flag, tuple(rng_names)), "linen")


def split_variables(variables: Mapping) -> tuple[PyTree, PyTree]:
    """Linen variables as (params, state): `state` holds every other collection."""
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@dataclasses.dataclass(frozen=True)
class _NnxApply:
    graphdef: Any

    def __call__(self, params, state, x, train, rng):
        from flax import nnx

        # Fresh variables at the current trace level (a closed-over state would be an outer
        # trace's, which NNX refuses to mutate inside grad).
        params, state = jax.tree_util.tree_map(lambda v: v, (params, state))
        module = nnx.merge(self.graphdef, params, state)
        module.train() if train else module.eval()
        if rng is not None:
            nnx.reseed(module, default=rng, dropout=rng)
        out = module(x)
        _, _, new_state = nnx.split(module, nnx.Param, ...)
        return out, (new_state if train else state)


def nnx(module: Any) -> tuple[Model, PyTree, PyTree]:
    """The adapter of a Flax NNX module, with its parameters and the rest of its state.

    Args:
        module: an `nnx.Module`.

    Returns:
        (model, params, state): `params` are the `nnx.Param` variables, `state` everything else
        (BatchNorm statistics, RNG streams), both as `nnx.State` pytrees.
    """
    from flax import nnx as _nnx

    graphdef, params, state = _nnx.split(module, _nnx.Param, ...)
    return Model(_NnxApply(graphdef), "nnx"), params, state


@dataclasses.dataclass(frozen=True)
class _FunctionApply:
    f: Callable

    def __call__(self, params, state, x, train, rng):
        return self.f(params, x), state


def function(f: Callable[[PyTree, Any], Any]) -> Model:
    """The adapter of a plain JAX function `f(params, x) -> outputs` (no state, no mode)."""
    return Model(_FunctionApply(f), "function")


def as_model(model: Any) -> Model:
    """A `Model` from a `Model`, a Linen module or bound `apply`, or a plain function."""
    if isinstance(model, Model):
        return model
    owner = getattr(model, "__self__", model)
    try:
        import flax.linen as nn

        if isinstance(owner, nn.Module):
            return linen(model)
    except ImportError:  # pragma: no cover - flax is a dependency
        pass
    if callable(model):
        return function(model)
    raise TypeError(f"cannot use {type(model).__name__} as a model: pass a research.adapters."
                    "Model, a Flax Linen module, or a function f(params, x)")


def per_example_fn(model: Any, loss: LossFn, state: PyTree = None, train: bool = False,
                   metrics: Mapping[str, Callable] | None = None) -> Callable:
    """The landscape/curvature function of a model and loss: `fn(params, batch) -> values`.

    Args:
        model: a `Model` (or anything `as_model` takes).
        loss: `loss(outputs, y) -> per-example values`.
        state: the model's non-trained state, held fixed (e.g. BatchNorm running statistics).
        train: run the model in training mode (the state is still not updated).
        metrics: extra per-example metrics `name -> m(outputs, y)`; with them `fn` returns a dict
            `{"loss": ..., name: ...}`.

    Returns:
        `fn(params, batch) -> loss_B` (or a dict of per-example arrays).
    """
    model = as_model(model)
    state = {} if state is None else state

    def fn(params, batch):
        out, _ = model(params, state, batch["x"], train)
        values = jnp.asarray(loss(out, batch["y"]), jnp.float32)
        if not metrics:
            return values
        return {"loss": values, **{k: jnp.asarray(m(out, batch["y"]), jnp.float32)
                                   for k, m in metrics.items()}}

    return fn


def accuracy(outputs: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example correctness of class ids against outputs (one logit: its sign; else argmax)."""
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        pred = (outputs.reshape(outputs.shape[0]) > 0).astype(jnp.int32)
    else:
        pred = jnp.argmax(outputs, axis=-1).astype(jnp.int32)
    return (pred == y).astype(jnp.float32)
