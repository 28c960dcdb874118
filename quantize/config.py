"""`QuantConfig`: what to quantize, how, and how the integer program requantizes.

A frozen pydantic model with a JSON round trip; unknown keys and impossible values are refused
with a one-line message naming the field.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from npusim.errors import UserError
from npusim.ir.requant import RequantSpec

Method = Literal["ste", "pact", "lsq", "lglsq", "dsq"]
Bits = int


class QuantConfigError(UserError):
    """An invalid quantization configuration (one line naming the field)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerOverride(_Strict):
    """Per-layer bit widths for layers whose name matches `pattern` (fnmatch syntax)."""

    pattern: str
    weight_bits: int | None = Field(None, ge=2, le=16)
    act_bits: int | None = Field(None, ge=2, le=16)
    acc_bits: int | None = Field(None, ge=2, le=62)


class A2QConfig(_Strict):
    """Accumulator-aware weight quantization (quantize/a2q.py): every conv/linear layer is
    trained so that no running sum can leave a signed `acc_bits`-bit accumulator (the global
    `QuantConfig.acc_bits`, or a per-layer override's)."""

    mode: Literal["a2q", "a2q+"] = "a2q+"
    # [ours] share of the accumulator range reserved for the preloaded integer bias
    bias_frac: float = Field(0.25, ge=0.0, lt=1.0)
    init: Literal["l1_ball", "scale"] = "l1_ball"


class EmbeddingConfig(_Strict):
    """Pixel embedding first stage (quantize/embedding.py, docs/methods.md): a trainable table maps
    each uint8 pixel of each channel to `d` values at `bits` bits (default: `act_bits`).

    ``init="linear"`` with ``d=1`` and ``trainable=False`` is plain low-bit input quantization
    (the pixel p becomes p/255 on the activation quantizer's grid)."""

    d: int = Field(8, ge=1, le=64)
    bits: int | None = Field(None, ge=2, le=16)
    shared: bool = False
    init: Literal["thermometer", "random", "linear"] = "thermometer"
    trainable: bool = True
    signed: bool = False


class QuantConfig(_Strict):
    """A quantization-aware-training configuration.

    Bit-width policy: `act_bits` is the width of every conv/linear *input*; tensors that only
    feed residual adds use `residual_bits`; the first conv's weights and the classifier's
    weights and input use `first_layer_bits` / `last_layer_bits` (None: the global widths).
    """

    method: Method = "lsq"
    weight_bits: int = Field(4, ge=2, le=16)
    act_bits: int = Field(4, ge=2, le=16)
    first_layer_bits: int | None = Field(8, ge=2, le=16)
    last_layer_bits: int | None = Field(8, ge=2, le=16)
    residual_bits: int = Field(8, ge=2, le=16)
    per_channel_weights: bool = True
    narrow_weights: bool = True
    overrides: tuple[LayerOverride, ...] = ()
    options: dict[str, Any] = Field(default_factory=dict)
    requant: RequantSpec = RequantSpec()  # the program file records it (its manifest "requant")
    acc_bits: int = Field(32, ge=2, le=62)
    a2q: A2QConfig | None = None
    embedding: EmbeddingConfig | None = None
    # Share of the QAT epochs (the last ones) trained with frozen BN statistics in the folded
    # form. Off by default: measured on ResNet-20 / mnist5k at W2A2 (3 epochs), the frozen
    # last epoch cost LG-LSQ 30-35 points (e.g. SSG 90.5% -> 54.8%) and LSQ nothing; the
    # evaluation and the export always use the folded form with the running statistics.
    bn_freeze_frac: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _acc_holds_a_product(self) -> "QuantConfig":
        widest_w = max(self.weight_bits, self.first_layer_bits or 0, self.last_layer_bits or 0,
                       *(o.weight_bits or 0 for o in self.overrides))
        # the raw uint8 input, unless an embedding replaces it
        widest_a = max(self.act_bits, 8 if self.embedding is None else
                       (self.embedding.bits or self.act_bits), self.residual_bits,
                       *(o.act_bits or 0 for o in self.overrides))
        need = widest_w + widest_a  # signed weight x unsigned activation
        # A2Q bounds the actual weights, so the data-type product may exceed acc_bits
        if self.a2q is None and self.acc_bits < need:
            raise ValueError(f"acc_bits: {self.acc_bits} bits cannot hold one {widest_w}x"
                             f"{widest_a}-bit product (needs {need})")
        if self.requant.scale_mode == "fixed" and self.acc_bits + self.requant.multiplier_bits > 64:
            raise ValueError("acc_bits: acc_bits + requant.multiplier_bits exceeds 64")
        from quantize.quantizers import make_quantizer

        try:  # the method's options are validated by the quantizer that will use them
            make_quantizer(self.method, 4, True, **self.options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"options: {str(e).splitlines()[0]}") from None
        return self

    # -------------------------------------------------------------- helpers
    def layer_bits(self, name: str, kind: Literal["weight", "act", "acc"], default: int) -> int:
        """`default` unless an override pattern matches `name` (the last match wins)."""
        bits = default
        for o in self.overrides:
            if fnmatch.fnmatchcase(name, o.pattern):
                v = {"weight": o.weight_bits, "act": o.act_bits, "acc": o.acc_bits}[kind]
                if v is not None:
                    bits = v
        return bits

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> "QuantConfig":
        try:
            return cls.model_validate(json.loads(text))
        except json.JSONDecodeError as e:
            raise QuantConfigError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except RecursionError:
            raise QuantConfigError(f"{source}: JSON nested too deeply") from None
        except ValidationError as e:
            raise QuantConfigError(f"{source}: {first_error_line(e)}") from None

    @classmethod
    def make(cls, **kwargs: Any) -> "QuantConfig":
        """Build a config, turning validation errors into one-line `QuantConfigError`s."""
        try:
            return cls(**kwargs)
        except ValidationError as e:
            raise QuantConfigError(first_error_line(e)) from None

    def short_name(self) -> str:
        name = f"{self.method}-W{self.weight_bits}A{self.act_bits}"
        if self.a2q is not None:
            name += f"-{self.a2q.mode}-P{self.acc_bits}"
        if self.embedding is not None:
            e = self.embedding
            name += (f"-in{e.bits or self.act_bits}" if e.init == "linear" and e.d == 1
                     else f"-emb{e.d}")
        return name


def first_error_line(e: ValidationError) -> str:
    """The first pydantic error as one line: `field.path: message` (unknown keys named)."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    if msg.startswith(loc.split(".")[-1] + ":"):
        return msg
    return f"{loc}: {msg}"
