"""Chunk screening (`npusim.sim.screen`, `kernels.screen_walk_kernel`) against the
one-output-at-a-time kernel, the reference engine and the independent oracle: values and
pe/acc event counts, both levels, every overflow mode, narrow widths where most outputs
overflow, chunk boundaries (a partial last chunk), bias and zero points."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.sim import int8_engine, int8_tiles, screen
from npusim.sim import kernels as K
from npusim.sim.accumulate import _walk_lanes
from npusim.sim.exact_conv import InexactError
from npusim.sim.int8_engine import Int8Support, prepare_int8_conv
from npusim.sim.lanes16 import lane_weights
from npusim.sim.simulator import Simulator
from tests.npusim import naive
from tests.npusim.programs import conv_program
from tests.npusim.sim.helpers import equals_reference, narrow_npu
from tests.npusim.sim.test_int8_engine import _emulated_pack, _emulated_run

MODES = ["exact", "wrap", "saturate"]
NATIVE = int8_engine.probe().ok


@pytest.fixture(autouse=True, scope="module")
def engine():
    """oneDNN where this CPU has an int8 path, else the same engine with its conv emulated
    in int64 (as in test_int8_engine), so the screened path runs on every machine."""
    if NATIVE:
        yield "onednn"
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_engine, "_pack", _emulated_pack)
        mp.setattr(int8_engine, "_run", _emulated_run)
        mp.setattr(int8_engine, "probe", lambda: Int8Support("exact"))
        yield "emulated"


def patches(x, kh, kw, stride, pad, zp):
    """(N*Ho*Wo, C*kh*kw) int64 windows of channels-last `x` minus zp, in the k order
    (c, i, j), padding contributing 0."""
    xs = np.pad(x.astype(np.int64) - zp, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(1, 2))[:, ::stride,
                                                                             ::stride]
    return win.reshape(-1, x.shape[3] * kh * kw)  # (n, ho, wo, c, kh, kw) flattened


def chunk_table(pt, wm, size):
    """Per pixel and chunk of `size` products: the chunk's sum, then the sum of its positive
    products, for every output column (float32 like the engine's): (M, nch * 2O)."""
    k, o = wm.shape
    cols = []
    for j0 in range(0, k, size):
        prod = pt[:, j0:j0 + size, None] * wm[None, j0:j0 + size]  # (M, size, O)
        cols += [prod.sum(axis=1), np.maximum(prod, 0).sum(axis=1)]
    return np.concatenate(cols, axis=1).astype(np.float32)


@st.composite
def layer(draw, few: bool = False):
    """A small conv at extreme operands (signed or zero-point-shifted inputs): narrow
    accumulators overflow often. With 40 outputs only a few (`few`: 2-5, the kernel's
    compact walk) or some have large weights, so 1, a few or many fail their screens."""
    cg = draw(st.integers(1, 6))
    o = 40 if few else draw(st.sampled_from([1, 3, 8, 40]))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2 + (k == 2)))
    h, wd = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    n = draw(st.integers(1, 2))
    x_signed = draw(st.booleans())
    zp = 0 if x_signed else draw(st.sampled_from([0, 7, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    lo, hi = (-128, 127) if x_signed else (0, 255)
    x = rng.choice([lo, hi, zp, rng.integers(lo, hi + 1)], size=(n, h, wd, cg))
    w = rng.choice([-127, 127, 0, 1, -1, 60], size=(o, cg, k, k)).astype(np.int64)
    if o == 40:
        hot = draw(st.integers(2, 5) if few else st.integers(1, 12))
        w[hot:] = rng.choice([-1, 0, 1], size=(o - hot, cg, k, k))
        w = w[rng.permutation(o)]
    bias = rng.integers(-5000, 5000, size=o)
    prod_bits = max(hi - zp, zp - lo).bit_length() + 8
    # the simulator's storage dtype (one compiled signature for tests and production)
    return dict(x=x.astype(np.int8 if x_signed else np.uint8), w=w, bias=bias, stride=stride,
                pad=pad, zp=zp, prod_bits=prod_bits)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer(), st.sampled_from(["os", "ws"]), st.integers(1, 6), st.integers(1, 4),
       st.sampled_from(MODES), st.sampled_from(MODES), st.integers(0, 5), st.integers(0, 5),
       st.floats(0.1, 1.0), st.integers(0, 2 ** 32 - 1))
def test_screen_kernel_equals_one_output_kernel(case, order, rows, per, pe_mode, acc_mode, dpe,
                                                dacc, frac, seed):
    """Chunks of ``rows * per`` products (whole pe chunks; the last one partial where K is
    not a multiple): values and event totals of every channel of a random subset of pixels
    against `conv_points_kernel`."""
    check_screen(case, order, rows, per, pe_mode, acc_mode, dpe, dacc, frac, seed)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer(few=True), st.sampled_from(["os", "ws"]), st.integers(2, 6), st.integers(1, 4),
       st.sampled_from(MODES[1:]), st.sampled_from(MODES[1:]), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 2 ** 32 - 1))
