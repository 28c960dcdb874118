"""Pin the reference oracle (tests/npusim/naive.py) down with hand-worked values and independent checks.

Every golden value below has its arithmetic written next to it. Where a property is checked
against a second implementation, that implementation is written differently (a literal int32
port of TFLite, Python's own Fraction rounding, an exact-rational float32 model, np.einsum).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.npusim import naive

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
Q31_HALF = 2**30          # 0.5 in Q31
Q31_QUARTER = 2**29       # 0.25 in Q31
Q31_3QUARTERS = 3 * 2**29  # 0.75 in Q31

FAST = settings(max_examples=100, deadline=None)
SLOW = settings(max_examples=25, deadline=None)


# =============================================================================================
# A literal int32 port of TFLite / gemmlowp (REFERENCES.md §1a), written independently
# =============================================================================================

def _c_div(num: int, den: int) -> int:
    """C integer division (truncates toward zero): int() of an exact Fraction truncates toward 0."""
    return int(Fraction(num, den))


def tfl_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 operands."""
    assert INT32_MIN <= a <= INT32_MAX and INT32_MIN <= b <= INT32_MAX
    overflow = a == b == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = _c_div(ab_64 + nudge, 1 << 31)
    assert INT32_MIN <= ab_x2_high32 <= INT32_MAX
    return INT32_MAX if overflow else ab_x2_high32


def tfl_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT with mask / threshold (Python >> and & act as on int32 here)."""
    assert 0 <= exponent <= 31 and INT32_MIN <= x <= INT32_MAX
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def tfl_mbqm(x: int, quantized_multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier (default double-rounding build)."""
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    shifted = x * (1 << left_shift)
    assert INT32_MIN <= shifted <= INT32_MAX, "C++ UB: caller must avoid this"
    return tfl_rdbpot(tfl_srdhm(shifted, quantized_multiplier), right_shift)


# =============================================================================================
# An exact-rational float32 model (round to nearest even, 24-bit significand), for ORT checks
# =============================================================================================

def f32_round(q: Fraction) -> Fraction:
    """Round an exact rational to the nearest float32 value (ties to even), including subnormals."""
    q = Fraction(q)
    if q == 0:
        return Fraction(0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp_exp = max(e - 23, -149)
    k = round(q / Fraction(2) ** ulp_exp)  # Fraction.__round__: half to even
    return k * Fraction(2) ** ulp_exp


# =============================================================================================
# wrap / saturate / fits
# =============================================================================================

@pytest.mark.parametrize("v,bits,expected", [
    (127, 8, 127),
    (128, 8, -128),     # 128 - 256
    (255, 8, -1),       # 255 - 256
    (256, 8, 0),
    (-129, 8, 127),     # -129 + 256
    (-128, 8, -128),
    (8, 4, -8),         # 8 - 16
    (-9, 4, 7),         # -9 + 16
    (1, 1, -1),         # 1-bit signed range is [-1, 0]
    (2**40 + 5, 32, 5),
])
def test_wrap_golden(v, bits, expected):
    assert naive.wrap(v, bits) == expected


@pytest.mark.parametrize("v,bits,expected", [
    (200, 8, 127), (-200, 8, -128), (127, 8, 127), (-128, 8, -128), (8, 4, 7), (-9, 4, -8), (5, 1, 0),
])
def test_saturate_golden(v, bits, expected):
    assert naive.saturate(v, bits) == expected


@pytest.mark.parametrize("v,bits,expected", [
    (127, 8, True), (128, 8, False), (-128, 8, True), (-129, 8, False), (0, 1, True), (-1, 1, True), (1, 1, False),
])
def test_fits_golden(v, bits, expected):
    assert naive.fits(v, bits) is expected


@FAST
@given(st.integers(-(2**62), 2**62))
def test_wrap_matches_numpy_casts(v):
    assert naive.wrap(v, 8) == int(np.array(v, dtype=np.int64).astype(np.int8))
    assert naive.wrap(v, 16) == int(np.array(v, dtype=np.int64).astype(np.int16))
    assert naive.wrap(v, 32) == int(np.array(v, dtype=np.int64).astype(np.int32))


@FAST
@given(st.integers(-(2**70), 2**70), st.integers(1, 64))
def test_wrap_saturate_ranges(v, bits):
    w = naive.wrap(v, bits)
    s = naive.saturate(v, bits)
    assert naive.fits(w, bits) and naive.fits(s, bits)
    assert (w - v) % (2**bits) == 0
    if naive.fits(v, bits):
        assert w == v == s


# =============================================================================================
# round_shift: the three tie conventions
# =============================================================================================

@pytest.mark.parametrize("x,shift,away,up,even", [
    # x / 2^shift      half_away (ties from 0)   half_up (ties to +inf)   half_even
    (5, 1, 3, 3, 2),      # 2.5  -> 3 | 3 | 2
    (-5, 1, -3, -2, -2),  # -2.5 -> -3 | -2 | -2
    (6, 2, 2, 2, 2),      # 1.5  -> 2 | 2 | 2
    (-6, 2, -2, -1, -2),  # -1.5 -> -2 | -1 | -2
    (7, 1, 4, 4, 4),      # 3.5  -> 4 | 4 | 4
    (-7, 1, -4, -3, -4),  # -3.5 -> -4 | -3 | -4
    (1, 1, 1, 1, 0),      # 0.5  -> 1 | 1 | 0
    (-1, 1, -1, 0, 0),    # -0.5 -> -1 | 0 | 0
    (3, 2, 1, 1, 1),      # 0.75 -> 1 (not a tie)
    (-3, 2, -1, -1, -1),  # -0.75 -> -1
    (1, 2, 0, 0, 0),      # 0.25 -> 0
    (-1, 2, 0, 0, 0),     # -0.25 -> 0
    (-5, 2, -1, -1, -1),  # -1.25 -> -1
    (10, 2, 3, 3, 2),     # 2.5  -> 3 | 3 | 2
    (11, 0, 11, 11, 11),  # shift 0: identity
    (5, -3, 40, 40, 40),  # shift -3: 5 * 8 exactly
    (-5, -1, -10, -10, -10),
])
def test_round_shift_golden(x, shift, away, up, even):
    assert naive.round_shift(x, shift, "half_away") == away
    assert naive.round_shift(x, shift, "half_up") == up
    assert naive.round_shift(x, shift, "half_even") == even


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(1, 45))
def test_round_shift_half_up_is_arithmetic_shift(x, s):
    # the hardware formula: (x + 2^(s-1)) >> s with an arithmetic shift (Python >> floors)
    assert naive.round_shift(x, s, "half_up") == (x + (1 << (s - 1))) >> s


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(0, 45))
def test_round_shift_half_even_is_python_round(x, s):
    assert naive.round_shift(x, s, "half_even") == round(Fraction(x, 2**s))  # Fraction rounds half to even


