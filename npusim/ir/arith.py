"""The integer arithmetic shared by the simulator and the training library (docs/architecture.md).

Its API takes and returns NumPy arrays and Python numbers; numba is an implementation detail.

One home per rule: rounding shifts, fixed-point requantization (TFLite double rounding and
the single-rounding conventions), ONNX Runtime's float requantization, wrap/saturate, the
multiplier decomposition and the accumulator bounds. Nothing here imports torch.

The element-wise functions are written branch-free over integer operators so that the very
same Python function runs vectorised on NumPy int64 arrays (as `quantize` uses it) and, through
numba's ``register_jitable``, on scalars inside the simulator's kernels (the API itself knows
nothing of numba). Branches only test the rounding
code, which is one value per layer.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload, register_jitable

Rounding = Literal["half_away", "half_up", "half_even"]
ScaleMode = Literal["fixed", "pow2", "float"]

# Rounding codes used inside kernels (one per layer).
TFLITE_DOUBLE = 0  # gemmlowp SaturatingRoundingDoublingHighMul + RoundingDivideByPOT
HALF_UP = 1  # (x + 2^(s-1)) >> s, arithmetic shift: ties toward +inf
HALF_EVEN = 2  # ties to even (Gemmini, MLAS, ONNX)
HALF_AWAY = 3  # single rounding, ties away from zero (= RoundingDivideByPOT)

_ROUNDING_NAMES = ("half_away", "half_up", "half_even")


def rounding_code(rounding: str, scale_mode: str = "fixed") -> int:
    """Kernel code for a requantization: TFLite double rounding only for `fixed` + `half_away`."""
    if rounding not in _ROUNDING_NAMES:
        raise ValueError(f"rounding must be one of {_ROUNDING_NAMES}, got {rounding!r}")
    if rounding == "half_away":
        return TFLITE_DOUBLE if scale_mode == "fixed" else HALF_AWAY
    return HALF_UP if rounding == "half_up" else HALF_EVEN


def shift_code(rounding: str) -> int:
    """Kernel code for a plain rounding right shift (no multiplier) under a convention."""
    if rounding not in _ROUNDING_NAMES:
        raise ValueError(f"rounding must be one of {_ROUNDING_NAMES}, got {rounding!r}")
    return {"half_away": HALF_AWAY, "half_up": HALF_UP, "half_even": HALF_EVEN}[rounding]


@register_jitable
def wrap(v, bits):
    """Two's-complement wrap of `v` into a signed `bits`-bit range (bits <= 62)."""
    half = 1 << (bits - 1)
    return ((v + half) & ((half << 1) - 1)) - half


@register_jitable
def saturate(v, bits):
    """Clamp `v` into a signed `bits`-bit range."""
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    return v + (lo - v) * (v < lo) + (hi - v) * (v > hi)


@register_jitable
def clamp(v, lo, hi):
    """Clamp `v` into [lo, hi] (branch-free, works on arrays and scalars)."""
    return v + (lo - v) * (v < lo) + (hi - v) * (v > hi)


@register_jitable
def out_of_range(v, bits):
    """1 where `v` does not fit a signed `bits`-bit range, else 0."""
    hi = (1 << (bits - 1)) - 1
    return (v > hi) | (v < -hi - 1)


@register_jitable
def rounding_shift(x, s, code):
    """``x / 2^s`` rounded to an integer under `code`; ``s <= 0`` is an exact left shift.

    `s` may be a scalar or broadcast against `x` (per-channel shifts).
    """
    left = (-s) * (s < 0)
    right = s * (s > 0)
    x = x << left
    half = (1 << right) >> 1
    if code == HALF_UP:
        return (x + half) >> right
    mask = (1 << right) - 1
    rem = x & mask
    q = x >> right
    if code == HALF_EVEN:
        return q + ((rem > half) | ((rem == half) & (right > 0) & ((q & 1) == 1)))
    # HALF_AWAY (and TFLITE_DOUBLE's final step): gemmlowp RoundingDivideByPOT
    threshold = (mask >> 1) + (x < 0)
    return q + (rem > threshold)


