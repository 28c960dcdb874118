"""`MarvinConfig`: every threshold of MARViN training (docs/methods.md, MARViN), validated.

A frozen pydantic model: unknown keys and impossible values are refused with one line naming
the field (`MarvinConfigError`). Every choice marked [ours] in docs/methods.md is a field here, so a
user holding the paper can set the paper's values. Defaults without a published value are the
project's and say so ("guess") in the comment beside them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from npusim.errors import UserError
from quantize.config import first_error_line

__all__ = ["MarvinConfig", "MarvinConfigError"]

# docs/methods.md (MARViN, formats [ours]): the word length comes from a menu.
DEFAULT_MENU = (4, 6, 8, 12, 16, 24, 32)


class MarvinConfigError(UserError):
    """An invalid MARViN configuration (one line naming the field)."""


class MarvinConfig(BaseModel):
    """Per-layer fixed-point training with word lengths switched every `lookback_batches`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # docs/methods.md menu; a one-entry menu is fixed-precision training (the 8/16-bit baselines).
    word_bits_menu: tuple[int, ...] = DEFAULT_MENU
    # docs/methods.md (MARViN, cadence): re-decide every L batches. 10 is a guess: about four decisions
    # per epoch on mnist5k (32 batches of 128), so the heatmap resolves within-epoch changes.
    lookback_batches: int = Field(10, ge=1)
    # KL(P_float || P_fixed) budget in nats. Guess, calibrated on synthetic weights (10^4-10^5
    # samples, bias-corrected KL, 256 bins): uniform -> 4 bits, Gaussian and Laplace -> 6,
    # Student-t(2) -> 12 (see tests/quantize/test_marvin_controller.py).
    kl_eps: float = Field(0.01, gt=0.0)
    # docs/methods.md (MARViN, information rule): 256-bin histograms.
    histogram_bins: int = Field(256, ge=4, le=1_000_000)
    # Subtract the KL a finite sample shows by chance (quantize/marvin/kl.py); [ours].
    kl_bias_correction: bool = True
    # Hysteresis [ours]: a layer moves *down* only after this many consecutive decisions
    # proposing a narrower word; moves up (KL or guard) apply at once. 2 is a guess: the
    # smallest value that stops a proposal alternating around eps from flapping.
    hysteresis_decisions: int = Field(2, ge=1)
    # Vanishing-gradient guard (docs/methods.md): raise WL one step when more than this fraction of
    # a layer's updates lr*grad round to zero at 2^-FL over the last window. 0.5 is a guess
    # (a majority of the layer's updates lost); 1.0 switches the guard off.
    guard_zero_fraction: float = Field(0.5, ge=0.0, le=1.0)
    # What the guard measures [ours]. "update": the optimizer's real step of each weight
    # (w_after - w_before: momentum and weight decay included) against the layer's fixed-point
    # grid at the stored weight -- an update "vanishes" when the rounded weight does not change.
    # Only fixed-point master weights can lose an update, so with float32 master weights this
    # measure is recorded but never raises a word. "lr_grad": the first design, lr * |grad|
    # below half a step (blind to momentum and weight decay; fired with float32 masters too).
    guard_measure: Literal["update", "lr_grad"] = "update"
    # The information measure behind the proposal [ours]. "sqnr": the smallest word whose
    # fixed-point copy (round to nearest, FL fitted to max|w|) keeps the signal-to-quantization-
    # noise ratio sum(w^2) / sum((w - Q(w))^2) at or above `sqnr_min_db` -- it sees the rounding
    # itself. "kl": the first design, KL between the float histogram and the fixed-point copy
    # spread over its rounding cells (which smooths the rounding away).
    info_measure: Literal["sqnr", "kl"] = "sqnr"
    # Guess, calibrated to give the KL rule's words on the synthetic weights of
    # tests/quantize/test_marvin_controller.py (uniform 4, Gaussian 6, Student-t(2) 12 bits).
    sqnr_min_db: float = Field(20.0, gt=0.0)
    # The word of the layer's input activations and of the gradient of its output (FL fitted
    # per batch to the tensor's largest magnitude: dynamic fixed point). "layer": the weight's
    # word; "own": the operand's own word, chosen like the weight's (same menu, hysteresis and
    # cadence) from the SQNR of the operand's fixed-point copy pooled over the lookback
    # window's batches (>= `sqnr_min_db`; gradients measured with `gradient_rounding`), [ours];
    # it starts at the weight's first word and is first decided after the first batch.
    # "float": float32.
    activations: Literal["layer", "own", "float"] = "layer"
    gradients: Literal["layer", "own", "float"] = "layer"
    # Rounding of gradients; stochastic keeps small gradients alive in expectation (Gupta et
    # al., ICML 2015). Weights and activations round to nearest.
    gradient_rounding: Literal["nearest", "stochastic"] = "stochastic"
    # Master weights: float32 (default, the optimizer updates a float copy and the forward
    # quantizes it) or fixed (after each step the weights are rounded onto the layer's grid,
    # with `update_rounding`, so an update below half a step is lost unless stochastic).
    master_weights: Literal["float32", "fixed"] = "float32"
    update_rounding: Literal["nearest", "stochastic"] = "stochastic"
    seed: int = 0

    @field_validator("word_bits_menu")
    @classmethod
    def _menu(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("must name at least one word length")
        for b in v:
            if not 2 <= b <= 32:
                raise ValueError(f"word length {b} outside 2..32 bits")
        if len(set(v)) != len(v):
            raise ValueError("word lengths must be distinct")
        return tuple(sorted(v))

    # ------------------------------------------------------------------- helpers
    @property
    def fixed(self) -> bool:
        """A one-entry menu: fixed-precision training, no decisions to make."""
        return len(self.word_bits_menu) == 1

    @property
    def own_operands(self) -> tuple[str, ...]:
        """The operands (``act``, ``grad``) whose word is decided on its own."""
        return tuple(k for k, v in (("act", self.activations), ("grad", self.gradients))
                     if v == "own")

    def label(self) -> str:
        """``marvin`` or ``fixed<WL>``."""
        return f"fixed{self.word_bits_menu[0]}" if self.fixed else "marvin"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "MarvinConfig":
        """Parse and validate JSON; errors are one `MarvinConfigError` line."""
        try:
            return cls.model_validate(json.loads(text))
        except json.JSONDecodeError as e:
            raise MarvinConfigError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") \
                from None
        except RecursionError:
            raise MarvinConfigError(f"{source}: JSON nested too deeply") from None
        except ValidationError as e:
            raise MarvinConfigError(f"{source}: {first_error_line(e)}") from None

    @classmethod
    def make(cls, **kwargs: Any) -> "MarvinConfig":
        """Build a config, turning validation errors into one-line `MarvinConfigError`s."""
        try:
            return cls(**kwargs)
        except ValidationError as e:
            raise MarvinConfigError(first_error_line(e)) from None
