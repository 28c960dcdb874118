"""The shared integer arithmetic against the independent oracle (tests/npusim/naive.py)."""

import math

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from npusim.ir import arith as A
from tests.npusim import naive

CODES = {"half_away": A.TFLITE_DOUBLE, "half_up": A.HALF_UP, "half_even": A.HALF_EVEN}
SHIFT_CODES = {"half_away": A.HALF_AWAY, "half_up": A.HALF_UP, "half_even": A.HALF_EVEN}

_requant_nb = numba.njit(lambda acc, m0, n, code, b: A.requant_fixed(acc, m0, n, code, b))
_shift_nb = numba.njit(lambda x, s, code: A.rounding_shift(x, s, code))
_float_nb = numba.njit(lambda acc, m, zp, lo, hi: A.requant_float(acc, m, zp, lo, hi))


@st.composite
def requant_case(draw):
    b = draw(st.sampled_from([8, 12, 16, 24, 32]))
    acc_bits = draw(st.integers(2, 64 - b - 2))
    acc = draw(st.integers(-(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1))
    m0 = draw(st.integers(0, (1 << (b - 1)) - 1))
    n = draw(st.integers(max(0, b - 1 - (62 - acc_bits - b)), 62))
    return acc, m0, n, b


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(requant_case(), st.sampled_from(sorted(CODES)))
def test_requant_fixed_matches_oracle_numpy_and_numba(case, rounding):
    acc, m0, n, b = case
    expect = naive.requant_fixed(acc, m0, n, rounding, b)
    code = CODES[rounding]
    assert int(A.requant_fixed(np.int64(acc), m0, n, code, b)) == expect
    assert int(A.requant_fixed(np.array([acc], np.int64), m0, n, code, b)[0]) == expect
    assert _requant_nb(acc, m0, n, code, b) == expect


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 40), 1 << 40), st.integers(-8, 40), st.sampled_from(sorted(SHIFT_CODES)))
def test_rounding_shift_matches_oracle(x, s, rounding):
    expect = naive.round_shift(x, s, rounding)
    assert int(A.rounding_shift(np.int64(x), s, SHIFT_CODES[rounding])) == expect
    assert _shift_nb(x, s, SHIFT_CODES[rounding]) == expect


@pytest.mark.parametrize("rounding", sorted(SHIFT_CODES))
def test_rounding_shift_exact_ties(rounding):
    # every x/4 with a .5 fractional part, both signs, plus the per-channel (array) shift path
    xs = np.array([2, 6, 10, -2, -6, -10, 3, -3], np.int64)
    got = A.rounding_shift(xs, np.full(len(xs), 2), SHIFT_CODES[rounding])
    assert got.tolist() == [naive.round_shift(int(x), 2, rounding) for x in xs]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(1 << 31), (1 << 31) - 1), st.floats(1e-6, 4.0), st.integers(-20, 20))
def test_requant_float_matches_oracle(acc, m, zp):
    mf = np.float32(m)
    expect = naive.requant_float(acc, mf, zp, -128, 127)
    assert int(A.requant_float(np.int64(acc), mf, zp, -128, 127)) == expect
    assert _float_nb(acc, mf, zp, -128, 127) == expect


def test_requant_float_ties_round_half_even():
    acc = np.array([5, 7, -5, -7, 1], np.int64)
    assert A.requant_float(acc, np.float32(0.5), 0, -128, 127).tolist() == [2, 4, -2, -4, 0]


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 50), 1 << 50), st.integers(2, 48))
def test_wrap_and_saturate_match_oracle(v, bits):
    assert int(A.wrap(np.int64(v), bits)) == naive.wrap(v, bits)
    assert int(A.saturate(np.int64(v), bits)) == naive.saturate(v, bits)
    assert bool(A.out_of_range(np.int64(v), bits)) == (not naive.fits(v, bits))


@settings(max_examples=300, deadline=None)
@given(st.floats(2.0 ** -60, 2.0 ** 20, allow_subnormal=False))
def test_decompose_multiplier_is_tflite_quantize_multiplier(m):
    q31, shift = naive.quantize_multiplier_tflite(m)
    assume(q31 != 0)
    m0, n = A.decompose_multiplier(m, "fixed", 32, 62)
    assert (m0, n) == (q31, 31 - shift)


@pytest.mark.parametrize("m, expect", [
    (0.5, (1 << 30, 31)), (1.0, (1 << 30, 30)), (0.75, (3 << 29, 31)),
    (1 - 2.0 ** -40, (1 << 30, 30)), (0.0, (0, 0)),
])
def test_decompose_multiplier_golden(m, expect):
    assert A.decompose_multiplier(m) == expect


