"""The chunk screen's test on 16 int32 lanes (issue 20): LLVM IR in a numba intrinsic.

`kernels.screen_pixels_task` tests every output of a chunk: with s its held value, ``sum``
the chunk's sum and ``pos`` (an upper bound on) its positive product sum, the chunk passes
where ``s + pos`` and ``s + sum - pos`` stay within the acc level and ``pos``, ``sum - pos``
within the pe level; a passing output's held value becomes ``s + sum``. numba vectorizes that
loop in int64 lanes of 256-bit vectors; here it runs in int32 lanes, 16 to a vector (one zmm
on AVX-512, two ymm on AVX2). Exact where int32 holds every value: held values within
levels of at most 30 bits (wrap or saturate, so they never leave them), chunk sums and
positive sums below 2^24 (the int8 engine's float32 sums). ResNet-18 224's screened layers
(captured chunk sums, one thread, in cache): 0.48 -> 0.19 ns per test; int64 lanes in
512-bit vectors 0.40.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16

_I1, _I8, _I16, _I32, _I64 = (ir.IntType(b) for b in (1, 8, 16, 32, 64))
_VI = ir.VectorType(_I32, LANES)
_VF = ir.VectorType(ir.FloatType(), LANES)
_VB8 = ir.VectorType(_I8, LANES)


@intrinsic
def screen_blocks(typingctx, row, prow, base, pb, held, ok, blocks, acc_hi, acc_lo, pe_hi,
                  pe_lo):
    """For o < 16 * `blocks` (``blocks > 0`` or none): with ``sum = row[base + o]`` and
    ``pos = prow[pb + o]`` (float32 holding integers below 2^24), ``neg = sum - pos`` and
    ``s = held[o]`` (int32), ``ok[o]`` (1 byte) = ``s + pos <= acc_hi and s + neg >= acc_lo
    and pos <= pe_hi and neg >= pe_lo`` (the bounds int32), and where ok, ``held[o] = s +
    sum``. Returns how many failed (int64). The caller keeps every access in bounds and every
    value within int32."""
    sig = types.int64(row, prow, base, pb, held, ok, blocks, acc_hi, acc_lo, pe_hi, pe_lo)

    def codegen(context, builder, signature, args):
        ra, pa, ha, oa = (context.make_array(signature.args[i])(context, builder, args[i])
                          for i in (0, 1, 4, 5))
        base, pb, blocks = args[2], args[3], args[6]

        def splat(v):
            v = builder.trunc(v, _I32) if v.type.width > 32 else builder.sext(v, _I32) \
                if v.type.width < 32 else v
            return builder.shuffle_vector(
                builder.insert_element(ir.Constant(_VI, ir.Undefined), v, ir.Constant(_I32, 0)),
                ir.Constant(_VI, ir.Undefined), ir.Constant(ir.VectorType(_I32, LANES), None))

        acc_hi, acc_lo, pe_hi, pe_lo = (splat(args[i]) for i in (7, 8, 9, 10))

        def ptr(data, off, ty):
            return builder.bitcast(builder.gep(data, [off]), ty.as_pointer())

        def load(data, off, ty, align):
            ld = builder.load(ptr(data, off, ty))
            ld.align = align
            return ld

        entry = builder.block
        loop = builder.append_basic_block("screen_block")
        done = builder.append_basic_block("screen_done")
        builder.cbranch(builder.icmp_signed(">", blocks, ir.Constant(_I64, 0)), loop, done)
        builder.position_at_end(loop)
        i = builder.phi(_I64)
        fails = builder.phi(_I64)
        o = builder.mul(i, ir.Constant(_I64, LANES))
        sm = builder.fptosi(load(ra.data, builder.add(base, o), _VF, 4), _VI)
        pos = builder.fptosi(load(pa.data, builder.add(pb, o), _VF, 4), _VI)
        s = load(ha.data, o, _VI, 4)
        neg = builder.sub(sm, pos)
        good = builder.and_(
            builder.and_(builder.icmp_signed("<=", builder.add(s, pos), acc_hi),
                         builder.icmp_signed(">=", builder.add(s, neg), acc_lo)),
            builder.and_(builder.icmp_signed("<=", pos, pe_hi),
                         builder.icmp_signed(">=", neg, pe_lo)))
        builder.store(builder.select(good, builder.add(s, sm), s), ptr(ha.data, o, _VI)).align = 4
        builder.store(builder.zext(good, _VB8), ptr(oa.data, o, _VB8)).align = 1
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")
        bad = builder.call(popcount, [builder.bitcast(builder.not_(good), _I16)])
        fails_next = builder.add(fails, builder.zext(bad, _I64))
        i_next = builder.add(i, ir.Constant(_I64, 1))
        i.add_incoming(ir.Constant(_I64, 0), entry)
        i.add_incoming(i_next, loop)
        fails.add_incoming(ir.Constant(_I64, 0), entry)
        fails.add_incoming(fails_next, loop)
        builder.cbranch(builder.icmp_signed("<", i_next, blocks), loop, done)
        builder.position_at_end(done)
        res = builder.phi(_I64)
        res.add_incoming(ir.Constant(_I64, 0), entry)
        res.add_incoming(fails_next, loop)
        return res

    return sig, codegen