@FAST
@given(st.integers(INT32_MIN, INT32_MAX), st.integers(0, 31))
def test_round_shift_half_away_is_tflite_rdbpot(x, s):
    assert naive.round_shift(x, s, "half_away") == tfl_rdbpot(x, s)


def test_round_shift_rejects_unknown_rounding():
    with pytest.raises(ValueError):
        naive.round_shift(5, 1, "nearest")


# =============================================================================================
# requant_fixed: TFLite double rounding (half_away) golden vectors, B = 32
# =============================================================================================

@pytest.mark.parametrize("acc,m0,n,expected,comment", [
    # e = 31 - n = 0: only SRDHM rounds, and SRDHM rounds ties toward +inf.
    (3, Q31_HALF, 31, 2, "3*0.5=1.5: (3*2^30 + 2^30)/2^31 = 2"),
    (-3, Q31_HALF, 31, -1, "-1.5: (-3*2^30 + 1 - 2^30)/2^31 = -2 + 2^-31 -> trunc -1 (single half_away: -2)"),
    (5, Q31_HALF, 31, 3, "2.5: (5*2^30 + 2^30)/2^31 = 3"),
    (-5, Q31_HALF, 31, -2, "-2.5: (-6*2^30 + 1)/2^31 = -3 + 2^-31 -> -2"),
    # near ties
    (3, Q31_HALF + 1, 31, 2, "1.5 + 3/2^31: (3*2^30 + 3 + 2^30)/2^31 = 2 + tiny -> 2"),
    (-3, Q31_HALF + 1, 31, -2, "-1.5 - 3/2^31: (-3*2^30 - 3 + 1 - 2^30)/2^31 = -2 - 2^-30 -> -2"),
    (3, Q31_HALF - 1, 31, 1, "1.5 - 3/2^31: (3*2^30 - 3 + 2^30)/2^31 = 2 - tiny -> 1"),
    (-3, Q31_HALF - 1, 31, -1, "-1.5 + 3/2^31: (-4*2^30 + 4)/2^31 = -2 + 2^-29 -> -1"),
    # e = -1: SRDHM then RoundingDivideByPOT(., 1); double rounding differs from single
    (5, Q31_HALF, 32, 2, "5*0.25=1.25: SRDHM=(6*2^30)/2^31=3, RDBPOT(3,1)=1.5->2 (single: 1)"),
    (11, Q31_QUARTER, 32, 2, "11/8=1.375: SRDHM=(11*2^29+2^30)/2^31=3.25->3, RDBPOT(3,1)=2 (single: 1)"),
    (-11, Q31_QUARTER, 32, -2, "-1.375: SRDHM=(-13*2^29+1)/2^31=-3.25+->-3, RDBPOT(-3,1)=-1.5->-2 (single: -1)"),
    (-5, Q31_HALF, 32, -1, "-1.25: SRDHM=(-6*2^30+1)/2^31 -> -2, RDBPOT(-2,1) = -1 (single: -1)"),
    (-7, Q31_HALF, 32, -2, "-1.75: SRDHM=(-8*2^30+1)/2^31 -> -3, RDBPOT(-3,1)=-1.5 -> -2"),
    (-5, Q31_HALF, 33, -1, "-5/8: SRDHM -> -2, RDBPOT(-2,2) = -0.5 -> -1"),
    (5, Q31_HALF, 33, 1, "5/8: SRDHM -> 3, RDBPOT(3,2) = 0.75 -> 1"),
    # e = +1 (M = 0.75 * 2 = 1.5 >= 1): left shift by 1, then SRDHM only
    (3, Q31_3QUARTERS, 30, 5, "4.5: SRDHM(6, 3*2^29) = (18*2^29 + 2*2^29)/2^31 = 5"),
    (-3, Q31_3QUARTERS, 30, -4, "-4.5: SRDHM(-6, 3*2^29) = (-20*2^29 + 1)/2^31 -> -4"),
    (100, Q31_3QUARTERS, 30, 150, "150 exactly"),
    # e = 3 (M = 0.5 * 8 = 4): exact
    (-7, Q31_HALF, 28, -28, "-7*4 = -28 exactly"),
    # n <= 0 (e >= 31): exact
    (3, 5, 0, 15, "3*5*2^0"),
    (-3, 5, -2, -60, "-3*5*4"),
    (0, Q31_HALF, 40, 0, "zero"),
])
def test_requant_fixed_half_away_golden(acc, m0, n, expected, comment):
    assert naive.requant_fixed(acc, m0, n, "half_away", 32) == expected, comment
    shift = 31 - n
    if -31 <= shift <= 30 and INT32_MIN <= acc * 2 ** max(shift, 0) <= INT32_MAX:
        assert tfl_mbqm(acc, m0, shift) == expected, comment


