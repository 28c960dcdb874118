"""CIFAR-style ResNets (He et al. 2016, sec. 4.2) with projection shortcuts ("option B").

Stem 3x3/16 + BN + ReLU, three stages of ``n`` BasicBlocks with 16/32/64 channels (stride 2 at
the first block of stages 2 and 3), global average pooling and a linear classifier;
depth = 6n + 2 (8/14/20/32/56).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from models.layers import Add, ConvBNAct, InputNorm
from npusim.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "BasicBlock",
    "ResNetCifar",
    "check_model_args",
    "init_weights",
    "scale_channels",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet56",
]


def check_model_args(num_classes: int, in_channels: int, width: float) -> None:
    """Raise ValueError naming the argument when num_classes, in_channels or width is invalid."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or width <= 0
    ):
        raise UserError(f"width must be a finite number > 0, got {width!r}")


def scale_channels(channels: int, width: float) -> int:
    """Return ``channels * width`` rounded to the nearest int, at least 1."""
    return max(1, int(round(channels * width)))


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0; optionally N(0, std) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """conv1 (3x3, ReLU) -> conv2 (3x3), plus shortcut (identity or 1x1 projection), add + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride=stride, act="relu")
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, stride=1, act=None)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBNAct(
                in_channels, out_channels, 1, stride=stride, padding=0, act=None
            )
        else:
            self.shortcut = nn.Identity()
        self.add = Add(act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block; module calls only, so torch.fx sees call_module nodes."""
        return self.add(self.conv2(self.conv1(x)), self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n+2 with 16/32/64 (times width) channels."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth!r}")
        n = (depth - 2) // 6
        c1, c2, c3 = (scale_channels(c, width) for c in (16, 32, 64))

        self.input_norm = InputNorm(in_channels, padding=1)
        self.stem = ConvBNAct(in_channels, c1, 3, stride=1, padding=0, act="relu")
        self.layer1 = self._make_stage(c1, c1, n, stride=1)
        self.layer2 = self._make_stage(c1, c2, n, stride=2)
        self.layer3 = self._make_stage(c2, c3, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)
        init_weights(self)
        logger.debug("built ResNetCifar depth=%d width=%s classes=%d", depth, width, num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network; module calls only, so torch.fx sees call_module nodes."""
        x = self.stem(self.input_norm(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet8(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    """CIFAR ResNet-8 (n=1)."""
    return ResNetCifar(8, num_classes, in_channels, width)


def resnet14(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    """CIFAR ResNet-14 (n=2)."""
    return ResNetCifar(14, num_classes, in_channels, width)


def resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    """CIFAR ResNet-20 (n=3)."""
    return ResNetCifar(20, num_classes, in_channels, width)


def resnet32(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    """CIFAR ResNet-32 (n=5)."""
    return ResNetCifar(32, num_classes, in_channels, width)


def resnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetCifar:
    """CIFAR ResNet-56 (n=9)."""
    return ResNetCifar(56, num_classes, in_channels, width)