def test_decompose_multiplier_respects_max_shift_and_bits():
    m = 0.3
    m0, n = A.decompose_multiplier(m, "fixed", 8, 62)
    assert 0 < m0 < 128 and abs(m0 * 2.0 ** -n - m) <= 2.0 ** -n / 2
    m0, n = A.decompose_multiplier(2.0 ** -40, "fixed", 32, 40)
    assert n == 40 and m0 == 1
    assert A.decompose_multiplier(2.0 ** -45, "fixed", 32, 40) == (0, 0)
    with pytest.raises(ValueError, match="too large"):
        A.decompose_multiplier(2.0 ** 40, "fixed", 16, 62)
    with pytest.raises(ValueError):
        A.decompose_multiplier(-1.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(2.0 ** -30, 8.0))
def test_pow2_decomposition_is_nearest_in_log_domain(m):
    m0, n = A.decompose_multiplier(m, "pow2")
    assert m0 == 1
    assert abs(-n - math.log2(m)) <= 0.5 + 1e-12


def test_bounds():
    assert A.bits_needed(-128, 127) == 8 and A.bits_needed(0, 128) == 9 and A.bits_needed(0, 0) == 1
    # A2Q: an 8-bit unsigned input and a 16-bit accumulator allow ||q||_1 <= 32767 / 256
    assert A.a2q_l1_limit(16, 8, False) == pytest.approx(32767 / 256)
    assert A.a2q_plus_l1_limit(16, 8) == pytest.approx((2 ** 16 - 2) / 255)
    # the data-type bound holds the true worst case of K products of 8-bit x 8-bit numbers
    k = 576
    worst = k * 255 * 128
    assert A.dtype_bound_bits(k, 8, False, 8) >= A.bits_needed(-worst, worst - 1)


# TFLite MultiplyByQuantizedMultiplier golden vectors, worked by hand (B = 32):
#   M = 0.5  -> (m0, n) = (2^30, 31): SRDHM(a, 2^30) = round_half_up(a/2), no RDBPOT step
#   M = 0.25 -> (2^30, 32): SRDHM rounds a/2 half up, then RDBPOT(., 1) rounds half away
@pytest.mark.parametrize("acc, m0, n, expect, single_half_up", [
    (3, 1 << 30, 31, 2, 2),     # 1.5: SRDHM ties up -> 2
    (-3, 1 << 30, 31, -1, -1),  # -1.5: SRDHM ties toward +inf -> -1
    (5, 1 << 30, 32, 2, 1),     # 1.25: SRDHM(5) = 2.5 -> 3, RDBPOT(3, 1) = 1.5 -> 2 (single: 1)
    (-5, 1 << 30, 32, -1, -1),  # -1.25: SRDHM(-5) = -2.5 -> -2, RDBPOT(-2, 1) = -1
    (-7, 1 << 30, 32, -2, -2),  # -1.75: SRDHM(-7) = -3.5 -> -3, RDBPOT(-3, 1) = -1.5 -> -2
    (1, 1378618563, 32, 1, 0),  # 0.321: SRDHM(1) = round(0.642) = 1, RDBPOT(1, 1) = 0.5 -> 1
    (3, 1 << 30, 29, 6, 6),     # M = 2: shift = +1, left shift then SRDHM: 3*2 = 6
])
def test_tflite_double_rounding_golden(acc, m0, n, expect, single_half_up):
    assert int(A.requant_fixed(np.int64(acc), m0, n, A.TFLITE_DOUBLE, 32)) == expect
    assert _requant_nb(acc, m0, n, A.TFLITE_DOUBLE, 32) == expect
    assert int(A.requant_fixed(np.int64(acc), m0, n, A.HALF_UP, 32)) == single_half_up


# ------------------------------------------------ the float64 requantization path (issue 20)

@numba.njit
def _span_f64(srcf, dst, rq):
    return A.requant_span_f64(srcf, dst, rq, 0, 1)


