"""CIFAR ResNet of He et al. 2016 (depth 6n+2), with PyTorch-equivalent layers and init.

One implementation for images (N, H, W, C) and signals (N, L, C): `spatial_dims` (2 or 1)
makes every conv square over that many axes (3x3 or 3, 1x1 or 1) and the final pool
average over them; everything else, BatchNorm included (PyTorch's BatchNorm2d / 1d, the
same statistics per channel), is shared. The 1-D ResNets (`resnet1d_20` ...) are for
MNIST-1D's (N, 40, 1) signals: lengths 40 -> 20 -> 10 over the three stages.

Architecture (docs/paper.md, section 2): 3x3 conv(16, no bias) -> BN -> act; three stages of
n basic blocks with widths 16/32/64, stride 2 at the start of stages 2 and 3; a block is
conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act; where the shape changes the
shortcut is a 1x1 conv (stride 2, no bias) + BN projection ("option B"); global average
pool; dense 64 -> num_classes. `width` multiplies the stage widths (2: 32/64/128);
`use_batch_norm=False` drops every BatchNorm and gives the convs a zero-initialised bias.

Layer names (stages and blocks are 1-based, as in the paper's wording)::

    params['stem_conv']['kernel']                       (3, 3, C_in, 16)
    params['stem_bn']['scale' | 'bias']
    params['stage{s}_block{b}']['conv1' | 'conv2']['kernel']
    params['stage{s}_block{b}']['bn1' | 'bn2']['scale' | 'bias']
    params['stage{s}_block{b}']['shortcut_conv']['kernel']   (first block of stages 2, 3)
    params['stage{s}_block{b}']['shortcut_bn']['scale' | 'bias']
    params['head']['kernel' | 'bias']                   (64, num_classes), (num_classes,)

e.g. "stage 2, block 6, first conv" of ResNet-56 is params['stage2_block6']['conv1']['kernel'],
shape (3, 3, 32, 32) (1-D: (3, 32, 32)). The 'batch_stats' collection mirrors the BN paths
('mean', 'var'). Conv kernels ~ N(0, 2 / (k^spatial_dims * C_out)) (He fan-out), dense as
PyTorch's nn.Linear (layers.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from eos_jax.models.layers import Dtype, activation_fn, batch_norm, conv, pytorch_dense

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN + shortcut, then act; 1x1 conv + BN shortcut on shape change.

    Over `spatial_dims` axes: 3x3 / 1x1 convs on images (2), 3 / 1 on signals (1). Without
    BatchNorm (use_batch_norm=False) the convs carry a zero-initialised bias instead."""

    features: int
    strides: int
    activation: Callable[[jax.Array], jax.Array]
    spatial_dims: int = 2
    use_batch_norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        conv_ = functools.partial(
            conv, spatial_dims=self.spatial_dims, use_bias=not self.use_batch_norm, **dtypes
        )
        norm = functools.partial(_norm, self.use_batch_norm, train, **dtypes)
        y = conv_(self.features, 3, strides=self.strides, name="conv1")(x)
        y = self.activation(norm(name="bn1")(y))
        y = conv_(self.features, 3, name="conv2")(y)
        y = norm(name="bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            project = conv_(self.features, 1, strides=self.strides, name="shortcut_conv")
            shortcut = norm(name="shortcut_bn")(project(x))
        residual_sum = y + shortcut
        # the one activation input that no layer outputs: sown for analysis.regions (a no-op
        # unless 'intermediates' is mutable)
        self.sow("intermediates", "residual_sum", residual_sum)
        return self.activation(residual_sum)


def _norm(use_batch_norm: bool, train: bool, *, dtype, param_dtype, name: str):
    """The block's BatchNorm, or the identity where the ResNet is built without it."""
    if not use_batch_norm:
        return lambda x: x
    return batch_norm(train, dtype=dtype, param_dtype=param_dtype, name=name)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images (spatial_dims=2) or (N, L, C) signals (spatial_dims=1);
    see the module docstring for layers and names."""

    depth: int = 56
    num_classes: int = 10
    activation: str = "relu"
    swish_beta: float = 5.0
    spatial_dims: int = 2
    width: int = 1  # multiplies the stage widths 16/32/64
    use_batch_norm: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise ValueError(f"ResNet width must be an integer >= 1, got {self.width!r}")
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {self.depth}")
        layouts = {1: "(N, L, C) signals", 2: "(N, H, W, C) images"}
        if self.spatial_dims not in layouts:
            raise ValueError(f"ResNet spatial_dims must be 1 or 2, got {self.spatial_dims}")
        if x.ndim != self.spatial_dims + 2:
            layout = layouts[self.spatial_dims]
            raise ValueError(f"this ResNet takes {layout}, got shape {x.shape}")
        blocks_per_stage = (self.depth - 2) // 6
        act = activation_fn(self.activation, self.swish_beta)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        widths = [self.width * w for w in STAGE_WIDTHS]
        bn = self.use_batch_norm
        stem = conv(
            widths[0],
            3,
            spatial_dims=self.spatial_dims,
            use_bias=not bn,
            name="stem_conv",
            **dtypes,
        )
        x = act(_norm(bn, train, name="stem_bn", **dtypes)(stem(x)))
        for stage, width in enumerate(widths, start=1):
            for block in range(1, blocks_per_stage + 1):
                strides = 2 if stage > 1 and block == 1 else 1
                name = f"stage{stage}_block{block}"
                block_ = BasicBlock(width, strides, act, self.spatial_dims, bn, name=name, **dtypes)
                x = block_(x, train)
        x = jnp.mean(x, axis=tuple(range(1, 1 + self.spatial_dims)))
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)
