"""Small, fast models: a 3-conv CNN and the fc-tanh MLP of Cohen et al. 2021.

Both work on any image size (8x8x1 digits, 32x32x3 CIFAR) and use the zoo's PyTorch init
(resnet.py): conv kernels He fan-out normal with zero bias, dense U(+-1/sqrt(fan_in)).

Layer names (1-based)::

    SmallCNN: params['conv{i}']['kernel' | 'bias'], params['head']['kernel' | 'bias']
    MLP:      params['hidden{i}']['kernel' | 'bias'], params['head']['kernel' | 'bias']
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from eos_jax.models.layers import Dtype, PyTorchBatchNorm, activation_fn, conv, pytorch_dense


class SmallCNN(nn.Module):
    """conv3x3 -> ReLU layers of the given widths, global average pool, dense.

    The first conv has stride 1, every later one stride 2: halving the resolution keeps a
    batch-128 train step on 8x8x1 inputs at ~8 ms on a 2-core CPU (~4 ms for (16, 32, 32)).
    """

    widths: tuple[int, ...] = (32, 64, 64)
    num_classes: int = 10
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        del train  # no batch statistics or dropout
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for index, width in enumerate(self.widths, start=1):
            strides = 1 if index == 1 else 2
            x = conv(width, 3, strides=strides, use_bias=True, name=f"conv{index}", **dtypes)(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)


class MLP(nn.Module):
    """Flatten, then dense -> activation per hidden width, then dense; fc-tanh by default.

    use_batch_norm: a BatchNorm (PyTorch semantics) between each hidden dense layer and its
    activation, which makes the hidden weights scale-invariant (weight decay shrinks them
    without changing the function they compute).
    """

    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    use_batch_norm: bool = False
    num_classes: int = 10
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        act = activation_fn(self.activation)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = x.reshape(x.shape[0], -1)
        for index, width in enumerate(self.hidden, start=1):
            x = pytorch_dense(width, x.shape[-1], name=f"hidden{index}", **dtypes)(x)
            if self.use_batch_norm:
                x = PyTorchBatchNorm(not train, name=f"bn{index}", **dtypes)(x)
            x = act(x)
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)
