"""ShuffleNetV2 (Ma et al., ECCV 2018) built from `models.layers` blocks.

The block of the paper (Fig. 3c/d, torchvision's layout): at stride 1 the input's channels are
split in halves, the second half goes through 1x1 (ReLU) -> 3x3 depthwise -> 1x1 (ReLU) and is
concatenated back to the first; at stride 2 both branches see the whole input (the first:
3x3 depthwise/2 -> 1x1, ReLU). A channel shuffle with two groups follows every block. Stage
repeats 4/8/4; output channels x0.5: 24, 48, 96, 192, 1024; x1.0: 24, 116, 232, 464, 1024
(Table 5). The ImageNet variants (224x224) have the 3x3/2 stem and 3x3/2 max pool; the
``_cifar`` variants (32x32) a stride-1 stem and no max pool, as in the common CIFAR ports.
`width` scales the stage channels (rounded to an even count, at least 2) of either table.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from models.layers import ChannelShuffle, ChannelSlice, Concat, ConvBNAct, InputNorm
from models.resnet_cifar import check_model_args, init_weights

logger = logging.getLogger(__name__)

__all__ = ["STAGE_CHANNELS", "ShuffleBlock", "ShuffleNetV2", "shufflenetv2_x0_5",
           "shufflenetv2_x0_5_cifar", "shufflenetv2_x1_0", "shufflenetv2_x1_0_cifar"]

#: (stem, stage 2, stage 3, stage 4, head) channels of Table 5
STAGE_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}
REPEATS = (4, 8, 4)


class ShuffleBlock(nn.Module):
    """One ShuffleNetV2 unit: split (stride 1) or two branches (stride 2), concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2) or out_channels % 2:
            raise ValueError(f"ShuffleBlock: stride 1 or 2 and even out_channels, got {stride}, "
                             f"{out_channels}")
        half = out_channels // 2
        self.stride = stride
        if stride == 1:
            if in_channels != out_channels:
                raise ValueError("ShuffleBlock: a stride-1 unit keeps its channel count")
            self.keep = ChannelSlice(0, half)
            self.take = ChannelSlice(half, in_channels)
            branch_in = in_channels - half
        else:
            self.branch1 = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride=2, groups=in_channels, act=None),
                ConvBNAct(in_channels, half, 1, padding=0, act="relu"))
            branch_in = in_channels
        self.branch2 = nn.Sequential(
            ConvBNAct(branch_in, half, 1, padding=0, act="relu"),
            ConvBNAct(half, half, 3, stride=stride, groups=half, act=None),
            ConvBNAct(half, half, 1, padding=0, act="relu"))
        self.cat = Concat()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Module calls only, so torch.fx sees call_module nodes."""
        if self.stride == 1:
            y = self.cat(self.keep(x), self.branch2(self.take(x)))
        else:
            y = self.cat(self.branch1(x), self.branch2(x))
        return self.shuffle(y)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with a channel table, stem stride and optional stem max pool."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 channels: tuple[int, ...] = STAGE_CHANNELS[1.0], cifar: bool = False) -> None:
        super().__init__()
        check_model_args(num_classes, in_channels, width)
        stages = [max(2, 2 * round(c * width / 2)) for c in channels[1:4]]
        stem, head = channels[0], channels[4]
        self.input_norm = InputNorm(in_channels, padding=1)
        self.stem = ConvBNAct(in_channels, stem, 3, stride=1 if cifar else 2, padding=0)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        prev = stem
        for c, n in zip(stages, REPEATS):
            for i in range(n):
                blocks.append(ShuffleBlock(prev, c, 2 if i == 0 else 1))
                prev = c
        self.features = nn.Sequential(*blocks)
        self.head = ConvBNAct(prev, head, 1, padding=0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head, num_classes)
        init_weights(self, linear_std=0.01)
        logger.debug("built ShuffleNetV2 stages=%s cifar=%s classes=%d", stages, cifar,
                     num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network; module calls only, so torch.fx sees call_module nodes."""
        x = self.maxpool(self.stem(self.input_norm(x)))
        x = self.head(self.features(x))
        return self.fc(self.flatten(self.pool(x)))


def shufflenetv2_x0_5(num_classes: int = 10, in_channels: int = 3,
                      width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 x0.5 for 224x224 inputs."""
    return ShuffleNetV2(num_classes, in_channels, width, STAGE_CHANNELS[0.5])


def shufflenetv2_x1_0(num_classes: int = 10, in_channels: int = 3,
                      width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 x1.0 for 224x224 inputs."""
    return ShuffleNetV2(num_classes, in_channels, width, STAGE_CHANNELS[1.0])


def shufflenetv2_x0_5_cifar(num_classes: int = 10, in_channels: int = 3,
                            width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 x0.5 for 32x32 inputs (stride-1 stem, no max pool)."""
    return ShuffleNetV2(num_classes, in_channels, width, STAGE_CHANNELS[0.5], cifar=True)


def shufflenetv2_x1_0_cifar(num_classes: int = 10, in_channels: int = 3,
                            width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 x1.0 for 32x32 inputs (stride-1 stem, no max pool)."""
    return ShuffleNetV2(num_classes, in_channels, width, STAGE_CHANNELS[1.0], cifar=True)
