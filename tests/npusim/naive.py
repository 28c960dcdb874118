"""Independent, slow, obviously correct reference ("oracle") of the NPU's integer semantics.

Written from docs/architecture.md and REFERENCES.md §1 only; it deliberately imports nothing from
``npusim`` so that the fast kernels are checked against an independent implementation.

Rules followed throughout:
- every integer is a Python ``int`` (arbitrary precision) - numpy integers are converted with
  ``int(...)`` before any arithmetic, so nothing can silently wrap;
- every rounding goes through one function, ``_round_fraction``, on an exact ``Fraction``;
- loops are explicit and follow the order of additions the hardware uses;
- numpy is used for containers, and ``np.float32`` only where the ORT float mode is float32.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

ROUNDINGS = ("half_away", "half_up", "half_even")
OVERFLOW_MODES = ("exact", "wrap", "saturate")
DATAFLOWS = ("os", "ws", "is")


# ---------------------------------------------------------------------------------------------
# Integer ranges
# ---------------------------------------------------------------------------------------------

def _check_bits(bits: int) -> None:
    """Reject a width that has no signed two's-complement range."""
    if int(bits) < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")


def _lo(bits: int) -> int:
    """Smallest value of a signed `bits`-bit integer: -2^(bits-1)."""
    return -(1 << (bits - 1))


def _hi(bits: int) -> int:
    """Largest value of a signed `bits`-bit integer: 2^(bits-1) - 1."""
    return (1 << (bits - 1)) - 1


def wrap(v: int, bits: int) -> int:
    """Two's-complement wrap of v into [-2^(bits-1), 2^(bits-1)-1] (the value congruent to v mod 2^bits)."""
    _check_bits(bits)
    v, bits = int(v), int(bits)
    modulus = 1 << bits
    r = v % modulus  # Python %: r in [0, 2^bits)
    if r > _hi(bits):
        r -= modulus
    return r


def saturate(v: int, bits: int) -> int:
    """Clamp v into [-2^(bits-1), 2^(bits-1)-1]."""
    _check_bits(bits)
    v, bits = int(v), int(bits)
    return min(max(v, _lo(bits)), _hi(bits))


def fits(v: int, bits: int) -> bool:
    """True when v is representable as a signed `bits`-bit integer."""
    _check_bits(bits)
    v, bits = int(v), int(bits)
    return _lo(bits) <= v <= _hi(bits)


# ---------------------------------------------------------------------------------------------
# Rounding
# ---------------------------------------------------------------------------------------------

def _round_fraction(q: Fraction, rounding: str) -> int:
    """Round the exact rational q to an integer; only exact ties (fractional part 1/2) use `rounding`."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    q = Fraction(q)
    floor = q.numerator // q.denominator  # Python // is floor division, exact on ints
    frac = q - floor                       # in [0, 1)
    half = Fraction(1, 2)
    if frac < half:
        return floor
    if frac > half:
        return floor + 1
    # exact tie: q = floor + 1/2
    if rounding == "half_up":      # toward +inf
        return floor + 1
    if rounding == "half_away":    # away from zero
        return floor + 1 if q > 0 else floor
    # half_even
    return floor if floor % 2 == 0 else floor + 1


def round_shift(x: int, shift: int, rounding: str) -> int:
    """x / 2^shift rounded to an integer with `rounding`; shift <= 0 is the exact product x * 2^-shift."""
    x, shift = int(x), int(shift)
    if shift <= 0:
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
        return x * (1 << (-shift))
    return _round_fraction(Fraction(x, 1 << shift), rounding)


def _trunc_div(a: int, b: int) -> int:
    """a / b truncated toward zero (C integer division), b > 0."""
    assert b > 0
    q = abs(a) // b
    return q if a >= 0 else -q


def _srdhm(a: int, b: int, multiplier_bits: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul with 2^(B-1) in place of 2^31 (no saturation needed: b >= 0)."""
    B = multiplier_bits
    p = a * b
    nudge = (1 << (B - 2)) if p >= 0 else 1 - (1 << (B - 2))
    return _trunc_div(p + nudge, 1 << (B - 1))


