"""Exact int8 convolution on the CPU's vector units, compiled by numba: tiles of int32
accumulators written as LLVM IR, ``vpdpbusd`` on AVX-512 VNNI, ``vpmaddwd`` on AVX2.

``vpdpbusd`` multiplies 4 adjacent uint8 x int8 pairs and adds them to an int32 lane with no
intermediate rounding or saturation, so a conv built on it is exact in int32 (modulo 2^32,
and every sum the engine asks for is far inside int32). AVX2 has no such instruction: its
``vpmaddubsw`` (what oneDNN and fbgemm use there) saturates each pair of products at int16.
The AVX2 tiles widen inputs and weights to int16 instead and use ``vpmaddwd`` (two int16 x
int16 products summed into an int32 lane; a pair of uint8 x int8 products is at most
2 * 255 * 128 in size, so this is exact too): half as many products per instruction, but no
weight split and no saturation. numba cannot emit either from Python loops (its
auto-vectorizer made ``vpmaddwd`` at ~13 GMAC/s per core), so the micro-kernel
(`_make_tile`) is LLVM IR in a numba intrinsic: an ``MR`` pixels x ``16 * NV`` outputs tile
of int32 accumulators held in vector registers (16 lanes: one zmm, or two ymm), per pixel
and k-step one 4-byte broadcast of inputs (4 uint8, or 2 int16) against 16 outputs' 4 bytes
of weights. Each output pixel's patch is read in place (implicit im2col): a weight row's
kw * C inputs are contiguous in NHWC (with groups, a weight position's C / groups), so the
k-steps are element offsets from the pixel's corner (`_koffsets`) and the input needs no
channel padding, only a copy with its spatial padding at the zero point (`_pad_kernel`; on
AVX2 the copy widens to int16). The tile is stored with the zero point's share subtracted,
each 16-lane vector at its own offset (rows of q columns, or planes). `conv` returns the
sums (`_conv_kernel`, tasks of 16 tiles in parallel); `conv_epilogue` hands each block of
pixels' sums, in a local buffer, straight to the epilogue (`kernels.fused_epilogue_task`),
so a single run never writes them out; for a layer at risk (`conv_risk`) the buffer holds
the sums and the positive product sums as two planes, which the risk epilogue reads as flat
runs (`_conv_risk_kernel`, `kernels.fused_risk_task`), the positive ones only for the
pixels a pooled bound (`pooled_input`) does not clear. Speed (reports/BENCHMARKS.md): on VNNI
about oneDNN's at batch 64 and ImageNet sizes, 5-8x less time per call at batch 1; on AVX2
about fbgemm's (which saturates), with no weight split (oneDNN's exact path there splits
8-bit weights in two: twice the columns).

Only compiled where numba compiles for the host CPU and it has VNNI or AVX2 (`ISA`;
``NPUSIM_TILES`` forces AVX2 or none): elsewhere the int8 engine keeps oneDNN. Grouped
convs run as per-group column blocks (the chunk screening's chunked conv is one); depthwise
convs keep the engine's depthwise kernel (4 products per lane step would waste 3 of 4).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.sim.kernels import (
    fused_epilogue_task,
    fused_risk_task,
    fused_task_pixels,
    risk_flag,
    risk_thresholds,
    screen_pixels_task,
)


def _host_isa() -> str | None:
    """"vnni" (AVX-512 VNNI), "avx2", or None: the instructions the tiles are built from on
    this host, where numba compiles for it (no ``NUMBA_CPU_NAME``). ``NPUSIM_TILES=avx2``
    takes AVX2 on a VNNI host too (both kinds tested on one machine), ``none`` no own tiles
    (the int8 engine then runs oneDNN); `npusim.jitcache` keeps their kernels apart."""
    force = os.environ.get("NPUSIM_TILES", "auto")
    if force not in ("auto", "avx2", "none"):
        raise ValueError(f"NPUSIM_TILES: expected auto, avx2 or none; got {force!r}")
    if force == "none" or numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES:
        return None
    import llvmlite.binding as ll

    feats = ll.get_host_cpu_features()
    if force == "auto" and all(feats.get(f, False)
                               for f in ("avx512f", "avx512bw", "avx512vnni")):
        return "vnni"
    return "avx2" if feats.get("avx2", False) else None


#: the host's tile instructions ("vnni", "avx2" or None: no own kernel, oneDNN instead)
ISA = _host_isa()
ISA_NAMES = {"vnni": "AVX-512 VNNI", "avx2": "AVX2"}

_I32, _I64, _I8 = ir.IntType(32), ir.IntType(64), ir.IntType(8)
_V16 = ir.VectorType(_I32, 16)
#: (pixels, 16-lane vectors of outputs) per tile. VNNI (32 zmm registers): 6 x 32 where the
#: columns come in 32s, else 8 x 16 (measured on ResNet-20's shapes: 8 x 16 0.87 ms against
#: 1.22 ms at 16 outputs, 6 x 32 0.42 against 0.59 ms at 32; 12 x 16 and 4 x 64 slower; a
#: partial block of columns goes through scratch, which cost MobileNetV2's 144-column layers
#: ~25%). AVX2 (16 ymm registers, two per 16 lanes): 5 x 16 and 2 x 32 (seven ResNet
#: shapes, 2 threads, AMD EPYC: 88.0 ms against 92.4 ms for 6 x 16 and 3 x 32, 111 ms for
#: 8 x 16 and 4 x 32)
_TILES = ((8, 1), (6, 2)) if ISA == "vnni" else ((5, 1), (2, 2))
_MR_MAX = 8
#: input elements per k-step (4 bytes), the tiles' input and weight element types
_STEP, _ELEM_X, _ELEM_W = (4, np.uint8, np.int8) if ISA == "vnni" else (2, np.int16, np.int16)
_TILES_PER_TASK = 16  # a parallel task's tiles (its scratch arrays allocated once)


def available() -> bool:
    """The engine's own conv kernel runs on this host (AVX-512 VNNI or AVX2)."""
    return ISA is not None


