"""The few building blocks every model in `models/` is made of.

Every operation is an ``nn.Module`` (no functional calls in ``forward``), so
``torch.fx.symbolic_trace`` sees a graph of ``call_module`` nodes only; `quantize` relies on
that to place quantizers and to export the op graph.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "relu6"] | None


def make_activation(act: Activation) -> nn.Module:
    """Return the module for an activation name (``None`` gives ``nn.Identity``)."""
    if act is None:
        return nn.Identity()
    if act == "relu":
        return nn.ReLU(inplace=False)
    if act == "relu6":
        return nn.ReLU6(inplace=False)
    raise ValueError(f"unknown activation {act!r}; expected 'relu', 'relu6' or None")


class InputNorm(nn.Module):
    """Raw pixel values (0..255 as float) -> zero-pad in raw space -> ``(x/255 - mean)/std``.

    The padding of the first convolution is done here, on raw pixels, so that folding the
    normalisation into the first conv's weights and bias (what the NPU runs on uint8 input,
    padding with 0) computes exactly the same function, borders included.
    """

    def __init__(self, channels: int, padding: int = 0) -> None:
        super().__init__()
        self.padding = int(padding)
        self.register_buffer("mean", torch.full((channels,), 0.5))
        self.register_buffer("std", torch.full((channels,), 0.5))

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel mean/std (fractions of 255) of the data set."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != self.mean.shape or std_t.shape != self.std.shape:
            raise ValueError(
                f"InputNorm: expected {self.mean.numel()} channel stats, got "
                f"mean {tuple(mean_t.shape)} and std {tuple(std_t.shape)}"
            )
        if bool((std_t <= 0).any()):
            raise ValueError("InputNorm: std must be positive")
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        mean = self.mean.view(1, -1, 1, 1)
        std = self.std.view(1, -1, 1, 1)
        return (x / 255.0 - mean) / std

    def extra_repr(self) -> str:
        return f"channels={self.mean.numel()}, padding={self.padding}"


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation, with stable child names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            groups=groups, bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Add(nn.Module):
    """Residual addition with an optional activation fused after it."""

    def __init__(self, act: Activation = None) -> None:
        super().__init__()
        self.act = make_activation(act)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.act(a + b)


class Concat(nn.Module):
    """Concatenation of feature maps along the channel axis."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class ChannelSlice(nn.Module):
    """Channels ``[start, stop)`` of a feature map (one half of ShuffleNetV2's channel split)."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        if not 0 <= start < stop:
            raise ValueError(f"ChannelSlice: expected 0 <= start < stop, got {start}, {stop}")
        self.start, self.stop = int(start), int(stop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: channels viewed as (groups, C/groups), transposed, flattened."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"ChannelShuffle: groups must be >= 1, got {groups}")
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