@pytest.mark.parametrize("acc,m0,n,half_up,half_even,comment", [
    (3, Q31_HALF, 31, 2, 2, "1.5"),
    (-3, Q31_HALF, 31, -1, -2, "-1.5"),
    (5, Q31_HALF, 31, 3, 2, "2.5"),
    (-5, Q31_HALF, 31, -2, -2, "-2.5"),
    (5, Q31_HALF, 32, 1, 1, "1.25: one rounding, no tie (half_away double rounding gives 2)"),
    (11, Q31_QUARTER, 32, 1, 1, "1.375"),
    (-11, Q31_QUARTER, 32, -1, -1, "-1.375"),
    (3, Q31_3QUARTERS, 30, 5, 4, "4.5"),
    (-3, Q31_3QUARTERS, 30, -4, -4, "-4.5"),
    (7, 3, 1, 11, 10, "21/2 = 10.5"),
    (-7, 3, 1, -10, -10, "-10.5"),
    (3, 5, -2, 60, 60, "n<0: 3*5*4 exactly"),
])
def test_requant_fixed_single_rounding_golden(acc, m0, n, half_up, half_even, comment):
    assert naive.requant_fixed(acc, m0, n, "half_up", 32) == half_up, comment
    assert naive.requant_fixed(acc, m0, n, "half_even", 32) == half_even, comment


@pytest.mark.parametrize("acc,m0,n,B,expected,comment", [
    # B = 8: M0 = 64 is 0.5 in Q7; SRDHM_8(a, b) = (a*b + nudge)/2^7 with nudge 2^6 or 1-2^6
    (3, 64, 7, 8, 2, "1.5: (192 + 64)/128 = 2"),
    (-3, 64, 7, 8, -1, "-1.5: (-192 - 63)/128 = -1.99 -> trunc -1"),
    (5, 64, 8, 8, 2, "1.25: SRDHM=(320+64)/128=3, RDBPOT(3,1)=2"),
    (-11, 32, 8, 8, -2, "-1.375: SRDHM=(-352-63)/128=-3.24->-3, RDBPOT(-3,1)=-2"),
    # B = 2: M0 in {0, 1}; nudge = 1 (p >= 0) or 0 (p < 0); divide by 2
    (3, 1, 1, 2, 2, "1.5: (3+1)/2 = 2"),
    (-3, 1, 1, 2, -1, "-1.5: (-3+0)/2 = -1.5 -> trunc -1"),
])
def test_requant_fixed_half_away_other_widths(acc, m0, n, B, expected, comment):
    assert naive.requant_fixed(acc, m0, n, "half_away", B) == expected, comment


@st.composite
def tflite_mbqm_args(draw):
    shift = draw(st.integers(-31, 30))
    qm = draw(st.one_of(st.integers(0, INT32_MAX), st.sampled_from([0, 1, Q31_HALF, Q31_HALF - 1, Q31_HALF + 1,
                                                                     INT32_MAX])))
    left = max(shift, 0)
    lo, hi = INT32_MIN >> left, INT32_MAX >> left   # x << left must stay in int32 (C++ UB otherwise)
    x = draw(st.one_of(st.integers(lo, hi), st.integers(max(lo, -20), min(hi, 20))))
    return x, qm, shift


@settings(max_examples=200, deadline=None)
@given(tflite_mbqm_args())
def test_requant_fixed_half_away_is_tflite_mbqm(args):
    x, qm, shift = args
    # TFLite: M = qm * 2^(shift - 31), i.e. n = 31 - shift
    assert naive.requant_fixed(x, qm, 31 - shift, "half_away", 32) == tfl_mbqm(x, qm, shift)


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(2, 32), st.data())
def test_requant_fixed_half_away_width_invariance(acc, B, data):
    # SRDHM_B(a, m0) is floor((a*m0 + 2^(B-2)) / 2^(B-1)), so widening the multiplier by k bits
    # (m0 << k, n + k) must not change the result.
    m0 = data.draw(st.integers(0, 2 ** (B - 1) - 1))
    n = data.draw(st.integers(-4, 70))
    k = 32 - B
    assert naive.requant_fixed(acc, m0, n, "half_away", B) == naive.requant_fixed(acc, m0 << k, n + k, "half_away", 32)


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(0, INT32_MAX), st.integers(-4, 70))
def test_requant_fixed_error_bounds(acc, m0, n):
    exact = Fraction(acc * m0, 2**n) if n >= 0 else Fraction(acc * m0 * 2 ** (-n))
    for r in ("half_up", "half_even"):
        assert abs(naive.requant_fixed(acc, m0, n, r) - exact) <= Fraction(1, 2)
    # double rounding: at most 1/2 + 1/2^(right+1) <= 3/4 off
    assert abs(naive.requant_fixed(acc, m0, n, "half_away") - exact) <= Fraction(3, 4)


@FAST
@given(st.integers(-(2**40), 2**40), st.integers(0, INT32_MAX), st.integers(-4, 70))
def test_requant_fixed_single_rounding_formulas(acc, m0, n):
    # TFLite single-rounding build / TOSA / FBGEMM: (x*m + 2^(n-1)) >> n
    expected_up = (acc * m0 + (1 << (n - 1))) >> n if n >= 1 else acc * m0 * 2 ** (-n)
    assert naive.requant_fixed(acc, m0, n, "half_up") == expected_up
    expected_even = round(Fraction(acc * m0, 2**n)) if n >= 0 else acc * m0 * 2 ** (-n)
    assert naive.requant_fixed(acc, m0, n, "half_even") == expected_even


def test_requant_fixed_rejects_bad_multiplier():
    with pytest.raises(ValueError):
        naive.requant_fixed(1, -1, 3, "half_up")
    with pytest.raises(ValueError):
        naive.requant_fixed(1, 2**31, 3, "half_away", 32)
    with pytest.raises(ValueError):
        naive.requant_fixed(1, 1, 3, "banker")


# =============================================================================================
# quantize_multiplier_tflite
# =============================================================================================