@register_jitable
def srdhm(a, m0, multiplier_bits):
    """gemmlowp SaturatingRoundingDoublingHighMul generalised to a Q(B-1) multiplier.

    ``(a*m0 + nudge) / 2^(B-1)`` truncated toward zero, nudge ``2^(B-2)`` or ``1 - 2^(B-2)``;
    the saturating case ``a == m0 == INT_MIN`` cannot occur because multipliers are >= 0.
    """
    b1 = multiplier_bits - 1
    p = a * m0
    s = p + (1 << (b1 - 1)) - (p < 0) * ((1 << b1) - 1)
    q = s >> b1
    return q + ((s < 0) & ((s & ((1 << b1) - 1)) != 0))


@register_jitable
def requant_fixed(acc, m0, n, code, multiplier_bits):
    """``R(acc) ~= acc * m0 * 2^-n`` under a rounding code (before zero point and clamp).

    TFLITE_DOUBLE is TFLite's MultiplyByQuantizedMultiplier with ``shift = (B-1) - n``:
    ``RoundingDivideByPOT(SRDHM(acc << max(shift, 0), m0), max(-shift, 0))``. The other codes
    round the exact product once.
    """
    if code == TFLITE_DOUBLE:
        e = (multiplier_bits - 1) - n
        left = e * (e > 0)
        right = (-e) * (e < 0)
        return rounding_shift(srdhm(acc << left, m0, multiplier_bits), right, HALF_AWAY)
    return rounding_shift(acc * m0, n, code)


@register_jitable
def requant_float(acc, multiplier, zp, qmin, qmax):
    """ONNX Runtime MLAS requantization: float32 multiply, clamp, round half to even, + zp."""
    f = np.float32(acc) * multiplier
    f = np.minimum(np.maximum(f, np.float32(qmin - zp)), np.float32(qmax - zp))
    return np.int64(np.rint(f)) + zp


@register_jitable
def ort_avgpool_one(total, count, s_y, zp_y, lo, hi):
    """ONNX Runtime's QLinearAveragePool output for one window (its CPU kernel,
    contrib_ops/cpu/quantization/qlinear_pool.cc): the float32 window sum `total` of the
    dequantized inputs ``f32(s_x * (x - zp_x))`` divided by float32 `count`, divided by `s_y`,
    plus `zp_y` in float32 and only then rounded half to even (``nearbyintf``), clamped."""
    mean = np.float32(total) / np.float32(count)
    v = np.float32(np.float32(mean) / np.float32(s_y)) + np.float32(zp_y)
    v = np.minimum(np.maximum(np.float32(v), np.float32(lo)), np.float32(hi))
    return np.int64(np.rint(v))


@register_jitable
def requant_one(acc, m0, n, mf, scale_float, code, mbits, zp, lo, hi):
    """``clamp(zp + R(acc), lo, hi)`` for one value, fixed/pow2 or float (ORT) convention."""
    if scale_float:
        return requant_float(acc, mf, zp, lo, hi)
    y = requant_fixed(acc, m0, n, code, mbits) + zp
    return clamp(y, lo, hi)


def _llvm_fma(nb, ll):
    """LLVM's ``llvm.fma`` on `nb` (numba) / `ll` (LLVM) floats as a numba intrinsic: one
    rounding, by definition (``vfmadd`` where the CPU has FMA, else the C library's fma)."""
    @intrinsic
    def fma(typingctx, x, y, z):
        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.fma", [ll], ir.FunctionType(ll, [ll] * 3))
            return builder.call(fn, args)

        return nb(nb, nb, nb), codegen

    return fma


_llvm_fma_f32 = _llvm_fma(types.float32, ir.FloatType())
_llvm_fma_f64 = _llvm_fma(types.float64, ir.DoubleType())


