"""Requantization parameters of a program's nodes under given requant settings.

One function derives every node's multipliers from the real scales in the program's tensor
table (each op's real and float-mode multipliers are declared in `npusim.ir.ops`), so export
(which stores them) and the simulator (which may run other settings than the program was
exported with, and is also the training library's integer-exact evaluation) agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npusim.ir.arith import decompose_multiplier, rounding_code, shift_code
from npusim.ir.ops import OPS
from npusim.ir.program import IntegerProgram, Node


@dataclass(frozen=True)
class RequantSettings:
    """How real multipliers become integer hardware (DESIGN §2, NPUConfig `requant`)."""

    scale_mode: str = "fixed"
    multiplier_bits: int = 32
    max_shift: int = 62
    rounding: str = "half_up"
    add_frac_bits: int = 20

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequantSettings":
        return cls(**{k: d[k] for k in ("scale_mode", "multiplier_bits", "max_shift", "rounding",
                                          "add_frac_bits")})

    def to_dict(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode, "multiplier_bits": self.multiplier_bits,
                "max_shift": self.max_shift, "rounding": self.rounding,
                "add_frac_bits": self.add_frac_bits}

    @property
    def code(self) -> int:
        return rounding_code(self.rounding, self.scale_mode)

    @property
    def shift_code(self) -> int:
        return shift_code(self.rounding)


@dataclass(frozen=True)
class NodeRequant:
    """Per-channel (or per-input for `add`) multipliers of one node: m0, n and the float32
    multiplier of the `float` mode, plus the real multiplier they approximate."""

    real: np.ndarray
    m0: np.ndarray
    n: np.ndarray
    mf: np.ndarray


def node_requant(program: IntegerProgram, node: Node, settings: RequantSettings) -> NodeRequant:
    """Decompose a node's real multipliers (from the op table) under `settings` with the
    shared decomposition."""
    op = OPS[node.op]
    if op.real_multipliers is None:
        raise ValueError(f"node {node.name!r}: op {node.op} does not requantize")
    real = op.real_multipliers(program, node)
    pairs = [decompose_multiplier(float(m), settings.scale_mode, settings.multiplier_bits,
                                  settings.max_shift) for m in real]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    n = np.array([p[1] for p in pairs], dtype=np.int64)
    return NodeRequant(real, m0, n, op.float_multipliers(program, node))
