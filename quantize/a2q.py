"""Accumulator-aware weight quantization: A2Q and A2Q+ (docs/methods.md).

Colbert, Pappalardo, Petri-Koenig, ICCV 2023 (arXiv 2308.13504); A2Q+ arXiv 2401.10432;
reference implementation in Brevitas. The weights of every output channel are parametrised
as a direction ``v`` and a learned L1 norm ``g`` clamped to ``s * T`` (``s`` the channel's
step, ``T`` its budget in integer units), and quantized by rounding *toward zero*, so
``||q||_1 <= T`` holds by construction after every optimizer step, whatever the gradients.

Budgets (per output channel, inputs ``x`` in ``[xlo, xhi]`` with ``xlo <= 0 <= xhi``). The
NPU preloads the bias into the accumulator, so a running sum is ``b + sum_{i in S} q_i x_i``
for a subset ``S`` of the products; it stays inside a signed ``P``-bit register when

- A2Q: ``||q||_1 * X + |b| <= 2^(P-1) - 1`` with ``X = max(|xlo|, xhi)``, i.e.
  ``T = (2^(P-1) - 1 - |b|) / X``. With ``b = 0`` and signed inputs this is the paper's
  ``(2^(P-1) - 1) * 2^(1 - N)``; for unsigned inputs we use the exact ``X = 2^N - 1`` where
  the paper rounds it up to ``2^N`` (ours: the same argument, one step tighter to the truth);
- A2Q+ (unsigned inputs): the direction is zero-centred per channel, so the positive and the
  negative weights each sum to at most ``||q||_1 / 2`` (rounding toward zero only shrinks
  them), and ``T = 2 (2^(P-1) - 1 - |b|) / (2^N - 1)``, the paper's relaxed
  ``(2^P - 2) / (2^N - 1)`` at ``b = 0``. Signed inputs get A2Q's budget (no relaxation holds).

The bias [ours]: the papers bound the dot product alone. Here the integer bias is saturated
to ``+-bias_frac * (2^(P-1) - 1)`` (in the fake-quant forward and at export alike) and each
channel's budget is what its bias leaves, so the guarantee covers the accumulator the NPU
really has. Budgets are floored to integers and the norm clamp keeps a 1e-6 relative margin,
so float rounding in ``v / ||v||_1`` can never push ``||q||_1`` over ``T``.

Initialisation: ``init="l1_ball"`` (A2Q+'s Euclidean projection of the float weights onto the
L1 ball of radius ``s * T``, Duchi et al. ICML 2008: soft-thresholding, so large weights
survive) or ``"scale"`` (uniform rescaling). It runs on the first forward, when the input
scale, hence the bias and the budget, are known.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from quantize.quantizers import MIN_SCALE, LSQQuantizer, _bcast, _clamp_st, _graft

__all__ = ["A2QQuantizer", "A2Q_MODES", "budget", "bias_limit", "l1_ball_projection",
           "l1_budget_violations"]

A2Q_MODES = ("a2q", "a2q+")
# Relative margin under the budget that absorbs float rounding of v / ||v||_1.
_MARGIN = 1e-6


def bias_limit(acc_bits: int, bias_frac: float) -> int:
    """The largest integer bias magnitude the budget reserves room for."""
    return int(math.floor(bias_frac * (2 ** (acc_bits - 1) - 1)))


def budget(acc_bits: int, xlo: int, xhi: int, bias_abs: torch.Tensor, plus: bool) -> torch.Tensor:
    """Integer L1 budget ``T`` per channel for inputs in [xlo, xhi] and |bias| per channel."""
    room = (2 ** (acc_bits - 1) - 1) - bias_abs.to(torch.float64)
    if plus and xlo == 0:
        t = 2.0 * room / xhi
    else:
        t = room / max(-xlo, xhi)
    return torch.floor(t).clamp(min=0.0)


def l1_ball_projection(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` (C, K) onto the L1 ball of its `radius` (C,).

    Rows already inside are returned unchanged; others are soft-thresholded by the ``theta``
    of Duchi et al. (2008), which makes their L1 norm exactly the radius.
    """
    a = v.abs()
    inside = a.sum(dim=1) <= radius
    srt = torch.sort(a, dim=1, descending=True).values
    css = torch.cumsum(srt, dim=1)
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    cond = srt * k > (css - radius.view(-1, 1))
    rho = cond.to(torch.int64).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last True index
    rho = torch.where(cond.any(dim=1, keepdim=True), rho, torch.zeros_like(rho))
    theta = (css.gather(1, rho) - radius.view(-1, 1)) / (rho + 1).to(v.dtype)
    proj = torch.sign(v) * (a - theta.clamp(min=0)).clamp(min=0)
    return torch.where(inside.view(-1, 1), v, proj)


