"""Conv/linear accumulation: an exact fast path, and the order-faithful kernel where it matters.

The result of every output is defined by the order-faithful accumulation of DESIGN §2
(`kernels._accumulate_point`). Computing it that way for every output is slow, and rarely
needed: an output whose running sums cannot leave the accumulator's range, in any order, has
no overflow event and equals its exact sum. So:

1. the exact sums come from `npusim.exact_conv` (a float im2col + GEMM, exact because the
   weights' L1 bound proves every partial sum, in any summation order, below 2^24 or 2^53);
2. if the layer's static bound fits both levels, that is the answer (no event is possible);
3. otherwise each output gets a data-dependent bound, ``[bias - N, bias + P]`` with P and N
   the sums of its positive and negative products (two more GEMMs), and only the outputs whose
   bound leaves a level's range are re-simulated order-faithfully, events counted honestly.

`fast=False` runs the order-faithful kernel on every output (the reference the fast path is
tested against).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npusim import kernels as K
from npusim.exact_conv import F64_EXACT, exact_conv2d, l1_bound



@dataclass
class LevelSpec:
    """Accumulation order and the two levels' widths and overflow modes."""

    order: int
    rows: int
    pe_bits: int
    pe_mode: int
    acc_bits: int
    acc_mode: int


@dataclass
class AccStats:
    """Per-batch accumulation facts of one layer."""

    pe_overflows: int = 0
    acc_overflows: int = 0
    nonzero_macs: int = 0
    acc_min: int = 0
    acc_max: int = 0
    sequential_outputs: int = 0


def _fits(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    return (lo >= -(1 << (bits - 1))) & (hi <= (1 << (bits - 1)) - 1)


def conv_accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                    groups: int, zp_x: int, out_hw: tuple[int, int], lv: LevelSpec,
                    static_bits: int, static_bits_nobias: int, fast: bool = True
                    ) -> tuple[np.ndarray, AccStats]:
    """Accumulators (N, O, Ho, Wo) int64 of a conv of `x` (N, C, H, W; padded with zp_x),
    and their stats. `static_bits` bounds every running sum (bias included) of any input;
    `static_bits_nobias` every chunk sum (no bias) — both from `npusim.bounds`."""
    n = x.shape[0]
    o = w.shape[0]
    st = AccStats()
    xs = x - zp_x if zp_x else x
    bound = l1_bound(xs, w)
    st.nonzero_macs = _nonzero_macs(xs, w, stride, padding, groups, out_hw)
    if not fast or bound >= F64_EXACT:
        acc = np.empty((n, o, *out_hw), np.int64)
        events = np.zeros((n, 2), np.int64)
        K.conv_kernel(_pad(x, padding, zp_x), w, bias, stride, groups, zp_x, lv.order, lv.rows,
                      lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, acc, events)
        st.pe_overflows, st.acc_overflows = int(events[:, 0].sum()), int(events[:, 1].sum())
        st.sequential_outputs = acc.size
    else:
        acc = exact_conv2d(xs, w, stride, padding, groups, bound) + bias.reshape(1, o, 1, 1)
        pe_risk = lv.order != K.OS and static_bits_nobias > lv.pe_bits
        acc_risk = static_bits > lv.acc_bits
        if pe_risk or acc_risk:
            _resimulate_at_risk(x, xs, w, bias, stride, padding, groups, zp_x, lv, pe_risk,
                                bound, acc, st)
    st.acc_min = int(acc.min()) if acc.size else 0
    st.acc_max = int(acc.max()) if acc.size else 0
    return acc, st


def _pad(x: np.ndarray, padding: int, value: int) -> np.ndarray:
    if not padding:
        return np.ascontiguousarray(x, dtype=np.int64)
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * padding, w + 2 * padding), value, np.int64)
    out[:, :, padding:padding + h, padding:padding + w] = x
    return out


def _nonzero_macs(xs: np.ndarray, w: np.ndarray, stride: int, padding: int, groups: int,
                  out_hw: tuple[int, int]) -> int:
    """Products with both operands non-zero: for each weight position (c, i, j), the count of
    non-zero inputs it meets over all outputs times its count of non-zero weights."""
    o, cg, kh, kw = w.shape
    ho, wo = out_hw
    og = o // groups
    ind = (xs != 0).sum(axis=0)  # (C, H, W): non-zero inputs over the batch
    if padding:
        ind = np.pad(ind, ((0, 0), (padding, padding), (padding, padding)))
    wnz = (w != 0).reshape(groups, og, cg, kh, kw).sum(axis=1)  # (groups, cg, kh, kw)
    total = 0
    for i in range(kh):
        for j in range(kw):
            cnt = ind[:, i:i + stride * (ho - 1) + 1:stride,
                      j:j + stride * (wo - 1) + 1:stride].sum(axis=(1, 2))  # (C,)
            total += int((cnt.reshape(groups, cg) * wnz[:, :, i, j]).sum())
    return total


def _resimulate_at_risk(x, xs, w, bias, stride, padding, groups, zp_x, lv, pe_risk, bound,
                        acc, st):
    """Find outputs whose positive/negative product sums could leave a level's range and
    run the order-faithful kernel on exactly those."""
    o = w.shape[0]
    xp, xn = np.maximum(xs, 0), np.maximum(-xs, 0)
    wp, wn = np.maximum(w, 0), np.maximum(-w, 0)

    def conv(a, b):
        return exact_conv2d(a, b, stride, padding, groups, bound)

    pos = conv(xp, wp)
    neg = conv(xp, wn)
    if xn.any():
        pos += conv(xn, wn)
        neg += conv(xn, wp)
    b = bias.reshape(1, o, 1, 1)
    risky = ~_fits(b - neg, b + pos, lv.acc_bits)
    if pe_risk:
        risky |= ~_fits(-neg, pos, lv.pe_bits)
    points = np.argwhere(risky).astype(np.int64)
    st.sequential_outputs = len(points)
    if not len(points):
        return
    vals = np.empty(len(points), np.int64)
    events = np.zeros((len(points), 2), np.int64)
    K.conv_points_kernel(_pad(x, padding, zp_x), w, bias, stride, groups, zp_x, lv.order,
                         lv.rows, lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, points,
                         vals, events)
    acc[tuple(points.T)] = vals
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