def test_screen_kernel_walks_a_few_failing_outputs_together(case, order, rows, per, pe_mode,
                                                            acc_mode, dpe, dacc, seed):
    """The compact walk (a few failing outputs gathered into lanes of their own), wrap and
    saturate at both levels: as above."""
    check_screen(case, order, rows, per, pe_mode, acc_mode, dpe, dacc, 1.0, seed)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(layer(), layer(few=True)), st.sampled_from(["os", "ws"]), st.integers(1, 6),
       st.integers(1, 4), st.sampled_from(MODES[1:]), st.sampled_from(MODES[1:]),
       st.integers(0, 2), st.integers(0, 2 ** 32 - 1))
def test_screen_kernel_walks_failing_chunks_in_registers(case, order, rows, per, pe_mode,
                                                         acc_mode, g, seed):
    """Levels at 16 bits, wrap or saturate (int16 lanes hold them): the chunks that enough
    outputs fail (os: from O / 64, so every failing chunk of these layers; ws: from O / 8) are
    walked in registers (`lanes16`); values, events, chunk counts and flags equal the
    array-lane walk's and the one-output kernel's (`check_screen`), with the exact positive
    sums or a block bound."""
    lv = K.LevelSpec(K.ORDER_CODES[order], rows, 16, K.MODE_CODES[pe_mode], 16,
                     K.MODE_CODES[acc_mode])
    assert _walk_lanes(case["x"], case["w"], case["bias"], case["zp"], lv) is np.int16
    check_screen(case, order, rows, per, pe_mode, acc_mode, 16 - case["prod_bits"],
                 16 - case["prod_bits"], 1.0, seed, g)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(layer(), layer(few=True)), st.integers(1, 4), st.sampled_from(MODES[1:]),
       st.integers(0, 7), st.integers(0, 2), st.integers(0, 2 ** 32 - 1))
def test_screen_kernel_walks_narrow_levels_in_registers(case, per, mode, d, g, seed):
    """The os order at 8 to 15 bits with products of at most 8 (inputs 0..15 at zero point
    0, weights within +-7): int16 lanes hold the levels scaled to their top, so a register
    walk must scale each held value in and out (the failing outputs gathered into one call's
    lanes, or whole blocks of them); as above."""
    case = dict(case, x=(case["x"].astype(np.int64) % 16).astype(np.uint8), zp=0,
                w=np.clip(case["w"], -7, 7), prod_bits=8)
    lv = K.LevelSpec(K.OS, 1, 8 + d, K.MODE_CODES[mode], 8 + d, K.MODE_CODES[mode])
    assert _walk_lanes(case["x"], case["w"], case["bias"], 0, lv) is np.int16
    check_screen(case, "os", 1, per, mode, mode, d, d, 1.0, seed, g)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer(), st.sampled_from(["os", "ws"]), st.integers(1, 6), st.integers(1, 4),
       st.sampled_from(MODES), st.sampled_from(MODES), st.integers(0, 5), st.integers(0, 5),
       st.integers(1, 3), st.sampled_from([0, 1, 1000]), st.integers(0, 2 ** 32 - 1))
def test_screen_kernel_with_block_bounds(case, order, rows, per, pe_mode, acc_mode, dpe, dacc,
                                         g, slack, seed):
    """The sums alone and, per g x g block of output pixels, an upper bound on the positive
    sums (the block's largest, plus 0, 1 or 1000): values and events still those of
    `conv_points_kernel`, and the flagged outputs those of the looser bound."""
    check_screen(case, order, rows, per, pe_mode, acc_mode, dpe, dacc, 1.0, seed, g, slack)


