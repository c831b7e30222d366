"""Optax optimisers and learning-rate schedules from an `OptimConfig`.

The learning rate is injected as a hyperparameter (`optax.inject_hyperparams`), so the value
used at each step sits in the optimiser state and `train_step` can log it without knowing the
schedule.
"""

from __future__ import annotations

import optax

from research.config import OptimConfig
from research.tree import kernel_mask


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule.

    Args:
        cfg: optimiser configuration.
        total_steps: number of training steps (cosine decay and step boundaries scale with it).

    Returns:
        A function from step to learning rate.
    """
    lr = cfg.learning_rate
    total_steps = max(int(total_steps), 1)
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    if cfg.schedule == "warmup_cosine":
        warmup = min(cfg.warmup_steps, total_steps - 1)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=total_steps)
    boundaries = {int(b * total_steps): cfg.step_factor for b in cfg.step_boundaries}
    return optax.piecewise_constant_schedule(lr, boundaries)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Build the optimiser: optional clipping, weight decay, the update rule and the schedule.

    Weight decay applies to kernels only (`research.tree.is_kernel`), never to biases or
    normalisation parameters.

    Args:
        cfg: optimiser configuration (sgd, momentum, nesterov, adam, adamw).
        total_steps: number of training steps, for the schedule.

    Returns:
        An optax transformation whose state carries `hyperparams["learning_rate"]`.
    """
    def build(learning_rate):
        parts = []
        if cfg.clip_norm > 0:
            parts.append(optax.clip_by_global_norm(cfg.clip_norm))
        if cfg.name == "adamw":
            parts.append(optax.adamw(learning_rate, weight_decay=cfg.weight_decay,
                                     mask=kernel_mask))
            return optax.chain(*parts)
        if cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=kernel_mask))
        if cfg.name == "sgd":
            parts.append(optax.sgd(learning_rate))
        elif cfg.name == "momentum":
            parts.append(optax.sgd(learning_rate, momentum=cfg.momentum))
        elif cfg.name == "nesterov":
            parts.append(optax.sgd(learning_rate, momentum=cfg.momentum, nesterov=True))
        else:
            parts.append(optax.adam(learning_rate))
        return optax.chain(*parts)

    return optax.inject_hyperparams(build)(learning_rate=make_schedule(cfg, total_steps))


def current_learning_rate(opt_state):
    """The learning rate used by the last update, or None for a state without hyperparams."""
    hyperparams = getattr(opt_state, "hyperparams", None)
    if hyperparams is None:
        return None
    return hyperparams.get("learning_rate")