def _make_tile(mr: int, nv: int):
    """The micro-kernel as a numba intrinsic ``tile(x, rows, koff, wb, w_off, zpw, z_off,
    out, orow, voff)``: for k-steps t in ``range(len(koff))``, pixel r's 4 input bytes at
    element ``x[rows[r] + koff[t]]`` times the packed weights at byte ``w_off + t * 64 * nv``
    (16 * nv outputs x 4 bytes), summed by `_dot` in mr x nv 16-lane accumulators; then
    ``zpw[z_off:][:16 * nv]`` subtracted (int32, modular) and pixel r's v-th 16 results stored
    at ``out[orow[r] + voff[v]:]`` (int32, or float32 converted). ``len(koff) >= 1``; the
    caller keeps every read and write in bounds."""

    @intrinsic
    def tile(typingctx, x, rows, koff, wb, w_off, zpw, z_off, out, orow, voff):
        sig = types.void(x, rows, koff, wb, w_off, zpw, z_off, out, orow, voff)
        as_float = isinstance(out.dtype, types.Float)

        def codegen(context, builder, signature, args):
            xa, ra, ka, wa, _, za, _, oa, rr, va = (
                context.make_array(t)(context, builder, v) if isinstance(t, types.Array) else None
                for t, v in zip(signature.args, args))
            wp = builder.gep(builder.bitcast(wa.data, _I8.as_pointer()), [args[4]])
            ks = builder.extract_value(ka.shape, 0)
            dot = _dot(builder)
            base = [builder.gep(xa.data, [builder.load(builder.gep(ra.data,
                                                                   [ir.Constant(_I64, r)]))])
                    for r in range(mr)]
            entry = builder.block
            loop = builder.append_basic_block("tile_loop")
            done = builder.append_basic_block("tile_done")
            builder.branch(loop)
            builder.position_at_end(loop)
            t = builder.phi(_I64)
            t.add_incoming(ir.Constant(_I64, 0), entry)
            accs = []
            for _ in range(mr * nv):
                acc = builder.phi(_V16)
                acc.add_incoming(ir.Constant(_V16, None), entry)
                accs.append(acc)
            off = builder.load(builder.gep(ka.data, [t]))
            bp = builder.gep(wp, [builder.mul(t, ir.Constant(_I64, 64 * nv))])
            wv = [_load(builder, builder.gep(bp, [ir.Constant(_I64, 64 * v)]), _V16)
                  for v in range(nv)]
            new = []
            for r in range(mr):
                a = _load(builder, builder.gep(base[r], [off]), _I32)
                a = builder.shuffle_vector(
                    builder.insert_element(ir.Constant(_V16, ir.Undefined), a,
                                           ir.Constant(_I32, 0)),
                    ir.Constant(_V16, ir.Undefined), ir.Constant(_V16, None))
                new.extend(dot(accs[r * nv + v], a, wv[v]) for v in range(nv))
            t1 = builder.add(t, ir.Constant(_I64, 1))
            t.add_incoming(t1, loop)
            for acc, val in zip(accs, new):
                acc.add_incoming(val, loop)
            builder.cbranch(builder.icmp_signed("<", t1, ks), loop, done)
            builder.position_at_end(done)
            zp = builder.gep(za.data, [args[6]])
            zv = [_load(builder, builder.gep(zp, [ir.Constant(_I64, 16 * v)]), _V16)
                  for v in range(nv)]
            ty = ir.VectorType(ir.FloatType(), 16) if as_float else _V16
            vo = [builder.load(builder.gep(va.data, [ir.Constant(_I64, v)])) for v in range(nv)]
            for r in range(mr):
                row = builder.gep(oa.data, [builder.load(builder.gep(rr.data,
                                                                     [ir.Constant(_I64, r)]))])
                for v in range(nv):
                    val = builder.sub(new[r * nv + v], zv[v])
                    if as_float:
                        val = builder.sitofp(val, ty)
                    ptr = builder.bitcast(builder.gep(row, [vo[v]]), ty.as_pointer())
                    builder.store(val, ptr).align = 4
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _dot(builder):
    """``dot(acc, a, w)``: 16 int32 lanes `acc` plus, per lane j, the products of the 4 bytes
    `a` (broadcast) with lane j's 4 bytes of `w`: ``vpdpbusd`` (4 uint8 x int8) on VNNI; on
    AVX2 two ``vpmaddwd`` (2 int16 x int16 each, |pair| <= 2 * 255 * 128, so exact in int32)
    and an add."""
    if ISA == "vnni":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return lambda acc, a, w: builder.call(fn, [acc, a, w])
    v8, h16 = ir.VectorType(_I32, 8), ir.VectorType(ir.IntType(16), 16)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [h16, h16]),
                                        "llvm.x86.avx2.pmadd.wd")
    lo, hi = (ir.Constant(ir.VectorType(_I32, 8), list(range(i, i + 8))) for i in (0, 8))

    def dot(acc, a, w):
        a16 = builder.bitcast(builder.shuffle_vector(a, a, lo), h16)
        p = [builder.call(fn, [a16, builder.bitcast(builder.shuffle_vector(w, w, m), h16)])
             for m in (lo, hi)]
        both = builder.shuffle_vector(p[0], p[1], ir.Constant(_V16, list(range(16))))
        return builder.add(acc, both)

    return dot


