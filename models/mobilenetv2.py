"""MobileNetV2 (Sandler et al. 2018) built from `models.layers` blocks.

Two variants: `mobilenetv2` (ImageNet strides, for 224x224 inputs) and `mobilenetv2_cifar`
(stem stride 1 and the first 24-channel stage at stride 1, as in the common CIFAR ports, for
32x32 inputs). The classifier dropout of the reference model is left out (it has no
parameters and is not one of the modules the quantizer handles).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from models.layers import Add, ConvBNAct, InputNorm
from models.resnet_cifar import check_model_args, init_weights

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_CONFIG",
    "CIFAR_CONFIG",
    "InvertedResidual",
    "MobileNetV2",
    "make_divisible",
    "mobilenetv2",
    "mobilenetv2_cifar",
]

# (expansion t, output channels c, repeats n, first stride s)
IMAGENET_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
CIFAR_CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below 90% of it."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class InvertedResidual(nn.Module):
    """expand (1x1, ReLU6; absent when t=1) -> dw (3x3 depthwise, ReLU6) -> project (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        hidden = int(round(in_channels * expansion))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.has_expand = expansion != 1
        if self.has_expand:
            self.expand = ConvBNAct(in_channels, hidden, 1, padding=0, act="relu6")
        self.dw = ConvBNAct(hidden, hidden, 3, stride=stride, padding=1, groups=hidden,
                            act="relu6")
        self.project = ConvBNAct(hidden, out_channels, 1, padding=0, act=None)
        if self.use_residual:
            self.add = Add(act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block; module calls only, so torch.fx sees call_module nodes."""
        y = self.expand(x) if self.has_expand else x
        y = self.project(self.dw(y))
        if self.use_residual:
            return self.add(y, x)
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 with a configurable (t, c, n, s) table and stem stride."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        config: Sequence[tuple[int, int, int, int]] = IMAGENET_CONFIG,
        stem_stride: int = 2,
        round_nearest: int = 8,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width)
        stem_channels = make_divisible(32 * width, round_nearest)
        head_channels = make_divisible(1280 * width, round_nearest)

        self.input_norm = InputNorm(in_channels, padding=1)
        self.stem = ConvBNAct(in_channels, stem_channels, 3, stride=stem_stride, padding=0,
                              act="relu6")
        blocks: list[nn.Module] = []
        prev = stem_channels
        for t, c, n, s in config:
            out = make_divisible(c * width, round_nearest)
            for i in range(n):
                blocks.append(InvertedResidual(prev, out, s if i == 0 else 1, t))
                prev = out
        self.features = nn.Sequential(*blocks)
        self.head = ConvBNAct(prev, head_channels, 1, padding=0, act="relu6")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head_channels, num_classes)
        init_weights(self, linear_std=0.01)
        logger.debug("built MobileNetV2 width=%s stem_stride=%d classes=%d", width, stem_stride,
                     num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network; module calls only, so torch.fx sees call_module nodes."""
        x = self.head(self.features(self.stem(self.input_norm(x))))
        return self.fc(self.flatten(self.pool(x)))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    """MobileNetV2 with ImageNet strides (for 224x224 inputs)."""
    return MobileNetV2(num_classes, in_channels, width, IMAGENET_CONFIG, stem_stride=2)


def mobilenetv2_cifar(
    num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> MobileNetV2:
    """MobileNetV2 for 32x32 inputs (stem and first 24-channel stage at stride 1)."""
    return MobileNetV2(num_classes, in_channels, width, CIFAR_CONFIG, stem_stride=1)