def check_screen(case, order, rows, per, pe_mode, acc_mode, dpe, dacc, frac, seed, g=0,
                 slack=0):
    """`screen_walk_kernel` on `case` against `conv_points_kernel`: values, event totals and
    chunk counts of every channel of a random subset (`frac`) of pixels, and the outputs the
    whole-sum bound flags per pixel against NumPy. `g` > 0: the positive sums replaced by a
    bound per g x g block of output pixels (the block's largest plus `slack`)."""
    x, w, bias, s, pad, zp = (case[k] for k in ("x", "w", "bias", "stride", "pad", "zp"))
    n, h, wd, _ = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h + 2 * pad - kh) // s + 1, (wd + 2 * pad - kw) // s + 1
    size = rows * per
    lv = K.LevelSpec(K.ORDER_CODES[order], rows, case["prod_bits"] + dpe, K.MODE_CODES[pe_mode],
                     case["prod_bits"] + dacc, K.MODE_CODES[acc_mode])
    wm = w.reshape(o, -1)
    gc = chunk_table(patches(x, kh, kw, s, pad, zp), wm.T, size)
    nch = -(-cg * kh * kw // size)
    sm, pos = (gc.reshape(-1, nch, 2, o)[:, :, i].astype(np.int64) for i in (0, 1))
    gp = gc
    if g:  # per block (b, oy // g, ox // g): its pixels' largest positive sums, plus slack
        hb, wb = -(-ho // g), -(-wo // g)
        blk = np.full((n, hb * g, wb * g, nch, o), -1, np.int64)
        blk[:, :ho, :wo] = pos.reshape(n, ho, wo, nch, o)
        top = blk.reshape(n, hb, g, wb, g, nch, o).max(axis=(2, 4)) + slack
        gp = top.reshape(n * hb * wb, nch * o).astype(np.float32)
        pos = top[:, np.arange(ho)[:, None] // g, np.arange(wo)[None] // g].reshape(-1, nch, o)
        gc = sm.reshape(-1, nch * o).astype(np.float32)
    pix = np.flatnonzero(np.random.default_rng(seed).random(n * ho * wo) < frac)
    runs = []
    # the failing chunks walked in array lanes, and (where the levels fit) in registers
    lanes = [np.zeros((0, 0), np.int16)]
    if _walk_lanes(x, w, bias, zp, lv) is np.int16:
        lanes.append(lane_weights(wm.T, 16 - (lv.pe_bits if order != "os" else lv.acc_bits)))
    for w16 in lanes:
        runs.append([np.empty((len(pix), o), np.int64), np.zeros((len(pix), 2), np.int64),
                     np.zeros((len(pix), 2), np.int64), np.zeros(len(pix), np.int64)])
        K.screen_walk_kernel(x, np.ascontiguousarray(wm), np.ascontiguousarray(wm.T, np.int32),
                             w16, bias.astype(np.int64), kh, kw, s, pad, zp, lv, pix, ho, wo,
                             gc, gp, g, size, *runs[-1])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    vals, events, chunks, flagged = runs[-1]
    p_, n_ = pos[pix].sum(axis=1), (sm - pos)[pix].sum(axis=1)  # (len(pix), O)
    acc_hi, pe_hi = (1 << (lv.acc_bits - 1)) - 1, (1 << (lv.pe_bits - 1)) - 1
    out = (bias + p_ > acc_hi) | (bias + n_ < -acc_hi - 1)
    if order != "os":
        out |= (p_ > pe_hi) | (n_ < -pe_hi - 1)
    np.testing.assert_array_equal(flagged, out.sum(axis=1))
    b, p = np.divmod(np.repeat(pix, o), ho * wo)
    oc = np.tile(np.arange(o), len(pix))
    points = np.stack([b, oc, p // wo, p % wo], axis=1).astype(np.int64)
    want = np.empty(len(points), np.int64)
    ev = np.zeros((len(points), 2), np.int64)
    xc = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=zp)
    K.conv_points_kernel(xc, w, bias.astype(np.int64), s, 1, zp, lv, points, want, ev)
    np.testing.assert_array_equal(vals.reshape(-1), want)
    np.testing.assert_array_equal(events.sum(axis=0), ev.sum(axis=0))
    np.testing.assert_array_equal(chunks.sum(axis=1), nch * o)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.sampled_from([2, 4, 6]), st.sampled_from([1, 3]), st.integers(1, 2),
       st.sampled_from([3, 8]), st.integers(0, 2 ** 32 - 1))
def test_engine_chunk_sums(n, cg, k, stride, o, seed):
    """The chunked conv's sums and positive sums equal int64 ones, and their totals are the
    sign-column plan's columns (the sums the epilogue flags outputs by)."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(n, 5, 5, cg)).astype(np.uint8)
    w = rng.choice([-128, 127, 0, -1, 50], size=(o, cg, k, k)).astype(np.int64)
    pad = k // 2
    kind = int8_engine.probe().kind
    lv = K.LevelSpec(K.OS, 1, 16, K.WRAP, 16, K.WRAP)
    prep = prepare_int8_conv(w, stride, pad, 1, 0, 0, 255, signs=True, kind=kind)
    cp = screen.prepare_chunks(prep, w, lv, (0, 255), kind, limit=cg // 2 * k * k,
                               min_channels=1, min_chunks=2)
    assert cp is not None and cp.nch == 2 and cp.size == cg // 2 * k * k
    ho = (5 + 2 * pad - k) // stride + 1
    gc = screen.chunk_sums(x, cp, (ho, ho))
    pt = patches(x, k, k, stride, pad, 0)
    np.testing.assert_array_equal(gc, chunk_table(pt, w.reshape(o, -1).T, cp.size))
    full = int8_engine.int8_conv(x, prep, (ho, ho))
    per = gc.astype(np.int64).reshape(len(gc), cp.nch, 2 * o)
    np.testing.assert_array_equal(per.sum(axis=1), full.g)
    # the epilogue's check of the chunked conv: per image, the totals over the chunks and the
    # totals with chunk j weighted j + 1; a value moved between chunks fails it
    res = screen.chunked_result(int8_engine.int8_conv(x, cp.plan, (ho, ho)), cp.plan, cp.nch)
    assert res.nonzero_macs == full.nonzero_macs  # the layer's own products

    def image_sums(v):
        img = v.reshape(n, -1, cp.nch, 2 * o).sum(axis=1)
        return np.concatenate([img.sum(axis=1), np.einsum("j,njc->nc", np.arange(1, 3), img)], 1)

    res.verify(image_sums(per))
    if per.any():
        moved = per.copy()
        m, c = np.argwhere(per[:, 0] != 0)[0] if per[:, 0].any() else np.argwhere(per[:, 1])[0]
        src = 0 if per[:, 0].any() else 1
        moved[m, 1 - src, c] += moved[m, src, c]
        moved[m, src, c] = 0
        with pytest.raises(InexactError):
            res.verify(image_sums(moved))


@pytest.mark.skipif(not int8_tiles.available(), reason="the fused screen runs on the own tiles")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.sampled_from([16, 32]), st.sampled_from([1, 3]), st.integers(1, 2),
       st.sampled_from([3, 16, 40]), st.sampled_from(["os", "ws"]), st.sampled_from(MODES[1:]),
       st.integers(14, 18), st.sampled_from([1 << 6, 1 << 10, 1 << 19]),
       st.integers(0, 2 ** 32 - 1))
def test_fused_screen_equals_the_screen_kernel(n, cg, k, stride, o, order, mode, bits, block,
                                               seed):
    """`int8_tiles.screen_conv` (chunk sums screened where the tiles make them, tasks of a few
    pixels to whole images) against `screen_walk_kernel` on NumPy's chunk sums with the same
    block bounds: values, events, chunk counts and flagged outputs; its column sums per
    image and spot rows against NumPy's."""
    rng = np.random.default_rng(seed)
    h = int(rng.integers(k, 9))
    x = rng.choice([0, 255, 3, rng.integers(0, 256)], size=(n, h, h + 1, cg)).astype(np.uint8)
    w = rng.choice([-127, 127, 0, -1, 40, rng.integers(-127, 128)],
                   size=(o, cg, k, k)).astype(np.int64)
    bias = rng.integers(-5000, 5000, size=o)
    pad = k // 2
    lv = K.LevelSpec(K.ORDER_CODES[order], 8, bits, K.MODE_CODES[mode], bits, K.MODE_CODES[mode])
    kind = int8_engine.probe().kind
    prep = prepare_int8_conv(w, stride, pad, 1, 0, 0, 255, signs=True, kind=kind)
    cp = screen.prepare_chunks(prep, w, lv, (0, 255), kind, limit=8 * k * k, min_channels=8)
    assert cp is not None and cp.sums is not None and screen.fused(cp.sums)
    ho, wo = (h + 2 * pad - k) // stride + 1, (h + 1 + 2 * pad - k) // stride + 1
    wm = w.reshape(o, -1)
    table = chunk_table(patches(x, k, k, stride, pad, 0), wm.T, cp.size)  # (M, nch * 2O)
    sm, pos = (table.reshape(-1, cp.nch, 2, o)[:, :, i].astype(np.int64) for i in (0, 1))
    g = screen.BOUND_G
    hb, wb = -(-ho // g), -(-wo // g)
    blk = np.zeros((n, hb * g, wb * g, cp.nch, o), np.int64)
    blk[:, :ho, :wo] = pos.reshape(n, ho, wo, cp.nch, o)
    gp = blk.reshape(n, hb, g, wb, g, cp.nch * o).max(axis=(2, 4)).reshape(n * hb * wb, -1)
    gp = (gp + rng.integers(0, 3)).astype(np.float32)
    gc = sm.reshape(-1, cp.nch * o).astype(np.float32)
    m_n = n * ho * wo
    runs = []
    for fused in (True, False):
        out = [np.empty((m_n, o), np.int64), np.zeros((m_n, 2), np.int64),
               np.zeros((m_n, 2), np.int64), np.zeros(m_n, np.int64)]
        args = (x, cp.wl, cp.wt, screen._NO_LANES, bias.astype(np.int64), k, k, pad, 0, lv, gp,
                g, cp.size, *out)
        if fused:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(int8_tiles, "_SCREEN_BLOCK", block)
                ms = int8_engine.spot_rows(seed % 1000, m_n)
                sums, gs = int8_tiles.screen_conv(x, 0, cp.sums.packed, stride, pad, ms, args)
            np.testing.assert_array_equal(sums, gc.astype(np.int64).reshape(n, -1, gc.shape[1])
                                          .sum(axis=1))
            np.testing.assert_array_equal(gs, gc[ms])
        else:
            K.screen_walk_kernel(*args[:7], stride, *args[7:10], np.arange(m_n), ho, wo, gc,
                                 *args[10:])
        runs.append(out)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_chunk_channels():
    """Whole input channels, within the product limit (halved at 15 bits or fewer where a
    size fits it), whole pe chunks, two chunks at least, `MIN_CHUNKS` at 15 bits where the
    channels allow, half as many per bit wider."""
    os_, ws16 = K.LevelSpec(K.OS, 1, 15, 1, 15, 1), K.LevelSpec(K.WS, 16, 16, 1, 16, 1)
    os16, os18 = os_._replace(acc_bits=16), os_._replace(acc_bits=18)
    assert [screen.wanted_chunks(lv) for lv in (os_._replace(acc_bits=12), os_, os16, os18)] \
        == [8, 8, 4, 2]
    assert screen.wanted_chunks(ws16._replace(pe_bits=15)) == 8  # the narrower level
    assert screen.chunk_channels(64, 9, os16) == 16  # 4 chunks of 144 products
    assert screen.chunk_channels(64, 9, os18) == 32  # 2 chunks
    assert screen.chunk_channels(512, 9, os16) == 32  # 288 products, 16 chunks
    assert screen.chunk_channels(512, 9, os_) == 16  # 15 bits: 144 products, 32 chunks
    assert screen.chunk_channels(512, 9, ws16) == 32  # 288 = 18 pe chunks of 16
    assert screen.chunk_channels(512, 9, ws16._replace(pe_bits=15)) == 16  # 144 = 9 x 16
    # 15 bits, pe chunks of 32: no size within 150 products, so the usual limit
    assert screen.chunk_channels(512, 9, ws16._replace(pe_bits=15, rows=32)) == 32
    assert screen.chunk_channels(512, 9, os_, limit=300) == 32
    assert screen.chunk_channels(64, 9, os_) == 8  # 8 chunks
    assert screen.chunk_channels(64, 9, ws16._replace(rows=7)) == 0  # 7 divides no 9 * 2^k
    assert screen.chunk_channels(256, 1, os_) == 32  # 1x1 conv: 8 chunks
    assert screen.chunk_channels(3, 49, os_) == 0  # the stem: chunks of 1 channel refused
    assert screen.chunk_channels(16, 9, os_) == 8  # 2 chunks
    assert screen.chunk_channels(8, 9, os_) == 0  # one chunk only
    assert screen.chunk_channels(32, 9, ws16) == 16  # 8 channels (72) are not whole pe chunks


def wide_case(seed, cg=32, o=40, n=2, h=7):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 48, size=(n, cg, h, h))
    x[:, :, :2] = 255  # some windows at the extremes: runs of overflows
    w = rng.integers(-30, 31, size=(o, cg, 3, 3))
    w[:, :2] = rng.choice([-127, 127], size=(o, 2, 3, 3))  # a first chunk of extremes
    bias = rng.integers(-5000, 5000, size=o)
    return x, w, bias


@pytest.mark.parametrize("dataflow, rows, mode, bits", [
    ("os", 16, "wrap", 16), ("os", 16, "saturate", 17), ("ws", 16, "wrap", 17),
    ("ws", 16, "saturate", 16), ("is", 9, "wrap", 18), ("ws", 8, "saturate", 19),
    ("os", 16, "wrap", 20), ("ws", 16, "exact", 17)])
def test_simulator_screened_equals_reference(dataflow, rows, mode, bits):
    """A layer with 32 input channels (chunks of 16 channels, 144 products): the simulator's
    screened path equals the reference engine and the oracle, outputs and event counts, and
    it did screen (and walk) chunks."""
    x, w, bias = wide_case(bits)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    fast = equals_reference(narrow_npu(dataflow, rows, bits, mode), prog, x)
    row = fast.stats.iloc[0]
    assert row["screened_chunks"] > 0
    if bits < 20:
        assert row["walked_chunks"] > 0 and row["acc_overflows"] + row["pe_overflows"] > 0
    want, pe, acc = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, dataflow, rows, bits, mode, bits,
                                     mode)
    np.testing.assert_array_equal(fast.outputs["y"], want)
    assert row["acc_overflows"] == acc and (dataflow == "os" or row["pe_overflows"] == pe)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["os", "ws"]), st.sampled_from([4, 8, 16]), st.sampled_from(MODES[1:]),
       st.integers(16, 20), st.sampled_from([1, 3]), st.integers(1, 2), st.booleans(),
       st.integers(0, 2 ** 32 - 1))
