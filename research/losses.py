"""Losses on model outputs: binary cross-entropy on logits, softmax cross-entropy, squared error.

A `Loss` is a small frozen (hashable) object, so it can sit in `TrainState` as a static field and
`train_step(state, batch, key)` stays a pure function of its arguments. Labels are integer class
ids for classification and float targets for regression (`num_classes == 0`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from research.config import LOSSES, REGULARIZATIONS
from research.tree import is_kernel


@dataclasses.dataclass(frozen=True)
class Loss:
    """A loss, its regulariser and how outputs become predictions.

    Attributes:
        name: `bce` (one logit, sigmoid + binary cross-entropy, the lecture's loss), `softmax_ce`
            (one logit per class) or `mse` (the Playground's `0.5 * (o - t)^2`: on `tanh(o)` against
            targets -1/+1 for two classes, on the raw output for regression).
        num_classes: number of classes; 0 for regression.
        regularization: `none`, `l1` (`sum |w|`) or `l2` (`sum w^2 / 2`), over kernels only
            (`research.tree.is_kernel`), as in the Playground.
        reg_rate: the penalty's weight.
    """

    name: str = "bce"
    num_classes: int = 2
    regularization: str = "none"
    reg_rate: float = 0.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"loss: unknown loss {self.name!r}; choose one of {', '.join(LOSSES)}")
        if self.regularization not in REGULARIZATIONS:
            raise ValueError(f"regularization: unknown value {self.regularization!r}")
        if self.name == "bce" and self.num_classes != 2:
            raise ValueError(f"loss: bce needs exactly 2 classes, the data have "
                             f"{self.num_classes}; use softmax_ce")
        if self.name == "softmax_ce" and self.num_classes < 2:
            raise ValueError("loss: softmax_ce needs a classification data set")

    @property
    def classification(self) -> bool:
        """Whether labels are class ids."""
        return self.num_classes > 0

    @property
    def num_outputs(self) -> int:
        """Number of model outputs this loss expects."""
        return self.num_classes if self.name == "softmax_ce" else 1

    def per_example(self, outputs_BxO: jax.Array, y_B: jax.Array) -> jax.Array:
        """Loss of each example.

        Args:
            outputs_BxO: raw model outputs.
            y_B: class ids, or float targets for regression.

        Returns:
            loss_B, float32.
        """
        outputs_BxO = outputs_BxO.astype(jnp.float32)
        if self.name == "softmax_ce":
            return optax.softmax_cross_entropy_with_integer_labels(outputs_BxO, y_B)
        o_B = outputs_BxO[:, 0]
        if self.name == "bce":
            return optax.sigmoid_binary_cross_entropy(o_B, y_B.astype(jnp.float32))
        if self.classification:
            return 0.5 * jnp.square(jnp.tanh(o_B) - (2.0 * y_B.astype(jnp.float32) - 1.0))
        return 0.5 * jnp.square(o_B - y_B.astype(jnp.float32))

    def __call__(self, outputs_BxO: jax.Array, y_B: jax.Array) -> jax.Array:
        """Loss of each example (the library's loss convention; see `per_example`)."""
        return self.per_example(outputs_BxO, y_B)

    def predict(self, outputs_BxO: jax.Array) -> jax.Array:
        """Predicted class ids (classification) or values (regression), shape [B]."""
        if self.name == "softmax_ce":
            return jnp.argmax(outputs_BxO, axis=-1).astype(jnp.int32)
        if self.classification:
            return (outputs_BxO[:, 0] > 0).astype(jnp.int32)
        return outputs_BxO[:, 0].astype(jnp.float32)

    def scores(self, outputs_BxO: jax.Array) -> jax.Array:
        """The output on the Playground's [-1, 1] colour scale (binary tasks, regression).

        Returns:
            `2 sigmoid(o) - 1` for bce, `tanh(o)` for mse classification, o for regression.
        """
        o_B = outputs_BxO[:, 0].astype(jnp.float32)
        if self.name == "bce":
            return 2.0 * jax.nn.sigmoid(o_B) - 1.0
        if self.classification:
            return jnp.tanh(o_B)
        return o_B

    def penalty(self, params) -> jax.Array:
        """The regulariser over kernels (never biases or normalisation parameters)."""
        if self.regularization == "none" or self.reg_rate == 0.0:
            return jnp.zeros((), jnp.float32)
        kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                   if is_kernel(path, leaf)]
        if self.regularization == "l1":
            total = sum(jnp.sum(jnp.abs(k)) for k in kernels)
        else:
            total = sum(0.5 * jnp.sum(jnp.square(k)) for k in kernels)
        return self.reg_rate * total

