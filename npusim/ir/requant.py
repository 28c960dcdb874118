"""The requantization spec and the multipliers of a program's nodes under it.

`RequantSpec` is the one description of how real multipliers become integer hardware
(docs/architecture.md): the training library's `QuantConfig.requant`, the program file's manifest
``requant`` and, key by key, the NPU file's optional ``[requant]`` section (`RequantOverrides`:
only the keys the NPU pins; the rest come from the program) all use it.

One function derives every node's multipliers from the real scales in the program's tensor
table (each op's real and float-mode multipliers are declared in `npusim.ir.ops`), so export
(which stores them) and the simulator (which may run other settings than the program was
exported with, and is also the training library's integer-exact evaluation) agree to the bit.
Importing this module imports neither numba nor torch (`npusim.hw.config` uses the spec).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

if TYPE_CHECKING:
    from npusim.ir.program import IntegerProgram, Node

ScaleMode = Literal["fixed", "pow2", "float"]
Rounding = Literal["half_away", "half_up", "half_even"]


class RequantSpec(BaseModel):
    """How accumulators are rescaled to the next layer's integers (docs/architecture.md 'Requantization').

    The defaults are what export uses: a 32-bit fixed-point multiplier with single rounding,
    ties up (TFLite's single-rounding build, Arm TOSA apply_scale_32, CMSIS-NN), not TFLite's
    default double rounding (`half_away`): SaturatingRoundingDoublingHighMul first rounds
    ``acc * M0 / 2^31`` to an integer, which is harmless for int8 networks with large
    accumulators but costs up to 1 LSB when accumulators are small integers, as in 2-3-bit
    networks (measured: ResNet-20 W2A2 on mnist5k loses accuracy in the integer program that
    the fake-quant model does not; see reports/qat_accuracy.md). 20 fraction bits in residual
    adds: TFLite's int8 ADD kernel (left_shift = 20, tensorflow/lite/kernels/add.cc).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale_mode: ScaleMode = Field(
        "fixed", description="fixed: integer M0 * 2^-n; pow2: 2^-n only; float: ONNX Runtime's "
        "float32 multiply")
    multiplier_bits: int = Field(
        32, ge=2, le=32, description="signed width of the fixed-point multiplier M0, bits "
        "(2..32)")
    max_shift: int = Field(62, ge=0, le=62, description="largest right shift n, bits (0..62)")
    rounding: Rounding = Field(
        "half_up", description="rounding of the shift: half_up (single rounding, ties up), "
        "half_even, or half_away (TFLite double rounding in fixed mode)")
    add_frac_bits: int = Field(
        20, ge=0, le=30, description="extra fraction bits kept through a residual add, bits "
        "(0..30)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RequantSpec:
        """Strictly validate a manifest / JSON dict, which records every key; a bad one is a
        one-line ValueError ``requant.<field>: ...``."""
        missing = [k for k in cls.model_fields if k not in d]
        if missing:
            raise ValueError(f"requant.{missing[0]}: missing key")
        try:
            return cls.model_validate(dict(d), strict=True)
        except ValidationError as e:
            raise ValueError(_error_line(e)) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the program manifest's ``requant``)."""
        return self.model_dump(mode="json")

    @property
    def code(self) -> int:
        """Kernel rounding code of a requantization (`arith.rounding_code`)."""
        from npusim.ir.arith import rounding_code  # arith imports numba

        return rounding_code(self.rounding, self.scale_mode)

    @property
    def shift_code(self) -> int:
        """Kernel rounding code of a plain rounding shift (`arith.shift_code`)."""
        from npusim.ir.arith import shift_code

        return shift_code(self.rounding)


class _Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def pinned(self) -> dict[str, Any]:
        """The keys this NPU sets, with their values."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def over(self, spec: RequantSpec) -> RequantSpec:
        """`spec` (the program's) with the pinned keys laid over it: what a run uses."""
        return spec.model_copy(update=self.pinned()) if self.pinned() else spec

    def changes(self, spec: RequantSpec) -> dict[str, tuple[Any, Any]]:
        """``{key: (program's value, NPU's value)}`` for every pinned key that differs."""
        return {k: (getattr(spec, k), v) for k, v in self.pinned().items()
                if getattr(spec, k) != v}


#: The NPU file's ``[requant]``: every `RequantSpec` key, optional (None: the program's).
RequantOverrides = create_model(
    "RequantOverrides", __base__=_Overrides, __module__=__name__,
    __doc__="Requantization keys an NPU pins; a key left out (None) is the program's own.",
    **{name: ((Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation) | None,
              Field(None, description=f"{f.description}; None: the program's"))
       for name, f in RequantSpec.model_fields.items()})


def changes_text(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """`RequantOverrides.changes` as text: ``rounding half_up -> half_even, ...`` ("" if none)."""
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items())


def _error_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in ("requant", *err["loc"]))
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    got = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
    return f"{loc}: {msg}{got}"


@dataclass(frozen=True)
class NodeRequant:
    """Per-channel (or per-input for `add`) multipliers of one node: m0, n and the float32
    multiplier of the `float` mode, plus the real multiplier they approximate."""

    real: np.ndarray
    m0: np.ndarray
    n: np.ndarray
    mf: np.ndarray


def node_requant(program: IntegerProgram, node: Node, settings: RequantSpec) -> NodeRequant:
    """Decompose a node's real multipliers (from the op table) under `settings` with the
    shared decomposition."""
    from npusim.ir.arith import decompose_multiplier
    from npusim.ir.ops import OPS

    op = OPS[node.op]
    if op.real_multipliers is None:
        raise ValueError(f"node {node.name!r}: op {node.op} does not requantize")
    real = op.real_multipliers(program, node)
    pairs = [decompose_multiplier(float(m), settings.scale_mode, settings.multiplier_bits,
                                  settings.max_shift) for m in real]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    n = np.array([p[1] for p in pairs], dtype=np.int64)
    return NodeRequant(real, m0, n, op.float_multipliers(program, node))