def _load(builder, ptr, ty):
    """An unaligned load of `ty` at byte or element pointer `ptr`."""
    ld = builder.load(builder.bitcast(ptr, ty.as_pointer()))
    ld.align = 1
    return ld


_tile_a = _make_tile(*_TILES[0])
_tile_b = _make_tile(*_TILES[1])


@numba.njit(parallel=True, cache=True)
def _pad_kernel(x, zp, pad, flat):
    """`flat` = NHWC `x` with `pad` rows and columns of zp around each image, then slack, in
    `flat`'s dtype; a padded row's runs copied as flat ranges (2-D row slices: 8-12x
    slower)."""
    n, h, w, c = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    flat[n * hp * wp * c:] = 0
    xf = x.reshape(-1)
    row = wp * c
    for t in numba.prange(n * hp):
        b = t // hp
        y = t - b * hp
        dst = flat[t * row:(t + 1) * row]
        if y < pad or y >= pad + h:
            dst[:] = zp
            continue
        dst[:pad * c] = zp
        dst[(pad + w) * c:] = zp
        s0 = (b * h + y - pad) * w * c
        dst[pad * c:(pad + w) * c] = xf[s0:s0 + w * c]


@numba.njit(cache=True)
def _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b, dst, row0, q, pw, ps,
           gb_a=0, gb_b=-1):
    """Sums of image `b`'s output pixels p in [p_a, p_b) (q columns) into the flat `dst`:
    column j of row ``r = p - row0`` at ``r * pw + j`` for ``j < pw``, at ``ps + r * pw + j -
    pw`` beyond (``pw = q``: rows of q columns; else two planes, ``pw % 16 == 0``); tiles of
    mr pixels, per group its blocks of 16 * nv columns, of which the blocks (counted over the
    groups) in [gb_a, gb_b) (-1: to the last)."""
    groups, ks = koff.shape
    qg = q // groups
    mr = _TILES[0][0] if nv == 1 else _TILES[1][0]
    nr = 16 * nv
    nb = (qg + nr - 1) // nr  # blocks per group
    if gb_b < 0:
        gb_b = groups * nb
    rows = np.empty(_MR_MAX, np.int64)
    orow = np.empty(_MR_MAX, np.int64)
    voff = np.empty(2, np.int64)
    whole_off = np.empty(2, np.int64)  # rows of q columns, and the scratch tile
    part = np.empty(_MR_MAX * 32, dst.dtype)  # a tile that does not fill the rows
    for v in range(2):
        whole_off[v] = 16 * v
    # column blocks outer: a block's weights (k-steps x 64 * nv bytes) stay in L1 while
    # every tile of pixels reads them (pixel tiles outer streamed all the weights once per
    # tile: a layer4 conv's 2.4 MB per 6 pixels)
    for gb in range(gb_a, gb_b):
        g = gb // nb
        col = g * qg + (gb - g * nb) * nr  # the block's first column
        o1 = min(nr, (g + 1) * qg - col)
        oy = p_a // wo  # the next pixel, stepped along (no division per pixel)
        ox = p_a - oy * wo
        for p0 in range(p_a, p_b, mr):
            m = min(mr, p_b - p0)  # pixels in this tile; a short one repeats its last pixel
            for r in range(m):
                rows[r] = ((b * hp + oy * stride) * wp + ox * stride) * c
                ox += 1
                if ox == wo:
                    ox = 0
                    oy += 1
            for r in range(m, mr):
                rows[r] = rows[m - 1]
            whole = m == mr and o1 == nr
            planes = whole and ps != 0  # else each row's vectors 16 apart from its column
            for r in range(mr):
                orow[r] = (p0 + r - row0) * pw + (0 if planes else col) if whole else r * nr
            if planes:
                for v in range(nv):
                    j = col + 16 * v
                    voff[v] = j if j < pw else j + ps - pw
            out = dst if whole else part
            vo = voff if planes else whole_off
            if nv == 1:
                _tile_a(flat, rows, koff[g], wb, gb * ks * 64, zpw, gb * nr, out, orow, vo)
            else:
                _tile_b(flat, rows, koff[g], wb, gb * ks * 128, zpw, gb * nr, out, orow, vo)
            if not whole:
                for r in range(m):
                    d = dst[(p0 + r - row0) * pw:]
                    for o in range(o1):
                        j = col + o
                        d[j if j < pw else j + ps - pw] = part[r * nr + o]


