"""Convolutional networks for spectrograms `x_BxFxTxC` (NHWC: frequency as height, time as width).

`CNN` stacks stages of conv-[BN]-activation, each optionally followed by `depth` two-convolution
blocks (with or without skip connections, for the paper's skip/no-skip landscape comparison), and
max-pooling; then global pooling and a dense head. `PiczakCNN` follows Piczak (2015): tall first
filters spanning most of the frequency axis, max-pooling over time, two dense layers with dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models import native
from research.models.mlp import activation_fn
from research.models.ops import BatchNorm, conv_general_dilated, max_pool


def _clip(window: Sequence[int], h_BxFxTxC: jax.Array) -> tuple[int, int]:
    """Shrink a window to the feature map, so small test inputs still run."""
    return min(window[0], h_BxFxTxC.shape[1]), min(window[1], h_BxFxTxC.shape[2])


class CNN(nn.Module):
    """CNN6-style network with optional BatchNorm and residual blocks.

    Attributes:
        channels: output channels of each stage.
        num_outputs: size of the output layer.
        kernel_size: convolution kernel (frequency, time).
        first_kernel: kernel of the very first convolution; None means kernel_size.
        pool: max-pool window and stride after each stage; (1, 1) disables pooling.
        batch_norm: BatchNorm after each convolution (then convolutions have no bias).
        residual: identity skip connections around the extra blocks.
        depth: extra conv-BN-act-conv-BN blocks per stage.
        global_pool: mean, max or none (flatten).
        head: hidden widths of the dense head.
        dropout: dropout rate before each dense layer.
        activation: activation name.
        padding: convolution padding, "SAME" (zeros) or "CIRCULAR" (wraps around, which makes
            the convolutions exactly equivariant to circular shifts).
        dtype: computation dtype (parameters stay float32).

    Each stage's feature map before and after pooling, and the pooled embedding before the head,
    are sown into the `intermediates` collection (`stage<i>_features`, `stage<i>_pooled`,
    `embedding`), so they can be inspected with `mutable=["intermediates"]`.
    """

    channels: Sequence[int] = (16, 32, 64)
    num_outputs: int = 10
    kernel_size: tuple[int, int] = (3, 3)
    first_kernel: tuple[int, int] | None = None
    pool: tuple[int, int] = (2, 2)
    batch_norm: bool = True
    residual: bool = False
    depth: int = 0
    global_pool: str = "mean"
    head: Sequence[int] = ()
    dropout: float = 0.0
    activation: str = "relu"
    padding: str = "SAME"
    dtype: Any = jnp.float32

    def _conv_bn(self, h, features: int, kernel: tuple[int, int], train: bool):
        h = nn.Conv(features, _clip(kernel, h), padding=self.padding,
                    use_bias=not self.batch_norm, conv_general_dilated=conv_general_dilated,
                    dtype=self.dtype, param_dtype=jnp.float32)(h)
        if self.batch_norm:
            h = BatchNorm(use_running_average=not train, momentum=0.9)(h)
        return h

    def _native_first_stage(self, x, features: int, kernel, train: bool) -> bool:
        """Whether the first stage runs on `research.models.native` (training on the CPU).

        Only where it computes what the layers would: conv-BN-ReLU-pool with zero padding and
        no extra blocks, and not while initialising or recording intermediates (the native
        stage keeps no full-size features).
        """
        window = _clip(self.pool, x)
        return (train and self.batch_norm and self.activation == "relu" and self.depth == 0
                and self.padding == "SAME" and window == tuple(self.pool) and window != (1, 1)
                and not self.is_initializing()
                and not self.is_mutable_collection("intermediates")
                and native.applies(x, features, _clip(kernel, x), window, self.dtype))

    def _first_stage(self, x_BxHxWx1, features: int, kernel):
        """conv-BN-ReLU-pool on the native kernel, with the variables of the layers it replaces."""
        conv = nn.Conv(features, _clip(kernel, x_BxHxWx1), padding=self.padding, use_bias=False)
        bn = BatchNorm(use_running_average=False, momentum=0.9)
        bn_params = bn.variables["params"]
        pooled, mean_C, var_C = native.first_stage(
            x_BxHxWx1, conv.variables["params"]["kernel"], bn_params["scale"], bn_params["bias"],
            bn.epsilon, tuple(self.pool))
        bn.update_averages(mean_C, var_C)
        return pooled

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Apply the network.

        Args:
            x: spectrograms `x_BxFxTxC`.
            train: BatchNorm uses batch statistics and updates its averages; dropout is on.

        Returns:
            outputs_BxO.
        """
        if x.ndim != 4:
            raise ValueError(f"CNN input must be x_BxFxTxC, got shape {x.shape}")
        act = activation_fn(self.activation)
        h = x
        for stage, features in enumerate(self.channels):
            kernel = self.first_kernel if (stage == 0 and self.first_kernel) else self.kernel_size
            if stage == 0 and self._native_first_stage(h, features, kernel, train):
                h = self._first_stage(h, features, kernel)
                self.sow("intermediates", f"stage{stage}_pooled", h)
                continue
            h = act(self._conv_bn(h, features, kernel, train))
            for _ in range(self.depth):
                skip = h
                h = act(self._conv_bn(h, features, self.kernel_size, train))
                h = self._conv_bn(h, features, self.kernel_size, train)
                h = act(h + skip if self.residual else h)
            self.sow("intermediates", f"stage{stage}_features", h)
            window = _clip(self.pool, h)
            if window != (1, 1):
                h = max_pool(h, window)
            self.sow("intermediates", f"stage{stage}_pooled", h)
        if self.global_pool == "mean":
            h = jnp.mean(h, axis=(1, 2))
        elif self.global_pool == "max":
            h = jnp.max(h, axis=(1, 2))
        else:
            h = h.reshape((h.shape[0], -1))
        self.sow("intermediates", "embedding", h)
        for width in self.head:
            if self.dropout > 0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = act(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(h))
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=jnp.float32)(h)