@pytest.mark.parametrize("m,expected,comment", [
    (0.5, (2**30, 0), "frexp(0.5) = (0.5, 0); 0.5*2^31 = 2^30"),
    (1.0, (2**30, 1), "frexp(1.0) = (0.5, 1)"),
    (0.75, (3 * 2**29, 0), "frexp(0.75) = (0.75, 0); 0.75*2^31 = 3*2^29"),
    (0.25, (2**30, -1), "frexp(0.25) = (0.5, -1)"),
    (3.0, (3 * 2**29, 2), "frexp(3) = (0.75, 2)"),
    (1 - 2**-40, (2**30, 1), "q*2^31 = 2^31 - 2^-9 rounds to 2^31 -> halve, shift 0 -> 1"),
    (0.5 + 2**-32, (2**30 + 1, 0), "q*2^31 = 2^30 + 0.5: a tie, std::round -> away -> 2^30 + 1"),
    (0.5 + 2**-33, (2**30, 0), "q*2^31 = 2^30 + 0.25 -> 2^30"),
    (2**-32, (2**30, -31), "frexp = (0.5, -31): shift -31 is kept"),
    (2**-33, (0, 0), "frexp = (0.5, -32): shift < -31 -> flushed"),
    (2**-40, (0, 0), "frexp = (0.5, -39): flushed"),
    (0.0, (0, 0), "zero"),
    (-0.5, (-(2**30), 0), "sign carried by q (std::round(-2^30) = -2^30)"),
])
def test_quantize_multiplier_tflite_golden(m, expected, comment):
    assert naive.quantize_multiplier_tflite(m) == expected, comment