def _tasks(pixels: int, nv: int) -> int:
    """Tasks per image of `_conv_kernel` (`_TILES_PER_TASK` tiles of the tile height)."""
    span = (_TILES[0][0] if nv == 1 else _TILES[1][0]) * _TILES_PER_TASK
    return (pixels + span - 1) // span


@numba.njit(inline="always")
def _column_sums(rows, out):
    """``out[j]`` = the sum of column j of the 2-D `rows` (exact integers), in int64: a
    task's sums read back while in cache (the engine's check)."""
    out[:] = 0
    for r in range(rows.shape[0]):
        row = rows[r]
        for j in range(row.shape[0]):
            out[j] += np.int64(row[j])


@numba.njit(parallel=True, cache=True)
def _conv_kernel(flat, hp, wp, c, stride, ho, wo, koff, wb, nv, zpw, out, csum):
    """``out[(n*ho + oy)*wo + ox, o] = sum (x - zp) * w`` (see `_tiles`, `conv`) over tasks
    of `_TILES_PER_TASK` tiles; with rows in `csum` (one per task, image by image), each
    task's column sums of what it wrote there, read back while in cache (the engine's
    check)."""
    n = out.shape[0] // (ho * wo)
    pix = ho * wo
    q = out.shape[1]
    mr = _TILES[0][0] if nv == 1 else _TILES[1][0]
    span = mr * _TILES_PER_TASK
    tasks = (pix + span - 1) // span
    for task in numba.prange(n * tasks):
        b = task // tasks
        p_a = (task - b * tasks) * span
        p_b = min(pix, p_a + span)
        _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b,
               out.reshape(-1), -b * pix, q, q, 0)
        if csum.shape[0]:
            _column_sums(out[b * pix + p_a:b * pix + p_b], csum[task])


@numba.njit(parallel=True, cache=True)
def _conv_epilogue_kernel(flat, hp, wp, c, stride, ho, wo, koff, wb, nv, zpw, q, o_n, bias, lv,
                          do_rq, rq, out, need, mnmx, sums, wrap_bits, ms, gs):
    """`_conv_kernel`'s sums consumed where they are made: per task (image, block of
    pixels, as `kernels.gemm_epilogue_kernel` cuts them) the block's sums in a local int32
    buffer, then that kernel's task on them (no risk, no chunks); the rows `ms` of the sums
    are copied to `gs` for the spot check."""
    n, nb = mnmx.shape[0], mnmx.shape[1]
    pixels = ho * wo
    for t in numba.prange(n * nb):
        b, blk, per, p_a, p_b = fused_task_pixels(t, nb, pixels)
        gl = np.empty((max(p_b - p_a, 1), q), np.int32)
        if p_b > p_a:
            _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b, gl.reshape(-1),
                   p_a, q, q, 0)
        fused_epilogue_task(gl, ms, gs, o_n, pixels, bias, lv, do_rq, rq, out, need, mnmx,
                            sums, wrap_bits, b, blk, per, p_a, p_b)


