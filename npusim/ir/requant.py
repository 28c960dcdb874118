"""Requantization parameters of a program's nodes under given requant settings.

One function derives every node's multipliers from the real scales in the program's tensor
table, so export (which stores them), the training library's integer-exact evaluation and the
simulator (which may run other settings than the program was exported with) agree to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from npusim.ir.arith import decompose_multiplier, ort_multiplier, rounding_code, shift_code
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


def real_multipliers(program: IntegerProgram, node: Node) -> np.ndarray:
    """The real multipliers M of a requantizing node, in float64 (DESIGN §2).

    conv2d/linear: ``s_x * s_w[o] / s_y`` per output channel (batch norm is already in s_w);
    add: ``s_in / s_y`` for each input; pooling: ``s_in / (window * s_out)``.
    """
    t = program.tensors
    s_y = t[node.output].scales()
    if node.op in ("conv2d", "linear"):
        s_x = t[node.inputs[0]].scales()
        s_w = t[f"{node.name}.weight"].scales()
        o = program.arrays[f"{node.name}.weight"].shape[0]
        return np.broadcast_to((s_x * s_w) / s_y, (o,)).astype(np.float64)
    if node.op == "add":
        return np.array([t[node.inputs[0]].scales()[0] / s_y[0],
                         t[node.inputs[1]].scales()[0] / s_y[0]])
    if node.op in ("avgpool2d", "global_avgpool"):
        c, h, w = t[node.inputs[0]].shape
        window = node.attrs["kernel"] ** 2 if node.op == "avgpool2d" else h * w
        return np.array([t[node.inputs[0]].scales()[0] / (window * s_y[0])])
    raise ValueError(f"node {node.name!r}: op {node.op} does not requantize")


def float_multipliers(program: IntegerProgram, node: Node) -> np.ndarray:
    """The float32 multipliers of the `float` (ONNX Runtime) mode, built in ORT's order."""
    t = program.tensors
    s_y = t[node.output].scales()[0]
    if node.op in ("conv2d", "linear"):
        o = program.arrays[f"{node.name}.weight"].shape[0]
        mf = ort_multiplier(t[node.inputs[0]].scales()[0], t[f"{node.name}.weight"].scales(), s_y)
        return np.broadcast_to(mf, (o,)).astype(np.float32)
    if node.op == "add":
        return np.array([np.float32(t[i].scales()[0]) / np.float32(s_y) for i in node.inputs],
                        dtype=np.float32)
    if node.op == "global_avgpool":  # QLinearGlobalAveragePool: f32(s_x / f32(s_y * f32(H*W)))
        h, w = t[node.inputs[0]].shape[1:]
        s_x = np.float32(t[node.inputs[0]].scales()[0])
        return np.array([s_x / (np.float32(s_y) * np.float32(h * w))], dtype=np.float32)
    real = real_multipliers(program, node)
    return real.astype(np.float32)


def node_requant(program: IntegerProgram, node: Node, settings: RequantSettings) -> NodeRequant:
    """Decompose a node's real multipliers under `settings` with the shared decomposition."""
    real = real_multipliers(program, node)
    pairs = [decompose_multiplier(float(m), settings.scale_mode, settings.multiplier_bits,
                                  settings.max_shift) for m in real]
    m0 = np.array([p[0] for p in pairs], dtype=np.int64)
    n = np.array([p[1] for p in pairs], dtype=np.int64)
    return NodeRequant(real, m0, n, float_multipliers(program, node))