def requant_fixed(acc: int, m0: int, n: int, rounding: str, multiplier_bits: int = 32) -> int:
    """R(acc) ~= acc * m0 * 2^-n: single rounding for half_up/half_even, TFLite double rounding for half_away."""
    acc, m0, n, B = int(acc), int(m0), int(n), int(multiplier_bits)
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
    if B < 2:
        raise ValueError(f"multiplier_bits must be >= 2, got {B}")
    if not 0 <= m0 < (1 << (B - 1)):
        raise ValueError(f"m0 must be in [0, 2^{B - 1}), got {m0}")
    if rounding in ("half_up", "half_even"):
        # one rounding of the exact rational acc * m0 / 2^n (exact when n <= 0)
        return round_shift(acc * m0, n, rounding)
    # half_away: gemmlowp / TFLite MultiplyByQuantizedMultiplier generalised to B bits
    e = (B - 1) - n
    left = max(e, 0)
    right = max(-e, 0)
    high = _srdhm(acc * (1 << left), m0, B)        # Python ints: the left shift never overflows
    return round_shift(high, right, "half_away")    # = gemmlowp RoundingDivideByPOT


# ---------------------------------------------------------------------------------------------
# float32 (ONNX Runtime MLAS) requantization
# ---------------------------------------------------------------------------------------------

def _int_to_f32(v: int) -> np.float32:
    """Round the integer v to the nearest float32 (ties to even), as C's (float)int32 / cvtdq2ps do."""
    v = int(v)
    bl = abs(v).bit_length()
    if bl > 24:  # float32 keeps a 24-bit significand: drop the low (bl - 24) bits with RNE
        drop = bl - 24
        v = round_shift(v, drop, "half_even") << drop
    # v now has at most 24 (or 25 after a carry, i.e. a power of two) significant bits: the
    # conversion to double and then to float32 is exact.
    with np.errstate(over="ignore"):
        return np.float32(float(v))


def requant_float(acc: int, multiplier_f32: np.float32, zp: int, qmin: int, qmax: int) -> int:
    """ORT MLAS: f = f32(acc) * M in float32; clamp to [qmin-zp, qmax-zp]; round half to even; + zp."""
    zp, qmin, qmax = int(zp), int(qmin), int(qmax)
    m = np.float32(multiplier_f32)
    with np.errstate(over="ignore"):
        f = np.float32(_int_to_f32(acc) * m)          # float32 * float32 -> float32 (IEEE RNE)
    lo = np.float32(qmin - zp)
    hi = np.float32(qmax - zp)
    f = np.float32(min(max(f, lo), hi))                # std::min(std::max(f, lo), hi)
    if math.isnan(float(f)):
        raise ValueError("requant_float: NaN (multiplier is NaN)")
    q = _round_fraction(Fraction(float(f)), "half_even")  # the 12582912.0f magic add, exactly
    return q + zp


def ort_multiplier(s_x: float, s_w: float, s_y: float) -> np.float32:
    """ORT's requant scale in float32, in ORT's order: f32(f32(s_x) * f32(s_w)) / f32(s_y)."""
    prod = np.float32(np.float32(s_x) * np.float32(s_w))
    return np.float32(prod / np.float32(s_y))


# ---------------------------------------------------------------------------------------------
# Accumulation
# ---------------------------------------------------------------------------------------------

def _level_add(exact_result: int, bits: int, mode: str) -> tuple[int, int]:
    """Apply one accumulator level to the exact result of an addition: (held value, overflow event 0/1)."""
    if mode not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow mode {mode!r}; expected one of {OVERFLOW_MODES}")
    if fits(exact_result, bits):
        return exact_result, 0
    if mode == "exact":
        return exact_result, 1
    if mode == "wrap":
        return wrap(exact_result, bits), 1
    return saturate(exact_result, bits), 1