@numba.njit(parallel=True, cache=True)
def _conv_risk_kernel(flat, hp, wp, c, stride, ho, wo, koff, wb, nv, zpw, o_n, bias, pe_risk,
                      lv, do_rq, rq, out, flags, rows, mnmx, sums, ms, gs, bound, g, kh, xwin):
    """`_conv_epilogue_kernel` for a plan with sign columns (q = 2 * o_n; with ``g > 0``
    packed in blocks within each half) and risk: per task the block's sums and positive
    product sums P as two planes of a local buffer, then `kernels.fused_risk_task` on them
    (`flags` (M, o_n): the flagged outputs; `rows` (M,): how many per row).

    With ``g > 0``, P only where a cheaper bound does not clear the pixel: `bound`
    (N, Hb, Wb, o_n) int32 holds, per block of g x g output pixels, an upper bound Pg on the
    positive sums of its pixels (`pooled_input`). The sums first; a pixel none of whose
    outputs Pg flags (``Pg > tp or Pg - S > tn``, `kernels.risk_thresholds`) is not flagged
    by its P <= Pg either: its P row is set to 0 (which flags nothing: ``-S <= Pg - S``), and
    a task with no other pixel takes the exact epilogue (`kernels.fused_epilogue_task`) on
    its sums alone. The other pixels, and the spot check's rows `ms`, get their exact P
    (runs of pixels through `_tiles`). So the flags are those P gives, and the P column sums
    cover the computed pixels only: their window sums of the operand (kh x kw x C, the order
    of `wq_hwc`) are added up in ``xwin[b, blk, :-1]`` and the pixels counted in
    ``xwin[b, blk, -1]`` for the check."""
    n, nb = mnmx.shape[0], mnmx.shape[1]
    pixels = ho * wo
    nr = 16 * nv
    half = o_n // nr  # column blocks of the sums; the positive sums' follow
    row = wp * c
    seg = xwin.shape[2] - 1  # kh * kw * c
    run = seg // kh  # kw * c
    no_need = np.zeros((2, 1, 1), np.uint8)  # never written without risk
    for t in numba.prange(n * nb):
        b, blk, per, p_a, p_b = fused_task_pixels(t, nb, pixels)
        n_p = p_b - p_a
        plane = n_p * o_n
        gl = np.empty(max(2 * plane, 1), np.int32)
        if g == 0:  # every pixel's P
            if n_p > 0:
                _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b, gl, p_a,
                       2 * o_n, o_n, plane)
            fused_risk_task(gl, ms, gs, o_n, pixels, bias, pe_risk, lv, do_rq, rq, out, flags,
                            rows, mnmx, sums, b, blk, p_a, p_b)
            continue
        xw = xwin[b, blk]
        xw[:] = 0
        if n_p > 0:
            _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b, gl, p_a,
                   2 * o_n, o_n, plane, 0, half)
            tp = np.empty(o_n, np.int32)
            tn = np.empty(o_n, np.int32)
            for o in range(o_n):
                tp[o], tn[o] = risk_thresholds(bias[o], lv.acc_bits, lv.pe_bits, pe_risk)
            need = np.zeros(n_p + 1, np.uint8)  # a sentinel 0 ends the last run
            oy = p_a // wo
            ox = p_a - oy * wo
            for r in range(n_p):
                pb = bound[b, oy // g, ox // g]
                sr = gl[r * o_n:(r + 1) * o_n]
                f = 0
                for o in range(o_n):
                    f |= risk_flag(pb[o], sr[o], tp[o], tn[o])
                need[r] = f
                ox += 1
                if ox == wo:
                    ox = 0
                    oy += 1
            m_a = b * pixels + p_a
            for k in range(ms.shape[0]):
                if m_a <= ms[k] < m_a + n_p:
                    need[ms[k] - m_a] = 1
            if not need.any():  # nothing flagged: the exact epilogue on the sums alone
                flags[m_a:m_a + n_p] = 0
                rows[m_a:m_a + n_p] = 0
                fused_epilogue_task(gl[:plane].reshape(n_p, o_n), ms, gs, o_n, pixels, bias,
                                    lv, do_rq, rq, out, no_need, mnmx, sums, 0, b, blk, per,
                                    p_a, p_b)
                sums[b, blk, o_n:] = 0
                continue
            r = 0
            while r < n_p:
                if need[r] == 0:
                    gl[plane + r * o_n:plane + (r + 1) * o_n] = 0
                    r += 1
                    continue
                r1 = r
                while need[r1]:
                    r1 += 1
                _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a + r, p_a + r1,
                       gl, p_a, 2 * o_n, o_n, plane, half, 2 * half)
                for p in range(p_a + r, p_a + r1):
                    oy = p // wo
                    base = ((b * hp + oy * stride) * wp + (p - oy * wo) * stride) * c
                    for i in range(kh):
                        src = flat[base + i * row:base + i * row + run]
                        dst = xw[i * run:(i + 1) * run]
                        for j in range(run):
                            dst[j] += src[j]
                xw[seg] += r1 - r
                r = r1
        fused_risk_task(gl, ms, gs, o_n, pixels, bias, pe_risk, lv, do_rq, rq, out, flags,
                        rows, mnmx, sums, b, blk, p_a, p_b)


#: the most chunk sums (float32) one task of `_screen_conv_kernel` keeps (2 MB, an L2's
#: worth: its pixels' rows are read back while in cache). Smaller tasks cost tile efficiency:
#: ResNet-18 224 b2 at 16 bits, its 8 screened layers 10.5 ms at 2^17, 8.8-9.0 at 2^19-2^21
_SCREEN_BLOCK = 1 << 19