def fma_f32(x, y, z):
    """float32 ``x*y + z`` rounded once (a fused multiply-add), for an integer `x` of at most
    29 bits and float32 `y`, `z`: the product is exact in float64, the float64 sum is rounded
    to odd (TwoSum error, then one step towards it when the sum is even), which makes the final
    rounding to float32 correct (no double rounding). Inside kernels (`_fma_f32_jit`) it is
    LLVM's fused multiply-add itself, for `x` below 2^24 (exact in float32), ~9x faster."""
    p = np.float64(x) * np.float64(y)
    zz = np.float64(z)
    s = p + zz
    bp = s - p
    err = (p - (s - bp)) + (zz - bp)
    if err != 0.0:
        m, _ = math.frexp(s)
        if (np.int64(m * 9007199254740992.0) & 1) == 0:
            s = np.nextafter(s, np.inf if err > 0.0 else -np.inf)
    return np.float32(s)


@overload(fma_f32)
def _fma_f32_jit(x, y, z):
    def impl(x, y, z):
        return _llvm_fma_f32(np.float32(x), np.float32(y), np.float32(z))
    return impl


@register_jitable
def ort_qlinearadd_one(a, b, zp_a, zp_b, r_a, r_b, zp_y, lo, hi):
    """ONNX Runtime's QLinearAdd (MLAS AVX2 kernel) on raw integers `a`, `b`: with float32
    ``r_a = s_a/s_y``, ``r_b = s_b/s_y``, ``c = zp_y - fma(r_a, zp_a, r_b*zp_b)`` (float32),
    ``y = rne(fma(a, r_a, fma(b, r_b, c)))`` clamped to [lo, hi]; the output zero point is
    inside the rounded value, so ties follow its parity."""
    ra = np.float32(r_a)
    rb = np.float32(r_b)
    c = np.float32(np.float32(zp_y) - fma_f32(zp_a, ra, np.float32(rb * np.float32(zp_b))))
    f = fma_f32(a, ra, fma_f32(b, rb, c))
    y = np.int64(np.rint(f))
    return clamp(y, lo, hi)


@register_jitable
def add_one(a, b, m0_a, n_a, m0_b, n_b, mf_a, mf_b, frac, scale_float, code, shift_code, mbits,
            zp_y, lo, hi, zp_a=0, zp_b=0):
    """Residual add of two zero-point-free values: each rescaled to the output scale with
    `frac` extra fractional bits, summed, rounded once more, offset and clamped. The float
    mode is ONNX Runtime's QLinearAdd (`ort_qlinearadd_one`, on the values with their input
    zero points `zp_a`, `zp_b` put back)."""
    if scale_float:
        return ort_qlinearadd_one(a + zp_a, b + zp_b, zp_a, zp_b, mf_a, mf_b, zp_y, lo, hi)
    ta = requant_fixed(a, m0_a, n_a - frac, code, mbits)
    tb = requant_fixed(b, m0_b, n_b - frac, code, mbits)
    y = rounding_shift(ta + tb, frac, shift_code) + zp_y
    return clamp(y, lo, hi)


def ort_requantize_linear(x: np.ndarray, s_x: float, zp_x: int, s_y: float, zp_y: int, lo: int,
                          hi: int) -> np.ndarray:
    """ONNX Runtime's QLinearConcat on raw integers `x` (its lookup table, built by
    ``QlinearBuildLookupTable``): dequantize in float32, ``f = f32(s_x * f32(x - zp_x))``, then
    MLAS QuantizeLinear, ``rne(f32(f / s_y)) + zp_y`` clamped to [lo, hi] (a division, not a
    multiplication by a ratio; ties to even, before the zero point is added)."""
    d = (np.asarray(x, np.int64) - int(zp_x)).astype(np.float32) * np.float32(s_x)
    q = np.rint((d / np.float32(s_y)).astype(np.float32)).astype(np.int64) + int(zp_y)
    return clamp(q, int(lo), int(hi))


def requant_values(x: np.ndarray, zp_x: int, m0: int, n: int, code: int, mbits: int, zp_y: int,
                   lo: int, hi: int) -> np.ndarray:
    """Fixed/pow2 requantization of raw integers to another scale and zero point:
    ``clamp(zp_y + R(x - zp_x), lo, hi)`` (a concat input; m = 1 is an exact copy)."""
    v = np.asarray(x, np.int64) - int(zp_x)
    return clamp(requant_fixed(v, np.int64(m0), np.int64(n), code, mbits) + int(zp_y), int(lo),
                 int(hi))


