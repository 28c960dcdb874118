"""Conv/linear accumulation: an exact fast path, and the order-faithful kernel where it matters.

The result of every output is defined by the order-faithful accumulation of DESIGN §2
(`kernels._accumulate_point`). Computing it that way for every output is slow, and rarely
needed: an output whose running sums cannot leave the accumulator's range, in any order, has
no overflow event and equals its exact sum. So:

1. the exact sums come from `npusim.exact_conv`: an int8 im2col + int32 GEMM (with the
   positive/negative product sums as extra GEMM columns when step 3 needs them) where the
   operand ranges and the weights' L1 bound prove it exact, else a float im2col + GEMM, exact
   because the same bound proves every partial sum, in any order, below 2^24 or 2^53;
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

from npusim import arith
from npusim import kernels as K
from npusim.exact_conv import (F64_EXACT, Int8Conv, exact_conv2d, int8_conv_gemm, l1_bound,
                               prepare_int8_conv)


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


@dataclass
class Requant:
    """Per-channel requantization of a layer's accumulators (see `arith.requantize`)."""

    m0: np.ndarray
    n: np.ndarray
    mf: np.ndarray
    scale_float: bool
    code: int
    mbits: int
    zp: int
    lo: int
    hi: int

    def __post_init__(self) -> None:
        self.m0 = np.ascontiguousarray(self.m0, np.int64)
        self.n = np.ascontiguousarray(self.n, np.int64)
        self.mf = np.ascontiguousarray(self.mf, np.float32)

    def apply(self, acc: np.ndarray) -> np.ndarray:
        """Requantize int64 accumulators (N, O, ...)."""
        return arith.requantize(acc, self.m0, self.n, self.mf, self.scale_float, self.code,
                                self.mbits, self.zp, self.lo, self.hi)


def risks(lv: LevelSpec, static_bits: int, static_bits_nobias: int) -> tuple[bool, bool]:
    """(pe level, acc level): whether the static bounds allow an overflow at that level."""
    return lv.order != K.OS and static_bits_nobias > lv.pe_bits, static_bits > lv.acc_bits


def prepare_conv(w: np.ndarray, stride: int, padding: int, groups: int, zp_x: int,
                 x_range: tuple[int, int], lv: LevelSpec, static_bits: int,
                 static_bits_nobias: int) -> Int8Conv | None:
    """The int8-engine preparation of a layer whose raw inputs lie in `x_range`, or None."""
    if groups != 1:
        return None
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    return prepare_int8_conv(w, stride, padding, zp_x, x_range[0] - zp_x, x_range[1] - zp_x,
                             signs=pe_risk or acc_risk)


def _fits(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    return (lo >= -(1 << (bits - 1))) & (hi <= (1 << (bits - 1)) - 1)


def conv_accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                    groups: int, zp_x: int, out_hw: tuple[int, int], lv: LevelSpec,
                    static_bits: int, static_bits_nobias: int, fast: bool = True,
                    prep: Int8Conv | None = None, requant: Requant | None = None,
                    gemm_cache: dict | None = None, key: str = ""
                    ) -> tuple[np.ndarray, AccStats]:
    """Accumulators (N, O, Ho, Wo) int64 of a conv of `x` (N, C, H, W; padded with zp_x),
    requantized when `requant` is given, and their stats. `static_bits` bounds every running
    sum (bias included) of any input; `static_bits_nobias` every chunk sum (no bias) — both
    from `npusim.bounds`. `prep` (from `prepare_conv`) enables the int8 engine; with a
    `gemm_cache` dict, its GEMM is stored under `key` and reused when a later call brings
    an identical input and a plan with the same input shift (see `simulator.run_many`)."""
    st = AccStats()
    st.nonzero_macs = _nonzero_macs(x, zp_x, w, stride, padding, groups, out_hw)
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    if fast and prep is not None and (prep.signs or not (pe_risk or acc_risk)):
        x = np.ascontiguousarray(x)
        g, made_by = _cached_gemm(gemm_cache, key, x, prep, out_hw)
        if g is not None:
            return _from_gemm(g, x, w, bias, stride, padding, groups, zp_x, out_hw, lv,
                              pe_risk, acc_risk, made_by, requant, st)
    n = x.shape[0]
    o = w.shape[0]
    xs = x - zp_x if zp_x else x
    bound = l1_bound(xs, w)
    if not fast or bound >= F64_EXACT:
        acc = np.empty((n, o, *out_hw), np.int64)
        events = np.zeros((n, 2), np.int64)
        K.conv_kernel(_pad(x, padding, zp_x), w, bias, stride, groups, zp_x, lv.order, lv.rows,
                      lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, acc, events)
        st.pe_overflows, st.acc_overflows = int(events[:, 0].sum()), int(events[:, 1].sum())
        st.sequential_outputs = acc.size
    else:
        acc = exact_conv2d(xs, w, stride, padding, groups, bound) + bias.reshape(1, o, 1, 1)
        if pe_risk or acc_risk:
            _resimulate_at_risk(x, xs, w, bias, stride, padding, groups, zp_x, lv, pe_risk,
                                bound, acc, st)
    st.acc_min = int(acc.min()) if acc.size else 0
    st.acc_max = int(acc.max()) if acc.size else 0
    return (acc if requant is None else requant.apply(acc)), st


