"""Private numba kernels of the simulator. Call them only through `npusim.simulator`.

All integer work is int64 with explicit wrap/saturate to the modelled widths (DESIGN §2); the
only floats are in the `float` requantization mode. The rounding and wrap rules come from
`npusim.arith`, compiled into these kernels, so simulator and training library share them.
"""

from __future__ import annotations

import numba
import numpy as np

from npusim.arith import requant_one, requant_row, wrap

EXACT, WRAP, SATURATE = 0, 1, 2
MODE_CODES = {"exact": EXACT, "wrap": WRAP, "saturate": SATURATE}
OS, WS = 0, 1  # accumulation orders: one running sum, or chunks of `rows` down a column
ORDER_CODES = {"os": OS, "ws": WS, "is": WS}

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


@numba.njit(inline="always")
def _accumulate_point(x, w, bias, b, o, oy, ox, c0, stride, zp_x, order, rows,
                      pe_bits, pe_mode, acc_bits, acc_mode):
    """Order-faithful accumulation of one output (DESIGN §2): bias preloaded at the acc level;
    `os` adds each product in k order at acc_bits; `ws`/`is` sums chunks of `rows` products
    from 0 at pe_bits, then adds each chunk in order at acc_bits. Returns (acc, pe, acc events)."""
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    acc, acc_ovf = _level_add(0, bias[o], acc_bits, acc_mode)
    pe_ovf = 0
    ps = 0
    cnt = 0
    for c in range(cg):
        for i in range(kh):
            for j in range(kw):
                p = (x[b, c0 + c, oy * stride + i, ox * stride + j] - zp_x) * w[o, c, i, j]
                if order == OS:
                    acc, f = _level_add(acc, p, acc_bits, acc_mode)
                    acc_ovf += f
                else:
                    ps, f = _level_add(ps, p, pe_bits, pe_mode)
                    pe_ovf += f
                    cnt += 1
                    if cnt == rows:
                        acc, f = _level_add(acc, ps, acc_bits, acc_mode)
                        acc_ovf += f
                        ps = 0
                        cnt = 0
    if order != OS and cnt > 0:
        acc, f = _level_add(acc, ps, acc_bits, acc_mode)
        acc_ovf += f
    return acc, pe_ovf, acc_ovf