def accumulate(bias: int, products: list[int], dataflow: str, rows: int,
               pe_bits: int, pe_mode: str, acc_bits: int, acc_mode: str) -> tuple[int, int, int]:
    """Sum bias + products in the dataflow's order with per-level overflow: (value, pe_events, acc_events)."""
    if dataflow not in DATAFLOWS:
        raise ValueError(f"unknown dataflow {dataflow!r}; expected one of {DATAFLOWS}")
    if pe_mode not in OVERFLOW_MODES or acc_mode not in OVERFLOW_MODES:
        raise ValueError(f"overflow modes must be in {OVERFLOW_MODES}")
    _check_bits(pe_bits)
    _check_bits(acc_bits)
    products = [int(p) for p in products]
    pe_events = 0
    acc_events = 0

    # preload: the bias enters the accumulator through the acc level
    acc, ev = _level_add(int(bias), acc_bits, acc_mode)
    acc_events += ev

    if dataflow == "os":
        for p in products:
            acc, ev = _level_add(acc + p, acc_bits, acc_mode)
            acc_events += ev
        return acc, pe_events, acc_events

    # ws / is: chunks of `rows` products summed down a PE column from 0 at the pe level
    rows = int(rows)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    for start in range(0, len(products), rows):
        chunk = products[start:start + rows]
        partial = 0
        for p in chunk:
            partial, ev = _level_add(partial + p, pe_bits, pe_mode)
            pe_events += ev
        acc, ev = _level_add(acc + partial, acc_bits, acc_mode)
        acc_events += ev
    return acc, pe_events, acc_events


def _to_int64(values: np.ndarray) -> np.ndarray:
    """Convert an object array of Python ints to int64, refusing (not wrapping) values that do not fit."""
    flat = [int(v) for v in values.reshape(-1)]
    for v in flat:
        if not fits(v, 64):
            raise OverflowError(f"value {v} does not fit in int64")
    return np.array(flat, dtype=np.int64).reshape(values.shape)


def _pair(v) -> tuple[int, int]:
    """An int or a 2-sequence as (height, width)."""
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def conv2d_acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int, groups: int,
               zp_x: int, dataflow: str = "os", rows: int = 16, pe_bits: int = 32, pe_mode: str = "exact",
               acc_bits: int = 32, acc_mode: str = "exact") -> tuple[np.ndarray, int, int]:
    """Conv accumulators (N, O, Ho, Wo) int64 = bias[o] + sum_k (x - zp_x) * w, k over (c_local, i, j), + event totals."""
    x = np.asarray(x)
    w = np.asarray(w)
    bias = np.asarray(bias)
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    groups = int(groups)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    zp_x = int(zp_x)
    if C % groups or O % groups or C // groups != Cg:
        raise ValueError(f"shapes x {x.shape}, w {w.shape} do not match groups={groups}")
    if bias.shape != (O,):
        raise ValueError(f"bias shape {bias.shape} != ({O},)")
    Ho = (H + 2 * ph - KH) // sh + 1
    Wo = (W + 2 * pw - KW) // sw + 1
    o_per_group = O // groups

    def pixel(n: int, c: int, h: int, ww: int) -> int:
        """x[n, c, h, ww], or zp_x outside the image (zero padding in real terms)."""
        if 0 <= h < H and 0 <= ww < W:
            return int(x[n, c, h, ww])
        return zp_x

    out = np.empty((N, O, Ho, Wo), dtype=object)
    pe_total = 0
    acc_total = 0
    for n in range(N):
        for o in range(O):
            g = o // o_per_group
            for oh in range(Ho):
                for ow in range(Wo):
                    products = []
                    for cl in range(Cg):            # k runs over (c_local, i, j): PyTorch layout
                        c = g * Cg + cl
                        for i in range(KH):
                            for j in range(KW):
                                xv = pixel(n, c, oh * sh - ph + i, ow * sw - pw + j)
                                products.append((xv - zp_x) * int(w[o, cl, i, j]))
                    value, pe_ev, acc_ev = accumulate(int(bias[o]), products, dataflow, rows,
                                                      pe_bits, pe_mode, acc_bits, acc_mode)
                    out[n, o, oh, ow] = value
                    pe_total += pe_ev
                    acc_total += acc_ev
    return _to_int64(out), pe_total, acc_total


