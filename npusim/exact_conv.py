"""Exact integer convolution through a GEMM, when a bound proves it exact.

Two engines, both an explicit im2col plus a GEMM (library convolutions are not used: fast
algorithms such as Winograd or FFT are inexact, and even PyTorch's plain CPU conv was observed
to return non-integers for integer inputs well below 2^24):

- **int8**: when the inputs, shifted by one constant, and the weights fit int8, and the weight
  L1 bound proves every partial sum below 2^31, the GEMM is ``torch._int_mm`` (int8 x int8 ->
  int32; oneDNN's VNNI/AMX kernels), the shift corrected per output channel in int64. Integer
  GEMMs on CPUs without VNNI may saturate 16-bit intermediates, so the engine is self-tested
  once per process on extreme operands and every call is verified by a weighted checksum
  (``r^T (A B) == (r^T A) B`` in int64); a mismatch raises `InexactError`. torch is imported
  lazily and is optional (``NPUSIM_INT8_GEMM=0`` turns the engine off).
- **float**: integer sums are exact in float32 below 2^24 and in float64 below 2^53 when they
  are computed as plain multiply-adds, as a BLAS GEMM does; the result is checked integral.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from npusim import kernels as K

log = logging.getLogger(__name__)

F32_EXACT = 2 ** 24
F64_EXACT = 2 ** 53
_BLOCK_ELEMS = 1 << 22  # im2col elements per block (32 MB in float64)
INT32_EXACT = 2 ** 31
_INT8_OK: bool | None = None  # engine state: None = not yet tested


class InexactError(ArithmeticError):
    """The float convolution did not return integers (an exactness assumption broke)."""


def l1_bound(x: np.ndarray, w: np.ndarray) -> int:
    """max|x| times the largest per-output-channel sum of |w|: bounds every partial sum."""
    o = w.shape[0]
    xmax = int(np.abs(x).max(initial=0))
    return xmax * int(np.abs(w.reshape(o, -1)).sum(axis=1).max(initial=0))


def exact_conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0,
                 groups: int = 1, bound: int | None = None) -> np.ndarray:
    """``conv2d(x, w)`` of integer arrays (N, C, H, W) x (O, C/g, kh, kw) as int64, exactly,
    with zero padding. Raises ValueError when no float type is provably exact (bound >= 2^53)
    and InexactError if the GEMM result is not integral."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    if groups == 1 and x.size and x.dtype.kind in "iu":
        plan = prepare_int8_conv(w, stride, padding, 0, int(x.min()), int(x.max()))
        if plan is not None:
            g = int8_conv_gemm(np.ascontiguousarray(x), plan, (ho, wo))
            if g is not None:
                return gemm_to_nchw(g, plan, n, (ho, wo), plan.shift * plan.colsum)
    bound = l1_bound(x, w) if bound is None else bound
    if bound >= F64_EXACT:
        raise ValueError("partial sums may reach 2^53: no exact float convolution")
    dtype = np.float32 if bound < F32_EXACT else np.float64
    xf = x.astype(dtype, copy=False)
    if padding:
        xf = np.pad(xf, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = np.lib.stride_tricks.sliding_window_view(xf, (kh, kw), axis=(2, 3))
    win = win[:, :, : (ho - 1) * stride + 1 : stride, : (wo - 1) * stride + 1 : stride]
    out = np.empty((n, o, ho, wo), dtype)
    og = o // groups
    wf = w.astype(dtype)
    if groups == c and cg == 1 and og == 1:  # depthwise: multiply-adds per channel
        out[:] = np.einsum("nchwij,cij->nchw", win, wf[:, 0], optimize=False)
    else:
        k = cg * kh * kw
        per = max(1, _BLOCK_ELEMS // max(ho * wo * k, 1))
        for g in range(groups):
            wmat = wf[g * og:(g + 1) * og].reshape(og, k).T
            for s in range(0, n, per):
                e = min(n, s + per)
                cols = win[s:e, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(-1, k)
                res = cols @ wmat
                out[s:e, g * og:(g + 1) * og] = res.reshape(e - s, ho, wo, og).transpose(0, 3, 1, 2)
    result = out.astype(np.int64)
    if not np.array_equal(result, out):
        raise InexactError("float convolution returned non-integers")
    return result


# --------------------------------------------------------------------------- int8 engine
def _self_test(mm) -> bool:
    """Extreme and random int8 operands over the shape classes the kernels dispatch on."""
    rng = np.random.default_rng(1234)
    for m, k, n in [(1, 9, 16), (7, 3, 5), (64, 144, 16), (784, 144, 48), (392, 1152, 64)]:
        for a_val, b_val in [(-128, -128), (127, 127), (-128, 127), (None, None)]:
            if a_val is None:
                a = rng.choice(np.array([-128, 127, -127, 0, 1], np.int8), size=(m, k))
                b = rng.choice(np.array([-128, 127, -1, 0], np.int8), size=(k, n))
            else:
                a = np.full((m, k), a_val, np.int8)
                b = np.full((k, n), b_val, np.int8)
            if m * k * 128 * 128 >= INT32_EXACT:
                continue
            if not np.array_equal(mm(a, b), a.astype(np.int64) @ b.astype(np.int64)):
                return False
    return True


def int8_gemm_available() -> bool:
    """Whether the exact int8 GEMM engine can be used in this process (tested once)."""
    global _INT8_OK
    if _INT8_OK is None:
        _INT8_OK = False
        if os.environ.get("NPUSIM_INT8_GEMM", "1") != "0":
            try:
                _INT8_OK = _self_test(_int_mm)
            except Exception as e:  # no torch, or no CPU _int_mm in this torch build
                log.info("int8 GEMM engine unavailable (%s); using the float engine", e)
            if not _INT8_OK:
                log.warning("int8 GEMM engine failed its exactness self-test; float engine used")
    return _INT8_OK


_GEMM_PARALLEL_MIN_MACS = 1 << 26  # smaller GEMMs run on one torch thread


def _canonical(a: np.ndarray) -> np.ndarray:
    """`a` with row-major strides in every dimension, size-1 ones included (torch._int_mm
    reads a (1, N) operand with strides (1, 1), which NumPy calls contiguous, wrongly)."""
    want = tuple(int(np.prod(a.shape[i + 1:])) * a.itemsize for i in range(a.ndim))
    return a if a.strides == want else np.array(a, order="C", copy=True)


def _int_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int8 (M, K) x int8 (K, N) -> int32 (M, N) through torch._int_mm (strided views are
    fine). Small products run on one thread: waking torch's pool costs more than the work."""
    import torch

    ta, tb = torch.from_numpy(_canonical(a)), torch.from_numpy(_canonical(b))
    if a.shape[0] * a.shape[1] * b.shape[1] >= _GEMM_PARALLEL_MIN_MACS:
        return torch._int_mm(ta, tb).numpy()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch._int_mm(ta, tb).numpy()
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Int8Conv:
    """A conv's weights prepared for the int8 engine (groups == 1).

    Rows of `wmat` (q, K): the weights, then (with `signs`) their positive and negative
    parts, each (O, K); inputs enter as ``x - sub`` with ``sub = zp_x + shift`` and the shift is
    corrected with ``shift * colsum``.
    """

    wmat: np.ndarray
    colsum: np.ndarray
    shift: int
    sub: int
    zp_x: int
    o: int
    kh: int
    kw: int
    stride: int
    padding: int
    signs: bool
    wmat_t: np.ndarray  # (K, q) contiguous


def prepare_int8_conv(w: np.ndarray, stride: int, padding: int, zp_x: int, xs_lo: int,
                      xs_hi: int, signs: bool = False) -> Int8Conv | None:
    """Prepare `w` (O, C, kh, kw) for inputs with ``x - zp_x`` in [xs_lo, xs_hi], or None when
    the int8 engine cannot prove the convolution exact (or is unavailable).

    `signs` adds the positive/negative product sums (needs ``xs_lo >= 0``)."""
    if padding:
        xs_lo, xs_hi = min(xs_lo, 0), max(xs_hi, 0)
    if signs and xs_lo < 0:
        return None
    w = np.asarray(w)
    if w.size == 0 or w.min() < -128 or w.max() > 127 or xs_hi - xs_lo > 255:
        return None
    shift = 0 if (xs_lo >= -128 and xs_hi <= 127) else xs_lo + 128
    o = w.shape[0]
    wm = w.reshape(o, -1).astype(np.int64)
    mats = [wm, np.maximum(wm, 0), np.maximum(-wm, 0)] if signs else [wm]
    xmax = max(abs(xs_lo - shift), abs(xs_hi - shift))
    if xmax * int(np.abs(wm).sum(axis=1).max()) >= INT32_EXACT:
        return None
    if any(m.max(initial=0) > 127 for m in mats) or not int8_gemm_available():
        return None
    wmat = np.ascontiguousarray(np.concatenate(mats).astype(np.int8))
    return Int8Conv(wmat, wmat.astype(np.int64).sum(axis=1), shift, zp_x + shift, zp_x, o,
                    w.shape[2], w.shape[3], stride, padding, signs, np.ascontiguousarray(wmat.T))


@dataclass
class Int8Gemm:
    """The int8 engine's raw result: ``g`` (q, N*Ho*Wo) int32, transposed, and the weighted
    checksum of its rows per image that an exact GEMM must reproduce (`verify`)."""

    g: np.ndarray
    expected: np.ndarray

    def verify(self, chk: np.ndarray) -> None:
        """Raise InexactError unless `chk` (q, N), computed from `g`, matches."""
        if not np.array_equal(chk.sum(axis=1), self.expected):
            raise InexactError("int8 GEMM checksum mismatch: the engine is not exact here")


def int8_conv_gemm(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int]) -> Int8Gemm | None:
    """The raw int32 GEMM of raw inputs `x` (N, C, H, W; zero point included) under `plan`,
    or None when some input lies outside the range the plan was proved for. Add
    ``plan.shift * plan.colsum`` (and the bias) to get the sums."""
    n = x.shape[0]
    ho, wo = out_hw
    k = plan.wmat.shape[1]
    cols = np.empty((n * ho * wo, k), np.int8)
    colsum = np.empty((k, n), np.int64)
    outside = np.zeros((k, n), np.bool_)
    K.im2col_i8_kernel(x, plan.kh, plan.kw, plan.stride, plan.padding, plan.zp_x, plan.sub,
                       ho, wo, cols, colsum, outside)
    if outside.any():
        return None
    # (M, K) x (K, q): oneDNN is much faster with the long dimension first; the result is
    # used transposed, (q, M). Operands must be contiguous (strided views gave wrong sums)
    g = _int_mm(cols, plan.wmat_t).T
    return Int8Gemm(g, plan.wmat.astype(np.int64) @ colsum.sum(axis=1))


_EMPTY_I64 = np.zeros(0, np.int64)
_EMPTY_F32 = np.zeros(0, np.float32)


def gemm_to_nchw(res: Int8Gemm, plan: Int8Conv, n: int, out_hw: tuple[int, int],
                 corr: np.ndarray) -> np.ndarray:
    """``g + corr`` of the plan's first O rows as int64 (N, O, Ho, Wo), checksum verified."""
    ho, wo = out_hw
    out = np.empty((n, plan.o, ho, wo), np.int64)
    chk = np.empty((res.g.shape[0], n), np.int64)
    K.gemm_epilogue_kernel(res.g, plan.o, ho, wo, np.asarray(corr, np.int64), _EMPTY_I64, False,
                           False, 0, 0, 0, 0, False, _EMPTY_I64, _EMPTY_I64, _EMPTY_F32, False,
                           0, 32, 0, 0, 0, out, np.zeros((1, 1, 1, 1), np.bool_),
                           np.empty((plan.o, n, 2), np.int64), chk)
    res.verify(chk)
    return out