def test_simulator_screened_random(dataflow, rows, mode, bits, k, stride, requant, seed):
    """Random layers (1x1 and 3x3, strides, requantized or not) through the screened path:
    equal to the reference engine, values and events."""
    rng = np.random.default_rng(seed)
    cg = int(rng.choice([16, 32]))
    x, w, bias = wide_case(seed, cg=cg, o=int(rng.integers(3, 20)), h=int(rng.integers(3, 8)))
    w = w[:, :, :k, :k]
    prog = conv_program(w, bias, x.shape[1:], padding=k // 2, stride=stride, requant=requant)
    equals_reference(narrow_npu(dataflow, rows, bits, mode), prog, x, runs=2)


@pytest.mark.parametrize("on_tiles", [True, False])
@pytest.mark.parametrize("dataflow, rows, mode, bits", [
    ("os", 16, "wrap", 16), ("os", 16, "saturate", 17), ("ws", 16, "wrap", 17),
    ("ws", 16, "saturate", 16), ("is", 9, "wrap", 18), ("ws", 8, "saturate", 19)])
def test_pooled_screen_equals_reference(monkeypatch, dataflow, rows, mode, bits, on_tiles):
    """A batch after one that flagged many outputs is screened whole with the pooled bound
    (`screen.pooled_screen`: every chunk of every pixel screened or walked): outputs and
    events equal the reference engine's, its flagged outputs are at least the exact bound's;
    where it walked too many chunks the next batch takes the exact screen (on the engine's
    tiles every pixel, as it is made). Also with the pause forced by a zero walk budget, and
    (`on_tiles` False) as where the engine's tiles do not make the sums: there the pause
    counts down without the pooled screen."""
    if not on_tiles:
        monkeypatch.setattr(screen, "fused", lambda plan: False)
    x, w, bias = wide_case(bits)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = narrow_npu(dataflow, rows, bits, mode)
    first = equals_reference(cfg, prog, x).stats.iloc[0]
    ref = Simulator(cfg, engine="reference").run(prog, x)
    for walks in (screen.POOLED_WALKS, 0.0):
        monkeypatch.setattr(screen, "POOLED_WALKS", walks)
        sim = Simulator(cfg)
        cp = next(p.prep for p in sim._plans_for(prog) if p.prep is not None).chunks
        every = x.shape[0] * x.shape[2] * x.shape[3] * w.shape[0] * cp.nch  # all pixels
        rows_seen, skips = [], []
        for _ in range(3):
            got = sim.run(prog, x)
            np.testing.assert_array_equal(got.outputs["y"], ref.outputs["y"])
            cols = ["pe_overflows", "acc_overflows", "acc_min", "acc_max"]
            assert got.stats[cols].equals(ref.stats[cols])
            rows_seen.append(got.stats.iloc[0])
            skips.append(int(cp.pooled_skip[0]))
        pooled = rows_seen[1]  # the first batch flagged many: the second is pooled
        assert pooled["screened_chunks"] + pooled["walked_chunks"] == every
        assert pooled["sequential_outputs"] >= first["sequential_outputs"]
        assert pooled["walked_chunks"] >= first["walked_chunks"]
        if pooled["walked_chunks"] > walks * every:  # paused: the third takes the exact screen
            assert skips == [0, screen.POOLED_RETRY, screen.POOLED_RETRY - 1]
            assert rows_seen[2]["walked_chunks"] == first["walked_chunks"]
            if screen.fused(cp.plan):  # on the tiles, every pixel's chunks screened
                exact = rows_seen[2]
                assert exact["screened_chunks"] + exact["walked_chunks"] == every
        else:
            assert walks > 0 and skips == [0, 0, 0]


def pooled_batch_equals_reference(caplog, warning: str) -> None:
    """A 16-bit wrap layer's second batch (the first flags many outputs: it takes the pooled
    screen) logs `warning` and still equals the reference engine, outputs and events."""
    x, w, bias = wide_case(16)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = narrow_npu("os", 16, 16, "wrap")
    ref = Simulator(cfg, engine="reference").run(prog, x)
    sim = Simulator(cfg)
    sim.run(prog, x)
    with caplog.at_level("WARNING"):
        got = sim.run(prog, x)
    assert warning in caplog.text
    np.testing.assert_array_equal(got.outputs["y"], ref.outputs["y"])
    assert got.stats["acc_overflows"].equals(ref.stats["acc_overflows"])


def test_a_wrong_pooling_is_caught_in_the_pooled_screen(monkeypatch, caplog):
    """A pooled input that misses its block's largest values (one pixel's patch only) gives
    bounds below some chunks' positive sums: `screen._check_bound` raises, the layer is
    recomputed by the float engine, outputs and events still the reference's."""
    from npusim.sim import int8_tiles

    real = int8_tiles.pooled_input
    monkeypatch.setattr(int8_tiles, "pooled_input",
                        lambda xu, zp, padding, g, stride: real(xu, zp, padding, 1, stride))
    pooled_batch_equals_reference(caplog, "the pooled bound is below a chunk's positive sum")


def test_zero_point_and_groups_keep_the_walk():
    """Inputs that may lie below the zero point, or grouped convs: no chunk plan (the full
    walk), still equal to the reference."""
    x, w, bias = wide_case(3)
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"precision.acc_bits": 16, "precision.pe_acc_bits": 16, "precision.overflow": "wrap"})
    for prog in (conv_program(w, bias, x.shape[1:], padding=1, requant=False, zp_x=3),
                 conv_program(w[:, :16], bias, x.shape[1:], padding=1, requant=False, groups=2)):
        fast = Simulator(cfg).run(prog, x)
        ref = Simulator(cfg, engine="reference").run(prog, x)
        np.testing.assert_array_equal(fast.outputs["y"], ref.outputs["y"])
        assert fast.stats["acc_overflows"].equals(ref.stats["acc_overflows"])
        assert fast.stats.iloc[0]["screened_chunks"] == 0


