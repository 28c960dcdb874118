"""Small float torch nets that use every op the importer maps."""

from __future__ import annotations

import torch
from torch import nn


class AllOps(nn.Module):
    """conv+relu, depthwise conv+relu6, grouped strided conv, maxpool, residual add+relu,
    average pool, global average pool, flatten, linear."""

    def __init__(self, c: int = 3, width: int = 8, classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(c, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.grouped = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2, 2)
        self.skip = nn.Conv2d(width, 2 * width, 1, stride=4)
        self.avg = nn.AvgPool2d(2, 2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        b = torch.clamp(self.dw(a), 0.0, 6.0)
        c = self.pool(self.grouped(b))
        d = torch.relu(c + self.skip(a))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.avg(d), 1), 1))


class NoAvgPool(AllOps):
    """AllOps without the 2x2 average pool (QLinearAveragePool is float arithmetic in ORT)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        b = torch.clamp(self.dw(a), 0.0, 6.0)
        c = self.pool(self.grouped(b))
        d = torch.relu(c + self.skip(a))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(d, 1), 1))
