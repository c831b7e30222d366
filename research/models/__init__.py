"""Flax Linen models and `make_model(cfg, num_outputs)`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.config import ModelConfig
from research.models.cnn import CNN, PiczakCNN
from research.models.mlp import ACTIVATION_FNS, MLP, activation_fn

__all__ = ["ACTIVATION_FNS", "CNN", "MLP", "PiczakCNN", "activation_fn", "make_model",
           "param_count"]


def make_model(cfg: ModelConfig, num_outputs: int) -> nn.Module:
    """Build the model a config describes.

    Args:
        cfg: model configuration.
        num_outputs: size of the output layer (`Loss.num_outputs`).

    Returns:
        An unbound Linen module, computing in `cfg.dtype` with float32 parameters.
    """
    dtype = jnp.dtype(cfg.dtype)
    if cfg.kind == "mlp":
        return MLP(widths=tuple(cfg.widths), num_outputs=num_outputs,
                   activation=cfg.activation, dropout=cfg.dropout, dtype=dtype)
    if cfg.kind == "cnn":
        first = tuple(cfg.first_kernel) if all(cfg.first_kernel) else None
        return CNN(channels=tuple(cfg.channels), num_outputs=num_outputs,
                   kernel_size=tuple(cfg.kernel_size), first_kernel=first, pool=tuple(cfg.pool),
                   batch_norm=cfg.batch_norm, residual=cfg.residual, depth=cfg.depth,
                   global_pool=cfg.global_pool, head=tuple(cfg.head), dropout=cfg.dropout,
                   activation=cfg.activation, dtype=dtype)
    filters = (tuple(cfg.channels) * 2)[:2]
    first = tuple(cfg.first_kernel) if all(cfg.first_kernel) else (57, 6)
    return PiczakCNN(filters=filters, num_outputs=num_outputs, first_kernel=first,
                     hidden=tuple(cfg.head), dropout=cfg.dropout, dtype=dtype)


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))