class RequantParams(NamedTuple):
    """A layer's requantization as one record the kernels take: per-channel `m0`, `n` (int64)
    and `mf` (float32) arrays (length 1 for one tensor-wide multiplier), the float/fixed
    mode, rounding code, multiplier width, output zero point and clamp range; then what the
    float64 path (`requant_span_f64`) needs, derived from them: per channel the multiplier
    times the left shift `km` and the right shift as a factor `sc` (float64, both exact), and
    whether that path is exact for this layer at all (`f64`)."""

    m0: np.ndarray
    n: np.ndarray
    mf: np.ndarray
    scale_float: bool
    code: int
    mbits: int
    zp: int
    lo: int
    hi: int
    km: np.ndarray
    sc: np.ndarray
    f64: bool


_F64_SHIFT_MAX = 52  # the float64 path's shifts, either way (see `requant_span_f64`)


def _int64_lanes_native() -> bool:
    """The host has AVX-512 F and DQ: int64 vector multiplies and arithmetic shifts are
    single instructions (AVX2 emulates both)."""
    import llvmlite.binding as ll

    feats = ll.get_host_cpu_features()
    return bool(feats.get("avx512f", False) and feats.get("avx512dq", False))


#: half_up residual adds in float64 lanes (`_add_f64_kernel`) where int64 lanes are not
#: native: ResNet-20 b64 on a 2-core AVX2 EPYC, a 16-channel 28x28 add 2.48 -> 0.99 ms, the
#: whole exact run 113 -> 99-101 ms; on AVX-512 the int64 kernel was the faster (round 10)
_ADD_F64 = not _int64_lanes_native()
# `km`, `sc` of a record the float64 path does not take (writeable, as every record's arrays
# are: a read-only array would be another numba type, so another compiled kernel)
_NO_F64 = np.zeros(0, np.float64)


def requant_params(m0, n, mf, scale_float: bool, code: int, mbits: int, zp: int, lo: int,
                   hi: int) -> RequantParams:
    """A `RequantParams` with contiguous arrays (scalars become length-1 arrays) and plain
    Python scalars (so every layer shares one compiled kernel signature)."""
    m0 = np.ascontiguousarray(np.atleast_1d(m0), np.int64)
    n = np.ascontiguousarray(np.atleast_1d(n), np.int64)
    # the float path (`requant_span_f64`) takes half_up, the default rounding: each rounding it
    # took would be one more inlined loop in every kernel that requantizes (compile time)
    f64 = bool(not scale_float and code == HALF_UP and m0.size and m0.min() >= 0
               and np.abs(n).max() <= _F64_SHIFT_MAX)
    km = sc = _NO_F64  # read only where `f64`
    if f64:  # exact: m0 < 2^53 times a power of two, shifts of at most 52 places
        km = np.ldexp(m0.astype(np.float64), np.maximum(-n, 0))
        sc = np.ldexp(1.0, -np.maximum(n, 0))
    return RequantParams(m0, n, np.ascontiguousarray(np.atleast_1d(mf), np.float32),
                         bool(scale_float), int(code), int(mbits), int(zp), int(lo), int(hi),
                         km, sc, f64)


@numba.njit(inline="always")
def _requant_loop(src, dst, rq, c0, cstep, scale_float, code):
    for j in range(src.shape[0]):
        c = c0 + j * cstep
        dst[j] = requant_one(src[j], rq.m0[c], rq.n[c], rq.mf[c], scale_float, code, rq.mbits,
                             rq.zp, rq.lo, rq.hi)


@numba.njit(inline="always")
def requant_span(src, dst, rq, c0, cstep):
    """The one requantization loop: ``dst[j] = requant_one(src[j])`` with the parameters of
    channel ``c0 + j * cstep`` of `rq` (a `RequantParams`); the mode and rounding code are
    dispatched once per call to loops with constant codes (so the compiler folds the
    per-element branches away)."""
    if rq.scale_float:
        _requant_loop(src, dst, rq, c0, cstep, True, 0)
    elif rq.code == HALF_UP:
        _requant_loop(src, dst, rq, c0, cstep, False, HALF_UP)
    elif rq.code == HALF_EVEN:
        _requant_loop(src, dst, rq, c0, cstep, False, HALF_EVEN)
    elif rq.code == TFLITE_DOUBLE:
        _requant_loop(src, dst, rq, c0, cstep, False, TFLITE_DOUBLE)
    else:  # HALF_AWAY, the default: every loop gets its code as a constant (a loop that
        # branches on a run-time code per element does not vectorize: ~3x slower)
        _requant_loop(src, dst, rq, c0, cstep, False, HALF_AWAY)


