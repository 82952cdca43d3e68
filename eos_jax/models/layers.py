"""Layer constructors shared by every CNN of the zoo, with PyTorch's conventions.

- conv kernels ~ N(0, 2 / (k*k*C_out)) (He fan-out, untruncated), padding k // 2 on each
  side as PyTorch's padding=1 for 3x3 (Flax's 'SAME' pads stride-2 convs asymmetrically);
- BN scale 1, bias 0, eps 1e-5, running statistics updated as PyTorch's BatchNorm2d does
  (momentum 0.1, unbiased running variance), stored in the parameter dtype (at least fp32);
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


def drawn_flat(key: jax.Array, shape: tuple[int, ...], dtype: Dtype, sample: Callable):
    """sample(key, shape, dtype) drawn as one flat vector, then reshaped: with jax's default
    threefry keys the same bits (it numbers the elements in row-major order either way), but
    XLA's CPU compiler takes seconds over a draw of rank 3 or 4 and a fraction of a second over
    a flat one: a whole init compiles 1.6-2.5x faster (benchmarks/init_compile.py)."""
    return sample(key, (math.prod(shape),), dtype).reshape(shape)


def he_fan_out_normal(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
    """N(0, 2 / (k*k*C_out)), untruncated: Flax kernels are (k, k, C_in, C_out), so fan_out =
    k*k*C_out. Bit for bit nn.initializers.variance_scaling(2.0, "fan_out", "normal")."""
    variance = jnp.array(2.0 / (math.prod(shape[:-2]) * shape[-1]), dtype)
    return drawn_flat(key, shape, dtype, jax.random.normal) * jnp.sqrt(variance)


ACTIVATIONS = ("relu", "tanh", "swish", "gelu")


def activation_fn(name: str, swish_beta: float = 1.0) -> Callable[[jax.Array], jax.Array]:
    """'relu' | 'tanh' | 'swish' (s(x) = x * sigmoid(swish_beta * x)) | 'gelu' (exact,
    x * Phi(x), as torch.nn.GELU's default) as a function."""
    if name == "relu":
        return nn.relu
    if name == "tanh":
        return jnp.tanh
    if name == "gelu":
        return functools.partial(nn.gelu, approximate=False)
    if name == "swish":
        return functools.partial(swish, beta=swish_beta)
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def symmetric_uniform(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound) for any shape."""

    def init(key, shape, dtype=jnp.float32):
        sample = functools.partial(jax.random.uniform, minval=-bound, maxval=bound)
        return drawn_flat(key, shape, dtype, sample)

    return init


def conv(
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    use_bias: bool = False,
    spatial_dims: int = 2,
    dtype: Dtype,
    param_dtype: Dtype,
    name: str,
) -> nn.Conv:
    """PyTorch-style conv, square over `spatial_dims` axes (2: images, 1: signals):
    padding k // 2 per side, He fan-out kernel, zero bias."""
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size,) * spatial_dims,
        strides=(strides,) * spatial_dims,
        padding=((pad, pad),) * spatial_dims,
        use_bias=use_bias,
        kernel_init=he_fan_out_normal,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class PyTorchBatchNorm(nn.Module):
    """BatchNorm over the last axis whose running statistics follow torch.nn.BatchNorm2d.

    Train mode normalises with the biased batch variance, in the same operations as
    nn.BatchNorm(use_fast_variance=False) (so outputs and gradients keep their bits), and
    updates running = (1 - momentum) * running + momentum * batch_stat with the unbiased
    variance (factor m / (m - 1), m values per channel). Eval mode uses the running ones.
    Variables as nn.BatchNorm's: params 'scale', 'bias'; batch_stats 'mean', 'var', the
    latter kept in the parameter dtype promoted to at least float32 from initialisation on.
    """

    use_running_average: bool
    dtype: Dtype
    param_dtype: Dtype
    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), stats_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), stats_dtype)
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            xs = x.astype(jnp.promote_types(self.dtype, jnp.float32))
            mean = xs.mean(axes)
            var = jax.lax.square(xs - jnp.expand_dims(mean, axes)).mean(axes)
            if not self.is_initializing():
                m = x.size // features
                if m < 2:
                    raise ValueError("BatchNorm needs more than 1 value per channel to train")
                running_mean.value = self._average(running_mean.value, mean)
                running_var.value = self._average(running_var.value, var * (m / (m - 1)))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        y = x - jnp.expand_dims(mean, axes)
        mul = jax.lax.rsqrt(jnp.expand_dims(var, axes) + self.epsilon) * scale
        return jnp.asarray(y * mul + bias, self.dtype)

    def _average(self, running: jax.Array, batch: jax.Array) -> jax.Array:
        """PyTorch's update, kept in the running statistic's own dtype."""
        return ((1 - self.momentum) * running + self.momentum * batch).astype(running.dtype)


def batch_norm(train: bool, *, dtype: Dtype, param_dtype: Dtype, name: str) -> PyTorchBatchNorm:
    """PyTorch BatchNorm2d defaults; batch statistics in train mode, running ones otherwise."""
    return PyTorchBatchNorm(
        use_running_average=not train, dtype=dtype, param_dtype=param_dtype, name=name
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