@FAST
@given(st.floats(min_value=2**-30, max_value=2**20, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_tflite_reconstructs(m):
    q, shift = naive.quantize_multiplier_tflite(m)
    assert 2**30 <= q <= INT32_MAX
    # q * 2^(shift-31) is m with a relative error of at most 2^-31 (one rounding of a 31-bit mantissa)
    approx = Fraction(q) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(m)) <= Fraction(m) * Fraction(1, 2**31)


# =============================================================================================
# requant_float (ONNX Runtime MLAS) and ort_multiplier
# =============================================================================================

@pytest.mark.parametrize("acc,mult,zp,qmin,qmax,expected,comment", [
    (5, 0.5, 0, -128, 127, 2, "2.5 -> 2 (half to even)"),
    (7, 0.5, 0, -128, 127, 4, "3.5 -> 4"),
    (-5, 0.5, 0, -128, 127, -2, "-2.5 -> -2"),
    (-7, 0.5, 0, -128, 127, -4, "-3.5 -> -4"),
    (3, 0.5, 0, -128, 127, 2, "1.5 -> 2"),
    (1, 0.5, 0, -128, 127, 0, "0.5 -> 0"),
    (5, 0.5, 10, 0, 255, 12, "2.5 -> 2, + zp 10"),
    (1000, 0.5, 10, -128, 127, 127, "500 clamped to qmax - zp = 117, + 10 = 127"),
    (-1000, 0.5, 10, -128, 127, -128, "-500 clamped to qmin - zp = -138, + 10 = -128"),
    (-7, 0.5, 3, 3, 255, 3, "-3.5 clamped to qmin - zp = 0 (ReLU), + 3"),
    # float32 effects: f32(2^24 + 1) = 2^24 (tie between 2^24 and 2^24 + 2 -> even mantissa),
    # then * 2^-25 = 0.5 exactly -> 0 (half even). In exact arithmetic it is 0.50000003 -> 1.
    (2**24 + 1, 2.0**-25, 0, -128, 127, 0, "acc rounded to float32 first"),
    # f32(2^24 + 3) = 2^24 + 4 (tie -> even); * 2^-25 = 0.5 + 2^-23 -> 1
    (2**24 + 3, 2.0**-25, 0, -128, 127, 1, "acc rounded up to 2^24 + 4"),
])
def test_requant_float_golden(acc, mult, zp, qmin, qmax, expected, comment):
    assert naive.requant_float(acc, np.float32(mult), zp, qmin, qmax) == expected, comment


@st.composite
def float_requant_args(draw):
    acc = draw(st.integers(INT32_MIN, INT32_MAX) | st.integers(-100000, 100000))
    mult = np.float32(draw(st.floats(min_value=2**-24, max_value=4.0, width=32)))
    zp = draw(st.integers(-128, 127))
    return acc, mult, zp


@settings(max_examples=200, deadline=None)
@given(float_requant_args())
def test_requant_float_vs_float64_away_from_ties(args):
    acc, mult, zp = args
    qmin, qmax = -128, 127
    exact = Fraction(acc) * Fraction(float(mult))
    # f32(acc) and the float32 product each add a relative error of at most 2^-24
    margin = abs(exact) * Fraction(1, 2**21) + Fraction(1, 2**40)
    nearest_tie = Fraction(int(np.floor(float(exact)))) + Fraction(1, 2)
    assume(abs(exact - nearest_tie) > margin and abs(exact - nearest_tie + 1) > margin)
    f64 = float(acc) * float(mult)
    expected = int(np.rint(np.clip(f64, qmin - zp, qmax - zp))) + zp
    assert naive.requant_float(acc, mult, zp, qmin, qmax) == expected


@settings(max_examples=200, deadline=None)
@given(float_requant_args())
def test_requant_float_vs_exact_rational_float32_model(args):
    acc, mult, zp = args
    qmin, qmax = -128, 127
    f = f32_round(f32_round(Fraction(acc)) * Fraction(float(mult)))
    f = min(max(f, Fraction(qmin - zp)), Fraction(qmax - zp))
    assert naive.requant_float(acc, mult, zp, qmin, qmax) == round(f) + zp  # round(): half to even


def test_ort_multiplier_golden():
    m = naive.ort_multiplier(0.5, 0.25, 2.0)  # 0.5*0.25 = 0.125; / 2 = 0.0625, all exact
    assert isinstance(m, np.float32) and m == np.float32(0.0625)
    # A case where ORT's float32 order differs from computing in float64 and rounding once:
    s_x, s_w, s_y = 0.0655, 0.0791, 0.056
    fx, fw, fy = (Fraction(float(np.float32(s))) for s in (s_x, s_w, s_y))
    ort = f32_round(f32_round(fx * fw) / fy)         # two float32 roundings
    once = f32_round(fx * fw / fy)                   # one rounding of the exact quotient
    assert ort != once
    assert Fraction(float(naive.ort_multiplier(s_x, s_w, s_y))) == ort


@FAST
@given(st.floats(1e-4, 1.0), st.floats(1e-4, 1.0), st.floats(1e-3, 10.0))
def test_ort_multiplier_vs_exact_rational_model(s_x, s_w, s_y):
    fx, fw, fy = (Fraction(float(np.float32(s))) for s in (s_x, s_w, s_y))
    assert Fraction(float(naive.ort_multiplier(s_x, s_w, s_y))) == f32_round(f32_round(fx * fw) / fy)


# =============================================================================================
# accumulate
# =============================================================================================

@pytest.mark.parametrize("bias,products,dataflow,rows,pe_bits,pe_mode,acc_bits,acc_mode,expected,comment", [
    # 4-bit range is [-8, 7]
    (0, [7, 7, -7, -7], "os", 16, 32, "exact", 4, "saturate", (-7, 0, 1),
     "0+7=7; 7+7=14->7 (ev); 7-7=0; 0-7=-7"),
    (0, [7, 7, -7, -7], "ws", 4, 8, "saturate", 4, "saturate", (0, 0, 0),
     "one chunk: pe 7,14,7,0 (fit 8b); acc 0+0=0"),
    (0, [7, 7, -7, -7], "ws", 2, 8, "saturate", 4, "saturate", (-7, 0, 1),
     "chunks 14, -14; acc 0+14=14->7 (ev); 7-14=-7"),
    (0, [7, 7, -7, -7], "is", 2, 8, "saturate", 4, "saturate", (-7, 0, 1), "is == ws"),
    (0, [7, 7, -7, -7], "ws", 2, 4, "saturate", 8, "saturate", (-1, 2, 0),
     "chunk1 pe: 7, 14->7 (ev); acc 7; chunk2 pe: -7, -14->-8 (ev); acc 7-8=-1"),
    (0, [7, 7, -7], "os", 16, 32, "exact", 4, "saturate", (0, 0, 1),
     "7; 14->7 (ev); 0"),
    (0, [7, 7, -7], "ws", 2, 8, "exact", 4, "saturate", (0, 0, 1),
     "chunk [7,7]=14: acc 0+14->7 (ev); chunk [-7]: acc 7-7=0"),
    (0, [7, 7, -7], "os", 16, 32, "exact", 4, "wrap", (7, 0, 2),
     "7; 14->-2 (ev); -2-7=-9->7 (ev); = wrap(7, 4)"),
    (0, [7, 7, -7], "os", 16, 32, "exact", 4, "exact", (7, 0, 1),
     "7; 14 (ev, kept); 7"),
    (10, [1, -5], "os", 16, 32, "exact", 4, "exact", (6, 0, 2),
     "preload 10 (ev); 11 (ev); 6"),
    (10, [1, -5], "os", 16, 32, "exact", 4, "saturate", (2, 0, 2),
     "preload 10->7 (ev); 8->7 (ev); 2"),
    (10, [1, -5], "os", 16, 32, "exact", 4, "wrap", (6, 0, 2),
     "preload 10->-6 (ev); -5; -10->6 (ev)"),
    (10, [], "ws", 2, 32, "exact", 4, "saturate", (7, 0, 1), "preload only: 10->7 (ev)"),
    (3, [], "os", 16, 32, "exact", 4, "saturate", (3, 0, 0), "no products"),
    (0, [5, 5, 5, -8], "ws", 3, 4, "wrap", 8, "wrap", (-9, 1, 0),
     "chunk1 pe: 5; 10->-6 (ev); -1; acc -1; chunk2 pe: -8; acc -9 (exact sum 7: pe narrower than acc)"),
    (0, [9, 0, 0], "ws", 2, 4, "exact", 32, "exact", (9, 2, 0),
     "chunk1 pe: 0+9=9 (ev), 9+0=9 (ev); acc 9; chunk2 pe: 0; acc 9"),
    (0, [7, 7], "os", 16, 2, "saturate", 32, "exact", (14, 0, 0), "os never uses the pe level"),
    (-8, [-1, 1], "os", 16, 32, "exact", 4, "saturate", (-7, 0, 1), "-8; -9->-8 (ev); -7"),
])
def test_accumulate_golden(bias, products, dataflow, rows, pe_bits, pe_mode, acc_bits, acc_mode, expected,
                           comment):
    got = naive.accumulate(bias, products, dataflow, rows, pe_bits, pe_mode, acc_bits, acc_mode)
    assert got == expected, comment


acc_inputs = st.tuples(
    st.integers(-300, 300),                                  # bias
    st.lists(st.integers(-200, 200), min_size=0, max_size=40),  # products
    st.sampled_from(["os", "ws", "is"]),
    st.integers(1, 8),                                       # rows
)


@settings(max_examples=200, deadline=None)
@given(acc_inputs, st.integers(2, 12), st.integers(0, 6))
def test_accumulate_wrap_both_levels_is_exact_sum_wrapped_once(inp, acc_bits, extra):
    bias, products, dataflow, rows = inp
    pe_bits = acc_bits + extra  # pe_bits >= acc_bits: 2^acc_bits divides 2^pe_bits
    value, _, _ = naive.accumulate(bias, products, dataflow, rows, pe_bits, "wrap", acc_bits, "wrap")
    assert value == naive.wrap(bias + sum(products), acc_bits)


@settings(max_examples=200, deadline=None)
@given(acc_inputs, st.integers(2, 12), st.integers(2, 12))
def test_accumulate_exact_mode_counts_out_of_range_prefixes(inp, pe_bits, acc_bits):
    bias, products, dataflow, rows = inp
    value, pe_ev, acc_ev = naive.accumulate(bias, products, dataflow, rows, pe_bits, "exact", acc_bits, "exact")
    assert value == bias + sum(products)
    lo_a, hi_a = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    lo_p, hi_p = -(2 ** (pe_bits - 1)), 2 ** (pe_bits - 1) - 1
    if dataflow == "os":
        prefixes = [bias + sum(products[:j]) for j in range(len(products) + 1)]  # j = 0: the preload
        assert pe_ev == 0
        assert acc_ev == sum(not lo_a <= s <= hi_a for s in prefixes)
    else:
        chunks = [products[i:i + rows] for i in range(0, len(products), rows)]
        pe_prefixes = [sum(c[:j]) for c in chunks for j in range(1, len(c) + 1)]
        acc_prefixes = [bias + sum(sum(c) for c in chunks[:j]) for j in range(len(chunks) + 1)]
        assert pe_ev == sum(not lo_p <= s <= hi_p for s in pe_prefixes)
        assert acc_ev == sum(not lo_a <= s <= hi_a for s in acc_prefixes)


@settings(max_examples=200, deadline=None)
@given(acc_inputs, st.integers(2, 12), st.integers(2, 12), st.sampled_from(["wrap", "saturate"]),
       st.sampled_from(["wrap", "saturate", "exact"]))
def test_accumulate_bounded_modes_stay_in_range(inp, pe_bits, acc_bits, acc_mode, pe_mode):
    bias, products, dataflow, rows = inp
    value, _, _ = naive.accumulate(bias, products, dataflow, rows, pe_bits, pe_mode, acc_bits, acc_mode)
    assert naive.fits(value, acc_bits)


@FAST
@given(acc_inputs, st.sampled_from(["exact", "wrap", "saturate"]), st.sampled_from(["exact", "wrap", "saturate"]))
def test_accumulate_wide_levels_never_overflow(inp, pe_mode, acc_mode):
    bias, products, dataflow, rows = inp
    assert naive.accumulate(bias, products, dataflow, rows, 32, pe_mode, 32, acc_mode) == (bias + sum(products), 0, 0)


# =============================================================================================
# conv2d_acc / linear_acc
# =============================================================================================

HAND_X = np.array([[[[1, 2], [3, 4]]]], dtype=np.int64)        # (1, 1, 2, 2)
HAND_W = np.array([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]])       # (1, 1, 3, 3)