F64_EXACT_PRODUCT = 2.0 ** 52  # float64 products below this are exact integers here


@numba.njit(inline="always")
def requant_span_f64(srcf, dst, rq, c0, cstep):
    """`requant_span` on accumulators given as float64 `srcf` (integers below 2^53) in float64
    lanes (4 per AVX2 vector, where int64 has no vector multiply or arithmetic shift); only
    for a record with ``rq.f64`` (half_up, the default rounding). Returns False, with `dst`
    unfinished, when some product ``|acc * m0 * 2^left|`` reaches 2^52: then call
    `requant_span`.

    Exact, not approximate: below 2^52 the product is an exact float64 integer (and the float
    product of a larger one is >= 2^52, so the test cannot miss); a power-of-two factor keeps
    it exact (right shifts <= 52: no underflow); adding 1/2 to such a value stays exact (the
    sum's bits span at most 53 places); floor of an exact value is the integer rule's own
    result; the zero point and clamp act on small integers."""
    bad = False
    zp, lo, hi = np.float64(rq.zp), np.float64(rq.lo), np.float64(rq.hi)
    for j in range(srcf.shape[0]):
        c = c0 + j * cstep
        p = srcf[j] * rq.km[c]
        bad |= abs(p) >= F64_EXACT_PRODUCT
        dst[j] = requant_f64_one(p, rq.sc[c], zp, lo, hi)
    return not bad


@numba.njit(inline="always")
def requant_f64_one(p, sc, zp, lo, hi):
    """The float64 path's rule on one product ``p = acc * km`` (``|p| < 2^52``, see
    `requant_span_f64`): ``clamp(floor(p * sc + 1/2) + zp, lo, hi)``, all float64."""
    return min(max(np.floor(p * sc + 0.5) + zp, lo), hi)


@numba.njit(inline="always")
def requant_fma_terms(bias, km, sc):
    """The float64 path's rule with the bias and the right shift folded into two terms, for
    `requant_fma_one`: ``(k, b, ok)`` with ``k = km * sc`` and ``b = bias * k + 1/2``, `ok`
    where ``|bias * km| < 2^52`` (both terms are then exact: ``km * sc`` is a power-of-two
    scaling; ``bias * km`` an integer below 2^52; ``(bias * km + 2^(s-1)) * 2^-s``, with
    ``sc = 2^-s``, has its bits within 53 places)."""
    k = km * sc
    bf = np.float64(bias)
    return k, bf * k + 0.5, abs(bf) * km < F64_EXACT_PRODUCT


@numba.njit(inline="always")
def requant_fma_one(v, k, b, zp, lo, hi):
    """`requant_f64_one` of ``acc = v + bias`` from `requant_fma_terms`' `k` and `b` (`v` a
    float64 integer): ``clamp(floor(v * k + b) + zp, lo, hi)`` with one fused multiply-add.
    Exact where ``|acc * km| < 2^52`` and the terms are (``ok``): the true value ``v * k + b
    = (acc * km + 2^(s-1)) * 2^-s`` is then a float64 (an integer below 2^53 times a power of
    two), and the fused multiply-add rounds only once, so it returns that value itself; the
    integer rule is its floor (`requant_span_f64`). One operation fewer than multiplying by
    km and sc apart, the bias added in float: ~1.4x faster per output."""
    return min(max(np.floor(_llvm_fma_f64(v, k, b)) + zp, lo), hi)


@numba.njit(parallel=True, cache=True)
def _requant_kernel(acc, rq, out):
    for t in numba.prange(acc.shape[0] * acc.shape[1]):
        i = t // acc.shape[1]
        c = t - i * acc.shape[1]
        requant_span(acc[i, c], out[i, c], rq, c, 0)


