"""The order-faithful walk on int16 lanes held in vector registers (issue 20).

`kernels.conv_walk_kernel` re-simulates flagged output pixels product by product, its lanes
(output channels) in arrays: every product loads and stores each lane's running sum and
count, ~10 cycles per 32 lanes. Here the micro-kernel (`_make_walk`) is LLVM IR in a numba
intrinsic, as `int8_tiles`' conv tiles are: `MR` pixels x `NV` vectors of 32 int16 lanes
stay in registers across the k-steps, and each k-step is a weight load per vector, a
broadcast per pixel and per lane a multiply, an add, and the overflow test and count (wrap:
the add overflowed the lane iff both operands' signs differ from the sum's; saturate:
``llvm.sadd.sat``, clamped to the level's scaled top). The rules are `kernels._walk16_add`'s
(values scaled to the top of the lane, so a b-bit level wraps or saturates as the lane
does), the order `kernels._accumulate_point`'s: os adds every product at the acc level; ws/is
sums chunks of `rows` products at the pe level, then adds each chunk at the acc level.

Inputs come either straight from a padded int16 copy of ``x - zp`` (every pixel of a layer,
`walk16_kernel`'s ``direct``: a k-step is an offset from the pixel's corner) or from the
patches of the pixels walked (a few pixels of a large layer: the copy would cost more).
The ResNet-18 224 stem at 16-bit wrap (25,088 pixels x 64 channels x 147 products, Xeon
with AVX-512): 12.4 -> 3.6 ms (reports/BENCHMARKS.md, round 21).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.sim.kernels import OS, SATURATE, WRAP, _level_add, _patch

MR = 4  # pixels per micro-kernel call
NV = 2  # vectors of 32 lanes per call: blocks of 64 output channels (the weights padded)
LANES = 32 * NV
_T = 2 * MR  # pixels per parallel task

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V = ir.VectorType(_I16, 32)


def _make_walk(ws: bool, pe_mode: int, acc_mode: int):
    """The micro-kernel as a numba intrinsic ``walk(x, rows, koff, k0, k1, wt, w_off,
    w_stride, held, ca, cp, h_off, h_stride, hi_pe, hi_acc, shift)`` (`x`, `wt`, `held`,
    `ca`, `cp` int16; `rows`, `koff` int64): for pixels r < MR and
    lanes l < 32 * NV, the products of k-steps k in [k0, k1) (``k1 > k0``), ``x[rows[r] +
    koff[k]] * wt[w_off + k * w_stride + l]`` (int16, exact: the caller proves it), added to
    the int16 lanes ``held[h_off + r * h_stride + l]`` at the acc level (`acc_mode`, scaled
    top `hi_acc`), their overflows counted into `ca`; with `ws` summed from 0 at the pe level
    first (`pe_mode`, `hi_pe`, overflows into `cp`), that sum shifted right by `shift` (to the
    acc level's scale) and then added. The caller keeps every access in bounds."""
    sat_name = "llvm.sadd.sat.v32i16"

    def splat(builder, val):
        return builder.shuffle_vector(
            builder.insert_element(ir.Constant(_V, ir.Undefined), val, ir.Constant(_I32, 0)),
            ir.Constant(_V, ir.Undefined), ir.Constant(ir.VectorType(_I32, 32), None))

    def level(builder, mode, a, p, cnt, hi):
        """(a + p at a level in `mode`, cnt plus 1 per lane that overflowed)."""
        s = builder.add(a, p)
        if mode == WRAP:
            o = builder.and_(builder.xor(a, s), builder.xor(p, s))  # sign: signed overflow
            return s, builder.add(cnt, builder.lshr(o, ir.Constant(_V, [15] * 32)))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V]),
                                            sat_name)
        st = builder.call(fn, [a, p])
        big = builder.icmp_signed(">", st, hi)
        f = builder.or_(builder.icmp_signed("!=", st, s), big)
        return builder.select(big, hi, st), builder.sub(cnt, builder.sext(f, _V))

    @intrinsic
    def walk(typingctx, x, rows, koff, k0, k1, wt, w_off, w_stride, held, ca, cp, h_off,
             h_stride, hi_pe, hi_acc, shift):
        sig = types.void(x, rows, koff, k0, k1, wt, w_off, w_stride, held, ca, cp, h_off,
                         h_stride, hi_pe, hi_acc, shift)

        def codegen(context, builder, signature, args):
            arr = [context.make_array(t)(context, builder, v) if isinstance(t, types.Array)
                   else None for t, v in zip(signature.args, args)]
            xa, ra, ka, wa, ha, caa, cpa = (arr[i] for i in (0, 1, 2, 5, 8, 9, 10))
            k0, k1, w_off, w_stride, h_off, h_stride = (args[i] for i in (3, 4, 6, 7, 11, 12))
            hi_pe, hi_acc = (splat(builder, builder.trunc(args[i], _I16)) for i in (13, 14))
            shift = splat(builder, builder.trunc(args[15], _I16))

            def vptr(base, off):
                return builder.bitcast(builder.gep(base, [off]), _V.as_pointer())

            def vload(base, off):
                ld = builder.load(vptr(base, off))
                ld.align = 2
                return ld

            offs = [[builder.add(builder.add(h_off, builder.mul(ir.Constant(_I64, r), h_stride)),
                                 ir.Constant(_I64, 32 * v)) for v in range(NV)] for r in range(MR)]
            held0 = [[vload(ha.data, o) for o in row] for row in offs]
            ca0 = [[vload(caa.data, o) for o in row] for row in offs]
            cp0 = [[vload(cpa.data, o) for o in row] for row in offs] if ws else None
            xrow = [builder.gep(xa.data, [builder.load(builder.gep(ra.data,
                                                                   [ir.Constant(_I64, r)]))])
                    for r in range(MR)]
            entry = builder.block
            loop = builder.append_basic_block("walk_loop")
            done = builder.append_basic_block("walk_done")
            builder.branch(loop)
            builder.position_at_end(loop)
            k = builder.phi(_I64)
            k.add_incoming(k0, entry)
            # os: the acc level's lanes and counts; ws: the pe level's sums and counts
            init = [[ir.Constant(_V, None) for _ in range(NV)] for _ in range(MR)] if ws \
                else held0
            sums = [[builder.phi(_V) for _ in range(NV)] for _ in range(MR)]
            cnts = [[builder.phi(_V) for _ in range(NV)] for _ in range(MR)]
            for r in range(MR):
                for v in range(NV):
                    sums[r][v].add_incoming(init[r][v], entry)
                    cnts[r][v].add_incoming((cp0 if ws else ca0)[r][v], entry)
            wbase = builder.add(w_off, builder.mul(k, w_stride))
            wv = [vload(wa.data, builder.add(wbase, ir.Constant(_I64, 32 * v)))
                  for v in range(NV)]
            off = builder.load(builder.gep(ka.data, [k]))
            mode, hi = (pe_mode, hi_pe) if ws else (acc_mode, hi_acc)
            new_s, new_c = [], []
            for r in range(MR):
                xb = splat(builder, builder.load(builder.gep(xrow[r], [off])))
                pairs = [level(builder, mode, sums[r][v], builder.mul(xb, wv[v]), cnts[r][v], hi)
                         for v in range(NV)]
                new_s.append([p[0] for p in pairs])
                new_c.append([p[1] for p in pairs])
            k_next = builder.add(k, ir.Constant(_I64, 1))
            k.add_incoming(k_next, loop)
            for r in range(MR):
                for v in range(NV):
                    sums[r][v].add_incoming(new_s[r][v], loop)
                    cnts[r][v].add_incoming(new_c[r][v], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k1), loop, done)
            builder.position_at_end(done)
            for r in range(MR):
                for v in range(NV):
                    if ws:  # the chunk at the acc level's scale, added there
                        h, c = level(builder, acc_mode, held0[r][v],
                                     builder.ashr(new_s[r][v], shift), ca0[r][v], hi_acc)
                        stores = ((h, ha), (c, caa), (new_c[r][v], cpa))
                    else:
                        stores = ((new_s[r][v], ha), (new_c[r][v], caa))
                    for val, a in stores:
                        builder.store(val, vptr(a.data, offs[r][v])).align = 2
            return context.get_dummy_value()

        return sig, codegen

    return walk


