"""The model zoo: every model by name, built with `create_model(name, ...)`.

All models are Flax linen modules called as `model.apply(variables, x, train=...)` on NHWC
float images and return logits (N, num_classes); `cnn1d` and `resnet1d_*` take 1-D signals
(N, L, C) instead (`mlp` takes either); `one_layer_conv` returns one logit (N,) and ignores
num_classes. Models with BN keep running statistics in 'batch_stats'.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from eos_jax.models.cnn1d import CNN1D
from eos_jax.models.one_layer import OneLayerConv
from eos_jax.models.resnet import CifarResNet
from eos_jax.models.small import MLP, SmallCNN
from eos_jax.models.vgg import VGG

RESNET_DEPTHS = (20, 32, 44, 56, 110)
RESNET1D_DEPTHS = (8, 14, *RESNET_DEPTHS)  # 8, 14: 1 and 2 blocks a stage, for laptop studies

MODELS: dict[str, Callable[..., nn.Module]] = {
    **{
        f"resnet{d}": functools.partial(CifarResNet, depth=d, spatial_dims=2) for d in RESNET_DEPTHS
    },
    **{
        f"resnet1d_{d}": functools.partial(CifarResNet, depth=d, spatial_dims=1)
        for d in RESNET1D_DEPTHS
    },
    "vgg11": functools.partial(VGG, depth=11, use_batch_norm=False),
    "vgg11_bn": functools.partial(VGG, depth=11, use_batch_norm=True),
    "vgg16": functools.partial(VGG, depth=16, use_batch_norm=False),
    "vgg16_bn": functools.partial(VGG, depth=16, use_batch_norm=True),
    "small_cnn": SmallCNN,
    "mlp": MLP,
    "cnn1d": CNN1D,
    "one_layer_conv": OneLayerConv,
}


def _settable_options(constructor: Callable[..., nn.Module]) -> set[str]:
    """Dataclass fields of the module that the name does not already fix."""
    module_class = getattr(constructor, "func", constructor)
    fixed = getattr(constructor, "keywords", {})
    fields = {f.name for f in dataclasses.fields(module_class) if f.init}
    return fields - {"parent", "name"} - set(fixed)


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    **kwargs: Any,
) -> nn.Module:
    """Builds model `name`; kwargs set its other options (e.g. activation='swish')."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    constructor = MODELS[name]
    options = _settable_options(constructor)
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options: {', '.join(sorted(options))}"
        )
    if "num_classes" in options:
        kwargs["num_classes"] = num_classes
    return constructor(dtype=dtype, param_dtype=param_dtype, **kwargs)