@numba.njit(parallel=True, cache=True)
def _add_f64_kernel(a, b, zp_a, zp_b, k, zp, lo, hi, out):
    """`_add_kernel` for half_up in float64 lanes (`_add_f64_factors`): per input
    ``t = floor((x - zp) * m0 * 2^left * 2^-right + 1/2)``, then ``floor((t_a + t_b) * 2^-frac
    + 1/2) + zp`` clamped; `k` = (km_a, sc_a, km_b, sc_b, 2^-frac)."""
    ka, sa, kb, sb, sf = k[0], k[1], k[2], k[3], k[4]
    zf, lf, hf = np.float64(zp), np.float64(lo), np.float64(hi)
    for i in numba.prange(a.shape[0]):
        ai, bi, oi = a[i], b[i], out[i]
        for j in range(ai.shape[0]):
            ta = np.floor((np.float64(ai[j]) - zp_a) * ka * sa + 0.5)
            tb = np.floor((np.float64(bi[j]) - zp_b) * kb * sb + 0.5)
            oi[j] = min(max(np.floor((ta + tb) * sf + 0.5) + zf, lf), hf)


@functools.lru_cache(maxsize=256)
def _add_f64_factors(a_dtype, b_dtype, zp_a: int, zp_b: int, m0: tuple, n: tuple, frac: int):
    """The float64 factors of a half_up residual add, or None where that path is not exact
    for every value of the inputs' dtypes: each input's ``|x - zp| * m0 * 2^left`` below
    2^51 (so each rescaled term, and their sum, is an exact float64 integer below 2^52, and
    adding 1/2 to it scaled by a power of two stays exact: `requant_span_f64`'s argument),
    shifts of at most 52 places either way. Made once per distinct add (~30 us each, as
    `_add_params`); the kernel never writes the array."""
    out = []
    for dt, zp, m, sh in ((a_dtype, zp_a, m0[0], n[0] - frac),
                          (b_dtype, zp_b, m0[1], n[1] - frac)):
        info = np.iinfo(dt)
        amax = max(abs(int(info.min) - zp), abs(int(info.max) - zp))
        if m < 0 or abs(sh) > _F64_SHIFT_MAX or amax * m * 2 ** max(-sh, 0) >= 2 ** 51:
            return None
        out += [float(np.ldexp(float(m), max(-sh, 0))), float(np.ldexp(1.0, -max(sh, 0)))]
    if not 0 <= frac <= _F64_SHIFT_MAX:
        return None
    return np.array(out + [float(np.ldexp(1.0, -frac))])


@numba.njit(parallel=True, cache=True)
def _add_kernel(a, b, zp_a, zp_b, rq, frac, shift_code, out):
    # inputs of any integer dtype, zero points removed in int64; `rq` holds one entry per
    # input; the mode and rounding codes are dispatched once, to loops with constant codes
    # (each rounding's pair of codes as constants: a loop that branches on run-time codes per
    # element does not vectorize, ~10x slower for the default TFLite double rounding)
    scale_float, code = rq.scale_float, rq.code
    for i in numba.prange(a.shape[0]):
        if scale_float:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, True, code, shift_code, out[i])
        elif code == TFLITE_DOUBLE and shift_code == HALF_AWAY:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, False, TFLITE_DOUBLE, HALF_AWAY, out[i])
        elif code == HALF_AWAY and shift_code == HALF_AWAY:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, False, HALF_AWAY, HALF_AWAY, out[i])
        elif code == HALF_UP and shift_code == HALF_UP:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, False, HALF_UP, HALF_UP, out[i])
        elif code == HALF_EVEN and shift_code == HALF_EVEN:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, False, HALF_EVEN, HALF_EVEN, out[i])
        else:
            _add_loop(a[i], b[i], zp_a, zp_b, rq, frac, False, code, shift_code, out[i])


@numba.njit(inline="always")
def _add_loop(a, b, zp_a, zp_b, rq, frac, scale_float, code, shift_code, out):
    for j in range(a.shape[0]):
        out[j] = add_one(np.int64(a[j]) - zp_a, np.int64(b[j]) - zp_b, rq.m0[0], rq.n[0],
                         rq.m0[1], rq.n[1], rq.mf[0], rq.mf[1], frac, scale_float, code,
                         shift_code, rq.mbits, rq.zp, rq.lo, rq.hi, zp_a, zp_b)