def l1_budget_violations(q: torch.Tensor, bias: torch.Tensor, xlo: int, xhi: int,
                         acc_bits: int) -> list[int]:
    """Channels whose exact worst-case running sum ``bias + partial dot`` leaves P bits."""
    qf = q.reshape(q.shape[0], -1).to(torch.int64)
    lo = torch.minimum(qf * xlo, qf * xhi).sum(dim=1) + bias.to(torch.int64)
    hi = torch.maximum(qf * xlo, qf * xhi).sum(dim=1) + bias.to(torch.int64)
    top = 2 ** (acc_bits - 1) - 1
    bad = (hi > top) | (lo < -top - 1)
    return [int(i) for i in torch.nonzero(bad).reshape(-1)]


class A2QQuantizer(LSQQuantizer):
    """Weight quantizer with a per-channel L1 budget: LSQ step, learned norm, trunc rounding.

    Options: ``acc_bits`` (target P), ``mode`` ("a2q" | "a2q+"), ``x_range`` ((xlo, xhi) of
    the layer's integer inputs), ``init`` ("l1_ball" | "scale"), ``grad_scale`` (LSQ's).
    Call ``set_bias_abs`` with the channel biases' magnitudes before each forward; the
    forward then quantizes within the budget those biases leave.
    """

    method = "a2q"
    _OPTIONS: ClassVar[dict[str, Any]] = {"grad_scale": True, "acc_bits": 32, "mode": "a2q",
                                          "x_range": (0, 255), "init": "l1_ball"}

    def __init__(self, bits: int, signed: bool, narrow: bool = False, per_channel: bool = False,
                 channels: int = 1, method: str | None = None, **options: Any) -> None:
        super().__init__(bits, signed, narrow, per_channel, channels, method, **options)
        # per output channel whatever the step's granularity
        self.n_out = channels
        self.norm = torch.nn.Parameter(torch.ones(channels))
        self.register_buffer("bias_abs", torch.zeros(channels))
        self.register_buffer("norm_init_done", torch.zeros((), dtype=torch.bool))

    def _validate_options(self) -> None:
        o = self.opts
        if self.role != "weight" or not self.signed:
            raise ValueError("a2q quantizes signed weights only")
        p = o["acc_bits"]
        if isinstance(p, bool) or not isinstance(p, int) or not 2 <= p <= 62:
            raise ValueError(f"option acc_bits must be an integer in [2, 62], got {p!r}")
        if o["mode"] not in A2Q_MODES:
            raise ValueError(f"option mode must be one of {A2Q_MODES}, got {o['mode']!r}")
        if o["init"] not in ("l1_ball", "scale"):
            raise ValueError(f"option init must be 'l1_ball' or 'scale', got {o['init']!r}")
        xr = o["x_range"]
        if not (isinstance(xr, (tuple, list)) and len(xr) == 2 and int(xr[0]) <= 0 <= int(xr[1])
                and int(xr[1]) - int(xr[0]) > 0):
            raise ValueError(f"option x_range must be (xlo <= 0, xhi >= 0), got {xr!r}")

    @property
    def acc_bits(self) -> int:
        """The accumulator width P the budget guarantees."""
        return int(self.opts["acc_bits"])

    @property
    def x_range(self) -> tuple[int, int]:
        """Integer range of the layer's inputs."""
        return int(self.opts["x_range"][0]), int(self.opts["x_range"][1])

    @property
    def plus(self) -> bool:
        return self.opts["mode"] == "a2q+"

    def quant_parameters(self) -> list[torch.nn.Parameter]:
        """[step, norm]."""
        return [self.step, self.norm]

    def set_bias_abs(self, bias_abs: torch.Tensor) -> None:
        """Magnitudes of the channels' integer biases (detached), which shrink the budget."""
        self.bias_abs.copy_(bias_abs.detach().reshape(-1).to(self.bias_abs))

    def budgets(self) -> torch.Tensor:
        """Integer L1 budget T of every output channel for the current biases."""
        xlo, xhi = self.x_range
        return budget(self.acc_bits, xlo, xhi, self.bias_abs, self.plus).to(torch.float32)

    def _direction(self, x: torch.Tensor) -> torch.Tensor:
        v = x.reshape(x.shape[0], -1)
        if self.plus:
            v = v - v.mean(dim=1, keepdim=True)
        return v

    def _step_per_row(self, x: torch.Tensor) -> torch.Tensor:
        s = self._step()
        return s.expand(x.shape[0]) if s.dim() == 0 else s

    def _init_from(self, x: torch.Tensor) -> None:
        super()._init_from(x)
        self.norm.copy_(self._direction(x).abs().sum(dim=1).clamp(min=MIN_SCALE))

    def init_norm(self, weight: torch.Tensor) -> torch.Tensor | None:
        """One-off init once the budget is known: the projected float weights (or None).

        Returns the new weight tensor (the caller writes it into its parameter) for
        ``init="l1_ball"``; sets the norm to ``min(||v||_1, s*T)`` either way.
        """
        with torch.no_grad():
            v = self._direction(weight)
            radius = self._step_per_row(weight).detach() * self.budgets() * (1 - _MARGIN)
            new = None
            if self.opts["init"] == "l1_ball":
                proj = l1_ball_projection(v, radius)
                if self.plus:  # keep the channel mean the direction discards
                    proj = proj + weight.reshape(weight.shape[0], -1).mean(dim=1, keepdim=True)
                new = proj.reshape(weight.shape)
                v = self._direction(new)
            self.norm.copy_(torch.minimum(v.abs().sum(dim=1), radius).clamp(min=MIN_SCALE))
            self.norm_init_done.fill_(True)
        return new

    def _scaled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u = w_eff / s per element with autograd, detached s per row, step with grad)."""
        step = self._step()
        g = self.grad_scale(x)
        s_eff = step * g + (step - step * g).detach()
        s_row = s_eff.expand(x.shape[0]) if s_eff.dim() == 0 else s_eff
        v = self._direction(x)
        l1 = v.abs().sum(dim=1).clamp(min=MIN_SCALE)
        t = self.budgets()
        norm = _clamp_st(self.norm, MIN_SCALE)
        r = torch.minimum(norm, s_row * t * (1 - _MARGIN))
        u = (r / l1).view(-1, 1) * v / s_row.view(-1, 1)
        return u.reshape(x.shape), s_row, step

    def _forward_scale(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale()

    def int_repr(self, x: torch.Tensor) -> torch.Tensor:
        """Integers the NPU sees: ``clip(trunc(w_eff / s))`` within the budget."""
        self._check_input(x)
        if not self.initialized():
            self.init_from(x)
        with torch.no_grad():
            u, _, _ = self._scaled(x)
            return torch.trunc(u).clamp(self._qmin, self._qmax).to(torch.int64)

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        u, s_row, _ = self._scaled(x)
        q = torch.trunc(u.detach()).clamp(self._qmin, self._qmax)
        s_d = _bcast(self.scale(), x)
        hard = q * s_d
        if not (x.requires_grad or self.step.requires_grad or self.norm.requires_grad):
            return hard
        # STE through trunc and clip: d(s*clip(u))/d(.) with u carrying the norm/step/v paths.
        uc = u.clamp(self._qmin, self._qmax)
        sur = _bcast(s_row, x) * (uc + (q - uc).detach())
        return _graft(hard, sur)