def _cached_gemm(cache, key, x, prep, out_hw):
    """`int8_conv_gemm` and the plan that made it, reused from `cache` when the input and the
    weights' rows agree (a plan with sign rows serves one without: its first rows are the
    same GEMM)."""
    if cache is None:
        return int8_conv_gemm(x, prep, out_hw), prep
    hit = cache.get(key)
    if hit is not None:
        x0, prep0, g0 = hit
        same_plan = prep0.sub == prep.sub and (prep0.signs or not prep.signs) and \
            np.array_equal(prep0.wmat[:prep.wmat.shape[0]], prep.wmat)
        if same_plan and x0.shape == x.shape and (x0 is x or np.array_equal(x0, x)):
            return g0, prep0
    g = int8_conv_gemm(x, prep, out_hw)
    if g is not None and (hit is None or prep.signs or not hit[1].signs):
        cache[key] = (x, prep, g)
    return g, prep


def _from_gemm(g, x, w, bias, stride, padding, groups, zp_x, out_hw, lv, pe_risk, acc_risk,
               prep, requant, st):
    """Finish a layer from the int8 engine's GEMM: corrections, bounds, re-simulation of the
    outputs at risk, requantization (fused into the epilogue when nothing is at risk)."""
    n, o = x.shape[0], prep.o
    ho, wo = out_hw
    corr = prep.shift * prep.colsum
    corr[:o] += bias
    risk = pe_risk or acc_risk
    do_rq = requant is not None and not risk
    rq = requant if do_rq else _NO_RQ
    out = np.empty((n, o, ho, wo), np.int64)
    risky = np.zeros((n, o, ho, wo) if risk else (1, 1, 1, 1), np.bool_)
    mnmx = np.empty((o, n, 2), np.int64)
    chk = np.empty((g.g.shape[0], n), np.int64)
    acc_hi = (1 << (lv.acc_bits - 1)) - 1
    pe_hi = (1 << (lv.pe_bits - 1)) - 1
    K.gemm_epilogue_kernel(g.g, o, ho, wo, corr, bias, risk, pe_risk, -acc_hi - 1, acc_hi,
                           -pe_hi - 1, pe_hi, do_rq, rq.m0, rq.n, rq.mf, rq.scale_float,
                           rq.code, rq.mbits, rq.zp, rq.lo, rq.hi, out, risky, mnmx, chk)
    g.verify(chk)
    if risk:
        points = np.argwhere(risky).astype(np.int64)
        st.sequential_outputs = len(points)
        if len(points):
            _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv, points, out, st)
            mnmx = np.array([[[out.min(), out.max()]]])
    st.acc_min = int(mnmx[..., 0].min()) if out.size else 0
    st.acc_max = int(mnmx[..., 1].max()) if out.size else 0
    if requant is not None and not do_rq:
        out = requant.apply(out)
    return out, st


_NO_RQ = Requant(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), False,
                 0, 32, 0, 0, 0)


def _pad(x: np.ndarray, padding: int, value: int) -> np.ndarray:
    if not padding:
        return np.ascontiguousarray(x, dtype=np.int64)
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * padding, w + 2 * padding), value, np.int64)
    out[:, :, padding:padding + h, padding:padding + w] = x
    return out


def _nonzero_macs(x: np.ndarray, zp_x: int, w: np.ndarray, stride: int, padding: int,
                  groups: int, out_hw: tuple[int, int]) -> int:
    """Products with both operands non-zero: for each weight position (c, i, j), the count of
    non-zero inputs (``x != zp_x``) it meets over all outputs times its count of non-zero
    weights."""
    o, cg, kh, kw = w.shape
    ho, wo = out_hw
    og = o // groups
    ind = np.empty(x.shape[1:], np.int64)  # (C, H, W): non-zero inputs over the batch
    K.nonzero_count_kernel(np.ascontiguousarray(x), zp_x, ind)
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
    if len(points):
        _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv, points, acc, st)


def _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv, points, acc, st):
    """Order-faithful accumulation of the outputs `points` (M, 4) into `acc`, events counted."""
    vals = np.empty(len(points), np.int64)
    events = np.zeros((len(points), 2), np.int64)
    K.conv_points_kernel(_pad(x, padding, zp_x), w, bias, stride, groups, zp_x, lv.order,
                         lv.rows, lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, points,
                         vals, events)
    acc[tuple(points.T)] = vals
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
