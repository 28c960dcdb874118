"""Exact int8 convolution on AVX-512 VNNI, compiled by numba: ``vpdpbusd`` through LLVM.

``vpdpbusd`` multiplies 4 adjacent uint8 x int8 pairs and adds them to an int32 lane with no
intermediate rounding or saturation, so a conv built on it is exact in int32 (modulo 2^32,
and every sum the engine asks for is far inside int32). numba cannot emit it from Python
loops (its auto-vectorizer makes ``vpmaddwd``: ~13 GMAC/s per core), so the micro-kernel
(`_make_tile`) is written as LLVM IR in a numba intrinsic: an ``MR`` pixels x ``16 * NV``
outputs tile of int32 accumulators held in vector registers, one ``vpdpbusd`` per pixel and
16 outputs per 4 input channels. The conv around it (`_conv_kernel`) copies the input with
its padding (at the zero point) and channels rounded up to 4, and walks (image, MR pixels)
tasks in parallel; each output pixel's patch is read in place (implicit im2col: per weight
position a row offset, `_koff`), and the tile is stored with the zero point's share
subtracted. Measured against oneDNN's int8 conv (the engine's other path) on ResNet shapes:
the same speed at batch 64, 5-8x less time per call at batch 1 (reports/BENCHMARKS.md).

Only compiled where the host CPU has AVX-512 VNNI and numba compiles for that CPU
(`available`): elsewhere LLVM cannot select the instruction and the int8 engine keeps
oneDNN. Grouped convs stay on oneDNN (or the engine's depthwise kernel).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32, _I64, _I8 = ir.IntType(32), ir.IntType(64), ir.IntType(8)
_V16 = ir.VectorType(_I32, 16)
#: (pixels, 16-lane vectors of outputs) per tile: 8 x 16 for narrow layers, 6 x 32 otherwise
#: (measured on ResNet-20's shapes: 8 x 16 0.87 ms against 1.22 ms at 16 outputs, 6 x 32
#: 0.42 against 0.59 ms at 32; 12 x 16 and 4 x 64 slower)
_TILES = ((8, 1), (6, 2))
_MR_MAX = 8
_TILES_PER_TASK = 16  # a parallel task's tiles (its scratch arrays allocated once)


@functools.cache
def available() -> bool:
    """The host CPU has AVX-512 VNNI and numba compiles for it (no ``NUMBA_CPU_NAME``)."""
    if numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES:
        return False
    import llvmlite.binding as ll

    feats = ll.get_host_cpu_features()
    return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))


def _make_tile(mr: int, nv: int):
    """The micro-kernel as a numba intrinsic ``tile(x, rows, koff, wb, w_off, zpw, z_off,
    out, orow)``: for k-steps t in ``range(len(koff))``, pixel r's 4 input bytes at
    ``x[rows[r] + koff[t]]`` times the packed weights ``wb[w_off + t * 64 * nv:][:64 * nv]``
    (16 * nv outputs x 4 bytes), summed by ``vpdpbusd`` in mr x nv vector registers; then
    ``zpw[z_off:][:16 * nv]`` subtracted (int32, modular) and pixel r's 16 * nv results stored
    at ``out[orow[r]:]`` (int32, or float32 converted). ``len(koff) >= 1``; the caller keeps
    every read and write in bounds."""

    @intrinsic
    def tile(typingctx, x, rows, koff, wb, w_off, zpw, z_off, out, orow):
        sig = types.void(x, rows, koff, wb, w_off, zpw, z_off, out, orow)
        as_float = isinstance(out.dtype, types.Float)

        def codegen(context, builder, signature, args):
            xa, ra, ka, wa, _, za, _, oa, rr = (
                context.make_array(t)(context, builder, v) if isinstance(t, types.Array) else None
                for t, v in zip(signature.args, args))
            xp = builder.bitcast(xa.data, _I8.as_pointer())
            wp = builder.gep(builder.bitcast(wa.data, _I8.as_pointer()), [args[4]])
            ks = builder.extract_value(ka.shape, 0)
            dot = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.x86.avx512.vpdpbusd.512")
            base = [builder.gep(xp, [builder.load(builder.gep(ra.data, [ir.Constant(_I64, r)]))])
                    for r in range(mr)]
            entry = builder.block
            loop = builder.append_basic_block("vnni_loop")
            done = builder.append_basic_block("vnni_done")
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
                new.extend(builder.call(dot, [accs[r * nv + v], a, wv[v]]) for v in range(nv))
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
            for r in range(mr):
                row = builder.gep(oa.data, [builder.load(builder.gep(rr.data,
                                                                     [ir.Constant(_I64, r)]))])
                for v in range(nv):
                    val = builder.sub(new[r * nv + v], zv[v])
                    if as_float:
                        val = builder.sitofp(val, ty)
                    ptr = builder.bitcast(builder.gep(row, [ir.Constant(_I64, 16 * v)]),
                                          ty.as_pointer())
                    builder.store(val, ptr).align = 4
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _load(builder, ptr, ty):
    """An unaligned load of `ty` at byte or element pointer `ptr`."""
    ld = builder.load(builder.bitcast(ptr, ty.as_pointer()))
    ld.align = 1
    return ld


_tile_a = _make_tile(*_TILES[0])
_tile_b = _make_tile(*_TILES[1])


@numba.njit(parallel=True, cache=True)
def _conv_kernel(x, zp, pad, kh, kw, stride, ho, wo, wb, nv, zpw, out):
    """``out[(n*ho + oy)*wo + ox, o] = sum (x - zp) * w`` for NHWC uint8 `x` (padding at zp)
    and the weights packed by `pack` (`wb`: per block of 16 * nv outputs, per weight row, the
    row's kw * C bytes in groups of 4; `zpw` = zp * the column sums, padded like the blocks);
    `out` (N*ho*wo, q) int32, or float32 where every sum is below 2^24; q <= the packed
    outputs. Sums are taken modulo 2^32, so only the result must fit int32.

    A weight row's bytes are contiguous in NHWC, so the input needs no channel padding: a row
    whose kw * C is not a multiple of 4 reads up to 3 bytes past it (times zero weights) and
    the input is copied (with its padding) into a buffer with slack at the end."""
    n, h, w, c = x.shape
    rb = kw * c  # a weight row's bytes
    gr = (rb + 3) // 4  # its groups of 4
    if pad == 0 and rb % 4 == 0:
        hp, wp = h, w
        flat = x.reshape(-1)
    else:
        hp, wp = h + 2 * pad, w + 2 * pad
        flat = np.empty(n * hp * wp * c + 4, np.uint8)
        flat[-4:] = 0
        xp = flat[:-4].reshape(n, hp, wp, c)
        zb = np.uint8(zp)
        for t in numba.prange(n * hp):
            b = t // hp
            y = t - b * hp
            dst = xp[b, y]
            if y < pad or y >= pad + h:
                dst[:] = zb
                continue
            src = x[b, y - pad]
            for xx in range(pad):
                dst[xx] = zb
                dst[wp - 1 - xx] = zb
            dst[pad:pad + w] = src
    koff = np.empty(kh * gr, np.int64)
    for i in range(kh):
        for g in range(gr):
            koff[i * gr + g] = i * wp * c + 4 * g
    ks = koff.shape[0]
    q = out.shape[1]
    o_flat = out.reshape(-1)
    mr = _TILES[0][0] if nv == 1 else _TILES[1][0]
    nr = 16 * nv
    nb = (q + nr - 1) // nr
    pix = ho * wo
    nt = (pix + mr - 1) // mr
    per = min(nt, _TILES_PER_TASK)
    tasks = (nt + per - 1) // per
    for task in numba.prange(n * tasks):
        b = task // tasks
        t0 = (task - b * tasks) * per
        rows = np.empty(_MR_MAX, np.int64)
        orow = np.empty(_MR_MAX, np.int64)
        part = np.empty(_MR_MAX * 32, out.dtype)  # a tile that does not fill `out`'s rows
        for tt in range(t0, min(nt, t0 + per)):
            p0 = tt * mr
            m = min(mr, pix - p0)  # pixels in this tile; a short one repeats its last pixel
            for r in range(mr):
                p = p0 + min(r, m - 1)
                oy = p // wo
                ox = p - oy * wo
                rows[r] = ((b * hp + oy * stride) * wp + ox * stride) * c
            for blk in range(nb):
                whole = m == mr and (blk + 1) * nr <= q
                for r in range(mr):
                    orow[r] = (b * pix + p0 + r) * q + blk * nr if whole else r * nr
                dst = o_flat if whole else part
                if nv == 1:
                    _tile_a(flat, rows, koff, wb, blk * ks * 64, zpw, blk * nr, dst, orow)
                else:
                    _tile_b(flat, rows, koff, wb, blk * ks * 128, zpw, blk * nr, dst, orow)
                if not whole:
                    for r in range(m):
                        for o in range(min(nr, q - blk * nr)):
                            out[b * pix + p0 + r, blk * nr + o] = part[r * nr + o]
    return out


@dataclass(frozen=True)
class VnniWeights:
    """Weights packed for `conv`: blocks of ``16 * nv`` outputs; per weight row the kw * C
    bytes (channels innermost) in groups of 4, each group 64 * nv bytes (outputs x 4);
    `zpw` the zero point's share per output (``zp * column sum``, int32, padded likewise)."""

    wb: np.ndarray
    nv: int
    q: int
    kh: int
    kw: int
    colsum: np.ndarray


def pack(w: np.ndarray) -> VnniWeights:
    """Pack int8 weights `w` (q, C, kh, kw) for `conv` (groups of 1)."""
    q, c, kh, kw = w.shape
    nv = 1 if q <= 16 else 2
    nr = 16 * nv
    qp, gr = -(-q // nr) * nr, -(-(kw * c) // 4)
    rows = np.zeros((qp, kh, gr * 4), np.int8)
    rows[:q, :, :kw * c] = np.asarray(w).transpose(0, 2, 3, 1).reshape(q, kh, kw * c)
    wb = rows.reshape(qp // nr, nr, kh, gr, 4).transpose(0, 2, 3, 1, 4)
    colsum = np.zeros(qp, np.int32)
    colsum[:q] = np.asarray(w, np.int64).reshape(q, -1).sum(axis=1)
    return VnniWeights(np.ascontiguousarray(wb).reshape(-1), nv, q, kh, kw, colsum)


def conv(xu: np.ndarray, zp: int, packed: VnniWeights, stride: int, padding: int,
         dtype=np.float32) -> np.ndarray:
    """The exact sums of the conv of uint8 NHWC `xu` (zero point `zp`, padding reads it) with
    `packed` as `dtype` (N, Ho, Wo, q): float32 (what the int8 engine passes on; exact below
    2^24, which its plans prove) or int32. Only where `available`."""
    n, h, w, _ = xu.shape
    kh, kw = packed.kh, packed.kw
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.empty((n * ho * wo, packed.q), dtype)
    _conv_kernel(np.ascontiguousarray(xu), zp, padding, kh, kw, stride, ho, wo, packed.wb,
                 packed.nv, packed.colsum * np.int32(zp), out)
    return out.reshape(n, ho, wo, packed.q)
