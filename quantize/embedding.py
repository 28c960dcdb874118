"""Pixel embedding: a fully integer first layer (Tokunaga et al., arXiv 2407.16174; docs/methods.md).

Each uint8 pixel value of each colour channel is a token: a trainable table ``E[c, p, :]``
(256 rows of ``d`` values per channel, or one table shared by all channels) maps it to a
``d``-vector, quantized by the network's activation quantizer; the first conv then reads
``C*d`` low-bit channels instead of 8-bit pixels. On the NPU this is the ``embed`` op, an
integer lookup table ``LUT[c][p] -> d`` values.

[ours] choices (options of `EmbeddingConfig`): per-channel tables by default; init
``thermometer`` (``E[c,p,j] = 1 if p >= (j+1)*256/(d+1) else 0``), ``random`` (uniform in
[0, 1)) or ``linear`` (``d = 1``, ``E = p/255``: with a frozen table this is plain low-bit
input quantization); no mean/std normalisation (the folded normalisation becomes the first
conv's initial weights and bias). The first conv's zero padding pads the *embedded* map (the
NPU pads the embed op's output with zeros), the same in the fake-quant model and on the NPU.
"""

from __future__ import annotations

import torch
from torch import nn

from quantize.config import EmbeddingConfig
from quantize.quantizers import Quantizer

__all__ = ["QEmbed", "init_table", "first_conv_init"]


def init_table(cfg: EmbeddingConfig, channels: int, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """The initial table, shape (1 if shared else channels, 256, d), values in [0, 1]."""
    n = 1 if cfg.shared else channels
    p = torch.arange(256, dtype=torch.float32).view(1, 256, 1)
    if cfg.init == "thermometer":
        j = torch.arange(cfg.d, dtype=torch.float32).view(1, 1, -1)
        t = (p >= (j + 1) * 256.0 / (cfg.d + 1)).to(torch.float32)
    elif cfg.init == "linear":
        t = (p / 255.0).expand(1, 256, cfg.d)
    else:
        t = torch.rand((1, 256, cfg.d), generator=generator)
    return t.expand(n, 256, cfg.d).clone()


def first_conv_init(cfg: EmbeddingConfig, w: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (O, C*d, k, k) and bias (O,) so that conv(embed(p)) ~ conv((p/255 - mean)/std).

    The initial table represents p/255 as ``a * sum_j E[p, j] + c``: thermometer
    ``a = 256/((d+1)*255)``, ``c = a/2`` (mid-point of each code's pixel interval); linear
    ``a = 1/d``, ``c = 0``; random: no representation, ``a = 1/d``, ``c = 0`` (learned).
    """
    d = cfg.d
    if cfg.init == "thermometer":
        a, c = 256.0 / ((d + 1) * 255.0), 128.0 / ((d + 1) * 255.0)
    else:
        a, c = 1.0 / d, 0.0
    wn = w / std.view(1, -1, 1, 1)  # (O, C, k, k)
    new = (wn * a).repeat_interleave(d, dim=1)  # channel c*d + j
    bias = (wn * (c - mean.view(1, -1, 1, 1))).sum(dim=(1, 2, 3))
    return new.contiguous(), bias


class QEmbed(nn.Module):
    """The embed stage: raw pixels (as ``p/255``) -> quantized (N, C*d, H, W) activations."""

    def __init__(self, cfg: EmbeddingConfig, channels: int, oq: Quantizer) -> None:
        super().__init__()
        self.cfg, self.channels, self.oq = cfg, channels, oq
        self.table = nn.Parameter(init_table(cfg, channels), requires_grad=cfg.trainable)
        with torch.no_grad():
            if hasattr(oq, "step"):  # LSQ family: the grid's top at 1.0, the table's range
                oq.step.fill_(1.0 / oq.qmax)
                oq.init_done.fill_(True)
            else:  # the method's own init, from the table's values
                oq.init_from(self.table.detach())

    def full_table(self) -> torch.Tensor:
        """The float table per channel, (C, 256, d)."""
        return self.table.expand(self.channels, 256, self.cfg.d)

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """Float embedding of `x` (values p/255), (N, C*d, H, W), channel c*d + j."""
        p = torch.round(x.detach() * 255.0).clamp(0, 255).to(torch.int64)
        t = self.full_table()
        parts = [t[c][p[:, c]].permute(0, 3, 1, 2) for c in range(self.channels)]
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.oq(self.lookup(x))

    @torch.no_grad()
    def int_lut(self) -> torch.Tensor:
        """The integer lookup table (C, 256, d) the NPU's embed op holds."""
        return self.oq.int_repr(self.full_table().contiguous())
