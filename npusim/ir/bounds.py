"""Worst-case accumulator widths of a program's layers (docs/architecture.md).

Two bounds per conv/linear layer: the data-type bound of A2Q (from K and the bit widths
alone) and the exact bound from the layer's own integer weights and bias over the full input
range, which no running sum can exceed in any accumulation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npusim.ir.arith import bits_needed, dtype_bound_bits
from npusim.ir.ops import OPS
from npusim.ir.program import IntegerProgram, Node


@dataclass(frozen=True)
class LayerBounds:
    """Accumulator facts of one conv/linear node."""

    k: int
    macs_per_image: int
    x_bits: int
    x_signed: bool
    w_bits: int
    product_bits: int
    bound_dtype_bits: int
    bound_l1_bits: int
    bound_l1_nobias_bits: int


def l1_bound_bits(w: np.ndarray, bias: np.ndarray, xlo: int, xhi: int) -> int:
    """Bits of the exact worst-case running sum of ``bias + sum(w * x)``, x in [xlo, xhi].

    Each product's interval ``[min(w*xlo, w*xhi), max(...)]`` contains 0 (xlo <= 0 <= xhi), so
    every partial sum, in any order, lies within the full sums of the lower and upper ends;
    this is A2Q's per-channel weight-L1 bound made exact. The sums are int64 where they provably
    fit, else Python ints (64-bit weights), so a bound never wraps.
    """
    wf = w.reshape(w.shape[0], -1)
    worst = _abs_max(wf) * max(abs(int(xlo)), abs(int(xhi))) * wf.shape[1] + _abs_max(bias)
    dtype = np.int64 if worst < 2**62 else object
    wf, b = wf.astype(dtype), bias.astype(dtype)
    xlo, xhi = int(xlo), int(xhi)
    lo_terms = np.minimum(wf * xlo, wf * xhi).sum(axis=1)
    hi_terms = np.maximum(wf * xlo, wf * xhi).sum(axis=1)
    return bits_needed(int(min((b + lo_terms).min(), 0)), int(max((b + hi_terms).max(), 0)))


def _abs_max(a: np.ndarray) -> int:
    """Largest magnitude as a Python int (np.abs wraps the most negative int64)."""
    return max(abs(int(a.min())), abs(int(a.max()))) if a.size else 0


def layer_bounds(program: IntegerProgram, node: Node) -> LayerBounds:
    """The bounds of a conv2d/linear node."""
    t = program.tensors
    w = program.arrays[f"{node.name}.weight"]
    bias = program.arrays[f"{node.name}.bias"]
    wt, xt = t[f"{node.name}.weight"], t[node.inputs[0]]
    xlo, xhi = xt.int_range()
    xlo, xhi = xlo - xt.zero_point, xhi - xt.zero_point
    wmax = _abs_max(w)
    prod = bits_needed(min(xlo * wmax, -xhi * wmax), max(xhi * wmax, -xlo * wmax))
    k = int(np.prod(w.shape[1:]))
    return LayerBounds(
        k=k, macs_per_image=OPS[node.op].macs(program, node), x_bits=xt.bits,
        x_signed=xt.signed, w_bits=wt.bits, product_bits=prod,
        bound_dtype_bits=dtype_bound_bits(k, xt.bits, xt.signed, wt.bits),
        bound_l1_bits=l1_bound_bits(w, bias, xlo, xhi),
        bound_l1_nobias_bits=l1_bound_bits(w, np.zeros_like(bias), xlo, xhi))
