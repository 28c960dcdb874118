"""Conv/linear accumulation: an exact fast path, and the order-faithful kernel where it matters.

The result of every output is defined by the order-faithful accumulation of DESIGN §2
(`kernels._accumulate_point`). Computing it that way for every output is slow, and rarely
needed: an output whose running sums cannot leave the accumulator's range, in any order, has
no overflow event and equals its exact sum. So:

1. the exact sums come from the int8 engine (`npusim.int8_engine`: oneDNN's int8 conv, with
   the positive/negative product sums as extra output columns when step 3 needs them) where
   the operand ranges and the weights' L1 bound prove it exact, else from `npusim.exact_conv`
   (a float im2col + GEMM, exact because the same bound proves every partial sum, in any
   order, below 2^24 or 2^53);
2. if the layer's static bound fits both levels, that is the answer (no event is possible);
3. otherwise each output gets a data-dependent bound, ``[bias - N, bias + P]`` with P and N
   the sums of its positive and negative products (two more GEMMs), and only the outputs whose
   bound leaves a level's range are re-simulated order-faithfully, events counted honestly.

`fast=False` runs the order-faithful kernel on every output (the reference the fast path is
tested against). Activations are channels last (N, H, W, C) and stored narrow (see
`simulator`); the NCHW kernels (order-faithful, float engine) get converted copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npusim import arith
from npusim import kernels as K
from npusim.exact_conv import F64_EXACT, exact_conv2d, l1_bound
from npusim.int8_engine import Int8Conv, Int8Result, int8_conv, prepare_int8_conv


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

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the requantized values (they lie in [lo, hi])."""
        return arith.storage_dtype(self.lo, self.hi)

    def apply_channels_last(self, acc: np.ndarray) -> np.ndarray:
        """Requantize int64 accumulators (..., O), stored in `dtype`."""
        flat = np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
        chan = np.broadcast_to(np.arange(acc.shape[-1]), flat.shape).reshape(-1)
        return self.apply_points(flat.reshape(-1), chan).reshape(acc.shape)

    def apply_points(self, vals: np.ndarray, chan: np.ndarray) -> np.ndarray:
        """Requantize int64 accumulators `vals`, each with the parameters of channel `chan`."""
        out = np.empty(len(vals), self.dtype)
        K.requant_points_kernel(np.ascontiguousarray(vals, np.int64),
                                np.ascontiguousarray(chan, np.int64), self.m0, self.n, self.mf,
                                self.scale_float, self.code, self.mbits, self.zp, self.lo,
                                self.hi, out)
        return out


def risks(lv: LevelSpec, static_bits: int, static_bits_nobias: int) -> tuple[bool, bool]:
    """(pe level, acc level): whether the static bounds allow an overflow at that level."""
    return lv.order != K.OS and static_bits_nobias > lv.pe_bits, static_bits > lv.acc_bits


def prepare_conv(w: np.ndarray, stride: int, padding: int, groups: int, zp_x: int,
                 x_range: tuple[int, int], lv: LevelSpec, static_bits: int,
                 static_bits_nobias: int) -> Int8Conv | None:
    """The int8-engine preparation of a layer whose raw inputs lie in `x_range`, or None."""
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    return prepare_int8_conv(w, stride, padding, groups, zp_x, x_range[0], x_range[1],
                             signs=pe_risk or acc_risk)


