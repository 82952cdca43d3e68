"""CIFAR ResNet of He et al. 2016 (depth 6n+2), with PyTorch-equivalent layers and init.

Architecture (REFERENCE.md section 2): 3x3 conv(16, no bias) -> BN -> act; three stages of
n basic blocks with widths 16/32/64, stride 2 at the start of stages 2 and 3; a block is
conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act; where the shape changes the
shortcut is a 1x1 conv (stride 2, no bias) + BN projection ("option B"); global average
pool; dense 64 -> num_classes.

Layer names (stages and blocks are 1-based, as in the paper's wording)::

    params['stem_conv']['kernel']                       (3, 3, C_in, 16)
    params['stem_bn']['scale' | 'bias']
    params['stage{s}_block{b}']['conv1' | 'conv2']['kernel']
    params['stage{s}_block{b}']['bn1' | 'bn2']['scale' | 'bias']
    params['stage{s}_block{b}']['shortcut_conv']['kernel']   (first block of stages 2, 3)
    params['stage{s}_block{b}']['shortcut_bn']['scale' | 'bias']
    params['head']['kernel' | 'bias']                   (64, num_classes), (num_classes,)

e.g. "stage 2, block 6, first conv" of ResNet-56 is params['stage2_block6']['conv1']['kernel'],
shape (3, 3, 32, 32). The 'batch_stats' collection mirrors the BN paths ('mean', 'var').

The layer constructors below (conv, BN, dense, activations) are shared by every CNN of the
zoo so that they all use the same PyTorch conventions:
- conv kernels ~ N(0, 2 / (k*k*C_out)) (He fan-out, untruncated), padding k // 2 on each
  side as PyTorch's padding=1 for 3x3 (Flax's 'SAME' pads stride-2 convs asymmetrically);
- BN scale 1, bias 0, running-average momentum 0.9 in Flax terms (PyTorch 0.1), eps 1e-5;
- dense weight and bias ~ U(+-1/sqrt(fan_in)), PyTorch's nn.Linear default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from eos_jax.models.one_layer import swish

Dtype = jnp.dtype

# N(0, 2 / (k*k*C_out)): Flax kernels are (k, k, C_in, C_out), so fan_out = k*k*C_out.
# jax's 'normal' is untruncated ('truncated_normal' is the truncated one).
he_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS = ("relu", "tanh", "swish")
STAGE_WIDTHS = (16, 32, 64)


def activation_fn(name: str, swish_beta: float = 1.0) -> Callable[[jax.Array], jax.Array]:
    """'relu' | 'tanh' | 'swish' (s(x) = x * sigmoid(swish_beta * x)) as a function."""
    if name == "relu":
        return nn.relu
    if name == "tanh":
        return jnp.tanh
    if name == "swish":
        return functools.partial(swish, beta=swish_beta)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound) for any shape."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    use_bias: bool = False,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
) -> nn.Conv:
    """PyTorch-style square conv: padding k // 2 per side, He fan-out kernel, zero bias."""
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=he_fan_out_normal,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def batch_norm(train: bool, *, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.BatchNorm:
    """PyTorch BatchNorm2d defaults; batch statistics in train mode, running ones otherwise.

    The variance is computed as mean((x - mean)^2) (two passes) rather than
    E[x^2] - E[x]^2, which loses digits in float32. Flax keeps the biased batch variance
    as running variance where PyTorch keeps the unbiased one: a factor m / (m - 1) with
    m = N*H*W values per channel, negligible at CIFAR batch sizes.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def pytorch_dense(
    features: int, fan_in: int, *, dtype: Dtype, param_dtype: Dtype, name: str
) -> nn.Dense:
    """Dense layer with PyTorch's nn.Linear init: weight and bias ~ U(+-1/sqrt(fan_in))."""
    init = symmetric_uniform(1.0 / math.sqrt(fan_in))
    return nn.Dense(
        features,
        kernel_init=init,
        bias_init=init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN + shortcut, then act; 1x1 conv + BN shortcut on shape change."""

    features: int
    strides: int
    activation: Callable[[jax.Array], jax.Array]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        y = conv(self.features, 3, strides=self.strides, name="conv1", **dtypes)(x)
        y = self.activation(batch_norm(train, name="bn1", **dtypes)(y))
        y = conv(self.features, 3, name="conv2", **dtypes)(y)
        y = batch_norm(train, name="bn2", **dtypes)(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            project = conv(self.features, 1, strides=self.strides, name="shortcut_conv", **dtypes)
            shortcut = batch_norm(train, name="shortcut_bn", **dtypes)(project(x))
        return self.activation(y + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; see the module docstring for layers and names."""

    depth: int = 56
    num_classes: int = 10
    activation: str = "relu"
    swish_beta: float = 5.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        blocks_per_stage = (self.depth - 2) // 6
        act = activation_fn(self.activation, self.swish_beta)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}

        x = conv(STAGE_WIDTHS[0], 3, name="stem_conv", **dtypes)(x)
        x = act(batch_norm(train, name="stem_bn", **dtypes)(x))
        for stage, width in enumerate(STAGE_WIDTHS, start=1):
            for block in range(1, blocks_per_stage + 1):
                strides = 2 if stage > 1 and block == 1 else 1
                x = BasicBlock(width, strides, act, name=f"stage{stage}_block{block}", **dtypes)(
                    x, train
                )
        x = jnp.mean(x, axis=(1, 2))
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)
