"""The float engine: exact integer convolution (NCHW int64 in and out) as an explicit im2col
plus a float GEMM, when a bound proves it exact.

Integer sums are exact in float32 below 2^24 and in float64 below 2^53 when they are computed
as plain multiply-adds, as a BLAS GEMM does; the result is checked integral. (Library float
convolutions are not used: fast algorithms such as Winograd or FFT are inexact, and PyTorch's
CPU conv without oneDNN was observed to return non-integers for integer inputs well below
2^24.) Which engine computes a conv is chosen in `npusim.sim.engines`, not here.
"""

from __future__ import annotations

import numpy as np

F32_EXACT = 2 ** 24
F64_EXACT = 2 ** 53
_BLOCK_ELEMS = 1 << 22  # im2col elements per block (32 MB in float64)


class InexactError(ArithmeticError):
    """An exactness check of a fast engine failed (non-integer sums, a wrong verification)."""


def l1_bound(x: np.ndarray, w: np.ndarray) -> int:
    """max|x| times the largest per-output-channel sum of |w|: bounds every partial sum."""
    o = w.shape[0]
    xmax = int(np.abs(x).max(initial=0))
    return xmax * int(np.abs(w.reshape(o, -1)).sum(axis=1).max(initial=0))


def exact_conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0,
                 groups: int = 1, bound: int | None = None) -> np.ndarray:
    """``conv2d(x, w)`` of integer arrays (N, C, H, W) x (O, C/g, kh, kw) as int64, exactly,
    with zero padding, by a float GEMM. Raises ValueError when no float type is provably exact
    (bound >= 2^53) and InexactError if the GEMM result is not integral."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
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


