"""PyTorch twins of eos_jax's small CNN and CIFAR ResNets, for the step-time benchmark.

Same layers, shapes, padding and BatchNorm settings as eos_jax/models (conv padding k // 2,
BN eps 1e-5 and PyTorch momentum 0.1, 1x1-conv + BN projection shortcut where the shape
changes, global average pool, linear head), so both frameworks do the same arithmetic per
step. Initialisation is PyTorch's default: it does not change the step time, and
`load_flax_params` copies a Flax model's weights in when the two must agree exactly.

The update is torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=5e-4), which is
what eos_jax.training.optim.sgd reproduces.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class SmallCNN(nn.Module):
    """conv3x3 + ReLU per width (stride 1 first, then 2), global average pool, linear."""

    def __init__(self, in_channels: int, widths=(32, 64, 64), num_classes: int = 10):
        super().__init__()
        layers, c = [], in_channels
        for index, width in enumerate(widths):
            layers += [_conv(c, width, 3, stride=1 if index == 0 else 2, bias=True), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride), _bn(c_out)
        self.conv2, self.bn2 = _conv(c_out, c_out, 3), _bn(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride), _bn(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with widths 16/32/64 and option-B shortcuts, as eos_jax's CifarResNet."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(_conv(in_channels, 16, 3), _bn(16), nn.ReLU())
        blocks, c = [], 16
        for stage, width in enumerate(STAGE_WIDTHS):
            for block in range(n):
                blocks.append(BasicBlock(c, width, 2 if stage > 0 and block == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def create_model(name: str, in_channels: int, num_classes: int = 10) -> nn.Module:
    """'small_cnn' | 'resnet{6n+2}' as a PyTorch module taking NCHW float images."""
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes=num_classes)
    if name.startswith("resnet"):
        return CifarResNet(int(name[len("resnet") :]), in_channels, num_classes)
    raise ValueError(f"no PyTorch twin for model {name!r}")


def make_optimizer(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    """The recipe's update: SGD, Nesterov momentum 0.9, coupled weight decay 5e-4."""
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Returns step(images, labels) -> loss: forward, cross-entropy, backward, SGD update."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def flax_param_paths(name: str) -> list[tuple[str, ...]]:
    """The Flax param paths of model `name`, in the order of the twin's .parameters()."""
    if name == "small_cnn":
        convs = [(f"conv{i}", leaf) for i in (1, 2, 3) for leaf in ("kernel", "bias")]
        return [*convs, ("head", "kernel"), ("head", "bias")]
    n = (int(name[len("resnet") :]) - 2) // 6
    paths = [("stem_conv", "kernel"), ("stem_bn", "scale"), ("stem_bn", "bias")]
    for stage in (1, 2, 3):
        for block in range(1, n + 1):
            layers = ["conv1", "bn1", "conv2", "bn2"]
            if stage > 1 and block == 1:
                layers += ["shortcut_conv", "shortcut_bn"]
            for layer in layers:
                leaves = ("kernel",) if "conv" in layer else ("scale", "bias")
                paths += [(f"stage{stage}_block{block}", layer, leaf) for leaf in leaves]
    return [*paths, ("head", "kernel"), ("head", "bias")]


def load_flax_params(name: str, model: nn.Module, params) -> None:
    """Copies a Flax model's params into its twin (model `name`), converting layouts.

    Flax conv kernels (kh, kw, C_in, C_out) become (C_out, C_in, kh, kw); dense kernels
    (in, out) become (out, in).
    """
    paths = flax_param_paths(name)
    targets = list(model.parameters())
    if len(paths) != len(targets):
        raise ValueError(f"{len(paths)} Flax arrays vs {len(targets)} PyTorch parameters")
    with torch.no_grad():
        for path, target in zip(paths, targets, strict=True):
            leaf = params
            for key in path:
                leaf = leaf[key]
            leaf = np.asarray(leaf)
            if leaf.ndim == 4:
                leaf = leaf.transpose(3, 2, 0, 1)
            elif leaf.ndim == 2:
                leaf = leaf.T
            if tuple(leaf.shape) != tuple(target.shape):
                raise ValueError(
                    f"{'/'.join(path)}: {leaf.shape} does not fit {tuple(target.shape)}"
                )
            target.copy_(torch.from_numpy(np.array(leaf, copy=True)))