def requantize(acc: np.ndarray, m0: np.ndarray, n: np.ndarray, mf: np.ndarray, scale_float: bool,
               code: int, mbits: int, zp: int, lo: int, hi: int) -> np.ndarray:
    """Requantize int64 accumulators (N, C, ...) with per-channel (axis 1) parameters."""
    acc = np.ascontiguousarray(acc, dtype=np.int64)
    shape = acc.shape
    a3 = acc.reshape(shape[0], shape[1], -1)
    out = np.empty_like(a3)
    c = shape[1]
    _requant_kernel(a3, requant_params(np.broadcast_to(np.asarray(m0, np.int64), (c,)),
                                       np.broadcast_to(np.asarray(n, np.int64), (c,)),
                                       np.broadcast_to(np.asarray(mf, np.float32), (c,)),
                                       scale_float, code, mbits, zp, lo, hi), out)
    return out.reshape(shape)


def residual_add(a: np.ndarray, b: np.ndarray, zp_a: int, zp_b: int, m0: np.ndarray, n: np.ndarray,
                 mf: np.ndarray, frac: int, scale_float: bool, code: int, shift_code: int,
                 mbits: int, zp_y: int, lo: int, hi: int, out_dtype=np.int64) -> np.ndarray:
    """Residual add of two integer tensors of one shape; (m0, n, mf) hold one entry per
    input. The result (in [lo, hi]) is stored in `out_dtype`."""
    shape = a.shape
    a2 = np.ascontiguousarray(a).reshape(shape[0], -1)
    b2 = np.ascontiguousarray(b).reshape(shape[0], -1)
    out = np.empty(a2.shape, out_dtype)
    m0s = tuple(int(v) for v in np.asarray(m0)[:2])
    ns = tuple(int(v) for v in np.asarray(n)[:2])
    if not scale_float and code == HALF_UP and shift_code == HALF_UP and _ADD_F64:
        k = _add_f64_factors(a2.dtype, b2.dtype, int(zp_a), int(zp_b), m0s, ns, int(frac))
        if k is not None:
            _add_f64_kernel(a2, b2, int(zp_a), int(zp_b), k, int(zp_y), int(lo), int(hi), out)
            return out.reshape(shape)
    rq = _add_params(m0s, ns,
                     tuple(float(v) for v in np.asarray(mf, np.float32)[:2]), bool(scale_float),
                     int(code), int(mbits), int(zp_y), int(lo), int(hi))
    _add_kernel(a2, b2, int(zp_a), int(zp_b), rq, int(frac), int(shift_code), out)
    return out.reshape(shape)


@functools.lru_cache(maxsize=256)
def _add_params(m0: tuple, n: tuple, mf: tuple, *rest) -> RequantParams:
    """`requant_params` of a residual add, made once per distinct add (~20 us each: a
    tenth of a batch-1 ResNet-20 run's adds); the kernels never write the record's arrays."""
    return requant_params(np.array(m0, np.int64), np.array(n, np.int64),
                          np.array(mf, np.float32), *rest)


def ort_multiplier(s_x, s_w, s_y) -> np.ndarray:
    """The multiplier ORT builds for QLinearConv: ``f32(f32(s_x*s_w)/s_y)`` in float32."""
    sx = np.float32(s_x)
    sw = np.asarray(s_w, dtype=np.float32)
    sy = np.float32(s_y)
    return ((sx * sw).astype(np.float32) / sy).astype(np.float32)


