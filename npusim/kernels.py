"""Private numba kernels of the simulator. Call them only through `npusim.simulator`.

All integer work is int64 with explicit wrap/saturate to the modelled widths (DESIGN §2); the
only floats are in the `float` requantization mode. The rounding and wrap rules come from
`npusim.arith`, compiled into these kernels, so simulator and training library share them.
"""

from __future__ import annotations

import numba
import numpy as np

from npusim.arith import TFLITE_DOUBLE, requant_one, wrap

EXACT, WRAP, SATURATE = 0, 1, 2
MODE_CODES = {"exact": EXACT, "wrap": WRAP, "saturate": SATURATE}
OS, WS = 0, 1  # accumulation orders: one running sum, or chunks of `rows` down a column
ORDER_CODES = {"os": OS, "ws": WS, "is": WS}

# Per-image statistics slots written by the accumulating kernels.
ST_PE_OVF, ST_ACC_OVF, ST_NZ, ST_RUN_MIN, ST_RUN_MAX, ST_PE_MIN, ST_PE_MAX, ST_ACC_MIN, ST_ACC_MAX = range(9)
N_STATS = 9

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


@numba.njit(inline="always")
def _level_add(held, v, bits, mode):
    """One addition at a level: returns (new value, 1 if the exact result overflowed)."""
    s = held + v
    hi = (1 << (bits - 1)) - 1
    lo = -hi - 1
    if s > hi or s < lo:
        if mode == WRAP:
            s = wrap(s, bits)
        elif mode == SATURATE:
            s = hi if s > hi else lo
        return s, 1
    return s, 0


@numba.njit(parallel=True, cache=True)
def conv_kernel(x, w, bias, stride, groups, zp_x,
                order, rows, pe_bits, pe_mode, acc_bits, acc_mode,
                requant, m0, nshift, mf, scale_float, code, mbits, zp_y, lo, hi,
                out, stats):
    """Order-faithful integer convolution of pre-padded `x` with fused requantization.

    x (N, C, Hp, Wp) int64 padded with zp_x; w (O, C/groups, kh, kw) int64; out (N, O, Ho, Wo)
    receives requantized values (or raw accumulators when `requant` is 0); stats (N, N_STATS).
    """
    N = x.shape[0]
    O, cg, kh, kw = w.shape
    Ho, Wo = out.shape[2], out.shape[3]
    og = O // groups
    for b in numba.prange(N):
        pe_ovf = 0
        acc_ovf = 0
        nz = 0
        run_min = _I64_MAX
        run_max = _I64_MIN
        pe_min = _I64_MAX
        pe_max = _I64_MIN
        acc_min = _I64_MAX
        acc_max = _I64_MIN
        for o in range(O):
            c0 = (o // og) * cg
            for oy in range(Ho):
                for ox in range(Wo):
                    acc, f = _level_add(0, bias[o], acc_bits, acc_mode)
                    acc_ovf += f
                    ps = 0
                    cnt = 0
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                xv = x[b, c0 + c, oy * stride + i, ox * stride + j] - zp_x
                                wv = w[o, c, i, j]
                                p = xv * wv
                                if p != 0:
                                    nz += 1
                                if order == OS:
                                    acc, f = _level_add(acc, p, acc_bits, acc_mode)
                                    acc_ovf += f
                                    if acc < run_min:
                                        run_min = acc
                                    if acc > run_max:
                                        run_max = acc
                                else:
                                    ps, f = _level_add(ps, p, pe_bits, pe_mode)
                                    pe_ovf += f
                                    if ps < pe_min:
                                        pe_min = ps
                                    if ps > pe_max:
                                        pe_max = ps
                                    cnt += 1
                                    if cnt == rows:
                                        acc, f = _level_add(acc, ps, acc_bits, acc_mode)
                                        acc_ovf += f
                                        if acc < run_min:
                                            run_min = acc
                                        if acc > run_max:
                                            run_max = acc
                                        ps = 0
                                        cnt = 0
                    if order != OS and cnt > 0:
                        acc, f = _level_add(acc, ps, acc_bits, acc_mode)
                        acc_ovf += f
                        if acc < run_min:
                            run_min = acc
                        if acc > run_max:
                            run_max = acc
                    if acc < acc_min:
                        acc_min = acc
                    if acc > acc_max:
                        acc_max = acc
                    if requant:
                        out[b, o, oy, ox] = requant_one(acc, m0[o], nshift[o], mf[o], scale_float,
                                                     code, mbits, zp_y, lo, hi)
                    else:
                        out[b, o, oy, ox] = acc
        stats[b, ST_PE_OVF] = pe_ovf
        stats[b, ST_ACC_OVF] = acc_ovf
        stats[b, ST_NZ] = nz
        stats[b, ST_RUN_MIN] = run_min
        stats[b, ST_RUN_MAX] = run_max
        stats[b, ST_PE_MIN] = pe_min
        stats[b, ST_PE_MAX] = pe_max
        stats[b, ST_ACC_MIN] = acc_min
        stats[b, ST_ACC_MAX] = acc_max


@numba.njit(parallel=True, cache=True)
def pool_kernel(x, kernel, stride, is_max, zp_x, m0, nshift, mf, scale_float, code, mbits,
                zp_y, lo, hi, out):
    """Max pooling (exact; x pre-padded with the int64 minimum) or average pooling (sum of
    x - zp_x over the window, then requantized with M = s_in / (k*k*s_out))."""
    N, C = x.shape[0], x.shape[1]
    Ho, Wo = out.shape[2], out.shape[3]
    for b in numba.prange(N):
        for c in range(C):
            for oy in range(Ho):
                for ox in range(Wo):
                    if is_max:
                        m = _I64_MIN
                        for i in range(kernel):
                            for j in range(kernel):
                                v = x[b, c, oy * stride + i, ox * stride + j]
                                if v > m:
                                    m = v
                        out[b, c, oy, ox] = m
                    else:
                        s = 0
                        for i in range(kernel):
                            for j in range(kernel):
                                s += x[b, c, oy * stride + i, ox * stride + j] - zp_x
                        out[b, c, oy, ox] = requant_one(s, m0, nshift, mf, scale_float, code,
                                                     mbits, zp_y, lo, hi)


@numba.njit(parallel=True, cache=True)
def embed_kernel(x, lut, out):
    """out[n, c*d + j, h, w] = lut[c, x[n, c, h, w], j]."""
    N, C, H, W = x.shape
    d = lut.shape[2]
    for b in numba.prange(N):
        for c in range(C):
            for h in range(H):
                for w_ in range(W):
                    p = x[b, c, h, w_]
                    for j in range(d):
                        out[b, c * d + j, h, w_] = lut[c, p, j]


__all__ = ["conv_kernel", "pool_kernel", "embed_kernel", "MODE_CODES",
           "ORDER_CODES", "N_STATS", "TFLITE_DOUBLE"]
