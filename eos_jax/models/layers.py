"""Layer constructors shared by every CNN of the zoo, with PyTorch's conventions.

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

from eos_jax.models.activations import swish

Dtype = jnp.dtype

# N(0, 2 / (k*k*C_out)): Flax kernels are (k, k, C_in, C_out), so fan_out = k*k*C_out.
# jax's 'normal' is untruncated ('truncated_normal' is the truncated one).
he_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS = ("relu", "tanh", "swish")


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