def _round_half_away(v: float) -> int:
    """std::round: nearest integer, ties away from zero (exact for |v| < 2^52)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def decompose_multiplier(
    m: float, scale_mode: ScaleMode = "fixed", multiplier_bits: int = 32, max_shift: int = 62
) -> tuple[int, int]:
    """Decompose a positive real multiplier into ``(m0, n)`` with ``m ~= m0 * 2^-n``.

    `fixed` follows TFLite's QuantizeMultiplier generalised to a Q(B-1) multiplier: ``frexp``,
    ``m0 = round_half_away(q * 2^(B-1))``, renormalise when it reaches ``2^(B-1)``. When the
    shift would exceed `max_shift`, low bits of ``m0`` are rounded away (half away) so the
    shifter range holds; a multiplier that vanishes that way is flushed to ``(0, 0)``.
    `pow2` gives ``m0 = 1`` and ``n = round_half_even(-log2 m)`` (nearest in the log domain,
    may be negative: an exact left shift). `float` needs no decomposition (returns (0, 0)).
    Raises ValueError for a negative or non-finite multiplier or one too large to represent.
    """
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"multiplier must be finite and >= 0, got {m!r}")
    if scale_mode == "float" or m == 0.0:
        return 0, 0
    if scale_mode == "pow2":
        n = -int(np.rint(math.log2(m)))
        if n > max_shift:
            return 0, 0
        return 1, n
    if scale_mode != "fixed":
        raise ValueError(f"scale_mode must be 'fixed', 'pow2' or 'float', got {scale_mode!r}")
    if not 2 <= multiplier_bits <= 53:
        raise ValueError(f"multiplier_bits must be in [2, 53], got {multiplier_bits}")
    b1 = multiplier_bits - 1
    q, e = math.frexp(m)
    m0 = _round_half_away(q * (1 << b1))
    if m0 == 1 << b1:
        m0 //= 2
        e += 1
    n = b1 - e
    if n > max_shift:
        drop = n - max_shift
        m0 = int(rounding_shift(m0, drop, HALF_AWAY)) if drop < 62 else 0
        n = max_shift
        if m0 == 0:
            return 0, 0
        if m0 == 1 << b1:  # rounding carried into a new bit: still representable one shift up
            m0 //= 2
            n -= 1
    if n < 0:
        raise ValueError(
            f"multiplier {m!r} is too large for a {multiplier_bits}-bit fixed-point multiplier"
        )
    return m0, n


def bits_needed(lo: int, hi: int) -> int:
    """Smallest signed width whose range holds every integer in [lo, hi] (at least 1)."""
    lo, hi = int(lo), int(hi)
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


_STORAGE = [np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64)]
_STORAGE_RANGES = [(dt, int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in _STORAGE]


def storage_dtype(lo: int, hi: int) -> np.dtype:
    """The narrowest integer dtype that holds every value in [lo, hi] (how tensors are kept)."""
    for dt, dmin, dmax in _STORAGE_RANGES:
        if dmin <= lo and hi <= dmax:
            return dt
    return np.dtype(np.int64)


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """The integer range of a `bits`-bit value (narrow: symmetric signed range)."""
    if signed:
        hi = (1 << (bits - 1)) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, (1 << bits) - 1


def a2q_l1_limit(acc_bits: int, input_bits: int, input_signed: bool) -> float:
    """A2Q: the largest weight L1 norm that cannot overflow a signed `acc_bits` accumulator.

    ``||q||_1 <= (2^(P-1) - 1) * 2^(1{signed} - N)`` (Colbert et al., ICCV 2023; Brevitas
    ``get_upper_bound_on_l1_norm``).
    """
    return ((1 << (acc_bits - 1)) - 1) * 2.0 ** (int(input_signed) - input_bits)


def a2q_plus_l1_limit(acc_bits: int, input_bits: int) -> float:
    """A2Q+: the relaxed budget for zero-centred weights, ``(2^P - 2) / (2^N - 1)``."""
    return ((1 << acc_bits) - 2) / ((1 << input_bits) - 1)


def dtype_bound_bits(k: int, x_bits: int, x_signed: bool, w_bits: int) -> int:
    """Worst-case accumulator bits of a K-term dot product from the data types alone.

    ``P >= alpha + log2(1 + 2^-alpha) + 1`` with ``alpha = log2 K + N + M - 1 - 1{signed x}``
    (A2Q, Colbert et al. 2023), rounded up to whole bits.
    """
    alpha = math.log2(k) + x_bits + w_bits - 1 - int(x_signed)
    return math.ceil(alpha + math.log2(1 + 2.0 ** -alpha) + 1 - 1e-12)