def linear_acc(x: np.ndarray, w: np.ndarray, bias: np.ndarray, zp_x: int, **acc_kwargs) -> tuple[np.ndarray, int, int]:
    """Linear accumulators (N, O) = bias[o] + sum_k (x[n, k] - zp_x) * w[o, k], + event totals (a 1x1 conv)."""
    x = np.asarray(x)
    w = np.asarray(w)
    bias = np.asarray(bias)
    N, K = x.shape
    O, K2 = w.shape
    if K != K2 or bias.shape != (O,):
        raise ValueError(f"shapes x {x.shape}, w {w.shape}, bias {bias.shape} do not match")
    kw = dict(dataflow="os", rows=16, pe_bits=32, pe_mode="exact", acc_bits=32, acc_mode="exact")
    unknown = set(acc_kwargs) - set(kw)
    if unknown:
        raise TypeError(f"unknown accumulate options {sorted(unknown)}")
    kw.update(acc_kwargs)
    zp_x = int(zp_x)
    out = np.empty((N, O), dtype=object)
    pe_total = 0
    acc_total = 0
    for n in range(N):
        for o in range(O):
            products = [(int(x[n, k]) - zp_x) * int(w[o, k]) for k in range(K)]
            value, pe_ev, acc_ev = accumulate(int(bias[o]), products, kw["dataflow"], kw["rows"],
                                              kw["pe_bits"], kw["pe_mode"], kw["acc_bits"], kw["acc_mode"])
            out[n, o] = value
            pe_total += pe_ev
            acc_total += acc_ev
    return _to_int64(out), pe_total, acc_total


# ---------------------------------------------------------------------------------------------
# Requantization of whole tensors, residual add
# ---------------------------------------------------------------------------------------------

def _clamp(v: int, lo: int, hi: int) -> int:
    """min(max(v, lo), hi)."""
    return min(max(int(v), int(lo)), int(hi))


def requantize(acc: np.ndarray, m0: np.ndarray, n: np.ndarray, rounding: str, multiplier_bits: int,
               zp_y: int, lo: int, hi: int) -> np.ndarray:
    """Per output channel (axis 1): y = clamp(zp_y + requant_fixed(acc, m0[o], n[o]), lo, hi), int64."""
    acc = np.asarray(acc)
    m0 = np.asarray(m0).reshape(-1)
    n = np.asarray(n).reshape(-1)
    out = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(*acc.shape):
        o = idx[1]
        r = requant_fixed(int(acc[idx]), int(m0[o]), int(n[o]), rounding, multiplier_bits)
        out[idx] = _clamp(int(zp_y) + r, lo, hi)
    return out


def requantize_float(acc, multipliers_f32: np.ndarray, zp_y, lo, hi) -> np.ndarray:
    """Per output channel (axis 1): ORT MLAS requant_float with qmin=lo, qmax=hi, int64."""
    acc = np.asarray(acc)
    mult = np.asarray(multipliers_f32, dtype=np.float32).reshape(-1)
    out = np.empty(acc.shape, dtype=np.int64)
    for idx in np.ndindex(*acc.shape):
        out[idx] = requant_float(int(acc[idx]), mult[idx[1]], zp_y, lo, hi)
    return out