@numba.njit(parallel=True, cache=True)
def _screen_conv_kernel(flat, hp, wp, c, stride, ho, wo, koff, wb, nv, zpw, span, csum, ms, gs,
                        x, wl, wt, wt16, bias, kh, kw, pad, zp_x, lv, pix, gp, g, size, vals,
                        events, chunks, flagged):
    """`_conv_kernel`'s chunk sums consumed where they are made: per task (image, block of
    `span` pixels) the block's sums in a local buffer, their column sums into
    ``csum[task]`` and the spot rows `ms` into `gs` (the engine's checks), then
    `kernels.screen_pixels_task` on the block (``pix`` = every row m, in order)."""
    pixels = ho * wo
    n = x.shape[0]
    q = csum.shape[1]
    tasks = (pixels + span - 1) // span
    for task in numba.prange(n * tasks):
        b = task // tasks
        p_a = (task - b * tasks) * span
        p_b = min(pixels, p_a + span)
        n_p = p_b - p_a
        gl = np.empty(n_p * q, np.float32)
        _tiles(flat, hp, wp, c, stride, wo, koff, wb, nv, zpw, b, p_a, p_b, gl, p_a, q, q, 0)
        _column_sums(gl.reshape(n_p, q), csum[task])
        m_a = b * pixels + p_a
        for k in range(ms.shape[0]):
            if m_a <= ms[k] < m_a + n_p:
                gs[k] = gl[(ms[k] - m_a) * q:(ms[k] - m_a + 1) * q]
        screen_pixels_task(x, wl, wt, wt16, bias, kh, kw, stride, pad, zp_x, lv, pix, m_a,
                           m_a + n_p, ho, wo, gl.reshape(n_p, q), m_a, gp, g, size, vals, events,
                           chunks, flagged)