@numba.njit(parallel=True, cache=True)
def conv_kernel(x, w, bias, stride, groups, zp_x, order, rows, pe_bits, pe_mode, acc_bits,
                acc_mode, out, events):
    """Order-faithful integer convolution of pre-padded `x` (N, C, Hp, Wp) with `w`
    (O, C/groups, kh, kw): accumulators into `out` (N, O, Ho, Wo), events (N, 2) per image."""
    N = x.shape[0]
    O = w.shape[0]
    Ho, Wo = out.shape[2], out.shape[3]
    og = O // groups
    cg = w.shape[1]
    for b in numba.prange(N):
        pe_tot = 0
        acc_tot = 0
        for o in range(O):
            c0 = (o // og) * cg
            for oy in range(Ho):
                for ox in range(Wo):
                    acc, pe_ovf, acc_ovf = _accumulate_point(
                        x, w, bias, b, o, oy, ox, c0, stride, zp_x, order, rows,
                        pe_bits, pe_mode, acc_bits, acc_mode)
                    out[b, o, oy, ox] = acc
                    pe_tot += pe_ovf
                    acc_tot += acc_ovf
        events[b, 0] = pe_tot
        events[b, 1] = acc_tot


@numba.njit(parallel=True, cache=True)
def conv_points_kernel(x, w, bias, stride, groups, zp_x, order, rows, pe_bits, pe_mode,
                       acc_bits, acc_mode, points, vals, events):
    """`conv_kernel` for a list of outputs only: points (M, 4) = (n, o, oy, ox)."""
    og = w.shape[0] // groups
    cg = w.shape[1]
    for m in numba.prange(points.shape[0]):
        b, o, oy, ox = points[m, 0], points[m, 1], points[m, 2], points[m, 3]
        acc, pe_ovf, acc_ovf = _accumulate_point(
            x, w, bias, b, o, oy, ox, (o // og) * cg, stride, zp_x, order, rows,
            pe_bits, pe_mode, acc_bits, acc_mode)
        vals[m] = acc
        events[m, 0] = pe_ovf
        events[m, 1] = acc_ovf


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


@numba.njit(parallel=True, cache=True)
def im2col_i8_kernel(x, kh, kw, stride, pad, zp_x, sub, ho, wo, cols, colsum, outside):
    """im2col of ``x - sub`` as int8: ``cols[m, k]`` with m = (n, oy, ox) and k = (c, i, j);
    positions in the zero padding read ``zp_x - sub``. Per (k, n) also the weighted checksum
    ``colsum[k, n] = sum_m (1 + (m & 3)) * cols[m, k]`` that verifies the GEMM, and
    ``outside[k, n]``: whether a value read did not fit int8 (the result is unusable then)."""
    N, C, H, W = x.shape
    K = cols.shape[1]
    hw = ho * wo
    padv = zp_x - sub
    for t in numba.prange(K * N):  # image-major: one image's rows stay in cache
        b = t // K
        k = t - b * K
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        # output columns whose input column lies inside the image
        ox_lo = min(wo, max(0, (pad - j + stride - 1) // stride))
        ox_hi = max(ox_lo, min(wo, (W - 1 + pad - j) // stride + 1))
        ix0 = np.uint64(ox_lo * stride + j - pad)  # >= 0 when ox_lo < ox_hi
        plane = x[b, c]
        col = cols[:, k]
        bad = False
        s = 0
        for oy in range(ho):
            base = b * hw + oy * wo
            iy = oy * stride + i - pad
            if iy < 0 or iy >= H:
                for ox in range(wo):
                    col[np.uint64(base + ox)] = padv
                    s += (1 + ((base + ox) & 3)) * padv
                continue
            for ox in range(ox_lo):
                col[np.uint64(base + ox)] = padv
                s += (1 + ((base + ox) & 3)) * padv
            src = plane[np.uint64(iy)]
            for q in range(ox_hi - ox_lo):
                v = src[ix0 + np.uint64(q * stride)] - sub
                bad |= np.uint64(v + 128) > np.uint64(255)
                m = base + ox_lo + q
                col[np.uint64(m)] = v
                s += (1 + (m & 3)) * v
            for ox in range(ox_hi, wo):
                col[np.uint64(base + ox)] = padv
                s += (1 + ((base + ox) & 3)) * padv
        colsum[k, b] = s
        outside[k, b] = bad


@numba.njit(parallel=True, cache=True)
def gemm_epilogue_kernel(g, o_n, ho, wo, corr, bias, risk, pe_risk, acc_lo, acc_hi, pe_lo,
                         pe_hi, do_rq, m0, nsh, mf, scale_float, code, mbits, zp, lo, hi, out,
                         risky, mnmx, chk):
    """Accumulators from the transposed int32 GEMM `g` (rows: o_n outputs, then optionally
    o_n positive- and o_n negative-product sums; columns m = (n, oy, ox)): ``acc = g + corr``
    (corr holds the bias and the input-shift correction). Writes acc, or requantized acc when
    `do_rq`, into `out` (N, O, Ho, Wo); when `risk`, flags in `risky` the outputs whose
    bounds ``[bias - neg, bias + pos]`` (acc level) or ``[-neg, pos]`` (pe level, when
    `pe_risk`) leave the level's range. Per (o, n): the accumulators' min and max, and the
    weighted checksum of every GEMM row (see `im2col_i8_kernel`)."""
    N = out.shape[0]
    hw = ho * wo
    nq = g.shape[0] // o_n
    out3 = out.reshape(N, out.shape[1], hw)
    risky3 = risky.reshape(risky.shape[0], risky.shape[1], -1)
    for t in numba.prange(o_n * N):
        o = t // N
        b = t - o * N
        mn = _I64_MAX
        mx = _I64_MIN
        base = b * hw
        c0 = corr[o]
        s0 = 0
        for p in range(hw):
            m = base + p
            gv = np.int64(g[o, m])
            s0 += (1 + (m & 3)) * gv
            acc = gv + c0
            mn = min(mn, acc)
            mx = max(mx, acc)
            out3[b, o, p] = acc
        if do_rq:
            row = out3[b, o]
            requant_row(row, row, m0[o], nsh[o], mf[o], scale_float, code, mbits, zp, lo, hi)
        chk[o, b] = s0
        mnmx[o, b, 0] = mn
        mnmx[o, b, 1] = mx
        if nq > 1:
            s1 = 0
            s2 = 0
            cp = corr[o_n + o]
            cn = corr[2 * o_n + o]
            for p in range(hw):
                m = base + p
                gp = np.int64(g[o_n + o, m])
                gn = np.int64(g[2 * o_n + o, m])
                s1 += (1 + (m & 3)) * gp
                s2 += (1 + (m & 3)) * gn
                if risk:
                    pos = gp + cp
                    neg = gn + cn
                    flag = bias[o] - neg < acc_lo or bias[o] + pos > acc_hi
                    if pe_risk and (-neg < pe_lo or pos > pe_hi):
                        flag = True
                    risky3[b, o, p] = flag
            chk[o_n + o, b] = s1
            chk[2 * o_n + o, b] = s2


@numba.njit(parallel=True, cache=True)
def nonzero_count_kernel(x, zp_x, out):
    """out[c, h, w] = number of images whose input at (c, h, w) differs from zp_x."""
    N, C, H, W = x.shape
    for c in numba.prange(C):
        for h in range(H):
            for w_ in range(W):
                out[c, h, w_] = 0
        for b in range(N):
            for h in range(H):
                for w_ in range(W):
                    out[c, h, w_] += x[b, c, h, w_] != zp_x


__all__ = ["conv_kernel", "conv_points_kernel", "pool_kernel", "embed_kernel",
           "im2col_i8_kernel", "gemm_epilogue_kernel", "nonzero_count_kernel", "MODE_CODES",
           "ORDER_CODES"]