def add(a: np.ndarray, b: np.ndarray, zp_a: int, zp_b: int, m0_a: int, n_a: int, m0_b: int, n_b: int,
        add_frac_bits: int, rounding: str, multiplier_bits: int, zp_y: int, lo: int, hi: int) -> np.ndarray:
    """Residual add: t = requant_fixed(v - zp, m0, n - F) per input; y = clamp(zp_y + round_shift(t_a + t_b, F), lo, hi)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"add: shapes {a.shape} and {b.shape} differ")
    F = int(add_frac_bits)
    out = np.empty(a.shape, dtype=np.int64)
    for idx in np.ndindex(*a.shape):
        t_a = requant_fixed(int(a[idx]) - int(zp_a), m0_a, int(n_a) - F, rounding, multiplier_bits)
        t_b = requant_fixed(int(b[idx]) - int(zp_b), m0_b, int(n_b) - F, rounding, multiplier_bits)
        out[idx] = _clamp(int(zp_y) + round_shift(t_a + t_b, F, rounding), lo, hi)
    return out


# ---------------------------------------------------------------------------------------------
# Pooling, embedding, classifier
# ---------------------------------------------------------------------------------------------

def maxpool2d(x, kernel, stride, padding) -> np.ndarray:
    """Exact max pooling of (N, C, H, W); padded positions never win (treated as -inf)."""
    x = np.asarray(x)
    N, C, H, W = x.shape
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    best = None
                    for i in range(kh):
                        for j in range(kw):
                            h, ww = oh * sh - ph + i, ow * sw - pw + j
                            if 0 <= h < H and 0 <= ww < W:
                                v = int(x[n, c, h, ww])
                                if best is None or v > best:
                                    best = v
                    if best is None:
                        raise ValueError("maxpool2d: a window lies entirely in the padding")
                    out[n, c, oh, ow] = best
    return out


def avgpool_acc(x, kernel, stride, zp_x) -> np.ndarray:
    """Sum of (x - zp_x) over each kernel window (no padding) of (N, C, H, W), int64."""
    x = np.asarray(x)
    N, C, H, W = x.shape
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    Ho = (H - kh) // sh + 1
    Wo = (W - kw) // sw + 1
    out = np.empty((N, C, Ho, Wo), dtype=object)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    s = 0
                    for i in range(kh):
                        for j in range(kw):
                            s += int(x[n, c, oh * sh + i, ow * sw + j]) - int(zp_x)
                    out[n, c, oh, ow] = s
    return _to_int64(out)


def ort_avgpool(x, kernel, stride, pad, count_include_pad, s_x, zp_x, s_y, zp_y, lo, hi):
    """ONNX Runtime's QLinearAveragePool of (N, C, H, W) (the float mode's avgpool2d): each
    input dequantized to float32 ``s_x * (x - zp_x)``, a float32 running sum over the window's
    in-map positions row by row, divided by the float32 window size (or in-map count), by
    ``s_y``, plus ``zp_y`` in float32, rounded half to even, clamped to [lo, hi]."""
    f32 = np.float32
    x = np.asarray(x)
    N, C, H, W = x.shape
    Ho = (H + 2 * pad - kernel) // stride + 1
    Wo = (W + 2 * pad - kernel) // stride + 1
    out = np.empty((N, C, Ho, Wo), dtype=object)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                h0, h1 = max(oh * stride - pad, 0), min(oh * stride - pad + kernel, H)
                for ow in range(Wo):
                    w0, w1 = max(ow * stride - pad, 0), min(ow * stride - pad + kernel, W)
                    total = f32(0.0)
                    for i in range(h0, h1):
                        for j in range(w0, w1):
                            total = f32(total + f32(f32(s_x) * f32(int(x[n, c, i, j]) - int(zp_x))))
                    count = kernel * kernel if count_include_pad else (h1 - h0) * (w1 - w0)
                    v = f32(f32(f32(total / f32(count)) / f32(s_y)) + f32(zp_y))
                    q = int(np.rint(v)) if abs(float(v)) < 2.0**40 else (hi if v > 0 else lo)
                    out[n, c, oh, ow] = min(max(q, int(lo)), int(hi))
    return _to_int64(out)


def global_avgpool_acc(x, zp_x) -> np.ndarray:
    """Sum over H and W of (x - zp_x): (N, C, H, W) -> (N, C), int64."""
    x = np.asarray(x)
    N, C, H, W = x.shape
    out = np.empty((N, C), dtype=object)
    for n in range(N):
        for c in range(C):
            s = 0
            for h in range(H):
                for ww in range(W):
                    s += int(x[n, c, h, ww]) - int(zp_x)
            out[n, c] = s
    return _to_int64(out)


def concat_fixed(inputs: list, zps: list, m0s: list, ns: list, rounding: str, multiplier_bits: int,
                 zp_y: int, lo: int, hi: int, pow2: bool = False) -> np.ndarray:
    """Concat along axis 1 of (N, C, ...) tensors: input k's value v becomes
    clamp(zp_y + requant_fixed(v - zp_k, m0_k, n_k), lo, hi) (`pow2`: one rounding shift of
    (v - zp_k) * m0_k by n_k, whatever the rounding); int64."""
    parts = []
    for k, x in enumerate(inputs):
        x = np.asarray(x)
        out = np.empty(x.shape, dtype=np.int64)
        for idx in np.ndindex(*x.shape):
            v = int(x[idx]) - int(zps[k])
            r = round_shift(v * int(m0s[k]), int(ns[k]), rounding) if pow2 else \
                requant_fixed(v, int(m0s[k]), int(ns[k]), rounding, multiplier_bits)
            out[idx] = _clamp(int(zp_y) + r, lo, hi)
        parts.append(out)
    return _cat_channels(parts)


def concat_ort(inputs: list, scales: list, zps: list, s_y: float, zp_y: int, lo: int,
               hi: int) -> np.ndarray:
    """ONNX Runtime's QLinearConcat along axis 1: each value dequantized in float32,
    f = f32(s_k * f32(v - zp_k)), then QuantizeLinear: q = f32(f / s_y) rounded half to even,
    + zp_y, clamped to [lo, hi]; int64."""
    parts = []
    sy = np.float32(s_y)
    for k, x in enumerate(inputs):
        x = np.asarray(x)
        sk = np.float32(scales[k])
        out = np.empty(x.shape, dtype=np.int64)
        for idx in np.ndindex(*x.shape):
            f = np.float32(sk * _int_to_f32(int(x[idx]) - int(zps[k])))
            q = np.float32(f / sy)
            out[idx] = _clamp(_round_fraction(Fraction(float(q)), "half_even") + int(zp_y), lo, hi)
        parts.append(out)
    return _cat_channels(parts)


def _cat_channels(parts: list) -> np.ndarray:
    """Stack (N, C_k, ...) tensors channel after channel, by explicit copying."""
    n = parts[0].shape[0]
    total = sum(p.shape[1] for p in parts)
    out = np.empty((n, total, *parts[0].shape[2:]), dtype=np.int64)
    c0 = 0
    for p in parts:
        for c in range(p.shape[1]):
            out[:, c0 + c] = p[:, c]
        c0 += p.shape[1]
    return out


def slice_channels(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Channels start..stop-1 of (N, C, ...), copied one by one."""
    x = np.asarray(x)
    out = np.empty((x.shape[0], stop - start, *x.shape[2:]), dtype=x.dtype)
    for c in range(start, stop):
        out[:, c - start] = x[:, c]
    return out