def screen_conv(xu: np.ndarray, zp: int, packed: TileWeights, stride: int, padding: int,
                ms: np.ndarray, screen_args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """`conv`'s chunk sums (`packed`: a `screen.ChunkPlan`'s conv) screened by
    `kernels.screen_pixels_task` where they are made, never stored: `screen_args` are that
    task's arguments from `x` to `flagged` without ``stride``, ``pix``, ``t0``, ``t1``,
    ``ho``, ``wo``, ``gc`` and ``row0`` (outputs filled for every pixel). Returns (the
    column sums per image (N, q) int64, the rows `ms` of the sums (len(ms), q) float32) for
    the engine's checks, which the caller must pass before using the outputs."""
    (n, ho, wo), args = _kernel_args(xu, zp, packed, stride, padding)
    q = packed.q
    pixels = ho * wo
    tasks = max(1, -(-pixels * q // _SCREEN_BLOCK), -(-2 // max(n, 1)))  # two at least
    span = -(-pixels // tasks)
    tasks = -(-pixels // span)
    csum = np.empty((n * tasks, q), np.int64)
    gs = np.zeros((len(ms), q), np.float32)
    x, wl, wt, wt16, bias, kh, kw, pad, zp_x, lv, gp, g, size, vals, events, chunks, \
        flagged = screen_args
    _screen_conv_kernel(*args, span, csum, ms, gs, x, wl, wt, wt16, bias, kh, kw, pad, zp_x,
                        lv, np.arange(n * pixels), gp, g, size, vals, events, chunks, flagged)
    return csum.reshape(n, tasks, q).sum(axis=1), gs


@numba.njit(parallel=True, cache=True)
def _pool_kernel(x, zp, pad, g, s, m):
    """``m[b, y, x] = max over dy, dx < g of xp[b, y + dy * s, x + dx * s]`` (per channel), xp
    being uint8 NHWC `x` padded with `pad` rows and columns of `zp` (and with zp beyond); per
    output row, each source row's columns as one run (the channels of a pixel alone are too
    few for the vector lanes)."""
    n, h, w, c = x.shape
    hp, wp = m.shape[1], m.shape[2]
    xf = x.reshape(-1)
    mf = m.reshape(-1)
    for t in numba.prange(n * hp):
        b = t // hp
        y = t - b * hp
        dst = mf[t * wp * c:(t + 1) * wp * c]
        dst[:] = 0
        for dy in range(g):
            ys = y + dy * s - pad
            for dx in range(g):
                # output column xo reads source column xo + dx * s - pad, where in [0, w)
                x0 = max(0, pad - dx * s)
                x1 = max(x0, min(wp, w + pad - dx * s))
                if ys < 0 or ys >= h:
                    x1 = x0
                for j in range(x0 * c):  # padding
                    dst[j] = max(dst[j], zp)
                for j in range(x1 * c, wp * c):
                    dst[j] = max(dst[j], zp)
                if x1 > x0:
                    d = dst[x0 * c:x1 * c]
                    sr = xf[((b * h + ys) * w + x0 + dx * s - pad) * c:]
                    for j in range(d.shape[0]):
                        d[j] = max(d[j], sr[j])


def pooled_input(xu: np.ndarray, zp: int, padding: int, g: int, stride: int) -> np.ndarray:
    """uint8 NHWC `xu` padded at `zp` and max-pooled over g x g positions `stride` apart
    (`_pool_kernel`): the conv of max(w, 0) over it at stride g * stride, no padding, gives
    each block of g x g output pixels an upper bound on their positive product sums (inputs
    at or above zp)."""
    n, h, w, c = xu.shape
    m = np.empty((n, h + 2 * padding, w + 2 * padding, c), np.uint8)
    _pool_kernel(np.ascontiguousarray(xu), zp, padding, g, stride, m)
    return m


@dataclass(frozen=True)
class TileWeights:
    """Weights packed for `conv`: per group, blocks of ``16 * nv`` outputs; per segment (see
    `_koffsets`) its weights in k-steps of `_STEP` (4 int8, or 2 int16), each k-step
    64 * nv bytes (outputs x 4 bytes);
    `colsum` per output (int32, padded likewise: the zero point's share is zp times it)."""

    wb: np.ndarray
    nv: int
    q: int
    kh: int
    kw: int
    groups: int
    colsum: np.ndarray


def pack(w: np.ndarray, groups: int = 1, halves: bool = False) -> TileWeights:
    """Pack int8 weights `w` (q, C / groups, kh, kw) for `conv`; with `halves` (sign columns)
    no block of columns spans both halves (`conv_risk` with a bound computes them apart;
    without one, a block of 32 may hold 16 sums and 16 positive sums: ResNet-20's 16-channel
    layers at risk 1.61 -> 1.48 ms, one 6 x 32 tile where two 8 x 16 ones were)."""
    q, cg, kh, kw = w.shape
    qg = q // groups
    # blocks of 32 where they fill `out`'s rows, else of 16
    nv = 2 if qg % (64 if halves else 32) == 0 else 1
    nr = 16 * nv
    qp = -(-qg // nr) * nr  # per group
    wg = np.asarray(w).reshape(groups, qg, cg, kh, kw).transpose(0, 1, 3, 4, 2)
    if groups == 1:  # a segment per weight row: kw * C weights
        wg = wg.reshape(1, qg, kh, kw * cg)
    else:  # a segment per weight position: C / groups weights
        wg = wg.reshape(groups, qg, kh * kw, cg)
    nseg, seg = wg.shape[2], wg.shape[3]
    gr = -(-seg // _STEP)
    rows = np.zeros((groups, qp, nseg, gr * _STEP), _ELEM_W)
    rows[:, :qg, :, :seg] = wg
    wb = rows.reshape(groups, qp // nr, nr, nseg * gr, _STEP).transpose(0, 1, 3, 2, 4)
    colsum = np.zeros((groups, qp), np.int32)
    colsum[:, :qg] = np.asarray(w, np.int64).reshape(groups, qg, -1).sum(axis=2)
    return TileWeights(np.ascontiguousarray(wb).reshape(-1), nv, q, kh, kw, groups,
                       colsum.reshape(-1))


def _operand(xu: np.ndarray, zp: int, padding: int, seg: int):
    """(flat input the tiles read, padded height, padded width): uint8 `xu` itself where
    the tiles read uint8 and it needs no padding and its segments are whole k-steps, else
    `_pad_kernel`'s copy (int16 for the AVX2 tiles)."""
    n, h, w, c = xu.shape
    if padding == 0 and seg % _STEP == 0 and _ELEM_X == np.uint8:
        return np.ascontiguousarray(xu).reshape(-1), h, w
    hp, wp = h + 2 * padding, w + 2 * padding
    flat = np.empty(n * hp * wp * c + _STEP, _ELEM_X)
    _pad_kernel(np.ascontiguousarray(xu), zp, padding, flat)
    return flat, hp, wp


@functools.lru_cache(maxsize=256)
def _koffsets(kh: int, kw: int, c: int, groups: int, wp: int) -> np.ndarray:
    """(groups, k-steps) element offsets of each k-step's inputs (`_STEP` of them) from a
    pixel's corner: per segment (a weight row's kw * C inputs; with groups a weight
    position's C / groups of group g), its k-steps (read only)."""
    cg = c // groups
    if groups == 1:
        starts = np.arange(kh)[None, :] * wp * c
        seg = kw * c
    else:
        i, j = np.divmod(np.arange(kh * kw), kw)
        starts = (i * wp + j) * c + np.arange(groups)[:, None] * cg
        seg = cg
    off = starts[:, :, None] + _STEP * np.arange(-(-seg // _STEP))
    off = np.ascontiguousarray(off.reshape(groups, -1), np.int64)
    off.flags.writeable = False
    return off


def _segment(packed: TileWeights, c: int) -> int:
    return packed.kw * c if packed.groups == 1 else c // packed.groups


def _kernel_args(xu: np.ndarray, zp: int, packed: TileWeights, stride: int, padding: int):
    """((N, Ho, Wo), the leading arguments `_conv_kernel` and `_conv_epilogue_kernel` share:
    the operand the tiles read, its padded size, channels, stride, output size, k-step
    offsets, packed weights and the zero point's share per column)."""
    n, h, w, c = xu.shape
    kh, kw = packed.kh, packed.kw
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    flat, hp, wp = _operand(xu, zp, padding, _segment(packed, c))
    return (n, ho, wo), (flat, hp, wp, c, stride, ho, wo,
                         _koffsets(kh, kw, c, packed.groups, wp), packed.wb, packed.nv,
                         packed.colsum * np.int32(zp))


def conv(xu: np.ndarray, zp: int, packed: TileWeights, stride: int, padding: int,
         dtype=np.float32, sums: bool = False):
    """The exact sums of the conv of uint8 NHWC `xu` (zero point `zp`, padding reads it) with
    `packed` as `dtype` (N, Ho, Wo, q): float32 (what the int8 engine passes on; exact below
    2^24, which its plans prove) or int32. With `sums`: (those, their column sums per image
    (N, q) int64, made by the kernel as it writes them). Only where `available`."""
    (n, ho, wo), args = _kernel_args(xu, zp, packed, stride, padding)
    out = np.empty((n * ho * wo, packed.q), dtype)
    tasks = _tasks(ho * wo, packed.nv)
    csum = np.empty((n * tasks if sums else 0, packed.q), np.int64)
    _conv_kernel(*args, out, csum)
    out = out.reshape(n, ho, wo, packed.q)
    return (out, csum.reshape(n, tasks, packed.q).sum(axis=1)) if sums else out


def conv_epilogue(xu: np.ndarray, zp: int, packed: TileWeights, stride: int, padding: int,
                  o_n: int, bias: np.ndarray, lv, do_rq: bool, rq, out: np.ndarray,
                  mnmx: np.ndarray, sums: np.ndarray, wrap_bits: int,
                  ms: np.ndarray) -> np.ndarray:
    """`conv` with its sums passed straight to the epilogue (`kernels.gemm_epilogue_kernel`'s
    arguments, without risk or chunks): fills `out`, `mnmx` and `sums` as that kernel does,
    keeps no sums, and returns those of rows `ms` (len(ms), q) int32."""
    _, args = _kernel_args(xu, zp, packed, stride, padding)
    gs = np.zeros((len(ms), packed.q), np.int32)
    _conv_epilogue_kernel(*args, packed.q, o_n, bias, lv, do_rq, rq, out, NO_NEED, mnmx, sums,
                          wrap_bits, ms, gs)
    return gs


def conv_risk(xu: np.ndarray, zp: int, packed: TileWeights, stride: int, padding: int,
              o_n: int, bias: np.ndarray, lv, do_rq: bool, rq, out: np.ndarray,
              mnmx: np.ndarray, sums: np.ndarray, ms: np.ndarray, pe_risk: bool,
              flags: np.ndarray, rows: np.ndarray, bound: np.ndarray | None = None,
              g: int = 0):
    """`conv_epilogue` with risk (`risk_fusable` weights, no wrapping; `_conv_risk_kernel`):
    fills `out`, `mnmx`, `sums`, `flags` (M, o_n) uint8, 1 where an output is flagged, and
    `rows` (M,) int32, the flagged outputs per row.
    With `bound` (N, Hb, Wb, o_n) int32, an upper bound on the positive product sums per
    g x g block of output pixels, those are computed only for the pixels it does not clear
    (the same flags and outputs). Returns (the rows `ms` of the sums (len(ms), q) int32; with
    a bound, per image the window sums of x - zp (N, kh, kw, C) int64 over the pixels whose
    positive sums were computed, else None; the share of pixels whose positive sums were
    computed)."""
    assert risk_fusable(packed, o_n) and (bound is None or o_n % (16 * packed.nv) == 0)
    (n, ho, wo), args = _kernel_args(xu, zp, packed, stride, padding)
    c = xu.shape[3]
    gs = np.zeros((len(ms), packed.q), np.int32)
    nb = mnmx.shape[1]
    if bound is None:
        _conv_risk_kernel(*args, o_n, bias, pe_risk, lv, do_rq, rq, out, flags, rows, mnmx, sums,
                          ms, gs, _NO_BOUND, 0, packed.kh, _NO_WIN)
        return gs, None, 1.0
    xwin = np.empty((n, nb, packed.kh * packed.kw * c + 1), np.int64)
    _conv_risk_kernel(*args, o_n, bias, pe_risk, lv, do_rq, rq, out, flags, rows, mnmx, sums,
                      ms, gs, bound, g, packed.kh, xwin)
    cnt = xwin[:, :, -1].sum(axis=1)
    win = xwin[:, :, :-1].sum(axis=1) - zp * cnt[:, None]
    return gs, win.reshape(n, packed.kh, packed.kw, c), float(cnt.sum()) / max(n * ho * wo, 1)


def risk_fusable(packed: TileWeights, o_n: int) -> bool:
    """`conv_risk` can run on these weights: sign columns (q = 2 * o_n) whose halves are
    whole 16-lane vectors, in one group."""
    return packed.groups == 1 and packed.q == 2 * o_n and o_n % 16 == 0


#: the bound-bit arrays a fused epilogue never writes (it runs without risk)
NO_NEED = np.zeros((2, 1, 1), np.uint8)
#: `_conv_risk_kernel`'s bound and window-sum arrays where it runs without a bound
_NO_BOUND = np.zeros((1, 1, 1, 1), np.int32)
_NO_WIN = np.zeros((1, 1, 1), np.int64)
