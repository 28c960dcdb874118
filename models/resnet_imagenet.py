"""ImageNet ResNet-18/34 in the torchvision layout, built from `models.layers` blocks.

Stem 7x7/2 (64 channels) + BN + ReLU, 3x3/2 max-pool, four stages of BasicBlocks with
64/128/256/512 channels (stride 2 at the first block of stages 2-4, 1x1 projection shortcut
when the shape changes), global average pooling and a linear classifier.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from models.layers import ConvBNAct, InputNorm
from models.resnet_cifar import BasicBlock, check_model_args, init_weights, scale_channels

logger = logging.getLogger(__name__)

__all__ = ["ResNetImageNet", "resnet18", "resnet34"]


class ResNetImageNet(nn.Module):
    """ImageNet-style ResNet of BasicBlocks (ResNet-18/34)."""

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width)
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 positive stage depths, got {blocks!r}")
        chans = [scale_channels(c, width) for c in (64, 128, 256, 512)]

        self.input_norm = InputNorm(in_channels, padding=3)
        self.stem = ConvBNAct(in_channels, chans[0], 7, stride=2, padding=0, act="relu")
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        prev = chans[0]
        for i, (c, n) in enumerate(zip(chans, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(prev, c, stride)] + [BasicBlock(c, c, 1) for _ in range(int(n) - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            prev = c
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        init_weights(self)
        logger.debug("built ResNetImageNet blocks=%s width=%s classes=%d", list(blocks), width,
                     num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network; module calls only, so torch.fx sees call_module nodes."""
        x = self.maxpool(self.stem(self.input_norm(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetImageNet:
    """ImageNet ResNet-18 (BasicBlocks [2, 2, 2, 2])."""
    return ResNetImageNet([2, 2, 2, 2], num_classes, in_channels, width)


def resnet34(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> ResNetImageNet:
    """ImageNet ResNet-34 (BasicBlocks [3, 4, 6, 3])."""
    return ResNetImageNet([3, 4, 6, 3], num_classes, in_channels, width)
