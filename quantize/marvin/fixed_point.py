"""Signed fixed-point formats ``<WL, FL>`` (word length, fractional bits) for MARViN training.

A value ``x`` in ``<WL, FL>`` is ``q * 2^-FL`` with the integer ``q`` saturated to the signed
``WL``-bit range ``[-2^(WL-1), 2^(WL-1) - 1]``. Two roundings: ``nearest`` (ties to even, the
convention of docs/methods.md) and ``stochastic`` (``floor(x * 2^FL + r)``, ``r ~ U[0, 1)``; unbiased,
as in Gupta et al., "Deep learning with limited numerical precision", ICML 2015).

Scaling by ``2^FL`` is exact in float32 (a power of two), so the float path is bit-exact to the
integer definition as long as ``|q| < 2^24``; beyond that (word lengths above 24 bits) a float32
tensor is already on its own grid and the quantizer only saturates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

__all__ = ["Rounding", "SqnrMeter", "fixed_grad", "frac_bits_for", "int_limits", "max_abs",
           "quantize_fixed", "vanish_threshold"]

Rounding = Literal["nearest", "stochastic"]

# |FL| up to which the fused float32 fake-quantizer is used: its scale 2^-FL and 1/scale must
# be normal float32 numbers (2^-126 .. 2^127); 100 leaves margin for x * 2^FL.
_FUSED_MAX_FL = 100


def int_limits(word_bits: int) -> tuple[int, int]:
    """The signed integer range ``(-2^(WL-1), 2^(WL-1) - 1)`` of a ``WL``-bit word."""
    if int(word_bits) < 2:
        raise ValueError(f"word_bits must be >= 2, got {word_bits}")
    half = 1 << (int(word_bits) - 1)
    return -half, half - 1


def frac_bits_for(magnitude: float, word_bits: int) -> int:
    """The largest FL such that ``magnitude`` fits ``<WL, FL>`` without saturating.

    ``(2^(WL-1) - 1) * 2^-FL >= magnitude``; FL may be negative (large values) and is
    ``WL - 1`` for an all-zero tensor (any FL represents it).
    """
    _, hi = int_limits(word_bits)
    m = float(magnitude)
    if not math.isfinite(m):
        raise ValueError(f"magnitude must be finite, got {magnitude}")
    if m <= 0.0:
        return int(word_bits) - 1
    fl = math.floor(math.log2(hi / m))
    # log2 in floating point can be off by one at exact powers of two: settle it exactly
    while math.ldexp(hi, -fl) < m:
        fl -= 1
    while math.ldexp(hi, -(fl + 1)) >= m:
        fl += 1
    return fl


def quantize_fixed(x: torch.Tensor, word_bits: int, frac_bits: int,
                   rounding: Rounding = "nearest", noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` rounded to ``<word_bits, frac_bits>`` and saturated (same dtype as ``x``).

    Args:
        rounding: ``nearest`` (ties to even) or ``stochastic``.
        noise: for ``stochastic``, the uniform ``[0, 1)`` draws to use (same shape as ``x``);
            drawn from `generator` when not given. Passing them makes the result reproducible.
    """
    lo, hi = int_limits(word_bits)
    if not x.is_floating_point():
        x = x.float()
    fl = int(frac_bits)
    if rounding == "nearest" and abs(fl) <= _FUSED_MAX_FL and x.dtype == torch.float32:
        # torch's fused fake-quantizer computes clamp(nearbyint(x * 2^FL)) * 2^-FL: the same
        # numbers (ties to even; scaling by a power of two is exact) in one pass
        return torch.fake_quantize_per_tensor_affine(x.detach(), math.ldexp(1.0, -fl), 0, lo, hi)
    # multiplying by a power of two is exact (barring over/underflow): u is x * 2^FL exactly
    u = x * math.ldexp(1.0, fl)
    if rounding == "nearest":
        u.round_()
    elif rounding == "stochastic":
        if noise is None:
            noise = torch.rand(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        u.add_(noise).floor_()
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return u.clamp_(lo, hi).mul_(math.ldexp(1.0, -fl))


def max_abs(x: torch.Tensor) -> float:
    """``max|x|`` as a Python float (0 for an empty tensor), without a temporary ``|x|``."""
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(x.detach())
    return max(-float(lo), float(hi))


def vanish_threshold(frac_bits: int) -> float:
    """Magnitude below which an update rounds to zero at resolution ``2^-FL`` (nearest):
    half a step, ``2^-(FL+1)`` (exactly half rounds to even, i.e. to zero)."""
    return math.ldexp(1.0, -(int(frac_bits) + 1))


@dataclass
class SqnrMeter:
    """SQNR of a tensor's fixed-point copies at every menu word, pooled over the tensors seen
    since the last `reset`: ``10 log10(sum x^2 / sum (x - Q(x))^2)``, each tensor rounded with
    FL fitted to its own ``max|x|`` (dynamic fixed point, as the layers apply it)."""

    menu: tuple[int, ...]
    rounding: Rounding = "nearest"
    generator: torch.Generator = field(repr=False, default_factory=torch.Generator)
    signal: float = 0.0
    noise: np.ndarray = field(init=False)
    tensors: int = 0

    def __post_init__(self) -> None:
        self.noise = np.zeros(len(self.menu))

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Pool one tensor's signal and, per menu word, its quantization noise."""
        x = x.detach().float()
        m = max_abs(x)
        self.signal += float((x.double() ** 2).sum())
        for i, wl in enumerate(self.menu):
            q = quantize_fixed(x, wl, frac_bits_for(m, wl), self.rounding,
                               generator=self.generator)
            self.noise[i] += float(((x - q).double() ** 2).sum())
        self.tensors += 1

    def sqnr_db(self) -> dict[int, float]:
        """Pooled SQNR per menu word (inf: exact copies; 0 for all-zero tensors)."""
        out = {}
        for wl, n in zip(self.menu, self.noise):
            if self.signal == 0.0:
                out[wl] = 0.0
            else:
                out[wl] = math.inf if n == 0.0 else 10.0 * math.log10(self.signal / float(n))
        return out

    def reset(self) -> None:
        self.signal, self.tensors = 0.0, 0
        self.noise[:] = 0.0


class _FixedGrad(torch.autograd.Function):
    """Identity forward; the backward rounds the incoming gradient to ``<WL, FL(max|g|)>``."""

    @staticmethod
    def forward(ctx, x, word_bits, rounding, generator, meter):  # type: ignore[override]
        ctx.word_bits, ctx.rounding, ctx.generator, ctx.meter = \
            word_bits, rounding, generator, meter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        if ctx.meter is not None:
            ctx.meter.add(g)
        fl = frac_bits_for(max_abs(g), ctx.word_bits)
        return quantize_fixed(g, ctx.word_bits, fl, ctx.rounding, generator=ctx.generator), \
            None, None, None, None


def fixed_grad(x: torch.Tensor, word_bits: int, rounding: Rounding = "nearest",
               generator: torch.Generator | None = None,
               meter: SqnrMeter | None = None) -> torch.Tensor:
    """``x`` unchanged; its gradient is quantized to ``word_bits`` with FL fitted to the
    gradient's largest magnitude (dynamic fixed point, one format per backward call); `meter`
    (if given) sees the float gradient first."""
    return _FixedGrad.apply(x, int(word_bits), rounding, generator, meter)
