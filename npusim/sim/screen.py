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
product. Values and event counts are those of the walk (tests/npusim/sim/test_screen.py).
Layers with signed inputs, groups, a single chunk, or a batch whose chunk sums would not fit
`_MAX_ELEMS` keep the full walk (`accumulate._simulate_points`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from npusim.sim import kernels as K
from npusim.sim.int8_engine import Int8Conv, Int8Result, int8_conv, prepare_int8_conv
from npusim.sim.kernels import LevelSpec

#: the most products per chunk (a 3x3 conv of 512 channels gets 32 channels, 288 products).
#: Smaller chunks screen tighter but make more chunk sums to write and read
CHUNK_PRODUCTS = 300
#: chunks per output wanted (fewer where `min_channels` allows no more): a short reduction
#: (ResNet-18's 576-product layer1 convs) needs short chunks to screen well at 15 bits
MIN_CHUNKS = 8
#: the fewest input channels per chunk (oneDNN's conv of groups of 1-3 channels, the 7x7
#: stem's chunks, ran ~30x slower than the walk it was to save)
_MIN_CHANNELS = 8
#: the most chunk sums (pixels x columns, float32) one call keeps; larger batches walk
_MAX_ELEMS = 1 << 26


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


def chunk_channels(cg: int, khw: int, lv: LevelSpec, limit: int = CHUNK_PRODUCTS,
                   min_channels: int = _MIN_CHANNELS, min_chunks: int = MIN_CHUNKS) -> int:
    """Input channels per chunk: the most that divide `cg`, keep a chunk within `limit`
    products and (ws/is) a multiple of ``lv.rows``, with at least two chunks, `min_chunks`
    where `min_channels` and the pe chunks allow; 0 if none."""
    cap = min(cg // 2, max(cg // min_chunks, min_channels))
    for cc in [*range(cap, min_channels - 1, -1), *range(cap + 1, cg // 2 + 1)]:
        size = cc * khw
        if cg % cc or size > limit or (lv.order != K.OS and size % lv.rows):
            continue
        return cc
    return 0


def prepare_chunks(prep: Int8Conv, w: np.ndarray, lv: LevelSpec, x_range: tuple[int, int],
                   kind: str, limit: int = CHUNK_PRODUCTS,
                   min_channels: int = _MIN_CHANNELS,
                   min_chunks: int = MIN_CHUNKS) -> ChunkPlan | None:
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
    return ChunkPlan(plan, cc * kh * kw, nch, wl, np.ascontiguousarray(wl.T, np.int32))


def fits(cp: ChunkPlan, n: int, pixels: int) -> bool:
    """The chunk sums of `n` images are small enough to keep."""
    return n * pixels * cp.plan.q <= _MAX_ELEMS


def chunk_sums(x: np.ndarray, cp: ChunkPlan, out_hw: tuple[int, int]):
    """(the chunk sums (N*Ho*Wo, nch * 2O) float32, verified; an `Int8Result` of their
    totals over the chunks: the columns of the sign-column plan, for the epilogue)."""
    res = int8_conv(x, cp.plan, out_hw)
    n = x.shape[0]
    q = cp.plan.q // cp.nch
    g = np.empty((res.g.shape[0], q), np.float32)
    sums = np.empty((n, cp.plan.q), np.int64)
    K.chunk_reduce_kernel(res.g, n, cp.nch, q, g, sums)
    res.verify(sums)
    return res.g, Int8Result(g, res.expected.reshape(cp.nch, q).sum(axis=0), res.nonzero_macs)


def chunked_result(res: Int8Result, nch: int) -> Int8Result:
    """The chunked conv's result as the epilogue checks it: per column, the expected sum
    over the chunks, then the expected sum with chunk j weighted j + 1."""
    exp = res.expected.reshape(nch, -1)
    weighted = (np.arange(1, nch + 1, dtype=np.int64)[:, None] * exp).sum(axis=0)
    return Int8Result(res.g, np.concatenate([exp.sum(axis=0), weighted]), res.nonzero_macs)


def screened_pixels(x: np.ndarray, cp: ChunkPlan, gc: np.ndarray, bias: np.ndarray,
                    lv: LevelSpec, pix: np.ndarray, st, out_hw: tuple[int, int]) -> np.ndarray:
    """`accumulate._simulate_pixels` by chunk screening: the order-faithful accumulators
    (len(pix), O) of every output channel of the output pixels `pix` (flat (n, oy, ox)),
    events and chunk counts into `st`."""
    ho, wo = out_hw
    pix = np.asarray(pix, np.int64)
    o = cp.wl.shape[0]
    got = np.empty((len(pix), o), np.int64)
    events = np.zeros((len(pix), 2), np.int64)
    chunks = np.zeros((len(pix), 2), np.int64)
    K.screen_walk_kernel(np.ascontiguousarray(x), cp.wl, cp.wt, np.asarray(bias, np.int64),
                         cp.plan.kh, cp.plan.kw, cp.plan.stride, cp.plan.padding, cp.plan.zp_x,
                         lv, pix, ho, wo, gc, cp.size, got, events, chunks)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    st.screened_chunks, st.walked_chunks = (int(v) for v in chunks.sum(axis=0))
    return got
