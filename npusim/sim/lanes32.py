"""Hot loops on 16 int32 lanes (issue 20): LLVM IR in numba intrinsics.

numba vectorizes the simulator's loops in 256-bit vectors, and where a loop mixes int32 and
int64 (numba computes int32 - int32 in int64) or float64, in 4 or 8 lanes; here a vector is
16 int32 lanes (one zmm on AVX-512, two ymm on AVX2), float64 work 16 lanes as two or four
registers. Exact where int32 holds every value, which each function states.

- `screen_blocks`, the chunk screen's test (`kernels.screen_pixels_task`): with s an output's
  held value, ``sum`` a chunk's sum and ``pos`` (an upper bound on) its positive product sum,
  the chunk passes where ``s + pos`` and ``s + sum - pos`` stay within the acc level and
  ``pos``, ``sum - pos`` within the pe level; a passing output's held value becomes
  ``s + sum``. For wrap or saturate levels of at most 30 bits (held values never leave them)
  and sums below 2^24 (the int8 engine's). ResNet-18 224's screened layers (captured chunk
  sums, one thread, in cache): 0.48 -> 0.19 ns per test; int64 lanes in 512-bit vectors 0.40.
- `make_run`, an epilogue's run of outputs (`kernels.fused_risk_task`,
  `kernels._flat_epilogue_task`): int32 column sums, extremes, and the float64
  requantization `arith.requant_fma_one`; `risk_hit`, the risk epilogue's early out (does a
  run flag anything). ResNet-20 b64 16-bit wrap, the risk epilogues alone (captured sums):
  5.3 -> 4.3 ms a run.
- `need_bits`, the bits each output's bounds need and the unflagged outputs' extremes, for the
  shared risk epilogue of a sweep's configurations (`kernels._row_risk_task`, a row's 16
  outputs a block): with `make_run`, ResNet-20's sweep epilogues (captured sums) 2.4 -> 0.9 ns
  an output at 16 channels, 1.1 -> 0.65 at 32 and 64.
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
_VD = ir.VectorType(ir.DoubleType(), LANES)


def _splat(builder, v):
    """`v` in each of the 16 lanes of a vector of its type."""
    vt = ir.VectorType(v.type, LANES)
    return builder.shuffle_vector(
        builder.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(_I32, 0)),
        ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(_I32, LANES), None))


def _ptr(builder, data, off, ty):
    """A pointer of type `ty` to element `off` of an array's `data`."""
    return builder.bitcast(builder.gep(data, [off]), ty.as_pointer())


def _load(builder, data, off, ty, align):
    ld = builder.load(_ptr(builder, data, off, ty))
    ld.align = align
    return ld


def _store(builder, val, data, off, align):
    builder.store(val, _ptr(builder, data, off, val.type)).align = align