def test_conv2d_hand_3x3_padding():
    # zp_x = 1 -> x - zp = [[0, 1], [2, 3]]; padding 1 (padded pixels hold zp, contribute 0);
    # out(oh, ow) = sum_ij w[i][j] * xc[oh - 1 + i][ow - 1 + j]:
    #   (0,0): w11*0 + w12*1 + w21*2 + w22*3 = 0 + 6 + 16 + 27 = 49
    #   (0,1): w10*0 + w11*1 + w20*2 + w21*3 = 0 + 5 + 14 + 24 = 43
    #   (1,0): w01*0 + w02*1 + w11*2 + w12*3 = 0 + 3 + 10 + 18 = 31
    #   (1,1): w00*0 + w01*1 + w10*2 + w11*3 = 0 + 2 + 8 + 15 = 25
    # plus bias 100.
    out, pe_ev, acc_ev = naive.conv2d_acc(HAND_X, HAND_W, np.array([100]), stride=1, padding=1, groups=1, zp_x=1)
    assert out.dtype == np.int64
    assert out.tolist() == [[[[149, 143], [131, 125]]]]
    assert (pe_ev, acc_ev) == (0, 0)
    # stride 2: Ho = (2 + 2 - 3)//2 + 1 = 1 -> only (0,0)
    out, _, _ = naive.conv2d_acc(HAND_X, HAND_W, np.array([100]), stride=2, padding=1, groups=1, zp_x=1)
    assert out.tolist() == [[[[149]]]]


def test_conv2d_padded_positions_are_additions():
    # acc_bits = 4 in exact mode: every held value (100..149) is out of [-8, 7], so every addition is
    # an event, padded positions (product 0) included.
    # os: per output 1 preload + 9 additions = 10 events; 4 outputs -> 40.
    out, pe_ev, acc_ev = naive.conv2d_acc(HAND_X, HAND_W, np.array([100]), 1, 1, 1, 1,
                                          dataflow="os", acc_bits=4, acc_mode="exact")
    assert out.tolist() == [[[[149, 143], [131, 125]]]]
    assert (pe_ev, acc_ev) == (0, 40)
    # ws rows=4: K = 9 -> chunks of 4, 4, 1 even where only 4 pixels are real:
    # per output 1 preload + 3 chunk additions = 4 events -> 16; pe sums stay small (<= 45) in 32 bits.
    out, pe_ev, acc_ev = naive.conv2d_acc(HAND_X, HAND_W, np.array([100]), 1, 1, 1, 1,
                                          dataflow="ws", rows=4, acc_bits=4, acc_mode="exact")
    assert out.tolist() == [[[[149, 143], [131, 125]]]]
    assert (pe_ev, acc_ev) == (0, 16)


def test_conv2d_uint8_input_does_not_wrap():
    # x = 0 stored as uint8 with zp 128: (0 - 128) * 3 = -384 (no uint8 arithmetic)
    x = np.zeros((1, 1, 1, 1), dtype=np.uint8)
    w = np.full((1, 1, 1, 1), 3, dtype=np.int8)
    out, _, _ = naive.conv2d_acc(x, w, np.array([0], dtype=np.int32), 1, 0, 1, 128)
    assert out.tolist() == [[[[-384]]]]


def reference_conv_f64(x, w, bias, stride, padding, groups, zp_x):
    """Direct float64 convolution: explicit zero padding of (x - zp_x), then np.einsum per window."""
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    xc = np.pad(x.astype(np.float64) - zp_x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - KH) // stride + 1
    Wo = (W + 2 * padding - KW) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    og = O // groups
    for o in range(O):
        g = o // og
        for oh in range(Ho):
            for ow in range(Wo):
                win = xc[:, g * Cg:(g + 1) * Cg, oh * stride:oh * stride + KH, ow * stride:ow * stride + KW]
                out[:, o, oh, ow] = np.einsum("ncij,cij->n", win, w[o].astype(np.float64)) + bias[o]
    return out