@pytest.mark.parametrize("how", ["swap", "add"])
def test_chunk_check_catches_wrong_chunk_sums(monkeypatch, caplog, how):
    """A chunked conv whose chunk sums are wrong (one output's values swapped between two
    chunks, which keeps every total; or one value off by one) is caught by the check: the
    layer is recomputed with the float engine, and the result is still the reference's."""
    from npusim.sim import accumulate

    real = accumulate.int8_conv

    def broken(x, plan, out_hw, sums=False):
        res = real(x, plan, out_hw, sums)
        if plan.groups > 1:  # the chunked plan
            q = plan.q // plan.groups
            g = res.g
            if how == "swap":  # at a pixel where the two differ (else no error)
                m = int(np.flatnonzero(g[:, 0] != g[:, q])[0])
                g[m, [0, q]] = g[m, [q, 0]]
            else:
                g[5, q + 1] += 1
            if res.sums is not None:  # the sums a kernel writing these values makes
                res.sums = g.astype(np.int64).reshape(len(res.sums), -1, g.shape[1]).sum(axis=1)
        return res

    monkeypatch.setattr(accumulate, "int8_conv", broken)  # the chunked conv up front
    # or on demand (a layer's first batch: `checked_conv`), or the pooled bound's conv
    # (oneDNN: the sums)
    monkeypatch.setattr(int8_engine, "int8_conv", broken)
    x, w, bias = wide_case(16)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"precision.acc_bits": 16, "precision.pe_acc_bits": 16, "precision.overflow": "wrap"})
    sim = Simulator(cfg)
    ref = Simulator(cfg, engine="reference").run(prog, x)
    for _ in range(2):  # chunk sums made on demand, then (the hint set) up front
        caplog.clear()
        with caplog.at_level("WARNING"):
            fast = sim.run(prog, x)
        row = fast.stats.iloc[0]
        assert "recomputed with the float engine" in caplog.text, \
            row[["sequential_outputs", "screened_chunks", "walked_chunks"]].to_dict()
        np.testing.assert_array_equal(fast.outputs["y"], ref.outputs["y"])
        assert fast.stats["acc_overflows"].equals(ref.stats["acc_overflows"])