def _blocks(builder, blocks, name, init, body):
    """A loop over the blocks i < `blocks` (none where ``blocks <= 0``): ``body(o, carried)``,
    o = 16 i the block's first lane and `carried` the loop's values (starting at `init`),
    emits a block's work and returns the carried values' next ones. Returns the carried
    values after the loop."""
    entry = builder.block
    loop = builder.append_basic_block(name)
    done = builder.append_basic_block(name + "_done")
    builder.cbranch(builder.icmp_signed(">", blocks, ir.Constant(_I64, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    carried = [builder.phi(v.type) for v in init]
    nxt = body(builder.mul(i, ir.Constant(_I64, LANES)), carried)
    tail = builder.block
    i_next = builder.add(i, ir.Constant(_I64, 1))
    for phi, first, then in ((i, ir.Constant(_I64, 0), i_next), *zip(carried, init, nxt)):
        phi.add_incoming(first, entry)
        phi.add_incoming(then, tail)
    builder.cbranch(builder.icmp_signed("<", i_next, blocks), loop, done)
    builder.position_at_end(done)
    out = []
    for first, then in zip(init, nxt):
        res = builder.phi(first.type)
        res.add_incoming(first, entry)
        res.add_incoming(then, tail)
        out.append(res)
    return out


def _as_i32(builder, v):
    """An integer argument as int32 (the caller keeps it within)."""
    w = v.type.width
    return builder.trunc(v, _I32) if w > 32 else builder.sext(v, _I32) if w < 32 else v


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
        acc_hi, acc_lo, pe_hi, pe_lo = (_splat(builder, _as_i32(builder, args[i]))
                                        for i in (7, 8, 9, 10))
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")

        def block(o, carried):
            sm = builder.fptosi(_load(builder, ra.data, builder.add(base, o), _VF, 4), _VI)
            pos = builder.fptosi(_load(builder, pa.data, builder.add(pb, o), _VF, 4), _VI)
            s = _load(builder, ha.data, o, _VI, 4)
            neg = builder.sub(sm, pos)
            good = builder.and_(
                builder.and_(builder.icmp_signed("<=", builder.add(s, pos), acc_hi),
                             builder.icmp_signed(">=", builder.add(s, neg), acc_lo)),
                builder.and_(builder.icmp_signed("<=", pos, pe_hi),
                             builder.icmp_signed(">=", neg, pe_lo)))
            _store(builder, builder.select(good, builder.add(s, sm), s), ha.data, o, 4)
            _store(builder, builder.zext(good, _VB8), oa.data, o, 1)
            bad = builder.call(popcount, [builder.bitcast(builder.not_(good), _I16)])
            return [builder.add(carried[0], builder.zext(bad, _I64))]

        return _blocks(builder, blocks, "screen_block", [ir.Constant(_I64, 0)], block)[0]

    return sig, codegen


def make_run(extremes: bool, requant: bool):
    """An epilogue's run of sums on 16 int32 lanes (`kernels.fused_risk_task`,
    `kernels._flat_epilogue_task`), as a numba intrinsic ``run(vs, v0, mn, mx, s32, kt, bf,
    zp, lo, hi, ds, d0, blocks)``: for i < 16 * `blocks` (``blocks > 0`` or none) and v =
    ``vs[v0 + i]`` (int32, or float32 holding an integer): ``s32[i] += v``; with `extremes`,
    ``mn[i] = min(mn[i], v)`` and ``mx[i] = max(mx[i], v)`` (int32); with `requant`,
    ``ds[d0 + i] = min(max(floor(fma(v, kt[i], bf[i])) + zp, lo), hi)``
    (`arith.requant_fma_one`, float64 lanes; the clamp within ds' integer type). The caller
    keeps every access in bounds and the sums within int32."""

    @intrinsic
    def run(typingctx, vs, v0, mn, mx, s32, kt, bf, zp, lo, hi, ds, d0, blocks):
        sig = types.void(vs, v0, mn, mx, s32, kt, bf, zp, lo, hi, ds, d0, blocks)

        def codegen(context, builder, signature, args):
            va, na, xa, sa, ka, ba, da = (
                context.make_array(signature.args[i])(context, builder, args[i])
                for i in (0, 2, 3, 4, 5, 6, 10))
            v0, d0, blocks = args[1], args[11], args[12]
            floats = isinstance(signature.args[0].dtype, types.Float)
            out_ty = context.get_data_type(signature.args[10].dtype)
            vout = ir.VectorType(out_ty, LANES)
            zp, lo, hi = (_splat(builder, args[i]) for i in (7, 8, 9))

            def call(name, ty, *vals):
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ty, [v.type for v in vals]), name)
                return builder.call(fn, list(vals))

            def block(o, carried):
                if floats:
                    v = builder.fptosi(_load(builder, va.data, builder.add(v0, o), _VF, 4), _VI)
                else:
                    v = _load(builder, va.data, builder.add(v0, o), _VI, 4)
                _store(builder, builder.add(_load(builder, sa.data, o, _VI, 4), v), sa.data, o, 4)
                if extremes:
                    a = _load(builder, na.data, o, _VI, 4)
                    _store(builder, builder.select(builder.icmp_signed("<", v, a), v, a),
                           na.data, o, 4)
                    a = _load(builder, xa.data, o, _VI, 4)
                    _store(builder, builder.select(builder.icmp_signed(">", v, a), v, a),
                           xa.data, o, 4)
                if requant:
                    f = call("llvm.fma.v16f64", _VD, builder.sitofp(v, _VD),
                             _load(builder, ka.data, o, _VD, 8), _load(builder, ba.data, o, _VD, 8))
                    f = builder.fadd(call("llvm.floor.v16f64", _VD, f), zp)
                    f = builder.select(builder.fcmp_ordered(">", f, lo), f, lo)
                    f = builder.select(builder.fcmp_ordered("<", f, hi), f, hi)
                    q = builder.fptosi(f, _VI)
                    if out_ty.width < 32:
                        q = builder.trunc(q, vout)
                    elif out_ty.width > 32:
                        q = builder.sext(q, vout)
                    _store(builder, q, da.data, builder.add(d0, o), 1)
                return []

            _blocks(builder, blocks, "run_block", [], block)
            return context.get_dummy_value()

        return sig, codegen

    return run


@intrinsic
def risk_hit(typingctx, g, v0, p0, tp, tn, blocks):
    """Whether any i < 16 * `blocks` has ``p > tp[i] or p - v > tn[i]`` with ``v = g[v0 + i]``
    and ``p = g[p0 + i]`` (int32 lanes; `kernels.risk_flag`, whose sums' difference int32
    holds)."""
    sig = types.boolean(g, v0, p0, tp, tn, blocks)

    def codegen(context, builder, signature, args):
        ga, ta, na = (context.make_array(signature.args[i])(context, builder, args[i])
                      for i in (0, 3, 4))
        v0, p0, blocks = args[1], args[2], args[5]

        def block(o, carried):
            v = _load(builder, ga.data, builder.add(v0, o), _VI, 4)
            p = _load(builder, ga.data, builder.add(p0, o), _VI, 4)
            f = builder.or_(
                builder.icmp_signed(">", p, _load(builder, ta.data, o, _VI, 4)),
                builder.icmp_signed(">", builder.sub(p, v), _load(builder, na.data, o, _VI, 4)))
            return [builder.or_(carried[0], f)]

        flags = _blocks(builder, blocks, "hit_block",
                        [ir.Constant(ir.VectorType(_I1, LANES), None)], block)[0]
        return builder.icmp_unsigned("!=", builder.bitcast(flags, _I16), ir.Constant(_I16, 0))

    return sig, codegen


@intrinsic
def need_bits(typingctx, g, v0, p0, bf, na, np_, d0, acc_lim, pe_lim, mnu, mxu, blocks):
    """The risk epilogue's bound bits (`kernels._row_risk_task`): for i < 16 * `blocks` with
    ``v = g[v0 + i]`` and ``p = g[p0 + i]`` (an output's product sum and positive product
    sum, float32 below 2^24 or int32) and ``neg = p - v``, ``na[d0 + i]`` = the bits of
    ``[bf[i] - neg, bf[i] + p]`` with 0 included and ``np_[d0 + i]`` those of ``[-neg, p]``
    (uint8, `kernels._bits_of_f64` in float64 lanes, exact: ``|bf| < 2^52``); where neither
    exceeds its limit (`acc_lim`, `pe_lim`: int64), ``mnu[i] = min(mnu[i], v)`` and
    ``mxu[i] = max(mxu[i], v)`` (int32, the unflagged outputs' extremes)."""
    sig = types.void(g, v0, p0, bf, na, np_, d0, acc_lim, pe_lim, mnu, mxu, blocks)

    def codegen(context, builder, signature, args):
        ga, fa, aa, pa, la, ha = (context.make_array(signature.args[i])(context, builder, args[i])
                                  for i in (0, 3, 4, 5, 9, 10))
        v0, p0, d0, blocks = args[1], args[2], args[6], args[11]
        floats = isinstance(signature.args[0].dtype, types.Float)
        _VL = ir.VectorType(_I64, LANES)
        acc_lim, pe_lim = (_splat(builder, args[i]) for i in (7, 8))
        zero, one = (_splat(builder, ir.Constant(ir.DoubleType(), c)) for c in (0.0, 1.0))
        shift, off, low = (_splat(builder, ir.Constant(_I64, c)) for c in (52, 1021, 1))

        def fmax(a, b):
            return builder.select(builder.fcmp_ordered(">", a, b), a, b)

        def bits(f):  # max((bits of f >> 52) - 1021, 1): floor(log2 f) + 2, 1 for 0
            e = builder.sub(builder.ashr(builder.bitcast(f, _VL), shift), off)
            return builder.select(builder.icmp_signed(">", e, low), e, low)

        def block(o, carried):
            vt = _load(builder, ga.data, builder.add(v0, o), _VF if floats else _VI, 4)
            pt = _load(builder, ga.data, builder.add(p0, o), _VF if floats else _VI, 4)
            if floats:
                v, vf, pf = builder.fptosi(vt, _VI), builder.fpext(vt, _VD), builder.fpext(pt, _VD)
            else:
                v, vf, pf = vt, builder.sitofp(vt, _VD), builder.sitofp(pt, _VD)
            b = _load(builder, fa.data, o, _VD, 8)
            neg = builder.fsub(pf, vf)
            lo = builder.fsub(b, neg)
            lo0 = builder.select(builder.fcmp_ordered("<", lo, zero), lo, zero)
            mag_a = fmax(fmax(builder.fadd(b, pf), zero), builder.fsub(builder.fneg(lo0), one))
            mag_p = fmax(pf, builder.fsub(neg, one))
            ba, bp = bits(mag_a), bits(mag_p)
            _store(builder, builder.trunc(ba, _VB8), aa.data, builder.add(d0, o), 1)
            _store(builder, builder.trunc(bp, _VB8), pa.data, builder.add(d0, o), 1)
            flag = builder.or_(builder.icmp_signed(">", ba, acc_lim),
                               builder.icmp_signed(">", bp, pe_lim))
            big, small = (_splat(builder, ir.Constant(_I32, c)) for c in (2**31 - 1, -2**31))
            a = _load(builder, la.data, o, _VI, 4)
            vn = builder.select(flag, big, v)
            _store(builder, builder.select(builder.icmp_signed("<", vn, a), vn, a), la.data, o, 4)
            a = _load(builder, ha.data, o, _VI, 4)
            vx = builder.select(flag, small, v)
            _store(builder, builder.select(builder.icmp_signed(">", vx, a), vx, a), ha.data, o, 4)
            return []

        _blocks(builder, blocks, "need_block", [], block)
        return context.get_dummy_value()

    return sig, codegen
