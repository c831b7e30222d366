"""A fully connected network (the lecture's and the Playground's model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "linear": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """Look up an activation by name, with an error that names the field."""
    if name not in ACTIVATION_FNS:
        raise ValueError(f"activation: unknown activation {name!r}; "
                         f"choose one of {', '.join(ACTIVATION_FNS)}")
    return ACTIVATION_FNS[name]


class MLP(nn.Module):
    """Dense layers with an activation, optional dropout, and a linear output layer.

    Each hidden layer's activations are sown into the `intermediates` collection as `hidden_<i>`,
    so plots can show every neuron's output (`mutable=["intermediates"]`).

    Attributes:
        widths: hidden-layer widths.
        num_outputs: size of the output layer (1 for binary losses, C for softmax).
        activation: relu, tanh, sigmoid, gelu or linear.
        dropout: dropout rate after each hidden layer.
        dtype: computation dtype (parameters stay float32).
    """

    widths: Sequence[int]
    num_outputs: int = 1
    activation: str = "relu"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Apply the network.

        Args:
            x: inputs `x_BxD` (anything after the batch axis is flattened).
            train: enables dropout.

        Returns:
            outputs_BxO.
        """
        if not self.widths:
            raise ValueError("widths: an MLP needs at least one hidden layer")
        act = activation_fn(self.activation)
        h_BxH = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.widths):
            h_BxH = act(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(h_BxH))
            self.sow("intermediates", f"hidden_{i}", h_BxH)
            if self.dropout > 0:
                h_BxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxH)
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=jnp.float32)(h_BxH)