@pytest.mark.skipif(not int8_tiles.available(), reason="the fused screen runs on the own tiles")
def test_fused_screen_catches_a_wrong_weight(monkeypatch, caplog):
    """The pooled screen's chunk sums made by a kernel with one weight byte off (its column
    sums, made where the sums are screened, see it): the layer is recomputed with the float
    engine, outputs and events the reference engine's."""
    real = int8_tiles.screen_conv

    def wrong(xu, zp, packed, *a):
        wb = packed.wb.copy()
        wb[0] = 1 if wb[0] != 1 else 2
        return real(xu, zp, dataclasses.replace(packed, wb=wb), *a)

    monkeypatch.setattr(int8_tiles, "screen_conv", wrong)
    pooled_batch_equals_reference(caplog, "recomputed with the float engine")


def test_run_many_shares_chunk_sums():
    """Configurations sharing one input: a configuration without a chunk plan (ws rows 7)
    makes the engine's entry, later ones compute their chunk sums on top of it, or reuse
    another's; every result equals its own `run`."""
    from npusim.sim.simulator import run_many

    x, w, bias = wide_case(7)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=True)
    base = NPUConfig.preset("edge16")
    cfgs = [base.with_overrides({"array.dataflow": df, "array.rows": rows,
                                 "precision.acc_bits": bits, "precision.pe_acc_bits": bits,
                                 "precision.overflow": mode})
            for df, rows, bits, mode in [("ws", 7, 17, "wrap"), ("os", 16, 16, "wrap"),
                                         ("os", 16, 17, "saturate"), ("ws", 16, 17, "wrap")]]
    many = run_many([Simulator(c) for c in cfgs], prog, x)
    for cfg, got in zip(cfgs, many):
        one = Simulator(cfg, engine="reference").run(prog, x)
        np.testing.assert_array_equal(got.outputs["y"], one.outputs["y"])
        cols = ["pe_overflows", "acc_overflows", "acc_min", "acc_max"]
        assert got.stats[cols].equals(one.stats[cols])
    assert [int(r.stats.iloc[0]["screened_chunks"] > 0) for r in many] == [0, 1, 1, 1]


@pytest.mark.parametrize("mode", ["wrap", "saturate"])
def test_chunked_conv_follows_the_last_batch(mode):
    """A batch that flags nothing (screened whole with the pooled bound, the hint being set)
    makes the next batch start with the sign-column conv; a flagging batch after it makes its
    chunk sums on demand: every batch equals the reference engine, outputs and events, and
    the hint follows each batch."""
    x, w, bias = wide_case(3)
    quiet = np.zeros_like(x)  # all-zero inputs: every sum is the bias, nothing flags
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"precision.acc_bits": 16, "precision.pe_acc_bits": 16, "precision.overflow": mode})
    sim, ref = Simulator(cfg), Simulator(cfg, engine="reference")
    cols = ["pe_overflows", "acc_overflows", "acc_min", "acc_max"]
    seen = []
    for batch in (x, quiet, x, x):
        got, want = sim.run(prog, batch), ref.run(prog, batch)
        np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])
        assert got.stats[cols].equals(want.stats[cols])
        cp = next(p.prep for p in sim._plans_for(prog) if p.prep is not None).chunks
        seen.append((int(got.stats.iloc[0]["screened_chunks"] > 0), bool(cp.flagged[0])))
    assert seen == [(1, True), (1, False), (1, True), (1, True)]
