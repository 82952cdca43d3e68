"""A small 1-D CNN for signals shaped (N, L, C), such as MNIST-1D's (N, 40, 1).

Conv1d -> activation layers of the given widths (the first stride 1, every later one
stride 2, padding kernel_size // 2 per side as PyTorch's padding=k//2), flatten, dense.
Flattening keeps where along the signal a feature is, as the MNIST-1D reference CNN does.
Init follows the zoo (layers.py): kernels He fan-out normal N(0, 2 / (k * C_out)), zero
bias; dense U(+-1/sqrt(fan_in)).

Layer names (1-based): params['conv{i}']['kernel' | 'bias'], params['head']['kernel' | 'bias']
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from eos_jax.models.layers import Dtype, activation_fn, conv, pytorch_dense


class CNN1D(nn.Module):
    """Conv1d layers of `widths` (kernel `kernel_size`), flatten, dense to num_classes."""

    widths: tuple[int, ...] = (32, 32, 32)
    kernel_size: int = 5
    activation: str = "relu"
    num_classes: int = 10
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        del train  # no batch statistics or dropout
        if x.ndim != 3:
            raise ValueError(f"cnn1d takes (N, L, C) inputs, got shape {x.shape}")
        act = activation_fn(self.activation)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for index, width in enumerate(self.widths, start=1):
            x = conv(
                width,
                self.kernel_size,
                strides=1 if index == 1 else 2,
                use_bias=True,
                spatial_dims=1,
                name=f"conv{index}",
                **dtypes,
            )(x)
            x = act(x)
        x = x.reshape(x.shape[0], -1)
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)
