"""Private numba kernels of the simulator. Call them only through `npusim.sim.simulator`.

All integer work is int64 with explicit wrap/saturate to the modelled widths (docs/architecture.md); the
only floats are in the `float` requantization mode and the int8 engine's sums, which arrive
as float32 holding exact integers (`npusim.sim.int8_engine`). Activations are channels last
(N, H, W, C) in narrow dtypes; the order-faithful conv kernels take NCHW int64 copies. The rounding and wrap rules come from
`npusim.ir.arith`, compiled into these kernels, so simulator and training library share them.

Compile time: per-element helpers are inlined (``inline="always"``: a call per row made the
epilogue 1.7-3x slower), but a task's whole body (`_epilogue_task`, `fused_risk_task`,
`int8_tiles._tiles`, `screen_pixels_task`, ...) is a plain njit function (cached on disk), called
once per task: compiled once per signature and shared by every kernel and process that calls
it, where inlined each caller typed and compiled it again.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from npusim.ir.arith import (
    F64_EXACT_PRODUCT,
    ort_avgpool_one,
    requant_fma_one,
    requant_fma_terms,
    requant_one,
    requant_span,
    requant_span_f64,
    wrap,
)
from npusim.sim import lanes16 as L16
from npusim.sim import lanes32 as L32

EXACT, WRAP, SATURATE = 0, 1, 2
MODE_CODES = {"exact": EXACT, "wrap": WRAP, "saturate": SATURATE}
OS, WS = 0, 1  # accumulation orders: one running sum, or chunks of `rows` down a column
ORDER_CODES = {"os": OS, "ws": WS, "is": WS}



class LevelSpec(NamedTuple):
    """Accumulation order and the two levels' widths and overflow modes (one record the
    kernels take)."""

    order: int
    rows: int
    pe_bits: int
    pe_mode: int
    acc_bits: int
    acc_mode: int


_I32_MAX = np.int32(2 ** 31 - 1)
_I32_MIN = np.int32(-(2 ** 31))
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
def _level_bounds(lv):
    """(acc_hi, acc_lo, pe_hi, pe_lo) of `lv`'s levels; the pe level's unbounded in the os
    order (it has none)."""
    acc_hi = (1 << (lv.acc_bits - 1)) - 1
    pe_hi = (1 << (lv.pe_bits - 1)) - 1 if lv.order != OS else _I64_MAX
    return acc_hi, -acc_hi - 1, pe_hi, -pe_hi - 1


@numba.njit(inline="always")
def _walk_one(patch, wr, k0, k1, a, lv, skip0):
    """One output's products ``patch[k] * wr[k]``, k in [k0, k1) (k0 a pe chunk's start in
    the ws/is order), added to its held value `a` as `_accumulate_point` adds them (zero
    products skipped where `skip0`: wrap/saturate levels, where they change nothing).
    Returns (held value, pe events, acc events)."""
    pe_ev = 0
    acc_ev = 0
    if lv.order != OS:
        for c0 in range(k0, k1, lv.rows):
            ps = 0
            for k in range(c0, min(k1, c0 + lv.rows)):
                if skip0 and patch[k] == 0:
                    continue
                ps, f = _level_add(ps, patch[k] * wr[k], lv.pe_bits, lv.pe_mode)
                pe_ev += f
            a, f = _level_add(a, ps, lv.acc_bits, lv.acc_mode)
            acc_ev += f
    else:
        for k in range(k0, k1):
            if skip0 and patch[k] == 0:
                continue
            a, f = _level_add(a, patch[k] * wr[k], lv.acc_bits, lv.acc_mode)
            acc_ev += f
    return a, pe_ev, acc_ev


@numba.njit(inline="always")
def _accumulate_point(x, w, bias, b, o, oy, ox, c0, stride, zp_x, lv):
    """Order-faithful accumulation of one output (docs/architecture.md): bias preloaded at the acc level;
    `os` adds each product in k order at acc_bits; `ws`/`is` sums chunks of `rows` products
    from 0 at pe_bits, then adds each chunk in order at acc_bits (`lv`: a `LevelSpec`).
    Returns (acc, pe, acc events)."""
    order, rows, pe_bits, pe_mode = lv.order, lv.rows, lv.pe_bits, lv.pe_mode
    acc_bits, acc_mode = lv.acc_bits, lv.acc_mode
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
def conv_kernel(x, w, bias, stride, groups, zp_x, lv, out, events):
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
                        x, w, bias, b, o, oy, ox, c0, stride, zp_x, lv)
                    out[b, o, oy, ox] = acc
                    pe_tot += pe_ovf
                    acc_tot += acc_ovf
        events[b, 0] = pe_tot
        events[b, 1] = acc_tot


@numba.njit(parallel=True, cache=True)
def conv_points_kernel(x, w, bias, stride, groups, zp_x, lv, points, vals, events):
    """`conv_kernel` for a list of outputs only, points (M, 4) = (n, o, oy, ox), of pre-padded
    channels-last `x` (N, Hp, Wp, C), read through an NCHW view (typed with any layout here:
    one signature per dtype, where a view made by the caller had a layout per shape). The
    tests' one-output reference for the faster walks (`points_screen_kernel`, the lanes)."""
    og = w.shape[0] // groups
    cg = w.shape[1]
    xt = x.transpose(0, 3, 1, 2)
    for m in numba.prange(points.shape[0]):
        b, o, oy, ox = points[m, 0], points[m, 1], points[m, 2], points[m, 3]
        acc, pe_ovf, acc_ovf = _accumulate_point(
            xt, w, bias, b, o, oy, ox, (o // og) * cg, stride, zp_x, lv)
        vals[m] = acc
        events[m, 0] = pe_ovf
        events[m, 1] = acc_ovf


_POINT_TASK = 16  # outputs per task of `points_screen_kernel` (a pixel's patch made once)


@numba.njit(parallel=True, cache=True)
def points_screen_kernel(x, wt, bias, kh, kw, stride, pad, zp_x, groups, lv, points, gch,
                         vals, events):
    """`conv_points_kernel`'s outputs, each screened chunk by chunk instead of walked whole:
    its products (the k order (c, i, j)) cut into chunks of `gch` whole input channels
    (``gch * kh * kw`` products; in the ws/is order a multiple of ``rows``, so chunks are
    whole pe chunks); where every running sum a chunk can make, in [s + neg, s + pos] at the
    acc level and [neg, pos] at the pe level (`screen_walk_kernel`'s test), fits, the held
    value takes the chunk's sum at once, else the chunk is walked product by product. Values
    and events are the walk's. The weights `wt` (O, kh * kw, C / groups) and each pixel's
    patch ``x - zp_x`` (0 in the padding; raw channels-last `x`) are held position by
    position, channels contiguous, so the per-channel sums and positive sums run down whole
    rows of channels in SIMD lanes (the (c, i, j) order scattered the patch's stores and
    summed chunks of 64 in 4 lanes: ResNet-18 224 b32 at 16 bits, its four few-flag layers'
    21,361 outputs, 15.7 -> 4 ms); a chunk that must be walked gathers its products into the
    k order. `wt`'s integer type holds every product's per-channel sum (int32 where the
    caller proves it); consecutive points at one pixel share its patch."""
    O, khw, cg = wt.shape
    og = O // groups
    acc_hi, acc_lo, pe_hi, pe_lo = _level_bounds(lv)
    skip0 = lv.acc_mode != EXACT and (lv.order == OS or lv.pe_mode != EXACT)
    n = points.shape[0]
    T = _POINT_TASK
    for task in numba.prange((n + T - 1) // T):
        patch = np.empty((khw, cg), wt.dtype)
        sc = np.empty(cg, wt.dtype)  # per channel over the kernel positions: sum, positive sum
        pc = np.empty(cg, wt.dtype)
        pk = np.empty(gch * khw, np.int64)  # a walked chunk's products' operands, k order
        wk = np.empty(gch * khw, np.int64)
        at = (-1, -1, -1, -1)
        for m in range(task * T, min(n, task * T + T)):
            b, o, oy, ox = points[m, 0], points[m, 1], points[m, 2], points[m, 3]
            c0 = (o // og) * cg
            if (b, oy, ox, c0) != at:
                _patch_rows(x, b, oy, ox, c0, cg, kh, kw, stride, pad, zp_x, patch)
                at = (b, oy, ox, c0)
            wo_ = wt[o]
            sc[:] = 0
            pc[:] = 0
            for t in range(khw):
                pr = patch[t]
                wr = wo_[t]
                for c in range(cg):
                    p = pr[c] * wr[c]
                    sc[c] += p
                    pc[c] += max(p, 0)
            held, acc_ev = _level_add(0, bias[o], lv.acc_bits, lv.acc_mode)
            pe_ev = 0
            for ca in range(0, cg, gch):
                cb = min(cg, ca + gch)
                sm = 0
                pos = 0
                for c in range(ca, cb):
                    sm += np.int64(sc[c])
                    pos += np.int64(pc[c])
                neg = sm - pos
                if held + pos <= acc_hi and held + neg >= acc_lo and pos <= pe_hi and \
                        neg >= pe_lo:
                    held += sm
                    continue
                nk = 0
                for c in range(ca, cb):
                    for t in range(khw):
                        pk[nk] = patch[t, c]
                        wk[nk] = wo_[t, c]
                        nk += 1
                held, fp, fa = _walk_one(pk, wk, 0, nk, held, lv, skip0)
                pe_ev += fp
                acc_ev += fa
            vals[m] = held
            events[m, 0] = pe_ev
            events[m, 1] = acc_ev


@numba.njit(inline="always")
def _patch_rows(x, b, oy, ox, c0, cg, kh, kw, stride, pad, zp_x, patch):
    """`_patch` held position by position: ``patch[i * kw + j, c]`` (channels contiguous)."""
    H, W = x.shape[1], x.shape[2]
    for i in range(kh):
        iy = oy * stride + i - pad
        for j in range(kw):
            ix = ox * stride + j - pad
            dst = patch[i * kw + j]
            if iy < 0 or iy >= H or ix < 0 or ix >= W:
                dst[:] = 0
            else:
                src = x[b, iy, ix, c0:c0 + cg]
                for c in range(cg):
                    dst[c] = src[c] - zp_x


_WALK_TILE = 8  # pixels per task of `conv_walk_kernel` (they share each weight row)
_WALK_LANES = 128  # output channels per block (the tile's running sums stay in L1)


@numba.njit(inline="always")
def _walk_add(held, cnt, v, n, bits, mode):
    """`_level_add` on lanes: ``held[:n] += v[:n]`` at `bits` in `mode`, the additions whose
    exact result left the range counted into `cnt` (int32 lanes, no branch per lane)."""
    hi = np.int32((1 << (bits - 1)) - 1)
    lo = np.int32(-hi - 1)
    mask = np.int32((1 << bits) - 1)
    if mode == WRAP:
        for o in range(n):
            s = np.int32(held[o] + v[o])
            r = np.int32(((s - lo) & mask) + lo)
            cnt[o] += np.int32(r != s)
            held[o] = r
    elif mode == SATURATE:
        for o in range(n):
            s = np.int32(held[o] + v[o])
            r = min(max(s, lo), hi)
            cnt[o] += np.int32(r != s)
            held[o] = r
    else:
        for o in range(n):
            s = np.int32(held[o] + v[o])
            cnt[o] += np.int32((s > hi) | (s < lo))
            held[o] = s


@numba.njit(inline="always")
def _walk_products(held, cnt, wrow, xv, n, bits, mode):
    """`_walk_add` of the products ``xv * wrow[:n]``."""
    hi = np.int32((1 << (bits - 1)) - 1)
    lo = np.int32(-hi - 1)
    mask = np.int32((1 << bits) - 1)
    if mode == WRAP:
        for o in range(n):
            s = np.int32(held[o] + np.int32(xv * wrow[o]))
            r = np.int32(((s - lo) & mask) + lo)
            cnt[o] += np.int32(r != s)
            held[o] = r
    elif mode == SATURATE:
        for o in range(n):
            s = np.int32(held[o] + np.int32(xv * wrow[o]))
            r = min(max(s, lo), hi)
            cnt[o] += np.int32(r != s)
            held[o] = r
    else:
        for o in range(n):
            s = np.int32(held[o] + np.int32(xv * wrow[o]))
            cnt[o] += np.int32((s > hi) | (s < lo))
            held[o] = s


@numba.njit(inline="always")
def _pixel(m, ho, wo):
    """Flat output pixel m = (n, oy, ox) of ho x wo pixels per image: (n, oy, ox)."""
    b = m // (ho * wo)
    r = m - b * ho * wo
    oy = r // wo
    return b, oy, r - oy * wo


@numba.njit(inline="always")
def _patch(x, b, oy, ox, c0, cg, kh, kw, stride, pad, zp_x, patch):
    """The products' input operands of output pixel (b, oy, ox) in the k order (c, i, j),
    channels c0..c0+cg of channels-last `x`: ``x - zp_x``, 0 in the padding, into `patch`."""
    H, W = x.shape[1], x.shape[2]
    khw = kh * kw
    for i in range(kh):  # each position's channels read as one run (channels last)
        iy = oy * stride + i - pad
        for j in range(kw):
            ix = ox * stride + j - pad
            t = i * kw + j
            if iy < 0 or iy >= H or ix < 0 or ix >= W:
                for c in range(cg):
                    patch[c * khw + t] = 0
            else:
                src = x[b, iy, ix, c0:c0 + cg]
                for c in range(cg):
                    patch[c * khw + t] = np.int64(src[c]) - zp_x


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def pooled_bound_kernel(x, wl, cols, size, kh, kw, stride, pad, zp_x, ms, ho, wo, gp, g):
    """Whether the pooled bounds `gp` (rows (n, oy // g, ox // g), blocks of ``ceil(ho / g)
    x ceil(wo / g)`` per image; chunk j's O columns at ``j * O``) are at or above the sum of
    the positive products of every chunk of `size` products (the k order (c, i, j) of `wl`
    (O, K)) of the output pixels `ms`, in the output columns `cols`: recomputed from `x`
    (channels last, padding at zp_x, values at or above it) in float64, exact (each sum
    below 2^53). A few pixels: one thread."""
    O, K = wl.shape
    nch = K // size
    hb, wb = (ho + g - 1) // g, (wo + g - 1) // g
    patch = np.empty(K, np.int64)
    pf = np.empty((len(ms), K), np.float64)
    tops = np.empty(len(ms), np.int64)
    for t in range(len(ms)):
        b, oy, ox = _pixel(ms[t], ho, wo)
        _patch(x, b, oy, ox, 0, K // (kh * kw), kh, kw, stride, pad, zp_x, patch)
        for k in range(K):
            pf[t, k] = np.float64(patch[k])
        tops[t] = (b * hb + oy // g) * wb + ox // g
    wp = np.empty(K, np.float64)
    for o in cols:
        for k in range(K):
            wp[k] = np.float64(max(wl[o, k], 0))
        for t in range(len(ms)):
            pt = pf[t]
            for jc in range(nch):
                wc = wp[jc * size:(jc + 1) * size]
                pc = pt[jc * size:(jc + 1) * size]
                acc = 0.0
                for k in range(size):
                    acc += wc[k] * pc[k]
                if acc > np.float64(gp[tops[t], jc * O + o]):
                    return False
    return True


@numba.njit(parallel=True, cache=True)
def conv_walk_kernel(x, wt, bias, kh, kw, stride, pad, zp_x, lv, pix, ho, wo, vals, events):
    """The order-faithful accumulation of `_accumulate_point` for every output channel of the
    output pixels `pix` (flat m = (n, oy, ox)) at once, vectorized across output channels.
    Channels-last `x` (N, H, W, C), padding at zp_x; `wt` (groups, K, O/groups) in the k order
    (c, i, j); accumulators into `vals` (len(pix), O) int64, events (len(pix), 2) (pe, acc)
    per pixel. int32 lanes (`wt` int32): the caller proves every running sum and addend fits
    31 bits (levels that fit int16 lanes take `walk16_kernel`)."""
    G, K, og = wt.shape
    cg = K // (kh * kw)
    order, rows = lv.order, lv.rows
    pe_bits, pe_mode, acc_bits, acc_mode = lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode
    P = pix.shape[0]
    T = _WALK_TILE
    L = _WALK_LANES
    for tile in numba.prange((P + T - 1) // T):
        p0 = tile * T
        nt = min(T, P - p0)
        patch = np.zeros((T, K), wt.dtype)
        acc = np.zeros((T, L), wt.dtype)
        ps = np.zeros((T, L), wt.dtype)
        ca = np.zeros((T, L), wt.dtype)
        cp = np.zeros((T, L), wt.dtype)
        pe_tot = np.zeros(T, np.int64)
        acc_tot = np.zeros(T, np.int64)
        for g in range(G):
            for t in range(nt):
                b, oy, ox = _pixel(pix[p0 + t], ho, wo)
                _patch(x, b, oy, ox, g * cg, cg, kh, kw, stride, pad, zp_x, patch[t])
            for o0 in range(0, og, L):
                n = min(L, og - o0)
                for t in range(nt):
                    for o in range(n):  # the bias preload at the acc level, from 0
                        v, f = _level_add(0, bias[g * og + o0 + o], acc_bits, acc_mode)
                        acc[t, o] = v
                        ca[t, o] = f
                        cp[t, o] = 0
                if order == OS:
                    for k in range(K):
                        wrow = wt[g, k, o0:o0 + n]
                        for t in range(nt):
                            _walk_products(acc[t], ca[t], wrow, patch[t, k], n, acc_bits,
                                           acc_mode)
                else:
                    for k0 in range(0, K, rows):
                        for t in range(nt):
                            ps[t, :n] = 0
                        for k in range(k0, min(K, k0 + rows)):
                            wrow = wt[g, k, o0:o0 + n]
                            for t in range(nt):
                                _walk_products(ps[t], cp[t], wrow, patch[t, k], n, pe_bits,
                                               pe_mode)
                        for t in range(nt):  # the chunk added at the acc level
                            _walk_add(acc[t], ca[t], ps[t], n, acc_bits, acc_mode)
                for t in range(nt):
                    for o in range(n):
                        vals[p0 + t, g * og + o0 + o] = acc[t, o]
                        pe_tot[t] += cp[t, o]
                        acc_tot[t] += ca[t, o]
        for t in range(nt):
            events[p0 + t, 0] = pe_tot[t]
            events[p0 + t, 1] = acc_tot[t]


def _lanes16_calls(mr: int):
    """`lanes16.make_walk`'s six variants for `mr` pixels, and one inlined call choosing
    among them by the level modes (os: the acc level's; ws/is: both)."""
    os_w, os_s = (L16.make_walk(mr, False, w, w) for w in (True, False))
    ws_ww, ws_ws, ws_sw, ws_ss = (L16.make_walk(mr, True, p, a) for p in (True, False)
                                  for a in (True, False))

    @numba.njit(inline="always")
    def call(xs, rows, kg, k0, k1, pe_rows, wf, w_off, w_stride, held, ca, cp, h_off, h_stride,
             hi_pe, hi_acc, shift, ws, pe_mode, acc_mode):
        a = (xs, rows, kg, k0, k1, pe_rows, wf, w_off, w_stride, held, ca, cp, h_off, h_stride,
             hi_pe, hi_acc, shift)
        if not ws:
            if acc_mode == WRAP:
                os_w(*a)
            else:
                os_s(*a)
        elif pe_mode == WRAP:
            if acc_mode == WRAP:
                ws_ww(*a)
            else:
                ws_ws(*a)
        elif acc_mode == WRAP:
            ws_sw(*a)
        else:
            ws_ss(*a)

    return call


@numba.njit(inline="always")
def _lane16_scales(lv):
    """The register walk's scales and scaled tops for levels of at most 16 bits (a b-bit
    value held as v << (16 - b), `lanes16`): (sh_acc, sh_pe, hi_pe, hi_acc); the os order
    has no pe level (sh_pe = sh_acc, hi_pe 0)."""
    ws = lv.order != OS
    sh_acc = 16 - lv.acc_bits
    sh_pe = 16 - lv.pe_bits if ws else sh_acc
    hi_acc = min(((1 << (lv.acc_bits - 1)) - 1) << sh_acc, 32767)
    hi_pe = min(((1 << (lv.pe_bits - 1)) - 1) << sh_pe, 32767) if ws else 0
    return sh_acc, sh_pe, hi_pe, hi_acc


_lanes16_4 = _lanes16_calls(4)  # `walk16_kernel`: 4 pixels per call
_lanes16_1 = _lanes16_calls(1)  # `screen_pixels_task`: one pixel's failing chunk
_W16_TASK = 8  # pixels per task of `walk16_kernel`


@numba.njit(parallel=True, cache=True)
def pad16_kernel(x, zp, pad, out):
    """`out` (N, H + 2 pad, W + 2 pad, C) int16 = channels-last ``x - zp``, 0 in the
    padding."""
    n, h, w, c = x.shape
    hp = h + 2 * pad
    for t in numba.prange(n * hp):
        b = t // hp
        y = t - b * hp
        row = out[b, y].reshape(-1)
        if y < pad or y >= h + pad:
            row[:] = 0
            continue
        row[:pad * c] = 0
        row[(pad + w) * c:] = 0
        src = x[b, y - pad].reshape(-1)
        d = row[pad * c:(pad + w) * c]
        for j in range(w * c):
            d[j] = np.int16(np.int32(src[j]) - zp)


@numba.njit(parallel=True, cache=True)
def walk16_kernel(x, xp, koff, wt, bias, kh, kw, stride, pad, zp_x, lv, pix, ho, wo, vals,
                  events):
    """`conv_walk_kernel` on int16 lanes of wrap/saturate levels of at most 16 bits
    (its `wt` conditions), the lanes in registers (`lanes16`). `wt` (G, K, og64) int16,
    pre-scaled as there, each group's columns padded with zero weights to a multiple of
    `L16.LANES` (the layer's og = O / G, O = ``vals.shape[1]``). Inputs: with ``xp.size`` the
    padded int16 ``x - zp_x`` (`pad16_kernel`) and `koff` (G, K) each product's offset from a
    pixel's corner there; else each pixel's patch from channels-last `x` (`koff` (1, K):
    0..K-1). Accumulators into `vals` (len(pix), O) int64, events (len(pix), 2) (pe, acc)."""
    G, K, og64 = wt.shape
    o_all = vals.shape[1]
    og = o_all // G
    cg = K // (kh * kw)
    ws = lv.order != OS
    rows_pe = lv.rows
    pe_mode, acc_bits, acc_mode = lv.pe_mode, lv.acc_bits, lv.acc_mode
    sh_acc, sh_pe, hi_pe, hi_acc = _lane16_scales(lv)
    direct = xp.size > 0
    hp, wp, c_all = xp.shape[1], xp.shape[2], xp.shape[3]
    pre = np.zeros(G * og64, np.int16)  # the bias preloaded at the acc level, scaled
    pre_f = np.zeros(G * og64, np.int16)
    for g in range(G):
        for o in range(og):
            v, f = _level_add(0, bias[g * og + o], acc_bits, acc_mode)
            pre[g * og64 + o] = v << sh_acc
            pre_f[g * og64 + o] = f
    xf = xp.reshape(-1)
    wf = wt.reshape(-1)
    P = pix.shape[0]
    for task in numba.prange((P + _W16_TASK - 1) // _W16_TASK):
        p0 = task * _W16_TASK
        nt = min(_W16_TASK, P - p0)
        held = np.empty(_W16_TASK * og64, np.int16)
        ca = np.empty(_W16_TASK * og64, np.int16)
        cp = np.zeros(_W16_TASK * og64, np.int16)
        rows = np.empty(_W16_TASK, np.int64)
        patch = np.zeros(0 if direct else _W16_TASK * K, np.int16)
        ev = np.zeros((_W16_TASK, 2), np.int64)
        for t in range(nt):
            b, oy, ox = _pixel(pix[p0 + t], ho, wo)
            rows[t] = ((b * hp + oy * stride) * wp + ox * stride) * c_all if direct else t * K
        for t in range(nt, _W16_TASK):  # a short task repeats its last pixel into scratch rows
            rows[t] = rows[nt - 1]
        for g in range(G):
            if not direct:
                for t in range(nt):
                    b, oy, ox = _pixel(pix[p0 + t], ho, wo)
                    _patch(x, b, oy, ox, g * cg, cg, kh, kw, stride, pad, zp_x,
                           patch[t * K:(t + 1) * K])
            xs = xf if direct else patch
            kg = koff[g] if direct else koff[0]
            for t in range(_W16_TASK):
                held[t * og64:(t + 1) * og64] = pre[g * og64:(g + 1) * og64]
                ca[t * og64:(t + 1) * og64] = pre_f[g * og64:(g + 1) * og64]
                cp[t * og64:(t + 1) * og64] = 0
            for o0 in range(0, og64, L16.LANES):
                w_off = g * K * og64 + o0
                for t0 in range(0, nt, 4):
                    rt = rows[t0:]
                    h_off = t0 * og64 + o0
                    _lanes16_4(xs, rt, kg, 0, K, rows_pe, wf, w_off, og64, held, ca, cp, h_off,
                               og64, hi_pe, hi_acc, sh_pe - sh_acc, ws, pe_mode, acc_mode)
            for t in range(nt):
                d = vals[p0 + t, g * og:(g + 1) * og]
                h = held[t * og64:t * og64 + og]
                for o in range(og):
                    d[o] = np.int64(h[o]) >> sh_acc
                s_pe = 0
                s_acc = 0
                for o in range(og):
                    s_pe += cp[t * og64 + o]
                    s_acc += ca[t * og64 + o]
                ev[t, 0] += s_pe
                ev[t, 1] += s_acc
        for t in range(nt):
            events[p0 + t, 0] = ev[t, 0]
            events[p0 + t, 1] = ev[t, 1]


_SCREEN_TASK = 16  # pixels per task of `screen_walk_kernel`


@numba.njit(inline="always")
def _screen_chunk(row, prow, base, pb, acc, ok, o0, O, acc_hi, acc_lo, pe_hi, pe_lo):
    """One chunk's tests of the outputs o0..O-1 (`screen_walk_kernel`): `ok`, the passing
    outputs' held values `acc` (int64, or int32 where the levels hold them) advanced by the
    chunk's sum; returns how many failed."""
    nfail = 0
    for o in range(o0, O):
        sm = np.int64(np.int32(row[base + o]))
        pos = np.int64(np.int32(prow[pb + o]))
        neg = sm - pos
        a = acc[o]
        good = (a + pos <= acc_hi) & (a + neg >= acc_lo) & (pos <= pe_hi) & (neg >= pe_lo)
        ok[o] = good
        acc[o] = a + sm if good else a
        nfail += not good
    return nfail


@numba.njit(inline="always")
def _screen_chunk32(row, prow, base, pb, held, ok, O, acc_hi, acc_lo, pe_hi, pe_lo):
    """`_screen_chunk` on int32 held values, 16 lanes at a time (`lanes32.screen_blocks`; its
    conditions: the levels' bounds as int32), the rest by `_screen_chunk` itself."""
    nb = O // L32.LANES
    nfail = L32.screen_blocks(row, prow, base, pb, held, ok, nb, acc_hi, acc_lo, pe_hi, pe_lo)
    return nfail + _screen_chunk(row, prow, base, pb, held, ok, nb * L32.LANES, O, acc_hi,
                                 acc_lo, pe_hi, pe_lo)


#: `lanes32.make_run`'s variants: with extremes and requantization, either, neither
_run_xr, _run_x, _run_r, _run = (L32.make_run(x, r) for x, r in ((True, True), (True, False),
                                                                  (False, True), (False, False)))


@numba.njit(inline="always")
def _chunk_total(row, o, ss, nch):
    """The sum over chunks j of ``row[j * ss + o]`` (int64)."""
    t = 0
    for jc in range(nch):
        t += np.int64(np.int32(row[jc * ss + o]))
    return t


@numba.njit(inline="always")
def _chunk_totals(row, off, ss, nch, out):
    """``out[o] = sum over chunks j of row[j * ss + off + o]`` (int64; len(out) = O)."""
    out[:] = 0
    O = out.shape[0]
    for jc in range(nch):
        r = row[jc * ss + off:jc * ss + off + O]
        for o in range(O):
            out[o] += np.int64(np.int32(r[o]))


@numba.njit(parallel=True, cache=True)
def screen_walk_kernel(x, wl, wt, wt16, bias, kh, kw, stride, pad, zp_x, lv, pix, ho, wo, gc, gp,
                       g, size, vals, events, chunks, flagged):
    """`_accumulate_point` for every output channel of the output pixels `pix` (flat m = (n,
    oy, ox)), chunk by chunk: the k order (c, i, j) cut into chunks of `size` products (whole
    pe chunks: ``rows`` divides `size` in the ws/is order). With ``g == 0`` row m of `gc`
    holds per chunk j, in columns [2jO, 2jO + O), its exact sum and in [2jO + O, 2(j+1)O) the
    sum `pos` of its positive products (exact integers; `gp` unused); with ``g > 0``, `gc`
    holds the sums alone (chunk j in columns [jO, (j+1)O)) and `pos` is replaced by an upper
    bound on it shared by each g x g block of output pixels: row (n, oy // g, ox // g) of `gp`
    (blocks of ``ceil(ho / g) x ceil(wo / g)`` per image), chunk j in columns [jO, (j+1)O).
    ``neg = sum - pos``. Every running sum in a
    chunk lies in [s + neg, s + pos] (s: the held value at its start) and every pe-level chunk
    sum in [neg, pos]: where both fit their levels no addition can overflow, and the held
    value becomes s + sum exactly (wrap and saturate alike); elsewhere the chunk is walked
    product by product: one failing output alone with `_level_add`; a few gathered into
    SIMD lanes of their own; from O / 8, every output of the pixel at once (an output whose
    screen passed gets the same value and no event that way). The pixel's input patch is
    gathered only once some chunk of it needs a walk. Channels-last `x` (N, H, W, C),
    padding at zp_x; the weights in the k order as `wl` (O, K) and `wt` (K, O), and where the
    levels fit int16 lanes (`conv_walk_kernel`'s conditions) `wt16` (K, O64) int16, scaled
    as there and padded with zeros to whole blocks of `lanes16.LANES`: then a chunk that
    enough outputs fail is walked in registers (`lanes16`), every block of 64 outputs that
    holds a failing one, from the chunk's start (else ``wt16.shape[0] == 0``). Out: `vals`
    (len(pix), O) int64, `events` (len(pix), 2) (pe, acc), `chunks` (len(pix), 2)
    (screened, walked) and `flagged` (len(pix),): how many of the pixel's outputs have a
    whole-sum bound [bias + neg, bias + pos] (pos, neg summed over the chunks) that leaves
    the acc level's range, or a [neg, pos] that leaves the pe level's (ws/is)."""
    P = pix.shape[0]
    T = _SCREEN_TASK
    for task in numba.prange((P + T - 1) // T):
        screen_pixels_task(x, wl, wt, wt16, bias, kh, kw, stride, pad, zp_x, lv, pix, task * T,
                           min(P, task * T + T), ho, wo, gc, 0, gp, g, size, vals, events,
                           chunks, flagged)


@numba.njit(cache=True)
def screen_pixels_task(x, wl, wt, wt16, bias, kh, kw, stride, pad, zp_x, lv, pix, t0, t1, ho,
                       wo, gc, row0, gp, g, size, vals, events, chunks, flagged):
    """`screen_walk_kernel`'s task: the pixels ``pix[t0:t1]``, pixel m's chunk sums in row
    ``m - row0`` of `gc` (`int8_tiles.screen_conv`: a task's own block of them)."""
    O, K = wl.shape
    cg = K // (kh * kw)
    nch = (K + size - 1) // size
    # chunks of whole input channels: a walked chunk's patch is built alone, not the pixel's
    # whole patch (ResNet-18 224's layer4 at 16 bits, 190-715 chunks walked of 802,816: its
    # captured screens alternated 1.18-1.38 -> 1.11-1.25 ms; the same at 15 bits)
    by_chunk = size % (kh * kw) == 0 and K % size == 0
    cc = size // (kh * kw)
    ws = lv.order != OS
    rows = lv.rows
    pe_bits, pe_mode, acc_bits, acc_mode = lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode
    acc_hi, acc_lo, pe_hi, pe_lo = _level_bounds(lv)
    # wrap/saturate levels keep every held value in range, so a zero product changes nothing
    skip0 = acc_mode != EXACT and (not ws or pe_mode != EXACT)
    # the vectorized walk (`_walk_products`) adds in int32: levels within 30 bits, products
    # below 2^24 (the int8 engine's bound)
    vec = skip0 and acc_bits <= 30 and (not ws or pe_bits <= 30)
    # so do the chunk tests (`lanes32`): held values in `acc32`, copied to `acc` for a walk
    acc32 = np.empty(O, np.int32)
    i32 = (1 << 30) - 1  # any bound past the int32 values tested (|sums| < 2^25) acts as this
    hi32 = np.int32(min(max(acc_hi, -i32), i32))
    lo32 = np.int32(min(max(acc_lo, -i32), i32))
    phi32 = np.int32(min(max(pe_hi, -i32), i32))
    plo32 = np.int32(min(max(pe_lo, -i32), i32))
    patch = np.empty(K, np.int64)
    # the register walk (`lanes16`): one pixel's int16 patch, 64 lanes at the levels' scales
    l16 = wt16.shape[0] > 0
    o64 = wt16.shape[1]
    wf16 = wt16.reshape(-1)
    patch16 = np.empty(K, np.int16)
    at0 = np.zeros(1, np.int64)
    koff = np.arange(K)
    held16 = np.empty(L16.LANES, np.int16)
    # the compact register walk's weights: row k, lane f the f-th failing output's
    wc16 = np.empty((K if l16 else 0, L16.LANES), np.int16)
    wc16f = wc16.reshape(-1)
    wc64 = wc16.view(np.int64)  # (K, LANES / 4): four lanes per element, little-endian
    ca16 = np.empty(L16.LANES, np.int16)
    cp16 = np.empty(L16.LANES, np.int16)
    sh_acc, sh_pe, hi_pe16, hi_acc16 = _lane16_scales(lv) if l16 else (0, 0, 0, 0)
    acc = np.empty(O, np.int64)
    ok = np.empty(O, np.bool_)
    psv = np.empty(O, np.int64)
    cp = np.empty(O, np.int64)
    ca = np.empty(O, np.int64)
    idx = np.empty(O, np.int64)  # the failing outputs of a chunk (the compact walk)
    hc = np.empty(O, np.int32)  # their held values, pe chunk sums, event counts
    pc = np.empty(O, np.int32)
    cpc = np.empty(O, np.int32)
    cac = np.empty(O, np.int32)
    wc = np.empty(O, np.int32)
    dirty = np.empty(O, np.bool_)  # walked in some chunk: its sum over the chunks made again
    fix = np.empty(O, np.int64)  # that sum less (held - preload); 0 for the others
    pown = np.empty(O, np.int64)  # with g == 0: pos summed over the chunks (`flagged`)
    hb, wb = (ho + g - 1) // max(g, 1), (wo + g - 1) // max(g, 1)
    blk_row = -1  # with g > 0: the block row `pcache` holds, its blocks' pos totals
    pcache = np.empty((wb if g else 0, O), np.int64)
    pvalid = np.zeros(wb if g else 0, np.bool_)
    ss = O if g else 2 * O  # columns per chunk in `gc`; pos at [jc * ss + po, ...) of `prow`
    po = 0 if g else O
    pre = np.empty(O, np.int64)  # the bias preload at the acc level, from 0 (every pixel's)
    pre_ev = 0
    for o in range(O):
        pre[o], f = _level_add(0, bias[o], acc_bits, acc_mode)
        pre_ev += f
    pre32 = np.empty(O, np.int32)
    for o in range(O if vec else 0):
        pre32[o] = pre[o]
    cp[:] = 0  # walks' events, reset after a pixel that walked
    ca[:] = 0
    dirty[:] = False
    fix[:] = 0
    for t in range(t0, t1):
        m = pix[t]
        b, oy, ox = _pixel(m, ho, wo)
        have_patch = False  # the whole patch built (`by_chunk` False: on a first walk)
        row = gc[m - row0]
        prow = gp[(b * hb + oy // g) * wb + ox // g] if g else row
        pe_ev = 0
        acc_ev = pre_ev
        in32 = vec  # whether acc32 holds the current values (else acc)
        if vec:
            acc32[:] = pre32
        else:
            acc[:] = pre
        walked = 0
        for jc in range(nch):
            base = jc * ss
            pb = jc * ss + po
            if vec:
                if not in32:
                    for o in range(O):
                        acc32[o] = acc[o]
                    in32 = True
                nfail = _screen_chunk32(row, prow, base, pb, acc32, ok, O, hi32, lo32, phi32,
                                        plo32)
            else:
                nfail = _screen_chunk(row, prow, base, pb, acc, ok, 0, O, acc_hi, acc_lo,
                                      pe_hi, pe_lo)
            walked += nfail
            if nfail == 0:
                continue
            k0 = jc * size
            k1 = min(K, k0 + size)
            if by_chunk:  # the chunk's channels alone (a walked pixel walks few chunks)
                _patch(x, b, oy, ox, jc * cc, cc, kh, kw, stride, pad, zp_x, patch[k0:k1])
                for k in range(k0, k1 if l16 else k0):
                    patch16[k] = patch[k]
            elif not have_patch:
                _patch(x, b, oy, ox, 0, cg, kh, kw, stride, pad, zp_x, patch)
                have_patch = True
                for k in range(K if l16 else 0):
                    patch16[k] = patch[k]
            if l16 and not ws and nfail <= L16.LANES:
                # os: the failing outputs alone, in registers, their weights gathered into
                # the lanes of one call, their held values where they are (the blocks that
                # hold them walked all 64 lanes each, after copying every held value out of
                # the int32 lanes and back: ResNet-18 224's layer4 at 15 bits, ~11 of 512
                # outputs failing a chunk; in ws/is, with a pe chunk's extra adds, the int32
                # array lanes below stayed faster)
                nf = 0
                for o in range(O):
                    if not ok[o]:
                        idx[nf] = o
                        nf += 1
                for f in range(nf):
                    o = idx[f]
                    dirty[o] = True
                    held16[f] = (acc32[o] if in32 else acc[o]) << sh_acc
                    ca16[f] = 0
                    cp16[f] = 0
                # lanes past nf hold stale weights, their results unread; each output's
                # weights read as one run of its row of `wl` (a column of `wt16` took a
                # cache line per product: about half of a layer4 call's 5.3-6.6 ms at 15
                # bits, 1.5 without any walk), four lanes' written as one 64-bit store (the
                # walk's vector loads wait for these stores to drain: one store per lane and
                # product cost ~2 of those 4.5 ms; four per store: layer4's captured calls
                # at 15 bits alternated 4.0-5.4 -> 3.9-4.8 ms; an int16 copy of `wl` and a
                # one-vector walk for up to 32 lanes gained nothing)
                for f0 in range(0, nf, 4):
                    r0 = wl[idx[f0]]
                    r1 = wl[idx[min(f0 + 1, nf - 1)]]
                    r2 = wl[idx[min(f0 + 2, nf - 1)]]
                    r3 = wl[idx[min(f0 + 3, nf - 1)]]
                    q = f0 // 4
                    for k in range(k0, k1):
                        wc64[k, q] = ((r0[k] << sh_pe) & 0xFFFF) | \
                            (((r1[k] << sh_pe) & 0xFFFF) << 16) | \
                            (((r2[k] << sh_pe) & 0xFFFF) << 32) | \
                            (((r3[k] << sh_pe) & 0xFFFF) << 48)
                _lanes16_1(patch16, at0, koff, k0, k1, rows, wc16f, 0, L16.LANES, held16, ca16,
                           cp16, 0, L16.LANES, hi_pe16, hi_acc16, sh_pe - sh_acc, ws, pe_mode,
                           acc_mode)
                for f in range(nf):
                    o = idx[f]
                    v = np.int64(held16[f]) >> sh_acc
                    if in32:
                        acc32[o] = v
                    else:
                        acc[o] = v
                    ca[o] += ca16[f]
                    cp[o] += cp16[f]
                continue
            if in32:  # the walks below on acc
                acc[:] = acc32
                in32 = False
            for o in range(O):
                dirty[o] |= not ok[o]
            # in registers, every block with a failing output, where enough fail (walking a
            # block costs all 64 lanes; the array walks below skip zero products): in the
            # os order from 1/64 of the outputs, ws/is (a pe chunk's extra adds) from 1/8
            # (ResNet-18 224 at 15 bits, reports/BENCHMARKS.md round 21)
            if l16 and nfail * (8 if ws else 64) > O:
                for o0 in range(0, o64, L16.LANES):
                    o1 = min(O, o0 + L16.LANES)
                    hit = 0
                    for o in range(o0, o1):
                        hit |= not ok[o]
                    if not hit:
                        continue
                    held16[:] = 0
                    ca16[:] = 0
                    cp16[:] = 0
                    for o in range(o0, o1):  # the held values at the chunk's start
                        a = acc[o] - (np.int64(np.int32(row[base + o])) if ok[o] else 0)
                        held16[o - o0] = a << sh_acc
                    _lanes16_1(patch16, at0, koff, k0, k1, rows, wf16, o0, o64, held16, ca16,
                               cp16, 0, L16.LANES, hi_pe16, hi_acc16, sh_pe - sh_acc, ws,
                               pe_mode, acc_mode)
                    for o in range(o0, o1):
                        acc[o] = np.int64(held16[o - o0]) >> sh_acc
                        ca[o] += ca16[o - o0]
                        cp[o] += cp16[o - o0]
                continue
            # many: walk every output of the pixel from the chunk's start (vectorized, zero
            # products skipped; measured faster than one by one from O / 8 failing outputs)
            if vec and nfail * 8 > O:
                for o in range(O):
                    if ok[o]:
                        acc[o] -= np.int64(np.int32(row[base + o]))
                if ws:
                    for c0 in range(k0, k1, rows):
                        psv[:] = 0
                        for k in range(c0, min(k1, c0 + rows)):
                            if skip0 and patch[k] == 0:
                                continue
                            _walk_products(psv, cp, wt[k], patch[k], O, pe_bits, pe_mode)
                        _walk_add(acc, ca, psv, O, acc_bits, acc_mode)
                else:
                    for k in range(k0, k1):
                        if skip0 and patch[k] == 0:
                            continue
                        _walk_products(acc, ca, wt[k], patch[k], O, acc_bits, acc_mode)
                continue
            if vec and nfail > 1:
                # a few: the failing outputs gathered into lanes of their own and walked
                # together (int32 lanes, as above), instead of one dependent chain each
                nf = 0
                for o in range(O):
                    if not ok[o]:
                        idx[nf] = o
                        hc[nf] = np.int32(acc[o])
                        cpc[nf] = 0
                        cac[nf] = 0
                        nf += 1
                if ws:
                    for c0 in range(k0, k1, rows):
                        pc[:nf] = 0
                        for k in range(c0, min(k1, c0 + rows)):
                            if skip0 and patch[k] == 0:
                                continue
                            wk = wt[k]
                            for f in range(nf):
                                wc[f] = wk[idx[f]]
                            _walk_products(pc, cpc, wc, patch[k], nf, pe_bits, pe_mode)
                        _walk_add(hc, cac, pc, nf, acc_bits, acc_mode)
                else:
                    for k in range(k0, k1):
                        if skip0 and patch[k] == 0:
                            continue
                        wk = wt[k]
                        for f in range(nf):
                            wc[f] = wk[idx[f]]
                        _walk_products(hc, cac, wc, patch[k], nf, acc_bits, acc_mode)
                for f in range(nf):
                    o = idx[f]
                    acc[o] = hc[f]
                    cp[o] += cpc[f]
                    ca[o] += cac[f]
                continue
            for o in range(O):
                if ok[o]:
                    continue
                acc[o], fp, fa = _walk_one(patch, wl[o], k0, k1, acc[o], lv, skip0)
                pe_ev += fp
                acc_ev += fa
        if in32:
            acc[:] = acc32
        # the whole-sum bound's totals: pos per pixel, or per block (made once, kept for
        # the block row)
        if g:
            if b * hb + oy // g != blk_row:
                blk_row = b * hb + oy // g
                pvalid[:] = False
            bx = ox // g
            if not pvalid[bx]:
                _chunk_totals(prow, 0, O, nch, pcache[bx])
                pvalid[bx] = True
            ptot = pcache[bx]
        else:
            ptot = pown
            _chunk_totals(row, O, 2 * O, nch, ptot)
        if walked:  # a walked output's sum over the chunks, summed again
            for o in range(O):
                if dirty[o]:
                    fix[o] = _chunk_total(row, o, ss, nch) - (acc[o] - pre[o])
        nflag = 0
        for o in range(O):
            a = acc[o]
            vals[t, o] = a
            p_ = ptot[o]
            n_ = a - pre[o] + fix[o] - p_  # the sum over the chunks, less pos
            nflag += (bias[o] + p_ > acc_hi) | (bias[o] + n_ < acc_lo) | (p_ > pe_hi) | \
                (n_ < pe_lo)
        if walked:
            for o in range(O):
                pe_ev += cp[o]
                acc_ev += ca[o]
            cp[:] = 0
            ca[:] = 0
            dirty[:] = False
            fix[:] = 0
        flagged[t] = nflag
        events[t, 0] = pe_ev
        events[t, 1] = acc_ev
        chunks[t, 0] = nch * O - walked
        chunks[t, 1] = walked


@numba.njit(parallel=True, cache=True)
def pool_kernel(x, kernel, stride, pad, zp_x, rq, out):
    """Channels-last average pooling of `x` (N, H, W, C; any integer dtype; `pad` rows and
    columns of padding on each side, not stored) into `out` (N, Ho, Wo, C): the sum of
    x - zp_x over the window (padding reads zp_x and so adds nothing), requantized with
    M = s_in / (k*k*s_out), `rq` a one-channel `arith.RequantParams`."""
    N, H, W, C = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    for t in numba.prange(N * Ho):
        b = t // Ho
        oy = t - b * Ho
        acc = np.empty(C, np.int64)
        for ox in range(Wo):
            acc[:] = 0
            for i in range(kernel):
                y = oy * stride + i - pad
                if y < 0 or y >= H:
                    continue
                for j in range(kernel):
                    xx = ox * stride + j - pad
                    if xx < 0 or xx >= W:
                        continue
                    src = x[b, y, xx]
                    for c in range(C):
                        acc[c] += np.int64(src[c]) - zp_x
            requant_span(acc, out[b, oy, ox], rq, 0, 0)


@numba.njit(parallel=True, cache=True)
def maxpool_kernel(x, kernel, stride, pad, out):
    """Max pooling of channels-last `x` (N, H, W, C; `pad` rows and columns of padding on each
    side, not stored) into `out` (N, Ho, Wo, C) of x's own dtype, in its SIMD lanes (padding
    never wins; a window wholly in the padding, pad >= kernel, gives the dtype's minimum)."""
    N, H, W, C = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    lowest = np.iinfo(x.dtype).min
    for t in numba.prange(N * Ho):
        b = t // Ho
        oy = t - b * Ho
        for ox in range(Wo):
            dst = out[b, oy, ox]
            dst[:] = lowest
            for i in range(kernel):
                y = oy * stride + i - pad
                if y < 0 or y >= H:
                    continue
                for j in range(kernel):
                    xx = ox * stride + j - pad
                    if xx < 0 or xx >= W:
                        continue
                    src = x[b, y, xx]
                    for c in range(C):
                        dst[c] = max(dst[c], src[c])


@numba.njit(parallel=True, cache=True)
def avgpool_float_kernel(x, kernel, stride, pad, include_pad, zp_x, s_x, s_y, zp_y, lo, hi, out):
    """ONNX Runtime's QLinearAveragePool of channels-last `x` (N, H, W, C), not padded, into
    `out` (N, Ho, Wo, C): every input dequantized to float32 ``s_x * (x - zp_x)``, summed in
    float32 over the window's in-map positions row by row (padding adds nothing), then
    `ort_avgpool_one` with the window size (`include_pad`) or the in-map count."""
    N, H, W, C = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    sx = np.float32(s_x)
    for t in numba.prange(N * Ho):
        b = t // Ho
        oy = t - b * Ho
        h0 = oy * stride - pad
        h1 = min(h0 + kernel, H)
        h0 = max(h0, 0)
        acc = np.empty(C, np.float32)
        for ox in range(Wo):
            w0 = ox * stride - pad
            w1 = min(w0 + kernel, W)
            w0 = max(w0, 0)
            for c in range(C):
                acc[c] = np.float32(0.0)
            for i in range(h0, h1):
                for j in range(w0, w1):
                    for c in range(C):
                        deq = sx * np.float32(np.int64(x[b, i, j, c]) - zp_x)
                        acc[c] = acc[c] + deq
            count = kernel * kernel if include_pad else (h1 - h0) * (w1 - w0)
            for c in range(C):
                out[b, oy, ox, c] = ort_avgpool_one(acc[c], count, s_y, zp_y, lo, hi)


@numba.njit(parallel=True, cache=True)
def embed_kernel(x, lut, out):
    """Channels last: out[n, h, w, c*d + j] = lut[c, x[n, h, w, c], j]."""
    N, H, W, C = x.shape
    d = lut.shape[2]
    for t in numba.prange(N * H):
        b = t // H
        h = t - b * H
        for w_ in range(W):
            for c in range(C):
                p = x[b, h, w_, c]
                for j in range(d):
                    out[b, h, w_, c * d + j] = lut[c, p, j]


@numba.njit(parallel=True, cache=True)
def channels_last_kernel(x, out):
    """out (N, H, W, C) = x (N, C, H, W) transposed; per output row, each channel's input row
    read once (NumPy's strided copy: 7-10x slower on 224x224 RGB batches)."""
    n, c, h, w = x.shape
    for t in numba.prange(n * h):
        b = t // h
        y = t - b * h
        dst = out[b, y]
        for k in range(c):
            src = x[b, k, y]
            for i in range(w):
                dst[i, k] = src[i]


@numba.njit(parallel=True, cache=True)
def to_u8_kernel(x, sub, out):
    """out = x - sub as uint8 (the caller has proved the values fit)."""
    for i in numba.prange(x.shape[0]):
        out[i] = np.int64(x[i]) - sub
    return out


_FOLD_IMAGES = 1 << 16  # images folded in int32 before a flush: 4 * 255 * 2^16 < 2^31
_FOLD16 = 32  # images folded in int16 lanes before a flush into int32: 4 * 255 * 32 < 2^15


@numba.njit(parallel=True, cache=True)
def window_sums_kernel(x, zp_x, stride, pad, ho, wo, s, cnt):
    """For channels-last `x` (N, H, W, C; ``|x - zp_x| <= 255``, as the int8 engine takes)
    and each weight position (i, j) of a kh x kw conv (`s`, `cnt`: (kh, kw, C)):
    ``s[i, j, c]`` = the sum, images weighted ``1 + n % 4``, of ``x - zp_x`` and
    ``cnt[i, j, c]`` the number of inputs ``!= zp_x``, over the input positions that weight
    position meets across all outputs (padding contributes nothing). Each input row folds
    the images in int16 lanes (blocks of `_FOLD16`; ResNet-20's b64 layers 1.5x faster than
    int32 lanes), those in int32 (blocks of `_FOLD_IMAGES`, fewer where a row's total could
    pass int32), and sums the row's columns per residue mod the stride; weight column j meets
    one residue's columns but a few at either end, taken off (ResNet-18 224's 7 x 7 stride-2
    stem: 0.35 -> 0.17 ms; summing j's columns anew for each j cost kw / stride passes over
    the row); then, per weight row i, the rows i meets are added up. No array larger than
    (H, kw, C)."""
    N, H, W, C = x.shape
    kh, kw = s.shape[0], s.shape[1]
    # x - zp_x in int16 lanes: both wrapped to 16 bits, their difference (within 255) exact
    zp16 = np.int16(zp_x & 0xFFFF)
    # the zero point in x's dtype: zp_x itself, or (not one of its values) zp_x wrapped by a
    # multiple of 2^8 or more, which no input within 255 of zp_x equals either
    zpx = x.dtype.type(zp_x)
    gs = np.zeros((H, kw, C), np.int64)  # row y, weight column j: the sum over j's columns
    gc = np.zeros((H, kw, C), np.int64)
    xf = x.reshape(-1)
    wc = W * C
    # images per int32 fold: a row's total over its W columns (4 * 255 per image and column)
    # stays within int32
    fold = max(1, min(_FOLD_IMAGES, (2 ** 31 - 1) // (1020 * W)))
    for y in numba.prange(H):
        rs = np.empty((W, C), np.int32)
        rc = np.empty((W, C), np.int32)
        hs = np.empty(wc, np.int16)
        hc = np.empty(wc, np.int16)
        ts = np.empty((stride, C), np.int32)  # the row's columns summed per residue mod stride
        tc = np.empty((stride, C), np.int32)
        rsf = rs.reshape(-1)  # an input row as one run of W * C lanes
        rcf = rc.reshape(-1)
        for b0 in range(0, N, fold):
            rsf[:] = 0
            rcf[:] = 0
            b_end = min(N, b0 + fold)
            for b1 in range(b0, b_end, _FOLD16):
                hs[:] = 0
                hc[:] = 0
                for b in range(b1, min(b_end, b1 + _FOLD16)):
                    r = np.int16(1 + b % 4)
                    src = xf[(b * H + y) * wc:(b * H + y + 1) * wc]
                    for i in range(wc):  # the count on x's own values: 1.1-1.5x
                        xv = src[i]
                        hs[i] += np.int16(r * np.int16(np.int16(xv) - zp16))
                        hc[i] += np.int16(xv != zpx)
                for i in range(wc):
                    rsf[i] += hs[i]
                    rcf[i] += hc[i]
            ts[:] = 0
            tc[:] = 0
            for xx in range(W):
                tsr = ts[xx % stride]
                tcr = tc[xx % stride]
                sr = rs[xx]
                cr = rc[xx]
                for c in range(C):
                    tsr[c] += sr[c]
                    tcr[c] += cr[c]
            for j in range(kw):  # columns q * stride + j - pad, q in [q0, q1]
                q0 = max(0, (pad - j + stride - 1) // stride)
                q1 = min(wo - 1, (W - 1 + pad - j) // stride)
                if q1 < q0:
                    continue
                first = q0 * stride + j - pad
                last = q1 * stride + j - pad
                t = first % stride
                gsr = gs[y, j]
                gcr = gc[y, j]
                for c in range(C):
                    gsr[c] += ts[t, c]
                    gcr[c] += tc[t, c]
                for xx in range(t, first, stride):  # the residue's columns j does not meet
                    for c in range(C):
                        gsr[c] -= rs[xx, c]
                        gcr[c] -= rc[xx, c]
                for xx in range(last + stride, W, stride):
                    for c in range(C):
                        gsr[c] -= rs[xx, c]
                        gcr[c] -= rc[xx, c]
    s[:] = 0
    cnt[:] = 0
    for i in range(kh):
        o0 = max(0, (pad - i + stride - 1) // stride)
        o1 = min(ho - 1, (H - 1 + pad - i) // stride)
        for o in range(o0, o1 + 1):
            y = o * stride + i - pad
            for j in range(kw):
                for c in range(C):
                    s[i, j, c] += gs[y, j, c]
                    cnt[i, j, c] += gc[y, j, c]


@numba.njit(cache=True)
def _depthwise_pixels(x, zp, w, stride, pad, wo, b, p_a, p_b, dst, row0):
    """Sums of image `b`'s output pixels p in [p_a, p_b) of a depthwise conv (see
    `depthwise_sums_kernel`) into rows ``p - row0`` of `dst`, int32 lanes across channels."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    zp32 = np.int32(zp)
    acc = np.empty(C, np.int32)
    for p in range(p_a, p_b):
        oy = p // wo
        ox = p - oy * wo
        acc[:] = 0
        for i in range(kh):
            y = oy * stride + i - pad
            if y < 0 or y >= H:
                continue
            for j in range(kw):
                xx = ox * stride + j - pad
                if xx < 0 or xx >= W:
                    continue
                src = x[b, y, xx]
                wr = w[i, j]
                for c in range(C):
                    acc[c] += (np.int32(src[c]) - zp32) * wr[c]
        row = dst[p - row0]
        for c in range(C):
            row[c] = acc[c]


@numba.njit(parallel=True, cache=True)
def depthwise_sums_kernel(x, zp_x, w, stride, pad, ho, wo, out):
    """Exact sums of a depthwise conv: channels-last `x` (N, H, W, C; ``|x - zp_x| <= 255``,
    padding reads zp_x, so it adds nothing), weights `w` (kh, kw, C) int32, into `out`
    (N*ho*wo, C) float32, row ``(n*ho + oy)*wo + ox``. int32 lanes across channels; the caller
    has proved every sum below 2^24 (exact in float32)."""
    N = x.shape[0]
    for t in numba.prange(N * ho):
        b = t // ho
        oy = t - b * ho
        _depthwise_pixels(x, zp_x, w, stride, pad, wo, b, oy * wo, (oy + 1) * wo, out,
                          -b * ho * wo)


@numba.njit(parallel=True, cache=True)
def depthwise_epilogue_kernel(x, zp_x, w, stride, pad, ho, wo, o_n, bias, lv, do_rq, rq, out,
                              need, mnmx, sums, wrap_bits, ms, gs):
    """`depthwise_sums_kernel`'s sums consumed where they are made: per task (image, block
    of pixels, as `gemm_epilogue_kernel` cuts them) the block's sums in a local int32 buffer,
    then that kernel's task on them (no risk, no chunks); rows `ms` copied to `gs` (the spot
    check's)."""
    n, nb = mnmx.shape[0], mnmx.shape[1]
    pixels = ho * wo
    q = w.shape[2]
    for t in numba.prange(n * nb):
        b, blk, per, p_a, p_b = fused_task_pixels(t, nb, pixels)
        gl = np.empty((max(p_b - p_a, 1), q), np.int32)
        _depthwise_pixels(x, zp_x, w, stride, pad, wo, b, p_a, p_b, gl, p_a)
        fused_epilogue_task(gl, ms, gs, o_n, pixels, bias, lv, do_rq, rq, out, need, mnmx,
                            sums, wrap_bits, b, blk, per, p_a, p_b)


@numba.njit(inline="always")
def fused_task_pixels(t, nb, pixels):
    """Task `t` of a fused kernel, cut as `gemm_epilogue_kernel` cuts its tasks (`nb` blocks
    per image): (image b, block blk, pixels per block, its pixels [p_a, p_b))."""
    b = t // nb
    blk = t - b * nb
    per = (pixels + nb - 1) // nb
    p_a = min(pixels, blk * per)
    return b, blk, per, p_a, min(pixels, p_a + per)


@numba.njit(cache=True)
def fused_epilogue_task(gl, ms, gs, o_n, pixels, bias, lv, do_rq, rq, out, need, mnmx, sums,
                        wrap_bits, b, blk, per, p_a, p_b):
    """A fused kernel's task (`fused_task_pixels`) once its sums are in `gl` (row p - p_a):
    the rows `ms` of them copied to `gs` (the spot check's), then `gemm_epilogue_kernel`'s
    task on them (no risk, no chunks)."""
    m_a = b * pixels + p_a
    m_b = b * pixels + p_b
    for k in range(ms.shape[0]):
        if m_a <= ms[k] < m_b:
            gs[k] = gl[ms[k] - m_a]
    if not (_flat_applies(do_rq, rq, wrap_bits, gl.shape[1], o_n) and _flat_epilogue_task(
            gl, o_n, pixels, bias, rq, out, mnmx, sums, wrap_bits, per, b, blk, m_a, True)):
        _epilogue_task(gl, o_n, pixels, bias, False, False, lv.acc_bits, lv.pe_bits, do_rq, rq,
                       out, need[0], need[1], mnmx, sums, wrap_bits, 1, gl.shape[1], per, b, blk,
                       False, m_a)


_SUM_COLUMNS = 64  # columns per task of `image_column_sums_kernel`


@numba.njit(parallel=True, cache=True)
def image_column_sums_kernel(g, n, out):
    """``out[b, j]`` = the sum of column j of image b's rows of `g` (n * P rows, exact
    integers), in int64, tasks of `_SUM_COLUMNS` columns (NumPy's sum over the middle axis
    of (n, P, q) took 10x longer)."""
    per = g.shape[0] // n
    q = g.shape[1]
    nb = (q + _SUM_COLUMNS - 1) // _SUM_COLUMNS
    for t in numba.prange(n * nb):
        b = t // nb
        j0 = (t - b * nb) * _SUM_COLUMNS
        j1 = min(q, j0 + _SUM_COLUMNS)
        acc = np.zeros(_SUM_COLUMNS, np.int64)
        for r in range(b * per, (b + 1) * per):
            row = g[r, j0:j1]
            for j in range(j1 - j0):
                acc[j] += np.int64(row[j])
        out[b, j0:j1] = acc[:j1 - j0]


_EXTREME_BLOCK = 1 << 16  # values per task of `extremes_kernel`


@numba.njit(parallel=True, cache=True)
def extremes_kernel(a):
    """(min, max) of a non-empty flat integer array, in one parallel pass."""
    nb = (a.shape[0] + _EXTREME_BLOCK - 1) // _EXTREME_BLOCK
    lo = np.empty(nb, np.int64)
    hi = np.empty(nb, np.int64)
    for t in numba.prange(nb):
        blk = a[t * _EXTREME_BLOCK:(t + 1) * _EXTREME_BLOCK]
        mn = np.int64(blk[0])
        mx = mn
        for v in blk:
            mn = min(mn, np.int64(v))
            mx = max(mx, np.int64(v))
        lo[t] = mn
        hi[t] = mx
    return lo.min(), hi.max()


@numba.njit(cache=True)  # a few pixels: a parallel launch would cost more than the work
def spot_check_kernel(x, wq, zp_x, stride, pad, groups, o_n, ho, wo, ms, gs, call, budget):
    """Recompute output pixels `ms` (rows m = (n, pixel)) in int64 and return whether they all
    agree with the engine's sums `gs` (len(ms), q) of them; where a pixel's columns need more
    than `budget` products, a subset of the columns picked by a multiplicative hash of `call`
    (each call checks different ones). `wq` (q, kh, kw, C/groups): column j reads the
    channels of group (j mod o_n) // (o_n / groups); channels-last `x`, padding at zp_x."""
    H, W = x.shape[1], x.shape[2]
    q, kh, kw, cg = wq.shape
    og = o_n // groups
    n_pix = ms.shape[0]
    n_cols = min(q, max(1, budget // (n_pix * kh * kw * cg)))
    for t in range(n_pix):
        b, oy, ox = _pixel(ms[t], ho, wo)
        for u in range(n_cols):
            jq = u if n_cols == q else (call * 40503 + u * 2654435761) % q
            c0 = ((jq % o_n) // og) * cg
            acc = 0
            for i in range(kh):
                iy = oy * stride + i - pad
                if iy < 0 or iy >= H:
                    continue
                for j in range(kw):
                    ix = ox * stride + j - pad
                    if ix < 0 or ix >= W:
                        continue
                    for c in range(cg):
                        acc += (np.int64(x[b, iy, ix, c0 + c]) - zp_x) * wq[jq, i, j, c]
            if np.int64(gs[t, jq]) != acc:
                return False
    return True


@numba.njit(inline="always")
def _bits_of_f64(fbits):
    """The smallest signed width holding [-v - 1, v], from the bit pattern of a float64 ``v``
    that is an integer in [0, 2^53) (so exact): ``floor(log2 v) + 2`` from the exponent, 1 for
    v = 0. In SIMD lanes, where AVX2 has no vector leading-zero count."""
    return max((fbits >> 52) - 1021, 1)


_FLAT_LANES = 64  # `_flat_epilogue_task`'s loops run over at least this many outputs


@numba.njit(inline="always")
def _row_risk_applies(do_rq, rq, q, o_n):
    """`_row_risk_task` serves this call with risk (no wrapping, no chunks): requantized by
    the float64 rule, outputs in whole 16-lane blocks."""
    return do_rq and rq.f64 and q == 2 * o_n and o_n % L32.LANES == 0


_SUM32_RUNS = 127  # int32 lane sums of values below 2^24 fold into int64 after this many


@numba.njit(inline="always")
def _fold32(sm, s32):
    """Fold the int32 lane sums `s32` into the int64 `sm` and zero them."""
    for i in range(s32.shape[0]):
        sm[i] += s32[i]
        s32[i] = 0


@numba.njit(inline="always")
def _flat_applies(do_rq, rq, wrap_bits, q, o_n):
    """`_flat_epilogue_task` serves this call (without risk or chunks): requantized by the
    float64 rule, wrapped (if at all) into int32, one column per output."""
    return do_rq and rq.f64 and wrap_bits <= 32 and q == o_n


@numba.njit(cache=True)
def _flat_epilogue_task(g, o_n, pixels, bias, rq, out, mnmx, sums, wrap_bits, per, b, blk,
                        g_row0, small):
    """`_epilogue_task` without risk or chunks, requantizing by ``rq.f64``'s float64 rule
    (one fused multiply-add per output, `requant_fma_one`), for ``wrap_bits <= 32``: the
    block's rows of `g` and `out` (contiguous, ``q = o_n`` columns) as flat runs of
    ``rep * o_n >= _FLAT_LANES`` outputs with the per-column parameters tiled ``rep`` times,
    so every loop fills the vector lanes (a loop of one pixel's 16 outputs ran in the
    compiler's scalar remainder: 1.7x slower). Returns False, with the task unfinished, when
    some product ``|bias * km|`` (before any work) or ``|acc * km|`` reaches 2^52; the
    block's extremes decide the latter: the float product is monotone in ``|acc|``.
    The raw runs go 16 outputs at a time (`lanes32.make_run`), the column sums in int32 lanes
    folded into int64 every `_SUM32_RUNS` runs where every sum is below 2^24 (`small`: a fused
    kernel's sums, or float32 ones), else after every run (an int32 plan split over input
    channels, whose sums may pass 2^24)."""
    p_a = blk * per
    p_b = min(pixels, p_a + per)
    rep = max(1, (_FLAT_LANES + o_n - 1) // o_n)
    n_l = rep * o_n
    raw = wrap_bits == 0
    bt = np.empty(n_l, np.int64)
    kt = np.empty(n_l, np.float64)  # `requant_fma_terms`, the bias folded in where raw
    bf = np.empty(n_l, np.float64)
    ok = True
    for o in range(o_n):  # per column, then tiled
        bt[o] = bias[o]
        kt[o], bf[o], good = requant_fma_terms(bias[o] if raw else 0, rq.km[o], rq.sc[o])
        ok &= good
    for i in range(o_n, n_l):
        bt[i], kt[i], bf[i] = bt[i - o_n], kt[i - o_n], bf[i - o_n]
    if not ok:
        return False
    sm = np.zeros(n_l, np.int64)
    # folded into sm every `_SUM32_RUNS` runs where the sums are below 2^24 (`small`: a fused
    # kernel's, or float32), else after each (an int32 plan split over input channels)
    s32 = np.zeros(n_l, np.int32)
    fold = _SUM32_RUNS if small else 1
    mn = np.full(n_l, _I32_MAX, np.int32)  # raw sums, or the wrapped accumulators
    mx = np.full(n_l, _I32_MIN, np.int32)
    zp, lo, hi = np.float64(rq.zp), np.float64(rq.lo), np.float64(rq.hi)
    gf = g.reshape(-1)
    df = out.reshape(-1)
    m_a = b * pixels + p_a
    n_el = (p_b - p_a) * o_n
    runs = 0
    for c0 in range(0, n_el, n_l):
        cnt = min(n_l, n_el - c0)
        gs = gf[(m_a - g_row0) * o_n + c0:]
        ds = df[m_a * o_n + c0:]
        if raw:  # 16 lanes at a time (`lanes32.make_run`), then the rest
            nb = cnt // L32.LANES
            _run_xr(gf, (m_a - g_row0) * o_n + c0, mn, mx, s32, kt, bf, zp, lo, hi, df,
                    m_a * o_n + c0, nb)
            for i in range(nb * L32.LANES, cnt):
                v = np.int32(gs[i])
                s32[i] += v
                mn[i] = min(mn[i], v)
                mx[i] = max(mx[i], v)
                ds[i] = requant_fma_one(np.float64(v), kt[i], bf[i], zp, lo, hi)
            runs += 1
            if runs == fold:
                runs = 0
                _fold32(sm, s32)
        else:
            for i in range(cnt):
                v = np.int32(gs[i])
                sm[i] += v
                a = np.int32(wrap(np.int64(v) + bt[i], wrap_bits))
                mn[i] = min(mn[i], a)
                mx[i] = max(mx[i], a)
                ds[i] = requant_fma_one(np.float64(a), kt[i], bf[i], zp, lo, hi)
    t = mnmx[b, blk]
    t[0], t[1] = _I64_MAX, _I64_MIN
    for o in range(o_n):
        sums[b, blk, o] = 0
    exact = True
    for i in range(n_l):
        o = i % o_n
        sums[b, blk, o] += sm[i] + s32[i]
        if mn[i] <= mx[i]:  # some pixel in this lane
            a0 = mn[i] + (bias[o] if raw else 0)
            a1 = mx[i] + (bias[o] if raw else 0)
            t[0] = min(t[0], a0)
            t[1] = max(t[1], a1)
            exact &= max(-a0, a1) * rq.km[o] < F64_EXACT_PRODUCT
    t[2], t[3] = t[0], t[1]
    return exact


@numba.njit(cache=True)
def _row_risk_task(g, o_n, pixels, bias, pe_risk, acc_bits, pe_bits, rq, out, need_acc,
                   need_pe, mnmx, sums, per, b, blk, small):
    """`_epilogue_task` with risk (no wrapping, no chunks) for ``o_n`` a multiple of 16,
    requantizing by ``rq.f64``'s float64 rule (`requant_fma_one`): each row's ``2 o_n`` sums
    (outputs, then positive product sums) in 16-lane blocks, the outputs' extremes, column
    sums and requantization by `lanes32.make_run`, the bound bits and the unflagged extremes
    by `lanes32.need_bits` (the per-pixel task's loops of 16 ran at 2.4 ns an output). The
    column sums in int32 lanes, folded every `_SUM32_RUNS` rows where every sum is below 2^24
    (`small`), else after every row. Returns False, with the task unfinished, where a product
    ``|bias * km|`` or ``|acc * km|`` reaches 2^52 (`_flat_epilogue_task`)."""
    p_a = blk * per
    p_b = min(pixels, p_a + per)
    q = 2 * o_n
    kt = np.empty(o_n, np.float64)  # `requant_fma_terms`, the bias folded in
    bt = np.empty(o_n, np.float64)
    bf = np.empty(o_n, np.float64)
    for o in range(o_n):
        bf[o] = np.float64(bias[o])
        kt[o], bt[o], good = requant_fma_terms(bias[o], rq.km[o], rq.sc[o])
        if not good:
            return False
    sm = np.zeros(q, np.int64)
    s32 = np.zeros(q, np.int32)
    mn = np.full(o_n, _I32_MAX, np.int32)  # raw sums: all, and the unflagged
    mx = np.full(o_n, _I32_MIN, np.int32)
    mnu = np.full(o_n, _I32_MAX, np.int32)
    mxu = np.full(o_n, _I32_MIN, np.int32)
    ps = s32[o_n:]
    zp, lo, hi = np.float64(rq.zp), np.float64(rq.lo), np.float64(rq.hi)
    gf = g.reshape(-1)
    df = out.reshape(-1)
    fa = need_acc.reshape(-1)
    fp = need_pe.reshape(-1)
    nb = o_n // L32.LANES
    pe_lim = np.int64(pe_bits if pe_risk else 127)
    fold = _SUM32_RUNS if small else 1
    rows = 0
    for m in range(b * pixels + p_a, b * pixels + p_b):
        v0 = m * q
        d0 = m * o_n
        _run_xr(gf, v0, mn, mx, s32, kt, bt, zp, lo, hi, df, d0, nb)
        _run(gf, v0 + o_n, mn, mx, ps, kt, bt, zp, lo, hi, df, d0, nb)
        L32.need_bits(gf, v0, v0 + o_n, bf, fa, fp, d0, np.int64(acc_bits), pe_lim, mnu, mxu,
                      nb)
        rows += 1
        if rows == fold:
            rows = 0
            _fold32(sm, s32)
    t = mnmx[b, blk]
    t[0], t[1], t[2], t[3] = _I64_MAX, _I64_MIN, _I64_MAX, _I64_MIN
    exact = True
    for j in range(q):
        sums[b, blk, j] = sm[j] + s32[j]
    for o in range(o_n):
        if mn[o] <= mx[o]:  # some pixel in this block
            a0 = mn[o] + bias[o]
            a1 = mx[o] + bias[o]
            t[0] = min(t[0], a0)
            t[1] = max(t[1], a1)
            exact &= max(-a0, a1) * rq.km[o] < F64_EXACT_PRODUCT
        if mnu[o] <= mxu[o]:  # some output not flagged
            t[2] = min(t[2], mnu[o] + bias[o])
            t[3] = max(t[3], mxu[o] + bias[o])
    return exact


@numba.njit(inline="always")
def risk_thresholds(bias, acc_bits, pe_bits, pe_risk):
    """(tp, tn): an output with positive and negative product sums ``pos, neg >= 0`` is
    flagged (`gemm_epilogue_kernel`'s ``need_acc > acc_bits``, or ``need_pe > pe_bits`` with
    `pe_risk`) exactly where ``pos > tp or neg > tn``: [bias - neg, bias + pos] leaves the
    signed acc range where ``pos > 2^(A-1) - 1 - bias`` or ``neg > bias + 2^(A-1)``, and
    [-neg, pos] the pe range where ``pos > 2^(P-1) - 1`` or ``neg > 2^(P-1)``. Clamped to
    [-1, 2^31 - 1] (the sums are in [0, 2^24)), so int32 lanes compare them."""
    # a width past 62 bits acts as 62: no bound reaches 2^61 (|bias| < 2^52, sums < 2^24)
    ha = np.int64(1) << (min(acc_bits, 62) - 1)
    tp = ha - 1 - bias
    tn = bias + ha
    if pe_risk:
        hp = np.int64(1) << (min(pe_bits, 62) - 1)
        tp = min(tp, hp - 1)
        tn = min(tn, hp)
    return (np.int32(min(max(tp, -1), _I32_MAX)), np.int32(min(max(tn, -1), _I32_MAX)))


@numba.njit(inline="always")
def risk_flag(pos, s, tp, tn):
    """Whether an output with product sum `s` and positive product sum `pos` (int32) is
    flagged at the thresholds `risk_thresholds` gave: ``pos > tp or pos - s > tn``."""
    return (pos > tp) | (np.int32(pos - s) > tn)


@numba.njit(cache=True)
def fused_risk_task(gl, ms, gs, o_n, pixels, bias, pe_risk, lv, do_rq, rq, out, flags, rows,
                    mnmx, sums, b, blk, p_a, p_b):
    """`gemm_epilogue_kernel`'s task with risk (no wrapping, no chunks) for a single
    configuration's fused kernel (`int8_tiles._conv_risk_kernel`), whose sums are in `gl` as two
    planes of ``(p_b - p_a) x o_n``: the sums, then the positive product sums (its columns
    o_n + o). Instead of every output's bound bits (kept where a sweep's configurations share
    them) it writes `flags` (M, o_n) uint8, 1 where that kernel would flag the output at
    these widths (`risk_thresholds`: two int32 compares), and `rows` (M,) int32, how many
    outputs of each row it flagged. The planes make every loop a flat run of
    ``rep * o_n >= _FLAT_LANES`` outputs with the per-column parameters tiled
    (`_flat_epilogue_task`), each loop writing few arrays (a loop of all the work ran
    scalar: the vectorizer's run-time alias checks); the column sums run in int32 lanes,
    folded into int64 every `_SUM32_RUNS` runs. A first loop only asks whether a run flags
    anything; the flags, their row counts and the flagged/unflagged split of the extremes
    are computed only in runs that do (a run that flags nothing: plain extremes, zeroed
    flags; ResNet-20 b64's 16-channel layers, the whole risk kernel 1.22 -> 1.06-1.20 ms).
    Requantized by `requant_fma_one` where `_flat_epilogue_task` would be, else (and for a
    block whose extremes fail its 2^52 test) by the integer rule. The rows `ms` of the sums
    are copied to `gs` (len(ms), 2 * o_n) first."""
    n_p = p_b - p_a
    plane = n_p * o_n
    m_a = b * pixels + p_a
    for k in range(ms.shape[0]):
        if m_a <= ms[k] < m_a + n_p:
            r = (ms[k] - m_a) * o_n
            for j in range(o_n):
                gs[k, j] = gl[r + j]
                gs[k, o_n + j] = gl[plane + r + j]
    rep = max(1, (_FLAT_LANES + o_n - 1) // o_n)
    n_l = rep * o_n
    tp = np.empty(n_l, np.int32)
    tn = np.empty(n_l, np.int32)
    kt = np.empty(n_l, np.float64)  # `requant_fma_terms`, the bias folded in
    bt = np.empty(n_l, np.float64)
    fma = do_rq and rq.f64
    for o in range(o_n):  # per column, then tiled
        tp[o], tn[o] = risk_thresholds(bias[o], lv.acc_bits, lv.pe_bits, pe_risk)
        if fma:
            kt[o], bt[o], good = requant_fma_terms(bias[o], rq.km[o], rq.sc[o])
            fma &= good
    for i in range(o_n, n_l):
        tp[i], tn[i], kt[i], bt[i] = tp[i - o_n], tn[i - o_n], kt[i - o_n], bt[i - o_n]
    sm = np.zeros(n_l, np.int64)
    sp = np.zeros(n_l, np.int64)
    s32 = np.zeros(n_l, np.int32)
    p32 = np.zeros(n_l, np.int32)
    mnu = np.full(n_l, _I32_MAX, np.int32)  # raw sums not flagged, and flagged
    mxu = np.full(n_l, _I32_MIN, np.int32)
    mnf = np.full(n_l, _I32_MAX, np.int32)
    mxf = np.full(n_l, _I32_MIN, np.int32)
    zp, lo, hi = np.float64(rq.zp), np.float64(rq.lo), np.float64(rq.hi)
    ff = flags.reshape(-1)
    df = out.reshape(-1)
    runs = 0
    ff[m_a * o_n:m_a * o_n + plane] = 0  # runs that flag some write theirs
    rows[m_a:m_a + n_p] = 0
    for c0 in range(0, plane, n_l):
        cnt = min(n_l, plane - c0)
        p0 = plane + c0
        at = m_a * o_n + c0
        nb = cnt // L32.LANES  # 16 lanes at a time (`lanes32`), then the rest
        r16 = nb * L32.LANES
        hit = L32.risk_hit(gl, c0, p0, tp, tn, nb)
        for i in range(r16, cnt):
            hit |= risk_flag(gl[p0 + i], gl[c0 + i], tp[i], tn[i])
        r0 = m_a + c0 // o_n  # runs are whole rows: n_l and the plane are multiples of o_n
        if hit:  # flags and the flagged/unflagged split only in runs that flag some
            for i in range(cnt):
                v = gl[c0 + i]
                f = risk_flag(gl[p0 + i], v, tp[i], tn[i])
                ff[at + i] = f
                mnu[i] = min(mnu[i], _I32_MAX if f else v)
                mxu[i] = max(mxu[i], _I32_MIN if f else v)
            for i in range(cnt):
                f = ff[at + i] != 0
                mnf[i] = min(mnf[i], gl[c0 + i] if f else _I32_MAX)
                mxf[i] = max(mxf[i], gl[c0 + i] if f else _I32_MIN)
            for r in range(cnt // o_n):
                k = 0
                for i in range(at + r * o_n, at + (r + 1) * o_n):
                    k += ff[i]
                rows[r0 + r] = k
            if fma:  # the sums and requantization (`lanes32.make_run`)
                _run_r(gl, c0, mnu, mxu, s32, kt, bt, zp, lo, hi, df, at, nb)
            else:
                _run(gl, c0, mnu, mxu, s32, kt, bt, zp, lo, hi, df, at, nb)
        else:  # with the plain extremes
            if fma:
                _run_xr(gl, c0, mnu, mxu, s32, kt, bt, zp, lo, hi, df, at, nb)
            else:
                _run_x(gl, c0, mnu, mxu, s32, kt, bt, zp, lo, hi, df, at, nb)
            for i in range(r16, cnt):
                mnu[i] = min(mnu[i], gl[c0 + i])
                mxu[i] = max(mxu[i], gl[c0 + i])
        _run(gl, p0, mnu, mxu, p32, kt, bt, zp, lo, hi, df, at, nb)
        for i in range(r16, cnt):
            s32[i] += gl[c0 + i]
            p32[i] += gl[p0 + i]
            if fma:
                df[at + i] = requant_fma_one(np.float64(gl[c0 + i]), kt[i], bt[i], zp, lo, hi)
        runs += 1
        if runs == _SUM32_RUNS:
            runs = 0
            _fold32(sm, s32)
            _fold32(sp, p32)
    t = mnmx[b, blk]
    t[0], t[1], t[2], t[3] = _I64_MAX, _I64_MIN, _I64_MAX, _I64_MIN
    for o in range(2 * o_n):
        sums[b, blk, o] = 0
    exact = fma
    for i in range(n_l):
        o = i % o_n
        sums[b, blk, o] += sm[i] + s32[i]
        sums[b, blk, o_n + o] += sp[i] + p32[i]
        if mnu[i] <= mxu[i]:  # some output not flagged
            t[2] = min(t[2], mnu[i] + bias[o])
            t[3] = max(t[3], mxu[i] + bias[o])
        lo_i, hi_i = min(mnu[i], mnf[i]), max(mxu[i], mxf[i])
        if lo_i <= hi_i:  # some pixel in this lane
            a0 = lo_i + bias[o]
            a1 = hi_i + bias[o]
            t[0] = min(t[0], a0)
            t[1] = max(t[1], a1)
            if fma:
                exact &= max(-a0, a1) * rq.km[o] < F64_EXACT_PRODUCT
    if not exact:  # the integer rule, pixel by pixel
        acc = np.empty(o_n, np.int64)
        for r in range(n_p):
            for o in range(o_n):
                acc[o] = np.int64(gl[r * o_n + o]) + bias[o]
            if do_rq:
                requant_span(acc, out[m_a + r], rq, 0, 1)
            else:
                dst = out[m_a + r]
                for o in range(o_n):
                    dst[o] = acc[o]


@numba.njit(cache=True)
def _epilogue_task(g, o_n, pixels, bias, risk, pe_risk, acc_bits, pe_bits, do_rq, rq, out,
                   need_acc, need_pe, mnmx, sums, wrap_bits, nch, q, per, b, blk, chunked,
                   g_row0=0):
    """One task (image `b`, block `blk` of pixels) of `gemm_epilogue_kernel`; `chunked` is a
    constant at each call, so the copy without chunks has no chunk code in its loops. Row m
    of the sums is ``g[m - g_row0]`` (a fused conv passes only its block's rows).

    Without wrapping, the extremes are kept of the raw sums in int32 lanes (they are below
    2^24) and the bias added once at the end: ``min(g + bias) = min(g) + bias`` per column.
    The bounds' bits are computed in float64 lanes (exact integers: ``|bias| < 2^52``;
    `_bits_of_f64`)."""
    raw = wrap_bits == 0  # (`risk` comes without wrapping)
    mn = np.full(o_n, _I64_MAX, np.int64)
    mx = np.full(o_n, _I64_MIN, np.int64)
    mn32 = np.full(o_n, _I32_MAX, np.int32)
    mx32 = np.full(o_n, _I32_MIN, np.int32)
    mnu32 = np.full(o_n, _I32_MAX, np.int32)  # raw sums of the outputs not flagged
    mxu32 = np.full(o_n, _I32_MIN, np.int32)
    bf = np.empty(o_n, np.float64)
    for o in range(o_n):
        bf[o] = np.float64(bias[o])
    fa = np.empty(o_n, np.float64)  # the acc and pe bounds' magnitudes (`_bits_of_f64`)
    fp = np.empty(o_n, np.float64)
    ia = fa.view(np.int64)
    ip = fp.view(np.int64)
    sm = np.zeros(q, np.int64)
    smw = np.zeros(q, np.int64)  # chunks weighted 1..nch
    ri = np.empty(q, np.int32)
    rw = np.empty(q, np.int64)
    acc = np.empty(o_n, np.int64)
    accf = np.empty(o_n, np.float64)
    f64 = do_rq and rq.f64
    for p in range(blk * per, min(pixels, (blk + 1) * per)):
        m = b * pixels + p
        gm = g[m - g_row0]
        for j in range(q):  # exact sums in int32 range (float32 below 2^24, or int32 from a
            ri[j] = np.int32(gm[j])  # plan split over input channels): 8 or 16 lanes at once
        if chunked:
            for j in range(q):
                rw[j] = ri[j]
            for c in range(1, nch):
                for j in range(q):
                    v = np.int32(gm[c * q + j])
                    ri[j] += v
                    rw[j] += (c + 1) * np.int64(v)
            for j in range(q):
                smw[j] += rw[j]
        for j in range(q):
            sm[j] += ri[j]
        if raw:
            for o in range(o_n):
                mn32[o] = min(mn32[o], ri[o])
                mx32[o] = max(mx32[o], ri[o])
            if f64:
                for o in range(o_n):
                    accf[o] = np.float64(ri[o]) + bf[o]
        elif wrap_bits <= 32:  # the wrapped values fit int32: their extremes in int32 lanes
            for o in range(o_n):
                w32 = np.int32(wrap(np.int64(ri[o]) + bias[o], wrap_bits))
                acc[o] = w32
                accf[o] = w32
                mn32[o] = min(mn32[o], w32)
                mx32[o] = max(mx32[o], w32)
        else:
            for o in range(o_n):
                acc[o] = wrap(np.int64(ri[o]) + bias[o], wrap_bits)
            for o in range(o_n):
                mn[o] = min(mn[o], acc[o])
                mx[o] = max(mx[o], acc[o])
        if risk:  # [bias - neg, bias + pos] and [-neg, pos] as max(hi, -lo - 1), then bits
            for o in range(o_n):
                pos = np.float64(ri[o_n + o])
                neg = pos - np.float64(ri[o])
                fa[o] = max(max(bf[o] + pos, 0.0), -min(bf[o] - neg, 0.0) - 1.0)
                fp[o] = max(pos, neg - 1.0)
            dna = need_acc[m]
            dnp = need_pe[m]
            for o in range(o_n):
                na = _bits_of_f64(ia[o])
                npe = _bits_of_f64(ip[o])
                dna[o] = na
                dnp[o] = npe
                flag = (na > acc_bits) | (pe_risk & (npe > pe_bits))
                mnu32[o] = min(mnu32[o], _I32_MAX if flag else ri[o])
                mxu32[o] = max(mxu32[o], _I32_MIN if flag else ri[o])
        # requantized in float64 lanes where that is exact (`requant_span_f64`; one call site:
        # each inlined copy costs compile time), else by the int64 rule
        if not (f64 and wrap_bits <= 32 and requant_span_f64(accf, out[m], rq, 0, 1)):
            if raw:
                for o in range(o_n):
                    acc[o] = np.int64(ri[o]) + bias[o]
            if do_rq:
                requant_span(acc, out[m], rq, 0, 1)
            else:
                dst = out[m]
                for o in range(o_n):
                    dst[o] = acc[o]
    mnu = np.full(o_n, _I64_MAX, np.int64)
    mxu = np.full(o_n, _I64_MIN, np.int64)
    for o in range(o_n):
        if wrap_bits <= 32 and mn32[o] <= mx32[o]:  # some pixel in this block
            mn[o] = mn32[o] + (bias[o] if raw else 0)  # raw sums: the bias added once here
            mx[o] = mx32[o] + (bias[o] if raw else 0)
        if risk and mnu32[o] <= mxu32[o]:  # some output not flagged
            mnu[o] = mnu32[o] + bias[o]
            mxu[o] = mxu32[o] + bias[o]
    t = mnmx[b, blk]  # this task's extremes over its columns
    t[0], t[1], t[2], t[3] = _I64_MAX, _I64_MIN, _I64_MAX, _I64_MIN
    for o in range(o_n):
        t[0] = min(t[0], mn[o])
        t[1] = max(t[1], mx[o])
        t[2] = min(t[2], mnu[o] if risk else mn[o])
        t[3] = max(t[3], mxu[o] if risk else mx[o])
    for j in range(q):
        sums[b, blk, j] = sm[j]
        if chunked:
            sums[b, blk, q + j] = smw[j]


@numba.njit(parallel=True, cache=True)
def gemm_epilogue_kernel(g, o_n, pixels, bias, risk, pe_risk, lv, do_rq, rq, out, need_acc,
                         need_pe, mnmx, sums, wrap_bits=0, nch=1):
    """Accumulators ``acc = g + bias`` from the engine's sums `g` (M, q) (float32 or integer;
    rows m = (n, pixel); columns: o_n outputs, then with `risk` o_n positive-product sums
    ``pos``, the negative ones being ``neg = pos - g``) into channels-last `out` (M, o_n) (any
    integer dtype that holds the values), requantized by `rq` (an `arith.RequantParams`) when
    `do_rq`; ``|bias| < 2^52`` (`accumulate` sends layers with larger biases elsewhere).
    With `risk` (never with `wrap_bits`), the bits each output's bounds need, `need_acc` for
    ``[bias - neg, bias + pos]`` (every running sum at the acc level) and `need_pe` for
    ``[-neg, pos]`` (every chunk sum at the pe level),
    (M, o_n) uint8; an output is flagged when its bound leaves ``lv.acc_bits`` (or
    ``lv.pe_bits``, with `pe_risk`): its value here is provisional, to be replaced.

    With ``nch`` > 1, `g` holds those columns per chunk (`npusim.sim.screen`: chunk j in
    columns [j*q, (j+1)*q)), summed here (exact: below 2^24 like the totals); the check's
    sums are then per column the plain sum over the chunks and the sum weighted by j + 1
    (a value moved between chunks, or wrong in one, changes one of them).

    With ``wrap_bits`` > 0 every accumulator is first wrapped to that width (the value of a
    wrapping level whose events are not counted: `accumulate.wrap_shortcut`).

    Tasks are (image, block of pixels); per task partials: `mnmx` (N, B, 4) min and max of
    all its accumulators, then of those not flagged, and `sums` (N, B, q, or 2q with chunks) the
    sum of every column (the engine's check)."""
    N = mnmx.shape[0]
    B = mnmx.shape[1]
    q = g.shape[1] // nch
    acc_bits, pe_bits = lv.acc_bits, lv.pe_bits
    per = (pixels + B - 1) // B
    for t in numba.prange(N * B):
        b = t // B
        blk = t - b * B
        if nch > 1:  # two copies of the task, each with its branch folded away
            _epilogue_task(g, o_n, pixels, bias, risk, pe_risk, acc_bits, pe_bits, do_rq, rq, out,
                           need_acc, need_pe, mnmx, sums, wrap_bits, nch, q, per, b, blk, True)
        elif risk:
            if not (_row_risk_applies(do_rq, rq, q, o_n) and _row_risk_task(
                    g, o_n, pixels, bias, pe_risk, acc_bits, pe_bits, rq, out, need_acc,
                    need_pe, mnmx, sums, per, b, blk, g.dtype == np.dtype(np.float32))):
                _epilogue_task(g, o_n, pixels, bias, risk, pe_risk, acc_bits, pe_bits, do_rq,
                               rq, out, need_acc, need_pe, mnmx, sums, wrap_bits, 1, q, per, b,
                               blk, False)
        elif not (_flat_applies(do_rq, rq, wrap_bits, q, o_n) and _flat_epilogue_task(
                g, o_n, pixels, bias, rq, out, mnmx, sums, wrap_bits, per, b, blk, 0,
                g.dtype == np.dtype(np.float32))):
            _epilogue_task(g, o_n, pixels, bias, risk, pe_risk, acc_bits, pe_bits, do_rq, rq, out,
                           need_acc, need_pe, mnmx, sums, wrap_bits, 1, q, per, b, blk, False)



@numba.njit(parallel=True, cache=True)
def requant_points_kernel(vals, chan, rq, out):
    """out[k] = requant of vals[k] with the parameters of channel chan[k] of `rq`."""
    for k in numba.prange(vals.shape[0]):
        c = chan[k]
        out[k] = requant_one(vals[k], rq.m0[c], rq.n[c], rq.mf[c], rq.scale_float, rq.code,
                             rq.mbits, rq.zp, rq.lo, rq.hi)


REQUANT_ROWS = 64  # rows per task of `requant_rows_kernel`


@numba.njit(parallel=True, cache=True)
def requant_rows_kernel(vals, rq, out, ext):
    """``out[m, o]`` = requant of ``vals[m, o]`` (integers of any dtype, int16 from the
    register walk; channels last) with the parameters of channel o of `rq`: per row
    `requant_span_f64` where the record allows it and that is exact (an accumulator at or
    past 2^53 makes its product reach 2^52 unless m0 is 0, whose product is 0 either way),
    else `requant_span` on the row in int64 (constant-code loops; `requant_points_kernel`
    branches on the code per element). ``ext[t]`` = (min, max) of task t's rows of `vals`
    (tasks of `REQUANT_ROWS` rows; the pass that reads them anyway)."""
    m_n, o_n = vals.shape
    for t in numba.prange((m_n + REQUANT_ROWS - 1) // REQUANT_ROWS):
        buf = np.empty(o_n, np.float64)
        row = np.empty(o_n, np.int64)
        lo = np.int64(vals[t * REQUANT_ROWS, 0])
        hi = lo
        for m in range(t * REQUANT_ROWS, min(m_n, (t + 1) * REQUANT_ROWS)):
            src = vals[m]
            for o in range(o_n):
                v = np.int64(src[o])
                row[o] = v
                lo = min(lo, v)
                hi = max(hi, v)
            if rq.f64:
                for o in range(o_n):
                    buf[o] = row[o]
                if requant_span_f64(buf, out[m], rq, 0, 1):
                    continue
            requant_span(row, out[m], rq, 0, 1)
        ext[t, 0] = lo
        ext[t, 1] = hi


@numba.njit(cache=True)
def flagged_points_kernel(flags, pix, m_out, c_out):
    """The non-zero entries of `flags` (M, O) uint8 in the rows `pix`, row by row and column
    by column: their rows into `m_out` and columns into `c_out` (as many as there are),
    eight flags at a time where they are all zero (a row holds one or two of its outputs
    flagged where this is used). Returns how many (those past the outputs' length counted,
    not written)."""
    O = flags.shape[1]
    k = 0
    for p in pix:
        row = flags[p]
        if O % 8 == 0:
            words = row.view(np.uint64)
            for i in range(O // 8):
                if words[i] != 0:
                    k = _flagged_in(row, p, 8 * i, 8 * i + 8, m_out, c_out, k)
        else:
            k = _flagged_in(row, p, 0, O, m_out, c_out, k)
    return k


@numba.njit(inline="always")
def _flagged_in(row, p, c_a, c_b, m_out, c_out, k):
    """`flagged_points_kernel`'s scan of columns [c_a, c_b) of row p, its outputs from `k` on;
    returns the next `k`."""
    for c in range(c_a, c_b):
        if row[c]:
            if k < m_out.shape[0]:
                m_out[k] = p
                c_out[k] = c
            k += 1
    return k


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


__all__ = ["channels_last_kernel", "conv_kernel", "conv_points_kernel", "conv_walk_kernel",
           "screen_walk_kernel", "pool_kernel", "maxpool_kernel",
           "depthwise_sums_kernel", "depthwise_epilogue_kernel", "avgpool_float_kernel",
           "embed_kernel", "to_u8_kernel", "window_sums_kernel",
           "spot_check_kernel", "gemm_epilogue_kernel", "image_column_sums_kernel",
           "extremes_kernel", "requant_points_kernel", "requant_rows_kernel",
           "nonzero_count_kernel", "flagged_points_kernel", "LevelSpec", "MODE_CODES",
           "ORDER_CODES"]


@numba.njit(parallel=True, cache=True)
def running_range_kernel(x, w, bias, stride, groups, zp_x, order, rows, ho, wo, ranges):
    """Extremes of every running sum of an exact, order-faithful conv (the additions of
    `_accumulate_point`, no width limit): `ranges` (N, 4) = pe min, pe max, acc min, acc max
    per image (the pe level only in the ws/is order; 0 is always in range)."""
    N = x.shape[0]
    O = w.shape[0]
    og = O // groups
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    for b in numba.prange(N):
        pe_lo = 0
        pe_hi = 0
        acc_lo = 0
        acc_hi = 0
        for o in range(O):
            c0 = (o // og) * cg
            for oy in range(ho):
                for ox in range(wo):
                    acc = bias[o]
                    acc_lo = min(acc_lo, acc)
                    acc_hi = max(acc_hi, acc)
                    ps = 0
                    cnt = 0
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                p = (x[b, c0 + c, oy * stride + i, ox * stride + j] - zp_x) \
                                    * w[o, c, i, j]
                                if order == OS:
                                    acc += p
                                    acc_lo = min(acc_lo, acc)
                                    acc_hi = max(acc_hi, acc)
                                else:
                                    ps += p
                                    pe_lo = min(pe_lo, ps)
                                    pe_hi = max(pe_hi, ps)
                                    cnt += 1
                                    if cnt == rows:
                                        acc += ps
                                        acc_lo = min(acc_lo, acc)
                                        acc_hi = max(acc_hi, acc)
                                        ps = 0
                                        cnt = 0
                    if order != OS and cnt > 0:
                        acc += ps
                        acc_lo = min(acc_lo, acc)
                        acc_hi = max(acc_hi, acc)
        ranges[b, 0] = pe_lo
        ranges[b, 1] = pe_hi
        ranges[b, 2] = acc_lo
        ranges[b, 3] = acc_hi
