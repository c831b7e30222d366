"""Pure training and evaluation steps.

`train_step(state, batch, key) -> (state, metrics)` and `eval_step(state, batch) -> metrics` are
pure functions of their arguments: import them into your own code and `jax.jit` them (the
`*_jit` versions here donate the state, so its buffers are reused in place).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from research.optim import current_learning_rate
from research.train.state import TrainState

Batch = dict[str, jax.Array]


def _apply(state: TrainState, params, x, train: bool, key=None):
    """Run the model; returns (outputs, new batch_stats)."""
    variables = {"params": params}
    rngs = {"dropout": key} if key is not None else None
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
        if train:
            out, updates = state.apply_fn(variables, x, train=True, rngs=rngs,
                                          mutable=["batch_stats"])
            return out, updates["batch_stats"]
    return state.apply_fn(variables, x, train=train, rngs=rngs), state.batch_stats


def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser update on one batch.

    Args:
        state: the training state.
        batch: `{"x": x_Bx..., "y": y_B}`.
        key: the run's base PRNG key; this step uses `fold_in(key, state.step)` (for dropout), so
            results do not depend on how the run was split into resumed pieces.

    Returns:
        The new state and metrics (device scalars): loss (data loss), objective (loss plus
        penalty), grad_norm, learning_rate (when the optimiser exposes it) and accuracy
        (classification).
    """
    step_key = jax.random.fold_in(key, state.step)

    def objective(params):
        out_BxO, batch_stats = _apply(state, params, batch["x"], True, step_key)
        data_loss = jnp.mean(state.loss.per_example(out_BxO, batch["y"]))
        return data_loss + state.loss.penalty(params), (data_loss, out_BxO, batch_stats)

    (total, (data_loss, out_BxO, batch_stats)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    metrics = {"loss": data_loss, "objective": total, "grad_norm": optax.global_norm(grads)}
    lr = current_learning_rate(opt_state)
    if lr is not None:
        metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
    if state.loss.classification:
        metrics["accuracy"] = jnp.mean(
            (state.loss.predict(out_BxO) == batch["y"]).astype(jnp.float32))
    return new_state, metrics


def eval_step(state: TrainState, batch: Batch) -> dict:
    """Sums over one evaluation batch, in evaluation mode (BatchNorm running averages).

    Sums rather than means make the mean over a whole split exact when the last batch is padded:
    padding rows carry `mask = 0`.

    Args:
        state: the training state.
        batch: `{"x": ..., "y": y_B}` and optionally `"mask": mask_B` (1 real, 0 padding).

    Returns:
        loss_sum, correct_sum (classification) and count (device scalars), and pred_B, the
        predicted class ids (or values, for regression).
    """
    out_BxO, _ = _apply(state, state.params, batch["x"], False)
    mask_B = batch.get("mask")
    if mask_B is None:
        mask_B = jnp.ones(batch["y"].shape, jnp.float32)
    mask_B = mask_B.astype(jnp.float32)
    pred_B = state.loss.predict(out_BxO)
    metrics = {
        "loss_sum": jnp.sum(state.loss.per_example(out_BxO, batch["y"]) * mask_B),
        "count": jnp.sum(mask_B),
        "pred": pred_B,
    }
    if state.loss.classification:
        metrics["correct_sum"] = jnp.sum((pred_B == batch["y"]).astype(jnp.float32) * mask_B)
    return metrics


train_step_jit = jax.jit(train_step, donate_argnums=0)
eval_step_jit = jax.jit(eval_step)
