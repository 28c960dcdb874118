"""The int32-lane intrinsics of `npusim.sim.lanes32` against plain rules: the chunk screen's
test (through `kernels._screen_chunk32`) in Python integers at the levels' edges (ties)
included, the risk epilogue's early out against `kernels.risk_flag`, the epilogue runs against
NumPy."""

from __future__ import annotations

import numba
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.sim import kernels as K
from npusim.sim import lanes32 as L32

_BIG = (1 << 30) - 1  # the kernel's stand-in for an unbounded pe level (os order)


@st.composite
def chunk(draw):
    """Held values within a b-bit level (b <= 30), chunk sums and positive sums (float32
    integers below 2^24, pos >= max(sum, 0)), a fifth of them placed exactly on an edge."""
    o = draw(st.integers(1, 70))  # whole 16-lane blocks and a remainder
    bits = draw(st.integers(2, 30))
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    pe_bits = draw(st.one_of(st.none(), st.integers(2, 30)))
    phi, plo = (_BIG, -_BIG) if pe_bits is None else ((1 << (pe_bits - 1)) - 1, -(1 << (pe_bits - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    top = min(1 << 23, 4 * (hi + 1))
    held = rng.integers(lo, hi + 1, o)
    pos = rng.integers(0, top, o)
    neg = -rng.integers(0, top, o)
    edge = rng.random(o) < 0.2
    kind = rng.integers(0, 4, o)
    pos = np.where(edge & (kind == 0), np.clip(hi - held + rng.integers(-1, 2, o), 0, top), pos)
    neg = np.where(edge & (kind == 1), np.clip(lo - held + rng.integers(-1, 2, o), -top, 0), neg)
    pos = np.where(edge & (kind == 2), np.clip(phi + rng.integers(-1, 2, o), 0, top), pos)
    neg = np.where(edge & (kind == 3), np.clip(plo + rng.integers(-1, 2, o), -top, 0), neg)
    return held, pos + neg, pos, (hi, lo, phi, plo)


@settings(max_examples=300, deadline=None)
@given(chunk(), st.integers(0, 3))
def test_screen_chunk32_equals_the_rule(case, at):
    """`kernels._screen_chunk32` (16-lane blocks, then the rest) against the chunk test in
    Python integers: which outputs pass, their held values, the count that failed."""
    held, sums, pos, (hi, lo, phi, plo) = case
    o = len(held)
    # the chunk's sums and positive sums at offsets in longer rows, as the kernel reads them
    row = np.zeros(o + 3 * at + 5, np.float32)
    row[at:at + o] = sums
    prow = np.zeros(o + 2 * at + 7, np.float32)
    prow[2 * at:2 * at + o] = pos
    got = held.astype(np.int32)
    ok = np.empty(o, np.bool_)
    nfail = K._screen_chunk32(row, prow, at, 2 * at, got, ok, o, np.int32(hi), np.int32(lo),
                              np.int32(phi), np.int32(plo))
    want_ok = [int(a) + int(p) <= hi and int(a) + int(s) - int(p) >= lo and int(p) <= phi
               and int(s) - int(p) >= plo for a, s, p in zip(held, sums, pos)]
    want = [int(a) + int(s) if g else int(a) for a, s, g in zip(held, sums, want_ok)]
    assert ok.tolist() == want_ok
    assert got.tolist() == want
    assert nfail == o - sum(want_ok)


@numba.njit
def _hit(vs, ps, tp, tn):
    g = np.concatenate((np.zeros(3, np.int32), vs, np.zeros(5, np.int32), ps))
    return L32.risk_hit(g, 3, len(vs) + 8, tp, tn, len(vs) // L32.LANES)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5), st.integers(0, 2 ** 32 - 1), st.integers(0, 3))
def test_risk_hit_equals_the_flags(blocks, seed, edge):
    """`lanes32.risk_hit` against `kernels.risk_flag` per output (the fused risk epilogue's
    early out): sums and positive sums below 2^24, thresholds from -1 to 2^31 - 1, and at most
    one output on an edge of one of the two tests (or past it by one)."""
    rng = np.random.default_rng(seed)
    n = blocks * L32.LANES
    vs = rng.integers(-(1 << 24) + 1, 1 << 24, n).astype(np.int32)
    ps = np.maximum(vs, 0) + rng.integers(0, 1 << 20, n).astype(np.int32)
    ps = np.minimum(ps, (1 << 24) - 1).astype(np.int32)
    tp = (ps.astype(np.int64) + rng.integers(1, 1 << 30, n)).clip(-1, 2 ** 31 - 1).astype(np.int32)
    tn = (ps.astype(np.int64) - vs + rng.integers(1, 1 << 30, n)).clip(-1, 2 ** 31 - 1).astype(np.int32)
    if n and edge:  # one output on (0) or past (1) an edge of pos <= tp (edge 1) or pos - s <= tn
        i = int(rng.integers(0, n))
        d = int(rng.integers(0, 2))
        if edge == 1:
            tp[i] = ps[i] - d
        elif edge == 2:
            tn[i] = ps[i] - vs[i] - d
    want = any(bool(K.risk_flag(p, v, a, b)) for p, v, a, b in zip(ps, vs, tp, tn))
    assert _hit(vs, ps, tp, tn) == want


def _run_variant(extremes, requant):
    run = L32.make_run(extremes, requant)

    @numba.njit
    def call(vs, v0, mn, mx, s32, kt, bf, zp, lo, hi, ds, d0):
        run(vs, v0, mn, mx, s32, kt, bf, zp, lo, hi, ds, d0, len(mn) // L32.LANES)

    return call


_RUNS = {(x, r): _run_variant(x, r) for x in (False, True) for r in (False, True)}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.booleans(), st.booleans(), st.sampled_from(["i32", "f32"]),
       st.sampled_from([np.int8, np.uint8, np.int16, np.int32, np.int64]),
       st.integers(0, 2 ** 32 - 1))
def test_make_run_equals_numpy(blocks, extremes, requant, src, out_dtype, seed):
    """`lanes32.make_run`'s four variants against NumPy: the sums, the extremes, and the
    requantization `arith.requant_fma_one` (a float64 fused multiply-add, its floor, the zero
    point and the clamp to the output type), at offsets into longer rows."""
    from npusim.ir.arith import requant_fma_one

    rng = np.random.default_rng(seed)
    n = blocks * L32.LANES
    v0, d0 = int(rng.integers(0, 9)), int(rng.integers(0, 9))
    v = rng.integers(-(1 << 24) + 1, 1 << 24, n)
    vs = np.zeros(n + v0 + 3, np.int32 if src == "i32" else np.float32)
    vs[v0:v0 + n] = v
    info = np.iinfo(out_dtype)
    lo, hi = float(max(info.min, -(1 << 31))), float(min(info.max, (1 << 31) - 1))
    zp = float(rng.integers(0, 3) * (hi - lo) // 4 + lo) if out_dtype != np.int64 else 0.0
    kt = rng.choice([2.0 ** -e for e in range(0, 30)], n) * rng.integers(1, 1 << 20, n)
    bf = np.floor(rng.normal(0, 1e4, n)) + 0.5
    mn = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    mx = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    s32 = rng.integers(-(1 << 26), 1 << 26, n).astype(np.int32)
    ds = np.zeros(n + d0 + 2, out_dtype)
    want_mn = np.minimum(mn, v) if extremes else mn.copy()
    want_mx = np.maximum(mx, v) if extremes else mx.copy()
    want_s = s32 + v
    want_ds = ds.copy()
    if requant:
        want_ds[d0:d0 + n] = [requant_fma_one(float(a), k, b, zp, lo, hi)
                              for a, k, b in zip(v, kt, bf)]
    _RUNS[extremes, requant](vs, v0, mn, mx, s32, kt, bf, zp, lo, hi, ds, d0)
    assert mn.tolist() == want_mn.tolist() and mx.tolist() == want_mx.tolist()
    assert s32.tolist() == want_s.tolist()
    assert ds.tolist() == want_ds.tolist()


@numba.njit
def _need(g, v0, p0, bf, na, np_, d0, acc_lim, pe_lim, mnu, mxu):
    L32.need_bits(g, v0, p0, bf, na, np_, d0, acc_lim, pe_lim, mnu, mxu, len(mnu) // L32.LANES)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.sampled_from(["i32", "f32"]), st.integers(2, 40),
       st.one_of(st.none(), st.integers(2, 30)), st.integers(0, 2 ** 32 - 1))
def test_need_bits_equals_the_bound_bits(blocks, src, acc_bits, pe_bits, seed):
    """`lanes32.need_bits` against `arith.bits_needed` in Python integers: the bits of
    ``[bias - neg, bias + pos]`` (0 included) and of ``[-neg, pos]`` for sums below 2^24 and
    biases up to 2^52, a quarter of the bounds placed on a power of two or one either side
    (where a width changes), a quarter within [-1, 0] (1 bit), and the unflagged outputs'
    extremes at the limits given."""
    from npusim.ir import arith

    rng = np.random.default_rng(seed)
    n = blocks * L32.LANES
    lim = (1 << 24) - 1

    def near_pow2(k):  # 2^e - 1 + d, d in -1..1: the last value of a width and its neighbours
        return (1 << rng.integers(0, 24, k)) - 1 + rng.integers(-1, 2, k)

    pos = rng.integers(0, lim + 1, n)
    neg = rng.integers(0, lim + 1, n)
    edge = rng.integers(0, 4, n)
    pos = np.where(edge == 1, near_pow2(n), np.where(edge == 3, 0, pos)).clip(0, lim)
    neg = np.where(edge == 2, near_pow2(n) + 1, np.where(edge == 3, rng.integers(0, 2, n),
                                                         neg)).clip(0, lim)
    bias = rng.choice([0, 1, -1, 5000, -(1 << 23), (1 << 31), (1 << 52) - 1, -(1 << 52) + 1], n)
    bias = np.where(edge == 3, rng.integers(-1, 1, n), bias)  # bounds of 0 and -1: 1 bit
    bias = np.where((edge != 3) & (rng.random(n) < 0.3), (1 << rng.integers(0, 40, n)) - pos - 1 +
                    rng.integers(-1, 2, n), bias)
    v0, p0, d0 = int(rng.integers(0, 5)), n + 7, int(rng.integers(0, 5))
    g = np.zeros(2 * n + 9, np.int32 if src == "i32" else np.float32)
    g[v0:v0 + n] = pos - neg
    g[p0:p0 + n] = pos
    na = np.zeros(n + d0 + 3, np.uint8)
    np_ = np.zeros(n + d0 + 3, np.uint8)
    mnu = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    mxu = rng.integers(-(1 << 20), 1 << 20, n).astype(np.int32)
    want_mn, want_mx = mnu.tolist(), mxu.tolist()
    pe_lim = 127 if pe_bits is None else pe_bits
    _need(g, v0, p0, bias.astype(np.float64), na, np_, d0, acc_bits, pe_lim, mnu, mxu)
    for i in range(n):
        b, p, ng = int(bias[i]), int(pos[i]), int(neg[i])
        a = arith.bits_needed(min(b - ng, 0), max(b + p, 0))
        e = arith.bits_needed(-ng, p)
        assert (na[d0 + i], np_[d0 + i]) == (a, e), (b, p, ng)
        if a <= acc_bits and e <= pe_lim:
            want_mn[i] = min(want_mn[i], p - ng)
            want_mx[i] = max(want_mx[i], p - ng)
    assert not na[:d0].any() and not na[d0 + n:].any() and not np_[d0 + n:].any()
    assert mnu.tolist() == want_mn and mxu.tolist() == want_mx