class PiczakCNN(nn.Module):
    """Piczak (2015), "Environmental sound classification with convolutional neural networks".

    conv(filters[0], 57x6) - ReLU - maxpool 4x3 stride 1x3 - dropout - conv(filters[1], 1x3) - ReLU
    - maxpool 1x3 - flatten - [dense - ReLU - dropout] x len(hidden) - dense. Windows are clipped
    to the input, so inputs with fewer than 57 mel bands still work.

    Attributes:
        filters: channels of the two convolutions (80, 80 in the paper).
        num_outputs: size of the output layer.
        first_kernel: the tall first filter (57, 6 in the paper).
        hidden: dense widths (5000, 5000 in the paper).
        dropout: dropout rate (0.5 in the paper).
        dtype: computation dtype (parameters stay float32).
    """

    filters: tuple[int, int] = (80, 80)
    num_outputs: int = 10
    first_kernel: tuple[int, int] = (57, 6)
    hidden: Sequence[int] = (5000, 5000)
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Apply the network to `x_BxFxTxC`; returns outputs_BxO."""
        if x.ndim != 4:
            raise ValueError(f"PiczakCNN input must be x_BxFxTxC, got shape {x.shape}")
        h = nn.relu(nn.Conv(self.filters[0], _clip(self.first_kernel, x), padding="VALID",
                            conv_general_dilated=conv_general_dilated, dtype=self.dtype,
                            param_dtype=jnp.float32)(x))
        window = _clip((4, 3), h)
        h = max_pool(h, window, strides=(1, window[1]))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.relu(nn.Conv(self.filters[1], _clip((1, 3), h), padding="VALID",
                            dtype=self.dtype, param_dtype=jnp.float32)(h))
        window = _clip((1, 3), h)
        h = max_pool(h, window)
        h = h.reshape((h.shape[0], -1))
        for width in self.hidden:
            h = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32)(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_outputs, dtype=self.dtype, param_dtype=jnp.float32)(h)
