"""Conv / linear layers whose forward and backward run at the layer's current ``<WL, FL>``.

`attach(model, config)` switches every ``nn.Conv2d`` / ``nn.Linear`` of a float model in place
to its MARViN subclass (same parameters, same ``state_dict`` keys) and returns one
`LayerFormat` per layer, which the precision controller updates; `detach(model)` switches them
back, leaving an ordinary float model for QAT and export. In a MARViN layer:

- the weight is the float32 master copy rounded to nearest at ``<WL, FL>`` (straight-through
  gradient to the master copy);
- with ``activations="layer"`` the input is rounded to nearest at ``<WL, FL_x>``, ``FL_x``
  fitted to the batch's largest magnitude (straight-through);
- with ``gradients="layer"`` the gradient of the output is rounded (``gradient_rounding``) at
  ``<WL, FL_g>``, ``FL_g`` fitted per backward call, before autograd forms the two backward
  products from it: grad wrt input (with the fixed-point weight) and grad wrt weight (with the
  fixed-point input). So all three GEMMs of a training step see ``WL``-bit operands.
- with ``"own"`` the activation / gradient word is the operand's own (``act_own`` /
  ``grad_own``, set by the controller), and a `SqnrMeter` sees every training batch's float
  operand before it is rounded (what the controller decides from).

The bias (if any) stays float32: it is added once per output, not multiplied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from quantize.marvin.config import MarvinConfig
from quantize.marvin.fixed_point import (
    SqnrMeter,
    fixed_grad,
    frac_bits_for,
    max_abs,
    quantize_fixed,
)

log = logging.getLogger(__name__)

__all__ = ["LayerFormat", "MarvinConv2d", "MarvinLinear", "attach", "detach", "marvin_layers"]


@dataclass
class LayerFormat:
    """A layer's current fixed-point format and what it applies to (mutated by the controller)."""

    name: str
    word_bits: int
    frac_bits: int
    activations: bool
    gradients: bool
    gradient_rounding: str
    generator: torch.Generator = field(repr=False, default_factory=torch.Generator)
    # "own" operands: their current word and the meter the controller decides from
    act_own: int | None = None
    grad_own: int | None = None
    act_meter: SqnrMeter | None = field(repr=False, default=None)
    grad_meter: SqnrMeter | None = field(repr=False, default=None)

    @property
    def act_bits(self) -> int:
        """Operand width of the layer's input in the training GEMMs (32: float32)."""
        if not self.activations:
            return 32
        return self.word_bits if self.act_own is None else self.act_own

    @property
    def grad_bits(self) -> int:
        """Operand width of the output gradient in the backward GEMMs (32: float32)."""
        if not self.gradients:
            return 32
        return self.word_bits if self.grad_own is None else self.grad_own


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()


def _quant_weight(w: torch.Tensor, fmt: LayerFormat) -> torch.Tensor:
    return _ste(w, quantize_fixed(w.detach(), fmt.word_bits, fmt.frac_bits))


def _quant_input(x: torch.Tensor, fmt: LayerFormat, training: bool) -> torch.Tensor:
    if not fmt.activations:
        return x
    if training and fmt.act_meter is not None and torch.is_grad_enabled():
        fmt.act_meter.add(x)
    wl = fmt.act_bits
    fl = frac_bits_for(max_abs(x), wl)
    return _ste(x, quantize_fixed(x.detach(), wl, fl))


def _quant_output_grad(y: torch.Tensor, fmt: LayerFormat) -> torch.Tensor:
    if not fmt.gradients or not y.requires_grad:
        return y
    return fixed_grad(y, fmt.grad_bits, fmt.gradient_rounding, fmt.generator,  # type: ignore
                      fmt.grad_meter)


class MarvinConv2d(nn.Conv2d):
    """``nn.Conv2d`` at the fixed-point format in ``self.marvin`` (see the module docstring)."""

    marvin: LayerFormat

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fmt = self.marvin
        y = self._conv_forward(_quant_input(x, fmt, self.training),
                               _quant_weight(self.weight, fmt), self.bias)
        return _quant_output_grad(y, fmt)


class MarvinLinear(nn.Linear):
    """``nn.Linear`` at the fixed-point format in ``self.marvin`` (see the module docstring)."""

    marvin: LayerFormat

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fmt = self.marvin
        y = F.linear(_quant_input(x, fmt, self.training), _quant_weight(self.weight, fmt),
                     self.bias)
        return _quant_output_grad(y, fmt)


_SWAP = {nn.Conv2d: MarvinConv2d, nn.Linear: MarvinLinear}
_BACK = {v: k for k, v in _SWAP.items()}


def marvin_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The MARViN conv / linear layers of `model`, by module name, in registration order."""
    return {n: m for n, m in model.named_modules() if type(m) in _BACK}


def attach(model: nn.Module, config: MarvinConfig) -> dict[str, LayerFormat]:
    """Switch every plain conv / linear of `model` to MARViN in place; their formats by name.

    Each layer starts at the menu's widest word with FL fitted to its weights; the controller
    makes the first real decision before the first batch (after it for "own" operands).
    """
    if marvin_layers(model):
        raise ValueError("attach: the model already has MARViN layers (detach first)")
    formats: dict[str, LayerFormat] = {}
    wl = config.word_bits_menu[-1]
    for i, (name, m) in enumerate(model.named_modules()):
        if type(m) not in _SWAP:
            continue
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
        fmt = LayerFormat(name, wl, frac_bits_for(max_abs(m.weight), wl),
                          config.activations != "float", config.gradients != "float",
                          config.gradient_rounding, gen)
        menu = config.word_bits_menu
        if config.activations == "own":
            fmt.act_own, fmt.act_meter = wl, SqnrMeter(menu, "nearest")
        if config.gradients == "own":
            meter_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + i + 500_000)
            fmt.grad_own = wl
            fmt.grad_meter = SqnrMeter(menu, config.gradient_rounding, meter_gen)  # type: ignore
        m.__class__ = _SWAP[type(m)]  # same object, parameters and state_dict keys
        m.marvin = fmt
        formats[name] = fmt
    if not formats:
        raise ValueError("attach: the model has no nn.Conv2d or nn.Linear layer")
    log.info("MARViN: %d layers attached", len(formats))
    return formats


def detach(model: nn.Module) -> nn.Module:
    """Switch MARViN layers back to plain ``nn.Conv2d`` / ``nn.Linear`` (float weights kept)."""
    for m in marvin_layers(model).values():
        m.__class__ = _BACK[type(m)]
        del m.marvin
    return model