def channel_shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    """ShuffleNet's shuffle of (N, C, ...): view the channels as a groups x (C/groups) matrix
    (row-major), transpose it and read it back row-major: output channel o = j*groups + i holds
    input channel i*(C/groups) + j."""
    x = np.asarray(x)
    C = x.shape[1]
    per = C // groups
    assert per * groups == C
    out = np.empty_like(x)
    for o in range(C):
        j, i = divmod(o, groups)
        out[:, o] = x[:, i * per + j]
    return out


def embed(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Pixel embedding: out[n, c*d + j, h, w] = lut[c, x[n, c, h, w], j]; (N, C, H, W) -> (N, C*d, H, W)."""
    x = np.asarray(x)
    lut = np.asarray(lut)
    N, C, H, W = x.shape
    C2, levels, d = lut.shape
    if C2 != C or levels != 256:
        raise ValueError(f"lut shape {lut.shape} does not match input channels {C} x 256 levels")
    out = np.empty((N, C * d, H, W), dtype=lut.dtype)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for ww in range(W):
                    pix = int(x[n, c, h, ww])
                    if not 0 <= pix <= 255:
                        raise ValueError(f"pixel {pix} is not a uint8 value")
                    for j in range(d):
                        out[n, c * d + j, h, ww] = lut[c, pix, j]
    return out


def argmax_lowest(v: np.ndarray) -> np.ndarray:
    """Argmax over axis 1, ties resolved to the lowest index; int64, axis 1 removed."""
    v = np.asarray(v)
    moved = np.moveaxis(v, 1, -1)  # (..., K)
    out = np.empty(moved.shape[:-1], dtype=np.int64)
    for idx in np.ndindex(*moved.shape[:-1]):
        row = moved[idx]
        best_k = 0
        for k in range(1, row.shape[0]):
            if row[k] > row[best_k]:   # strict: an equal later value never replaces an earlier one
                best_k = k
        out[idx] = best_k
    return out


# ---------------------------------------------------------------------------------------------
# Multiplier decomposition
# ---------------------------------------------------------------------------------------------

def quantize_multiplier_tflite(m: float) -> tuple[int, int]:
    """Literal port of TFLite QuantizeMultiplier (double-rounding build): m ~= q31 * 2^(shift - 31)."""
    m = float(m)
    if not math.isfinite(m):
        raise ValueError(f"multiplier must be finite, got {m}")
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)                                       # |q| in [0.5, 1)
    q_fixed = _round_fraction(Fraction(q) * (1 << 31), "half_away")  # TfLiteRound = std::round
    assert abs(q_fixed) <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:                                                # tiny multipliers flush to 0
        shift = 0
        q_fixed = 0
    # (the single-rounding build would also clamp shift > 30 here; the default build does not)
    assert q_fixed <= (1 << 31) - 1
    return q_fixed, shift