@st.composite
def f64_span_case(draw):
    mbits = draw(st.sampled_from([2, 8, 16, 24, 32]))
    o = draw(st.integers(1, 6))
    mmax = (1 << (mbits - 1)) - 1
    m0s = draw(st.lists(st.one_of(st.integers(0, mmax), st.sampled_from(
        sorted({1, mmax, max(mmax // 2, 1), 1 << max(mbits - 3, 0)}))), min_size=o, max_size=o))
    # pow2 multipliers shift left (n < 0); shifts near the multiplier's width
    ns = draw(st.lists(st.one_of(st.integers(-8, 62), st.integers(mbits - 3, mbits + 2)),
                       min_size=o, max_size=o))
    accs = []
    for j in range(o):
        km = m0s[j] << max(-ns[j], 0)
        edge = (1 << 52) // km if km else 0  # products at the float path's limit
        # a tie: acc * km an odd multiple of half the divisor 2^n
        tie = ns[j] - 1 - ((km & -km).bit_length() - 1) if km else -1
        accs.append(draw(st.one_of(
            st.integers(-(1 << 24), 1 << 24), st.integers(-64, 64),
            st.integers(-8, 7).map(lambda k, t=max(tie, 0): (2 * k + 1) << t),
            st.integers(-3, 3).map(lambda d, e=edge: e + d),
            st.integers(-3, 3).map(lambda d, e=edge: -e + d))))
    wide = draw(st.booleans())
    zp = draw(st.integers(-128, 127))
    lo, hi = (-(1 << 60), 1 << 60) if wide else (-128, 127)
    return mbits, m0s, ns, accs, zp, lo, hi


@settings(max_examples=400, deadline=None)
@given(f64_span_case())
def test_float64_requant_path_is_exact_or_declines(case):
    """`requant_span_f64` equals the exact rational rule (Fraction oracle) on every value,
    ties and products next to its 2^52 limit included, or declines (returns False) exactly
    when some product reaches the limit."""
    mbits, m0s, ns, accs, zp, lo, hi = case
    accs = [max(min(a, (1 << 53) - 1), -(1 << 53) + 1) for a in accs]  # integers of float64
    rq = A.requant_params(np.array(m0s), np.array(ns), np.zeros(len(m0s)), False, A.HALF_UP,
                          mbits, zp, lo, hi)
    assert rq.f64 == (max(ns) <= 52 and min(ns) >= -52)
    assume(rq.f64)
    dst = np.zeros(len(accs), np.int64)
    done = _span_f64(np.array(accs, np.float64), dst, rq)
    products = [abs(a * (m << max(-n, 0))) for a, m, n in zip(accs, m0s, ns)]
    assert done == (max(products) < 1 << 52)
    if done:
        expect = [min(max(naive.round_shift(a * m, n, "half_up") + zp, lo), hi)
                  for a, m, n in zip(accs, m0s, ns)]
        assert dst.tolist() == expect


@numba.njit
def _fma_one(v, bias, km, sc, zp, lo, hi):
    k, b, ok = A.requant_fma_terms(bias, km, sc)
    return A.requant_fma_one(np.float64(v), k, b, np.float64(zp), np.float64(lo),
                             np.float64(hi)), ok


@settings(max_examples=400, deadline=None)
@given(f64_span_case(), st.data())
def test_fused_multiply_add_requant_is_exact_within_its_limits(case, data):
    """`requant_fma_one` on ``acc = v + bias`` with `requant_fma_terms` (the flat epilogue's
    rule) equals the exact rational rule wherever ``|acc * km|`` and ``|bias * km|`` are below
    2^52, ties and both limits included; the terms say whether the bias is within its own."""
    mbits, m0s, ns, accs, zp, lo, hi = case
    rq = A.requant_params(np.array(m0s), np.array(ns), np.zeros(len(m0s)), False, A.HALF_UP,
                          mbits, zp, lo, hi)
    assume(rq.f64)
    for acc, m, n, km, sc in zip(accs, m0s, ns, rq.km, rq.sc):
        kmi = m << max(-n, 0)
        edge = (1 << 52) // kmi if kmi else 1 << 40
        bias = data.draw(st.one_of(st.integers(-(1 << 31), 1 << 31), st.integers(-64, 64),
                                   st.integers(-2, 2).map(lambda d, e=edge: e + d),
                                   st.integers(-2, 2).map(lambda d, e=edge: -e - d)))
        v = acc - bias
        assume(abs(v) < 1 << 53 and abs(bias) < 1 << 52)
        got, ok = _fma_one(v, bias, km, sc, zp, lo, hi)
        assert ok == (abs(bias * kmi) < 1 << 52)
        if ok and abs(acc * kmi) < 1 << 52:
            assert got == min(max(naive.round_shift(acc * m, n, "half_up") + zp, lo), hi)


def test_float64_requant_path_ties_and_limits():
    """Worked cases: ties at both signs, and the path declining past 2^52 (or for roundings
    it does not take)."""
    for acc, expect in [(3, 2), (-3, -1), (1, 1), (-1, 0)]:  # x/2: every odd x is a tie
        rq = A.requant_params(1, 1, 0.0, False, A.HALF_UP, 32, 0, -100, 100)
        dst = np.zeros(1, np.int64)
        assert _span_f64(np.array([acc], np.float64), dst, rq) and dst[0] == expect, acc
    rq = A.requant_params(np.full(2, 1 << 30), np.full(2, 40), np.zeros(2), False, A.HALF_UP, 32,
                          0, -(1 << 40), 1 << 40)
    dst = np.zeros(2, np.int64)
    assert _span_f64(np.array([(1 << 22) - 1, 5], np.float64), dst, rq)
    assert not _span_f64(np.array([1 << 22, 5], np.float64), dst, rq)
    assert not A.requant_params(1, 53, 0.0, False, A.HALF_UP, 32, 0, 0, 1).f64  # shift > 52
    assert not A.requant_params(1, 3, 1.0, True, A.HALF_UP, 32, 0, 0, 1).f64  # float scales
    for code in (A.HALF_EVEN, A.HALF_AWAY, A.TFLITE_DOUBLE):  # the int64 rule only
        assert not A.requant_params(1, 3, 0.0, False, code, 32, 0, 0, 1).f64


@pytest.mark.parametrize("da,db", [(np.uint8, np.int8), (np.int16, np.uint8)])
@pytest.mark.parametrize("m0,n,frac", [
    ((1, 3), (2, 3), 1),  # halves and quarters: ties at both levels for many values
    ((5, 1), (1, 4), 3),  # a left shift (n < frac) on one input
    ((2 ** 31 - 1, 7), (2, 44), 6),  # int16 - 3, times m0 * 2^4: just inside the limit
])
@pytest.mark.parametrize("f64", [True, False])
def test_residual_add_half_up_ties_and_limits(da, db, m0, n, frac, f64, monkeypatch):
    """Half-up residual adds that the float64 lanes can take (`_add_f64_factors`; the host
    decides, `_ADD_F64`, so both are forced here): every value of the first input's dtype,
    rounding ties at both levels, a term at the path's limit; equal to Python integers in
    float64 lanes and in the int64 kernel."""
    monkeypatch.setattr(A, "_ADD_F64", f64)
    ia, ib = np.iinfo(da), np.iinfo(db)
    a = np.arange(int(ia.min), int(ia.max) + 1).astype(da)[None]
    b = np.random.default_rng(0).integers(ib.min, int(ib.max) + 1, a.shape).astype(db)
    assert A._add_f64_factors(a.dtype, b.dtype, 3, -2, m0, n, frac) is not None
    got = A.residual_add(a, b, 3, -2, np.array(m0), np.array(n), np.zeros(2, np.float32), frac,
                         False, A.HALF_UP, A.HALF_UP, 32, 5, -(1 << 40), 1 << 40)
    want = naive.add(a, b, 3, -2, m0[0], n[0], m0[1], n[1], frac, "half_up", 32, 5,
                     -(1 << 40), 1 << 40)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([np.uint8, np.int16]), st.sampled_from([np.int8, np.int32]),
       st.integers(0, (1 << 31) - 1), st.integers(0, (1 << 31) - 1), st.integers(-4, 60),
       st.integers(-4, 60), st.integers(0, 24), st.integers(-128, 255), st.integers(-128, 255),
       st.sampled_from(["half_up", "half_away", "half_even"]), st.integers(0, 2 ** 32 - 1))
def test_residual_add_equals_python_integers(da, db, m0a, m0b, na, nb, frac, zpa, zpb, rounding,
                                             seed):
    """`residual_add` (the int64 kernel; half_up ones in float64 lanes where the host takes
    that path and it is exact) against Python integers (`naive.add`) over input
    dtypes, zero points, shifts either way and the three roundings, extreme values included,
    where its int64 products fit (the simulator refuses the rest)."""
    ia, ib = np.iinfo(da), np.iinfo(db)
    for info, zp, m0, n in ((ia, zpa, m0a, na), (ib, zpb, m0b, nb)):  # the widest int64 product
        v = max(abs(int(info.min) - zp), abs(int(info.max) - zp))
        left = max(31 - (n - frac), 0) if rounding == "half_away" else max(frac - n, 0)
        assume(v.bit_length() + (31 if rounding == "half_away" else m0.bit_length()) + left <= 61)
    rng = np.random.default_rng(seed)
    a = rng.integers(ia.min, int(ia.max) + 1, (2, 37), dtype=np.int64)
    b = rng.integers(ib.min, int(ib.max) + 1, (2, 37), dtype=np.int64)
    a[0, :2] = ia.min, ia.max
    b[0, :2] = ib.max, ib.min
    a, b = a.astype(da), b.astype(db)
    got = A.residual_add(a, b, zpa, zpb, np.array([m0a, m0b]), np.array([na, nb]),
                         np.zeros(2, np.float32), frac, False, A.rounding_code(rounding, "fixed"),
                         A.shift_code(rounding), 32, 3, -1000, 1000)
    want = naive.add(a, b, zpa, zpb, m0a, na, m0b, nb, frac, rounding, 32, 3, -1000, 1000)
    np.testing.assert_array_equal(got, want)