@st.composite
def conv_case(draw):
    depthwise = draw(st.booleans())
    N = draw(st.integers(1, 2))
    C = draw(st.sampled_from([1, 2, 3]))
    if depthwise:
        groups = C
        O = C * draw(st.integers(1, 2))
    else:
        groups = 1
        O = draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 1))
    stride = draw(st.integers(1, 2))
    H = draw(st.integers(max(1, k - 2 * padding), 5))
    W = draw(st.integers(max(1, k - 2 * padding), 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(N, C, H, W))
    w = rng.integers(-127, 128, size=(O, C // groups, k, k))
    bias = rng.integers(-5000, 5000, size=O)
    zp_x = int(rng.integers(0, 256))
    return x, w, bias, stride, padding, groups, zp_x


@SLOW
@given(conv_case(), st.sampled_from(["os", "ws", "is"]), st.integers(1, 5))
def test_conv2d_exact_matches_float64_einsum(case, dataflow, rows):
    x, w, bias, stride, padding, groups, zp_x = case
    expected = reference_conv_f64(x, w, bias, stride, padding, groups, zp_x)
    out, pe_ev, acc_ev = naive.conv2d_acc(x, w, bias, stride, padding, groups, zp_x, dataflow=dataflow, rows=rows)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, expected.astype(np.int64))  # all values < 2^53: float64 is exact
    assert (pe_ev, acc_ev) == (0, 0)


@SLOW
@given(conv_case(), st.sampled_from(["os", "ws"]), st.integers(1, 5), st.integers(8, 14))
def test_conv2d_wrap_equals_exact_wrapped(case, dataflow, rows, bits):
    x, w, bias, stride, padding, groups, zp_x = case
    exact, _, _ = naive.conv2d_acc(x, w, bias, stride, padding, groups, zp_x)
    wrapped, _, _ = naive.conv2d_acc(x, w, bias, stride, padding, groups, zp_x, dataflow=dataflow, rows=rows,
                                     pe_bits=bits, pe_mode="wrap", acc_bits=bits, acc_mode="wrap")
    assert wrapped.tolist() == [[[[naive.wrap(v, bits) for v in row] for row in ch] for ch in img]
                                for img in exact.tolist()]


def test_conv2d_depthwise_hand():
    # 2 channels, groups 2, 1x1 kernels: out[o] = (x[o] - zp) * w[o] + b[o]
    x = np.array([[[[3]], [[5]]]])
    w = np.array([[[[2]]], [[[-4]]]])
    out, _, _ = naive.conv2d_acc(x, w, np.array([1, 2]), 1, 0, 2, 1)
    assert out.tolist() == [[[[(3 - 1) * 2 + 1]], [[(5 - 1) * -4 + 2]]]]  # [[5]], [[-14]]


def test_linear_hand_and_options():
    x = np.array([[1, 2, 3], [0, 0, 0]])
    w = np.array([[1, 1, 1], [2, -1, 4]])
    # zp 1: xc = [[0,1,2],[-1,-1,-1]];
    # row0: o0 = 0+1+2 + 10 = 13, o1 = 0 - 1 + 8 - 10 = -3; row1: o0 = -3 + 10 = 7, o1 = -2 + 1 - 4 - 10 = -15
    out, pe_ev, acc_ev = naive.linear_acc(x, w, np.array([10, -10]), 1)
    assert out.tolist() == [[13, -3], [7, -15]] and (pe_ev, acc_ev) == (0, 0)
    # 4-bit saturating accumulator, os: row0 o0: 10->7 (ev), 7, 8->7 (ev), 9->7 (ev) => 7
    out, _, acc_ev = naive.linear_acc(x[:1, :], w[:1, :], np.array([10]), 1, acc_bits=4, acc_mode="saturate")
    assert out.tolist() == [[7]] and acc_ev == 3
    with pytest.raises(TypeError):
        naive.linear_acc(x, w, np.array([0, 0]), 0, bogus=1)


@SLOW
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_linear_matches_numpy(N, K, O, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(N, K))
    w = rng.integers(-127, 128, size=(O, K))
    b = rng.integers(-1000, 1000, size=O)
    out, _, _ = naive.linear_acc(x, w, b, 7, dataflow="ws", rows=3)
    np.testing.assert_array_equal(out, (x - 7) @ w.T + b)
    conv, _, _ = naive.conv2d_acc(x.reshape(N, K, 1, 1), w.reshape(O, K, 1, 1), b, 1, 0, 1, 7)
    np.testing.assert_array_equal(out, conv.reshape(N, O))


# =============================================================================================
# requantize / requantize_float / add
# =============================================================================================

def test_requantize_per_channel_hand():
    # channel 0: M = 2^30 * 2^-31 = 0.5; channel 1: M = 3*2^29 * 2^-30 = 1.5
    acc = np.array([[[[3, -3]], [[100, -2]]]])  # (1, 2, 1, 2)
    m0 = np.array([Q31_HALF, Q31_3QUARTERS])
    n = np.array([31, 30])
    # half_away (TFLite): 1.5 -> 2, -1.5 -> -1 (SRDHM ties to +inf); 150 and -3 exact
    # + zp 5, clamp [0, 127]: 7, 4; 155 -> 127, 2
    y = naive.requantize(acc, m0, n, "half_away", 32, 5, 0, 127)
    assert y.dtype == np.int64 and y.tolist() == [[[[7, 4]], [[127, 2]]]]
    # half_even: 1.5 -> 2, -1.5 -> -2: 7, 3
    assert naive.requantize(acc, m0, n, "half_even", 32, 5, 0, 127).tolist() == [[[[7, 3]], [[127, 2]]]]
    # half_up: 1.5 -> 2, -1.5 -> -1: 7, 4
    assert naive.requantize(acc, m0, n, "half_up", 32, 5, 0, 127).tolist() == [[[[7, 4]], [[127, 2]]]]
    # 2-D accumulators (linear): axis 1 is still the channel
    assert naive.requantize(np.array([[3, 3]]), m0, n, "half_even", 32, 0, -128, 127).tolist() == [[2, 4]]  # 1.5->2, 4.5->4


def test_requantize_float_per_channel_hand():
    acc = np.array([[5, 5], [7, -7]])
    mults = np.array([0.5, 0.25], dtype=np.float32)
    # row0: 2.5 -> 2, 1.25 -> 1; row1: 3.5 -> 4, -1.75 -> -2; + zp 1, clamp [-2, 4]: 3, 2, 4 (5 clamped), -1
    y = naive.requantize_float(acc, mults, 1, -2, 4)
    assert y.dtype == np.int64 and y.tolist() == [[3, 2], [4, -1]]


def add_args(rounding, F, a, b, zp_a=2, zp_b=0, m0_b=Q31_HALF, n_b=31):
    return naive.add(np.array(a), np.array(b), zp_a, zp_b, Q31_HALF, 31, m0_b, n_b, F, rounding, 32, 1, -128, 127)


def test_add_hand():
    # a: (a - 2) * 0.5 * 2^F ; b: b * 0.75 * 2^F; F = 2
    # a = 10 -> 8*0.5*4 = 16;  b = 7 -> 7*0.75*4 = 21;  (16 + 21)/4 = 9.25 -> 9;  + zp 1 = 10
    assert naive.add(np.array([10]), np.array([7]), 2, 0, Q31_HALF, 31, Q31_3QUARTERS, 31, 2, "half_away", 32,
                     1, -128, 127).tolist() == [10]
    # ties in the final rounding: a = 10 -> 16; b = 13 (x0.5) -> 26; 42/4 = 10.5; + 1
    for r, expected in (("half_away", 12), ("half_up", 12), ("half_even", 11)):
        assert add_args(r, 2, [10], [13]).tolist() == [expected], r
    # negative tie: a = -8 -> -10*0.5*4 = -20; b = -11 -> -22; -42/4 = -10.5 -> away -11, up -10, even -10; + 1
    for r, expected in (("half_away", -10), ("half_up", -9), ("half_even", -9)):
        assert add_args(r, 2, [-8], [-11]).tolist() == [expected], r


def test_add_frac_bits_keep_precision():
    # (a - 0) * 0.5 + (b - 0) * 0.5 with a = b = 3: exact 3.
    # F = 1: t = 3*0.5*2 = 3 each, (3 + 3)/2 = 3 -> + zp 1 = 4
    # F = 0: t = round(1.5) = 2 each (all three conventions, SRDHM ties up), 2 + 2 = 4 -> + 1 = 5
    for r in ("half_away", "half_up", "half_even"):
        assert add_args(r, 1, [3], [3], zp_a=0).tolist() == [4], r
        assert add_args(r, 0, [3], [3], zp_a=0).tolist() == [5], r
    # clamp: a = 127, zp_a = -128 -> 255*0.5 = 127.5, b = 127 -> 63.5; sum 191 -> + 1 = 192 -> 127
    assert add_args("half_even", 4, [127], [127], zp_a=-128).tolist() == [127]


# =============================================================================================
# pooling, embedding, argmax
# =============================================================================================

def test_maxpool_padding_never_wins():
    x = np.array([[[[-5, -3, -8],
                    [-1, -9, -2],
                    [-7, -4, -6]]]])
    # kernel 2, stride 2, padding 1: Ho = (3 + 2 - 2)//2 + 1 = 2
    # (0,0): rows {-1,0} cols {-1,0} -> only x00 = -5;   (0,1): rows {-1,0} cols {1,2} -> max(-3,-8) = -3
    # (1,0): rows {1,2} cols {-1,0} -> max(-1,-7) = -1;  (1,1): max(-9,-2,-4,-6) = -2
    assert naive.maxpool2d(x, 2, 2, 1).tolist() == [[[[-5, -3], [-1, -2]]]]
    # kernel 3, stride 1, padding 0 -> the global max -1
    assert naive.maxpool2d(x, 3, 1, 0).tolist() == [[[[-1]]]]


def test_avgpool_hand():
    x = np.arange(16).reshape(1, 1, 4, 4)
    # zp 3, kernel 2, stride 2: (0+1+4+5) - 12 = -2; (2+3+6+7) - 12 = 6; (8+9+12+13) - 12 = 30; (10+11+14+15) - 12 = 38
    assert naive.avgpool_acc(x, 2, 2, 3).tolist() == [[[[-2, 6], [30, 38]]]]
    # kernel 3 stride 1: windows at (0,0): 0+1+2+4+5+6+8+9+10 = 45 - 27 = 18; each step right +9... (0,1): 54 - 27 = 27;
    # (1,0): 45 + 36 - 27 = 54; (1,1): 63
    assert naive.avgpool_acc(x, 3, 1, 3).tolist() == [[[[18, 27], [54, 63]]]]
    # global: sum 0..15 = 120, minus 16*3 = 72
    assert naive.global_avgpool_acc(x, 3).tolist() == [[72]]
    u8 = np.zeros((1, 2, 2, 2), dtype=np.uint8)  # (0 - 128) * 4 = -512 per channel, no uint8 wrap
    assert naive.global_avgpool_acc(u8, 128).tolist() == [[-512, -512]]


def test_embed_hand():
    C, d = 2, 3
    lut = np.array([[[1000 * c + 10 * v + j for j in range(d)] for v in range(256)] for c in range(C)])
    x = np.array([[[[0, 255]], [[7, 1]]]], dtype=np.uint8)  # (1, 2, 1, 2)
    out = naive.embed(x, lut)
    assert out.shape == (1, 6, 1, 2)
    # out[0, c*3 + j, 0, w] = 1000c + 10*x[c, w] + j
    assert out[0, :, 0, 0].tolist() == [0, 1, 2, 1070, 1071, 1072]
    assert out[0, :, 0, 1].tolist() == [2550, 2551, 2552, 1010, 1011, 1012]


def test_argmax_ties_lowest():
    v = np.array([[1, 3, 3], [5, 5, 5], [-1, -2, -1], [0, 0, 9]])
    assert naive.argmax_lowest(v).tolist() == [1, 0, 0, 2]
    assert naive.argmax_lowest(v).dtype == np.int64