def _fits(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    return (lo >= -(1 << (bits - 1))) & (hi <= (1 << (bits - 1)) - 1)


_EPILOGUE_PIXELS = 256  # pixels per epilogue task


def _blocks(n: int, units: int, cap: int) -> int:
    """Blocks per image for a kernel parallel over (image, block): enough tasks for every
    thread, and at most `cap` units per block."""
    import numba

    want = -(-2 * numba.get_num_threads() // max(n, 1))
    return max(1, min(units, max(want, -(-units // cap))))


def conv_accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                    groups: int, zp_x: int, out_hw: tuple[int, int], lv: LevelSpec,
                    static_bits: int, static_bits_nobias: int, fast: bool = True,
                    prep: Int8Conv | None = None, requant: Requant | None = None,
                    engine_cache: dict | None = None, key: str = ""
                    ) -> tuple[np.ndarray, AccStats]:
    """Accumulators (N, Ho, Wo, O) int64 of a conv of channels-last `x` (N, H, W, C; padded
    with zp_x; any integer dtype), requantized (in `requant.dtype`) when `requant` is given,
    and their stats. `static_bits` bounds every running sum (bias included) of any input;
    `static_bits_nobias` every chunk sum (no bias) — both from `npusim.bounds`. `prep` (from
    `prepare_conv`) enables the int8 engine; with an `engine_cache` dict, its sums are stored
    under `key` and reused when a later call brings an identical input and a plan with the
    same columns (see `simulator.run_many`)."""
    st = AccStats()
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    if fast and prep is not None and (prep.signs or not (pe_risk or acc_risk)):
        res, made_by = _cached_engine(engine_cache, key, x, prep, out_hw)
        return _from_engine(res, x, w, bias, stride, padding, groups, zp_x, out_hw, lv,
                            pe_risk, acc_risk, made_by, requant, st)
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.int64)  # NCHW int64
    st.nonzero_macs = _nonzero_macs(xc, zp_x, w, stride, padding, groups, out_hw)
    n = x.shape[0]
    o = w.shape[0]
    xs = xc - zp_x if zp_x else xc
    bound = l1_bound(xs, w)
    if not fast or bound >= F64_EXACT:
        acc = np.empty((n, o, *out_hw), np.int64)
        events = np.zeros((n, 2), np.int64)
        K.conv_kernel(_pad(xc, padding, zp_x), w, bias, stride, groups, zp_x, lv.order,
                      lv.rows, lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, acc, events)
        st.pe_overflows, st.acc_overflows = int(events[:, 0].sum()), int(events[:, 1].sum())
        st.sequential_outputs = acc.size
    else:
        acc = exact_conv2d(xs, w, stride, padding, groups, bound) + bias.reshape(1, o, 1, 1)
        if pe_risk or acc_risk:
            _resimulate_at_risk(xc, xs, w, bias, stride, padding, groups, zp_x, lv, pe_risk,
                                bound, acc, st)
    st.acc_min = int(acc.min()) if acc.size else 0
    st.acc_max = int(acc.max()) if acc.size else 0
    acc = acc.transpose(0, 2, 3, 1)
    if requant is None:
        return np.ascontiguousarray(acc), st
    return requant.apply_channels_last(acc), st


def _cached_engine(cache, key, x, prep, out_hw) -> tuple[Int8Result, Int8Conv]:
    """`int8_conv` and the plan that made it, reused from `cache` when the input and the
    weight columns agree (a plan with sign columns serves one without: its first columns are
    the same conv)."""
    if cache is None:
        return int8_conv(x, prep, out_hw), prep
    hit = cache.get(key)
    if hit is not None:
        x0, prep0, r0 = hit
        same_plan = prep0.zp_x == prep.zp_x and (prep0.signs or not prep.signs) and \
            np.array_equal(prep0.wq[:prep.q], prep.wq)
        if same_plan and x0.shape == x.shape and (x0 is x or np.array_equal(x0, x)):
            return r0, prep0
    res = int8_conv(x, prep, out_hw)
    if hit is None or prep.signs or not hit[1].signs:
        cache[key] = (x, prep, res)
    return res, prep


def _from_engine(res, x, w, bias, stride, padding, groups, zp_x, out_hw, lv, pe_risk,
                 acc_risk, prep, requant, st):
    """Finish a layer from the int8 engine's sums: bias, bounds, requantization fused into
    the epilogue, and the outputs at risk re-simulated order-faithfully (then requantized
    one by one)."""
    n, o = x.shape[0], prep.o
    ho, wo = out_hw
    pixels = ho * wo
    risk = pe_risk or acc_risk
    acc_hi = (1 << (lv.acc_bits - 1)) - 1
    pe_hi = (1 << (lv.pe_bits - 1)) - 1
    rq = requant if requant is not None else _NO_RQ
    out = np.empty((n * pixels, o), rq.dtype if requant is not None else np.int64)
    risky = np.zeros((n * pixels, o) if risk else (1, 1), np.bool_)
    nb = _blocks(n, pixels, _EPILOGUE_PIXELS)
    mnmx = np.empty((n, nb, o, 2), np.int64)
    sums = np.empty((n, nb, res.g.shape[1]), np.int64)
    K.gemm_epilogue_kernel(res.g, o, pixels, np.asarray(bias, np.int64), risk, pe_risk,
                           -acc_hi - 1, acc_hi, -pe_hi - 1, pe_hi, requant is not None, rq.m0,
                           rq.n, rq.mf, rq.scale_float, rq.code, rq.mbits, rq.zp, rq.lo, rq.hi,
                           out, risky, mnmx, sums)
    res.verify(sums.sum(axis=1))
    st.nonzero_macs = res.nonzero_macs
    lo_v, hi_v = mnmx[..., 0].min(initial=_I64_MAX), mnmx[..., 1].max(initial=_I64_MIN)
    if risk:
        flat = np.flatnonzero(risky.reshape(-1))
        st.sequential_outputs = len(flat)
        if len(flat):
            m, oc = np.divmod(flat, o)
            b, p = np.divmod(m, pixels)
            oy, ox = np.divmod(p, wo)
            points = np.stack([b, oc, oy, ox], axis=1).astype(np.int64)
            xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.int64)
            vals = _simulate_points(xc, w, bias, stride, padding, groups, zp_x, lv, points, st)
            lo_v, hi_v = min(lo_v, int(vals.min())), max(hi_v, int(vals.max()))
            if requant is not None:
                vals = requant.apply_points(vals, oc)
            out.reshape(-1)[flat] = vals
    st.acc_min = int(lo_v) if out.size else 0
    st.acc_max = int(hi_v) if out.size else 0
    return out.reshape(n, ho, wo, o), st


_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min
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
        acc[tuple(points.T)] = _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv,
                                                points, st)


def _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv, points, st) -> np.ndarray:
    """Order-faithful accumulators of the outputs `points` (M, 4) = (n, o, oy, ox) of NCHW
    `x`, events counted into `st`."""
    vals = np.empty(len(points), np.int64)
    events = np.zeros((len(points), 2), np.int64)
    K.conv_points_kernel(_pad(x, padding, zp_x), w, bias, stride, groups, zp_x, lv.order,
                         lv.rows, lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode, points,
                         vals, events)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    return vals
