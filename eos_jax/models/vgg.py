"""VGG-11 and VGG-16 (Simonyan & Zisserman configs A and D) for 32x32 CIFAR images.

Each group is a run of conv3x3 (padding 1) -> [BN] -> ReLU layers followed by a 2x2 max-pool;
five pools take 32x32 to 1x1, so the features are 512 numbers. The classifier is the common
CIFAR variant with a single linear layer, flatten 512 -> dense num_classes, instead of
ImageNet VGG's three 4096-wide layers.

Conv biases: a conv followed by BN has no bias (BN's shift makes it redundant, as in the
ResNet); without BN each conv has a bias, PyTorch's default. Note torchvision's vgg*_bn keeps
the redundant biases, so its parameter counts are larger by the sum of the conv widths.
Init as in resnet.py: conv kernels He fan-out normal, conv biases zero (torchvision's VGG
init), BN 1/0, dense U(+-1/sqrt(fan_in)).

Layer names (groups and convs 1-based)::

    params['group{g}_conv{c}']['kernel' | 'bias']
    params['group{g}_bn{c}']['scale' | 'bias']        (with BN)
    params['head']['kernel' | 'bias']                 (512, num_classes)
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from eos_jax.models.layers import Dtype, batch_norm, conv, pytorch_dense

# Conv widths per group (each group ends with a 2x2 max-pool).
VGG_GROUPS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),  # config A
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),  # config D
}


class VGG(nn.Module):
    """VGG-11 / VGG-16 with or without BN and a single linear classifier."""

    depth: int = 16
    use_batch_norm: bool = False
    num_classes: int = 10
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        if self.depth not in VGG_GROUPS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_GROUPS)}, got {self.depth}")
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for group, widths in enumerate(VGG_GROUPS[self.depth], start=1):
            for index, width in enumerate(widths, start=1):
                x = conv(
                    width,
                    3,
                    use_bias=not self.use_batch_norm,
                    name=f"group{group}_conv{index}",
                    **dtypes,
                )(x)
                if self.use_batch_norm:
                    x = batch_norm(train, name=f"group{group}_bn{index}", **dtypes)(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return pytorch_dense(self.num_classes, x.shape[-1], name="head", **dtypes)(x)