_MODES = (WRAP, SATURATE)
_OS_WALKS = {m: _make_walk(False, m, m) for m in _MODES}
_WS_WALKS = {(p, a): _make_walk(True, p, a) for p in _MODES for a in _MODES}
_os_wrap, _os_sat = _OS_WALKS[WRAP], _OS_WALKS[SATURATE]
_ws_ww, _ws_ws = _WS_WALKS[WRAP, WRAP], _WS_WALKS[WRAP, SATURATE]
_ws_sw, _ws_ss = _WS_WALKS[SATURATE, WRAP], _WS_WALKS[SATURATE, SATURATE]


@numba.njit(inline="always")
def _walk_block(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, hi_pe, hi_acc,
                shift, ws, pe_mode, acc_mode):
    """One micro-kernel call, the variant for these modes (`_make_walk`)."""
    L = held.shape[0] // _T
    if not ws:
        if acc_mode == WRAP:
            _os_wrap(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe,
                     hi_acc, shift)
        else:
            _os_sat(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe,
                    hi_acc, shift)
    elif pe_mode == WRAP:
        if acc_mode == WRAP:
            _ws_ww(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe,
                   hi_acc, shift)
        else:
            _ws_ws(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe,
                   hi_acc, shift)
    elif acc_mode == WRAP:
        _ws_sw(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe, hi_acc,
               shift)
    else:
        _ws_ss(xs, rows, kg, k0, k1, wf, w_off, og, held, ca, cp, h_off, L, hi_pe, hi_acc,
               shift)


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
    """`kernels.conv_walk_kernel` on int16 lanes of wrap/saturate levels of at most 16 bits
    (its `wt` conditions), the lanes in registers (`_make_walk`). `wt` (G, K, og64) int16,
    pre-scaled as there, each group's columns padded with zero weights to a multiple of
    `LANES` (the layer's og = O / G, O = ``vals.shape[1]``). Inputs: with ``xp.size`` the
    padded int16 ``x - zp_x`` (`pad16_kernel`) and `koff` (G, K) each product's offset from a
    pixel's corner there; else each pixel's patch from channels-last `x` (`koff` (1, K):
    0..K-1). Accumulators into `vals` (len(pix), O) int64, events (len(pix), 2) (pe, acc)."""
    G, K, og64 = wt.shape
    o_all = vals.shape[1]
    og = o_all // G
    cg = K // (kh * kw)
    ws = lv.order != OS
    rows_pe = lv.rows
    pe_bits, pe_mode, acc_bits, acc_mode = lv.pe_bits, lv.pe_mode, lv.acc_bits, lv.acc_mode
    sh_acc = 16 - acc_bits
    sh_pe = 16 - pe_bits if ws else sh_acc
    hi_acc = min(((1 << (acc_bits - 1)) - 1) << sh_acc, 32767)
    hi_pe = min(((1 << (pe_bits - 1)) - 1) << sh_pe, 32767)
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
    for task in numba.prange((P + _T - 1) // _T):
        p0 = task * _T
        nt = min(_T, P - p0)
        held = np.empty(_T * og64, np.int16)
        ca = np.empty(_T * og64, np.int16)
        cp = np.zeros(_T * og64, np.int16)
        rows = np.empty(_T, np.int64)
        patch = np.zeros(0 if direct else _T * K, np.int16)
        ev = np.zeros((_T, 2), np.int64)
        for t in range(nt):
            m = pix[p0 + t]
            b = m // (ho * wo)
            r = m - b * ho * wo
            oy = r // wo
            ox = r - oy * wo
            rows[t] = ((b * hp + oy * stride) * wp + ox * stride) * c_all if direct else t * K
        for t in range(nt, _T):  # a short task repeats its last pixel into scratch rows
            rows[t] = rows[nt - 1]
        for g in range(G):
            if not direct:
                for t in range(nt):
                    m = pix[p0 + t]
                    b = m // (ho * wo)
                    r = m - b * ho * wo
                    oy = r // wo
                    _patch(x, b, oy, r - oy * wo, g * cg, cg, kh, kw, stride, pad, zp_x,
                           patch[t * K:(t + 1) * K])
            xs = xf if direct else patch
            kg = koff[g] if direct else koff[0]
            for t in range(_T):
                held[t * og64:(t + 1) * og64] = pre[g * og64:(g + 1) * og64]
                ca[t * og64:(t + 1) * og64] = pre_f[g * og64:(g + 1) * og64]
                cp[t * og64:(t + 1) * og64] = 0
            for o0 in range(0, og64, LANES):
                w_off = g * K * og64 + o0
                for t0 in range(0, nt, MR):
                    rt = rows[t0:]
                    h_off = t0 * og64 + o0
                    if ws:
                        for k0 in range(0, K, rows_pe):
                            _walk_block(xs, rt, kg, k0, min(K, k0 + rows_pe), wf, w_off, og64,
                                        held, ca, cp, h_off, hi_pe, hi_acc, sh_pe - sh_acc,
                                        True, pe_mode, acc_mode)
                    else:
                        _walk_block(xs, rt, kg, 0, K, wf, w_off, og64, held, ca, cp, h_off,
                                    hi_pe, hi_acc, 0, False, pe_mode, acc_mode)
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
