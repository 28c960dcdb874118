"""Order-faithful walks on int16 lanes held in vector registers (issue 20): the micro-kernel.

The array-lane walk (`kernels.conv_walk_kernel`) re-simulates flagged output pixels product
by product, its lanes (output channels) in arrays: every product loads and stores each
lane's running sum and count, ~10 cycles per 32 lanes. Here the micro-kernel (`make_walk`)
is LLVM IR in a numba intrinsic, as `int8_tiles`' conv tiles are: ``mr`` pixels x `NV`
vectors of 32 int16 lanes stay in registers across the k-steps, and each k-step is a weight
load per vector, a broadcast per pixel and per lane a multiply, an add, and the overflow
test and count (wrap: the add overflowed the lane iff both operands' signs differ from the
sum's; saturate: ``llvm.sadd.sat``, clamped to the level's scaled top). A b-bit value v is
held as v << (16 - b), so a b-bit level wraps or saturates as the lane does; the order is
`kernels._accumulate_point`'s: os adds every product at the acc level; ws/is sums chunks of
`rows` products at the pe level, then adds each chunk at the acc level. Used by
`kernels.walk16_kernel` (whole pixels, 4 at a time; the array-lane walk keeps the levels
int16 lanes cannot hold) and `kernels.screen_walk_kernel` (the chunks its screen cannot
clear, one pixel at a time). The generic vector IR compiles on any target; on AVX-512 a
vector is one zmm register.

ResNet-18 224's stem at 16-bit wrap (25,088 pixels x 64 channels x 147 products, a Xeon with
AVX-512): 12.5 -> 3.9 ms; compiled for AVX2 only (``NUMBA_CPU_NAME=haswell``) on the same
machine 12.6 -> 6.6 ms (reports/BENCHMARKS.md, round 21).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

NV = 2  # vectors of 32 lanes per call: blocks of 64 output channels (the weights padded)
LANES = 32 * NV

_I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V = ir.VectorType(_I16, 32)


def make_walk(mr: int, ws: bool, pe_wrap: bool, acc_wrap: bool):
    """The micro-kernel as a numba intrinsic ``walk(x, rows, koff, k0, k1, pe_rows, wt,
    w_off, w_stride, held, ca, cp, h_off, h_stride, hi_pe, hi_acc, shift)`` (`x`, `wt`,
    `held`, `ca`, `cp` int16; `rows`, `koff` int64): for pixels r < mr and lanes l < 32 * NV,
    the products of k-steps k in [k0, k1) (``k1 > k0``), ``x[rows[r] + koff[k]] * wt[w_off + k
    * w_stride + l]`` (int16, exact: the caller proves it), added to the int16 lanes
    ``held[h_off + r * h_stride + l]`` at the acc level (wrapping if `acc_wrap`, else
    saturating at the scaled top `hi_acc`), their overflows counted into `ca`; with `ws`, each
    chunk of `pe_rows` k-steps from k0 on (the last one short) summed from 0 at the pe level
    first (`pe_wrap`, `hi_pe`, overflows into `cp`), shifted right by `shift` (to the acc
    level's scale) and then added; the lanes stay in registers throughout. The caller keeps
    every access in bounds."""
    sat_name = "llvm.sadd.sat.v32i16"

    def splat(builder, val):
        return builder.shuffle_vector(
            builder.insert_element(ir.Constant(_V, ir.Undefined), val, ir.Constant(_I32, 0)),
            ir.Constant(_V, ir.Undefined), ir.Constant(ir.VectorType(_I32, 32), None))

    def level(builder, wraps, a, p, cnt, hi):
        """(a + p at a level that wraps or saturates, cnt plus 1 per lane that overflowed)."""
        s = builder.add(a, p)
        if wraps:
            o = builder.and_(builder.xor(a, s), builder.xor(p, s))  # sign: signed overflow
            return s, builder.add(cnt, builder.lshr(o, ir.Constant(_V, [15] * 32)))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V, _V]),
                                            sat_name)
        st = builder.call(fn, [a, p])
        big = builder.icmp_signed(">", st, hi)
        f = builder.or_(builder.icmp_signed("!=", st, s), big)
        return builder.select(big, hi, st), builder.sub(cnt, builder.sext(f, _V))

    @intrinsic
    def walk(typingctx, x, rows, koff, k0, k1, pe_rows, wt, w_off, w_stride, held, ca, cp,
             h_off, h_stride, hi_pe, hi_acc, shift):
        sig = types.void(x, rows, koff, k0, k1, pe_rows, wt, w_off, w_stride, held, ca, cp,
                         h_off, h_stride, hi_pe, hi_acc, shift)

        def codegen(context, builder, signature, args):
            arr = [context.make_array(t)(context, builder, v) if isinstance(t, types.Array)
                   else None for t, v in zip(signature.args, args)]
            xa, ra, ka, wa, ha, caa, cpa = (arr[i] for i in (0, 1, 2, 6, 9, 10, 11))
            k0, k1, pe_rows, w_off, w_stride, h_off, h_stride = (
                args[i] for i in (3, 4, 5, 7, 8, 12, 13))
            hi_pe, hi_acc = (splat(builder, builder.trunc(args[i], _I16)) for i in (14, 15))
            shift = splat(builder, builder.trunc(args[16], _I16))

            def vptr(base, off):
                return builder.bitcast(builder.gep(base, [off]), _V.as_pointer())

            def vload(base, off):
                ld = builder.load(vptr(base, off))
                ld.align = 2
                return ld

            def grid(make):
                return [[make(r, v) for v in range(NV)] for r in range(mr)]

            offs = grid(lambda r, v: builder.add(
                builder.add(h_off, builder.mul(ir.Constant(_I64, r), h_stride)),
                ir.Constant(_I64, 32 * v)))
            held0 = grid(lambda r, v: vload(ha.data, offs[r][v]))
            ca0 = grid(lambda r, v: vload(caa.data, offs[r][v]))
            cp0 = grid(lambda r, v: vload(cpa.data, offs[r][v])) if ws else None
            xrow = [builder.gep(xa.data, [builder.load(builder.gep(ra.data,
                                                                   [ir.Constant(_I64, r)]))])
                    for r in range(mr)]
            wraps, hi = (pe_wrap, hi_pe) if ws else (acc_wrap, hi_acc)

            def open_loop(name, start):
                """A loop block `name` and its exit, the builder placed in the loop: (the
                block before it, the loop block, the exit, the index phi from `start`)."""
                before = builder.block
                body = builder.append_basic_block(name)
                after = builder.append_basic_block(name + "_done")
                builder.branch(body)
                builder.position_at_end(body)
                i = builder.phi(_I64)
                i.add_incoming(start, before)
                return before, body, after, i

            def products(c0, c1, sums0, cnts0):
                """The k-steps [c0, c1) added to `sums0` at the level the products meet
                (os: acc; ws: pe), overflows into `cnts0`: (sums, counts) after them."""
                before, loop, after, k = open_loop("walk_k", c0)
                sums = grid(lambda r, v: builder.phi(_V))
                cnts = grid(lambda r, v: builder.phi(_V))
                wbase = builder.add(w_off, builder.mul(k, w_stride))
                wv = [vload(wa.data, builder.add(wbase, ir.Constant(_I64, 32 * v)))
                      for v in range(NV)]
                off = builder.load(builder.gep(ka.data, [k]))
                new = []
                for r in range(mr):
                    xb = splat(builder, builder.load(builder.gep(xrow[r], [off])))
                    new.append([level(builder, wraps, sums[r][v], builder.mul(xb, wv[v]),
                                      cnts[r][v], hi) for v in range(NV)])
                k_next = builder.add(k, ir.Constant(_I64, 1))
                k.add_incoming(k_next, loop)
                for r in range(mr):
                    for v in range(NV):
                        sums[r][v].add_incoming(sums0[r][v], before)
                        sums[r][v].add_incoming(new[r][v][0], loop)
                        cnts[r][v].add_incoming(cnts0[r][v], before)
                        cnts[r][v].add_incoming(new[r][v][1], loop)
                builder.cbranch(builder.icmp_signed("<", k_next, c1), loop, after)
                builder.position_at_end(after)
                return grid(lambda r, v: new[r][v][0]), grid(lambda r, v: new[r][v][1])

            if not ws:
                held, ca_ = products(k0, k1, held0, ca0)
                stores = ((held, ha), (ca_, caa))
            else:  # pe chunks of `pe_rows` k-steps, each added at the acc level's scale
                entry, outer, done, c0 = open_loop("walk_chunk", k0)
                acc = grid(lambda r, v: builder.phi(_V))
                cac = grid(lambda r, v: builder.phi(_V))
                cpc = grid(lambda r, v: builder.phi(_V))
                end = builder.add(c0, pe_rows)
                c1 = builder.select(builder.icmp_signed("<", end, k1), end, k1)
                zero = grid(lambda r, v: ir.Constant(_V, None))
                ps, cp_new = products(c0, c1, zero, cpc)
                added = grid(lambda r, v: level(builder, acc_wrap, acc[r][v],
                                                builder.ashr(ps[r][v], shift), cac[r][v],
                                                hi_acc))
                tail = builder.block
                for r in range(mr):
                    for v in range(NV):
                        for phi, first, nxt in ((acc, held0, added[r][v][0]),
                                                (cac, ca0, added[r][v][1]),
                                                (cpc, cp0, cp_new[r][v])):
                            phi[r][v].add_incoming(first[r][v], entry)
                            phi[r][v].add_incoming(nxt, tail)
                c0.add_incoming(end, tail)
                builder.cbranch(builder.icmp_signed("<", end, k1), outer, done)
                builder.position_at_end(done)
                stores = ((grid(lambda r, v: added[r][v][0]), ha),
                          (grid(lambda r, v: added[r][v][1]), caa), (cp_new, cpa))
            for vals, a in stores:
                for r in range(mr):
                    for v in range(NV):
                        builder.store(vals[r][v], vptr(a.data, offs[r][v])).align = 2
            return context.get_dummy_value()

        return sig, codegen

    return walk


def lane_weights(wt, shift: int):
    """Weights (..., K, o) in the k order as the micro-kernel reads them: int16, scaled by
    ``2 ** shift`` (to the top of the narrower level's lane), the columns padded with zeros to
    whole blocks of `LANES` (a zero product changes no level and counts no event)."""
    *lead, k, o = wt.shape
    out = np.zeros((*lead, k, -(-o // LANES) * LANES), np.int16)
    out[..., :o] = np.asarray(wt, np.int64) << shift
    return out
