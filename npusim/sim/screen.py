"""Chunk screening: exact overflow events without walking every product (issue 20).

An output whose whole-sum bound leaves a level's range is re-simulated in the dataflow's order
(docs/architecture.md), but an event can only happen where a running sum nears the range's edge. So its
products, in the k order (c, i, j) of `kernels._accumulate_point`, are cut into chunks of
``size = cc * kh * kw`` products (cc whole input channels; in the ws/is order a multiple of
``rows``, so a chunk is whole pe chunks). One grouped int8 conv (`int8_engine`; group j reads
input channels [j*cc, (j+1)*cc), its columns the weights and their positive parts) gives, for
every output and chunk, exactly the chunk's sum and the sum ``pos`` of its positive products
(inputs are ``>= zp_x`` here), ``neg = sum - pos``. It replaces the engine's sign-column conv
(the same products: its columns are these summed over the chunks), so the screen's sums cost
about what the flagging already did.

`kernels.screen_walk_kernel` then goes chunk by chunk: every running sum inside a chunk lies
in [s + neg, s + pos] (s the held value at its start) and every pe-level chunk sum in [neg,
pos]; where those fit the levels no addition can overflow and the held value becomes s + sum
exactly (wrap and saturate alike), else that chunk of that output is walked product by
product (where the levels fit int16 lanes and enough outputs fail, every 64-output block that
holds one in registers: `lanes16`). Values and event counts are those of the walk
(tests/npusim/sim/test_screen.py).

`pooled_screen` (a single configuration, after a batch that flagged many outputs) screens
every pixel with a cheaper `pos`: the chunks' sums alone, and per 2 x 2 block of output
pixels an upper bound on their chunks' positive sums (`int8_engine.pooled_conv`), checked
against a few pixels' exact ones (`_check_bound`).

Layers with signed inputs, groups, a single chunk, or a batch whose chunk sums would not fit
`_MAX_ELEMS` keep the full walk (`accumulate._simulate_points`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field

import numpy as np

from npusim.sim import int8_tiles
from npusim.sim import kernels as K
from npusim.sim.exact_conv import InexactError
from npusim.sim.int8_engine import (
    BOUND_G,
    ColumnCheck,
    Int8Conv,
    Int8Result,
    checked_conv,
    own_check,
    pooled_conv,
    prepare_int8_conv,
    project,
    projection,
    prologue,
    spot_check_rows,
    spot_rows,
    u8_operand,
    weights_projection,
)
from npusim.sim.kernels import LevelSpec
from npusim.sim.lanes16 import lane_weights

#: the most products per chunk (a 3x3 conv of 512 channels gets 32 channels, 288 products).
#: Smaller chunks screen tighter but make more chunk sums to write and read
CHUNK_PRODUCTS = 300
#: the most products per chunk where a level is 15 bits or narrower (where a size fits it):
#: there a chunk of 288 products failed its screen often enough that walking it cost more
#: than twice the chunk sums (ResNet-18 224 b2 at 15 bits, 16 channels of 144 products in
#: layer4: os wrap 7.4 -> 6.6x fbgemm, ws saturate 7.5 -> 6.6x, ws wrap 8.5 -> 7.5x; at 16
#: bits no gain, at 80 products 25% slower: reports/BENCHMARKS.md, round 25)
NARROW_CHUNK_PRODUCTS = 150
#: chunks per output wanted at 15 bits (fewer where `min_channels` allows no more): a short
#: reduction (ResNet-18's 576-product layer1 convs) needs short chunks to screen well there.
#: Each bit wider doubles the room a chunk's running sums have, so half as many are wanted
#: (`wanted_chunks`; at 16 bits 4 chunks of 144 products walked 3 of 1.6 M chunks there, and
#: half the chunk sums to make and read: reports/BENCHMARKS.md, round 22)
MIN_CHUNKS = 8
#: the fewest input channels per chunk (oneDNN's conv of groups of 1-3 channels, the 7x7
#: stem's chunks, ran ~30x slower than the walk it was to save)
_MIN_CHANNELS = 8
#: the most chunk sums (pixels x columns, float32) one call keeps; larger batches walk
_MAX_ELEMS = 1 << 26
#: the pooled screen walks at most this share of the chunks, else the next `POOLED_RETRY`
#: batches take the exact positive sums, screened where the engine's tiles make them
#: (`pooled_screen` with `exact`; they cost about what the pooled conv saves: ResNet-18 224
#: b2 at 16 bits, layer4 walking 0.02-0.09% with the pooled bound, 2.26-2.45 ms a layer
#: pooled, 2.21-2.33 exact; at 15 bits a walked chunk costs ~0.3 us, and the exact sums
#: walk 1.5-5x fewer: layer1.0.conv1, 1.26% of its chunks pooled, 8.35 -> 5.28 ms, layer4
#: (2.2-2.7%) 5.3-6.1 -> 4.8-5.2, layer3 (0.12-0.45%) -0.5 to +0.2; round 26)
POOLED_WALKS = 0.0025
POOLED_RETRY = 16


@dataclass(frozen=True)
class ChunkPlan:
    """A layer's chunked conv: `plan` (groups = chunks; per chunk O sums, then O positive
    sums), `size` products per chunk, `nch` chunks, the weights in the k order as `wl` (O, K)
    int64 and `wt` (K, O) int32. `flagged[0]`: whether the layer's last batch flagged many
    outputs (`accumulate._CHUNKS_PAY`; a mutable hint): the chunked conv runs up front only
    then; otherwise the cheaper sign-column conv runs, and the chunk sums are made only if a
    batch flags many after all (a few flagged outputs are walked alone). A layer's first batch
    starts with the sign-column conv: a wrong guess costs that conv (2O columns) where many
    are flagged, the other guess the chunked conv (nch x 2O columns) where few are (a sweep's
    first batch, at widths just below the static bound, flags few)."""

    plan: Int8Conv
    size: int
    nch: int
    wl: np.ndarray
    wt: np.ndarray
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(1, np.bool_))
    #: the pooled screen's plans (`pooled_screen`): the chunks' sums alone (nch x O columns),
    #: and the conv of their weights' positive parts over the pooled input
    #: (`int8_engine.pooled_conv`); None: no pooled screen for this layer
    sums: Int8Conv | None = None
    pooled: Int8Conv | None = None
    #: batches left to screen with the exact positive sums (`plan`) before the pooled
    #: screen is tried again (it walked over `POOLED_WALKS` of the chunks; a mutable hint)
    pooled_skip: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    #: the largest weight magnitude (whether the register walk's int16 lanes hold a product)
    wmax: int = 0
    #: the register walk's weights (`lanes16.lane_weights` of `wt`) per scale, made once
    lanes: dict = field(default_factory=dict, repr=False, compare=False)

    def lane_weights(self, shift: int) -> np.ndarray:
        """`wt` as the register walk reads it at this scale (cached)."""
        if shift not in self.lanes:
            self.lanes[shift] = lane_weights(self.wt, shift)
        return self.lanes[shift]


def _narrowest(lv: LevelSpec) -> int:
    """The width of the narrowest level that adds (the pe level only in the ws/is order)."""
    return lv.acc_bits if lv.order == K.OS else min(lv.acc_bits, lv.pe_bits)


def wanted_chunks(lv: LevelSpec) -> int:
    """Chunks per output wanted at these levels' widths: `MIN_CHUNKS` at 15 bits or fewer,
    half as many per bit above (the narrowest level's), at least 2."""
    return max(2, MIN_CHUNKS >> max(0, _narrowest(lv) - 15))


def chunk_channels(cg: int, khw: int, lv: LevelSpec, limit: int | None = None,
                   min_channels: int = _MIN_CHANNELS, min_chunks: int | None = None) -> int:
    """Input channels per chunk: the most that divide `cg`, keep a chunk within `limit`
    products (default `NARROW_CHUNK_PRODUCTS` at 15 bits or fewer where some size fits it,
    else `CHUNK_PRODUCTS`) and (ws/is) a multiple of ``lv.rows``, with at least two chunks,
    `min_chunks` (default `wanted_chunks`) where `min_channels` and the pe chunks allow; 0
    if none."""
    if limit is None:
        cc = chunk_channels(cg, khw, lv, NARROW_CHUNK_PRODUCTS, min_channels, min_chunks) \
            if _narrowest(lv) <= 15 else 0
        return cc or chunk_channels(cg, khw, lv, CHUNK_PRODUCTS, min_channels, min_chunks)
    if min_chunks is None:
        min_chunks = wanted_chunks(lv)
    cap = min(cg // 2, max(cg // min_chunks, min_channels))
    for cc in [*range(cap, min_channels - 1, -1), *range(cap + 1, cg // 2 + 1)]:
        size = cc * khw
        if cg % cc or size > limit or (lv.order != K.OS and size % lv.rows):
            continue
        return cc
    return 0


def prepare_chunks(prep: Int8Conv, w: np.ndarray, lv: LevelSpec, x_range: tuple[int, int],
                   kind: str, limit: int | None = None,
                   min_channels: int = _MIN_CHANNELS,
                   min_chunks: int | None = None) -> ChunkPlan | None:
    """The chunked plan of a layer whose int8 plan `prep` has sign columns, or None (groups,
    no chunk size that fits, or the engine cannot prove the chunked conv exact)."""
    if not prep.signs or prep.groups != 1:
        return None
    o, cg, kh, kw = w.shape
    cc = chunk_channels(cg, kh * kw, lv, limit, min_channels, min_chunks)
    if not cc:
        return None
    nch = cg // cc
    wc = w.reshape(o, nch, cc, kh, kw).transpose(1, 0, 2, 3, 4)  # (chunk, O, cc, kh, kw)
    wcat = np.concatenate([wc, np.maximum(wc, 0)], axis=1).reshape(nch * 2 * o, cc, kh, kw)
    plan = prepare_int8_conv(wcat, prep.stride, prep.padding, nch, prep.zp_x, x_range[0],
                             x_range[1], kind=kind)
    if plan is None:
        return None
    # the non-zero product count is the layer's own (not that of the doubled columns)
    plan = dataclasses.replace(plan, wnz=prep.wnz)
    wl = np.ascontiguousarray(w.reshape(o, -1), np.int64)
    ws = wc.reshape(nch * o, cc, kh, kw)
    sums = prepare_int8_conv(ws, prep.stride, prep.padding, nch, prep.zp_x, x_range[0],
                             x_range[1], kind=kind)
    sub = plan.sub  # the pooled input is the uint8 operand (x - sub)
    pooled = prepare_int8_conv(np.maximum(ws, 0), BOUND_G * prep.stride, 0, nch, prep.zp_x - sub,
                               x_range[0] - sub, x_range[1] - sub, kind=kind)
    if sums is None or pooled is None:
        sums = pooled = None
    else:
        sums = dataclasses.replace(sums, wnz=prep.wnz)
    return ChunkPlan(plan, cc * kh * kw, nch, wl, np.ascontiguousarray(wl.T, np.int32),
                     sums=sums, pooled=pooled, wmax=int(np.abs(wl).max(initial=0)))


def fits(cp: ChunkPlan, n: int, pixels: int) -> bool:
    """The chunk sums of `n` images are small enough to keep."""
    return n * pixels * cp.plan.q <= _MAX_ELEMS


def chunk_sums(x: np.ndarray, cp: ChunkPlan, out_hw: tuple[int, int]) -> np.ndarray:
    """The chunk sums (N*Ho*Wo, nch * 2O) float32, verified (`checked_conv`)."""
    return checked_conv(x, cp.plan, out_hw).g


def chunked_result(res: Int8Result, plan: Int8Conv, nch: int) -> Int8Result:
    """The chunked conv's result (`plan`, `nch` chunks of q columns) as the epilogue checks
    it: q columns of the sums over the chunks, then q of the sums with chunk j weighted j + 1
    (so values moved between chunks are seen), projected by ``[r1 | r2] = projection(2q)``,
    which is the projection ``r1 + (j + 1) * r2`` of the plan's own columns."""
    q = plan.q // nch
    r = projection(2 * q)
    chunk = np.arange(1, nch + 1)[:, None]  # (nch, 1): chunk j's weight j + 1
    r_plan = (r[:, None, :q] + chunk * r[:, None, q:]).reshape(len(r), nch * q)
    u = weights_projection(plan, "chunks", r_plan)
    return Int8Result(res.g, ColumnCheck(r, project(u, res.window)), res.nonzero_macs)


def screened_pixels(x: np.ndarray, cp: ChunkPlan, gc: np.ndarray, bias: np.ndarray,
                    lv: LevelSpec, pix: np.ndarray, st, out_hw: tuple[int, int],
                    gp: np.ndarray | None = None, shift: int | None = None
                    ) -> tuple[np.ndarray, int]:
    """`accumulate._simulate_pixels` by chunk screening: (the order-faithful accumulators
    (len(pix), O) of every output channel of the output pixels `pix` (flat (n, oy, ox)), how
    many of their outputs the bound flags); events and chunk counts into `st`. `gc`: the
    chunked plan's sums and positive sums (`plan`), or with `gp` (the pooled bounds of
    `pooled_screen`) the sums alone. `shift`: where the levels fit int16 lanes, their scale
    (`accumulate._lane_shift`): failing chunks are then walked in registers."""
    ho, wo = out_hw
    pix = np.asarray(pix, np.int64)
    o = cp.wl.shape[0]
    got = np.empty((len(pix), o), np.int64)
    events = np.zeros((len(pix), 2), np.int64)
    chunks = np.zeros((len(pix), 2), np.int64)
    flagged = np.zeros(len(pix), np.int64)
    w16 = _NO_LANES if shift is None else cp.lane_weights(shift)
    K.screen_walk_kernel(np.ascontiguousarray(x), cp.wl, cp.wt, w16, np.asarray(bias, np.int64),
                         cp.plan.kh, cp.plan.kw, cp.plan.stride, cp.plan.padding, cp.plan.zp_x,
                         lv, pix, ho, wo, gc, gc if gp is None else gp.astype(gc.dtype, copy=False),
                         0 if gp is None else BOUND_G, cp.size, got, events, chunks, flagged)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    st.screened_chunks, st.walked_chunks = (int(v) for v in chunks.sum(axis=0))
    return got, int(flagged.sum())


def pooled_screen(x: np.ndarray, cp: ChunkPlan, bias: np.ndarray, lv: LevelSpec, st,
                  out_hw: tuple[int, int], shift: int | None = None,
                  exact: bool = False) -> tuple[np.ndarray, int]:
    """`screened_pixels` of every output pixel, `pos` replaced by the pooled bound: the
    chunks' sums by `cp.sums`, an upper bound on their positive sums per 2 x 2 block of
    output pixels by `int8_engine.pooled_conv` with `cp.pooled` (both convs checked as
    usual, about 1.3x the products of the exact sums instead of 2x). Values and events
    equal the exact screen's; more chunks may be walked, and more outputs counted as
    flagged (the bound is looser). With `exact`, the exact positive sums instead (`cp.plan`:
    twice the columns, no pooled conv, fewer walks). Where the pooled bound walked over
    `POOLED_WALKS` of the chunks, the next `POOLED_RETRY` batches take the exact sums. On
    the engine's own tiles the chunk sums are screened where they are made
    (`int8_tiles.screen_conv`), never stored."""
    n = x.shape[0]
    ho, wo = out_hw
    plan = cp.plan if exact else cp.sums
    on_tiles = fused(plan)
    if on_tiles:  # the sums' checks made up front, the conv inside the screen
        x, xu, win, st.nonzero_macs = prologue(x, plan, out_hw)
    else:
        x = np.ascontiguousarray(x)
        xu = u8_operand(x, plan)
    gp = None
    if not exact:
        gp = pooled_conv(xu, cp.pooled, cp.plan.zp_x - plan.sub, cp.plan.padding,
                         cp.plan.stride, out_hw, np.float32)
        gp = gp.reshape(-1, gp.shape[-1])
        _check_bound(x, cp, gp, out_hw, next(_CALLS))
    if on_tiles:
        vals, flagged = _fused_screen(x, xu, cp, plan, own_check(plan, win), bias, lv, st,
                                       out_hw, gp, shift)
    else:
        res = checked_conv(x, plan, out_hw)
        st.nonzero_macs = res.nonzero_macs
        vals, flagged = screened_pixels(x, cp, res.g, bias, lv, np.arange(n * ho * wo), st,
                                        out_hw, gp, shift)
    if not exact and st.walked_chunks > POOLED_WALKS * (st.screened_chunks + st.walked_chunks):
        cp.pooled_skip[0] = POOLED_RETRY
    return vals, flagged


def fused(plan: Int8Conv) -> bool:
    """The plan's chunk sums can be screened where the engine's tiles make them."""
    return isinstance(plan.packed, int8_tiles.TileWeights) and not plan.parts and \
        not plan.radix and plan.subsample == 1


def _fused_screen(x, xu, cp: ChunkPlan, plan: Int8Conv, check, bias, lv, st, out_hw, gp, shift):
    """`pooled_screen`'s chunk sums (`plan`: `cp.sums`, or `cp.plan` with the positive
    sums, `gp` None) and screen against the block bounds `gp` in one kernel
    (`int8_tiles.screen_conv`): the outputs are returned only once the sums pass the
    engine's checks (column sums against the window sums, a few pixels recomputed in
    int64)."""
    n = x.shape[0]
    ho, wo = out_hw
    o = cp.wl.shape[0]
    m_n = n * ho * wo
    vals = np.empty((m_n, o), np.int64)
    events = np.zeros((m_n, 2), np.int64)
    chunks = np.zeros((m_n, 2), np.int64)
    flagged = np.zeros(m_n, np.int64)
    w16 = _NO_LANES if shift is None else cp.lane_weights(shift)
    call = next(_CALLS)
    ms = spot_rows(call, m_n)
    sums, gs = int8_tiles.screen_conv(
        xu, plan.zp_x - plan.sub, plan.packed, plan.stride, plan.padding, ms,
        (x, cp.wl, cp.wt, w16, np.asarray(bias, np.int64), plan.kh, plan.kw, plan.padding,
         plan.zp_x, lv, _NO_BOUND if gp is None else gp, 0 if gp is None else BOUND_G,
         cp.size, vals, events, chunks, flagged))
    check.verify(sums)
    spot_check_rows(x, plan, out_hw, m_n, ms, gs, call)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    st.screened_chunks, st.walked_chunks = (int(v) for v in chunks.sum(axis=0))
    return vals, int(flagged.sum())


_NO_LANES = np.zeros((0, 0), np.int16)  # `screened_pixels` without the register walk
_NO_BOUND = np.zeros((0, 0), np.float32)  # `_fused_screen` with the exact positive sums
_CALLS = itertools.count(1)  # `_check_bound` and spot check calls here (each checks other pixels)
_CHECK_COLUMNS = 16  # output columns `_check_bound` recomputes per pixel


def _check_bound(x: np.ndarray, cp: ChunkPlan, gp: np.ndarray, out_hw: tuple[int, int],
                 call: int) -> None:
    """Raise InexactError unless the pooled bounds `gp` (N * Hb * Wb, nch * O) are at or
    above the positive sums of every chunk of a few spot pixels, in up to `_CHECK_COLUMNS`
    columns (both picked by `call`; `kernels.pooled_bound_kernel`): a wrong pooling or
    geometry, which the pooled conv's own checks cannot see, moves most bounds."""
    n = x.shape[0]
    ho, wo = out_hw
    o = cp.wl.shape[0]
    cols = np.arange(o) if o <= _CHECK_COLUMNS else \
        (call * 40503 + np.arange(_CHECK_COLUMNS) * 2654435761) % o
    if not K.pooled_bound_kernel(x, cp.wl, cols, cp.size, cp.plan.kh, cp.plan.kw,
                                 cp.plan.stride, cp.plan.padding, cp.plan.zp_x,
                                 spot_rows(call, n * ho * wo), ho, wo, gp, BOUND_G):
        raise InexactError("screen: the pooled bound is below a chunk's positive sum")
