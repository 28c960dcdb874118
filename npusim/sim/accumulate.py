"""Conv/linear accumulation: an exact fast path, and the order-faithful kernel where it matters.

The result of every output is defined by the order-faithful accumulation of docs/architecture.md
(`kernels._accumulate_point`). Computing it that way for every output is slow, and rarely
needed: an output whose running sums cannot leave the accumulator's range, in any order, has
no overflow event and equals its exact sum. So:

1. the exact sums come from the engine chosen in `npusim.sim.engines`: the int8 engine
   (`npusim.sim.int8_engine`: oneDNN's int8 conv, with the positive/negative product sums as
   extra output columns when step 3 needs them) where it is used and the operand ranges and
   the weights' L1 bound prove it exact, else `npusim.sim.exact_conv` (a float im2col + GEMM,
   exact because the same bound proves every partial sum, in any order, below 2^24 or 2^53);
2. if the layer's static bound fits both levels, that is the answer (no event is possible);
3. without event counts (``count_events=False``), a layer whose risky levels only wrap skips
   the walk: its values are the exact sums wrapped once (`wrap_shortcut`), its event counts
   are reported as unknown (None);
4. otherwise each output gets a data-dependent bound, ``[bias - N, bias + P]`` with P and N
   the sums of its positive and negative products (two more GEMMs), and only the outputs whose
   bound leaves a level's range are re-simulated order-faithfully, events counted honestly:
   chunk by chunk where the int8 engine gives the chunk sums (`npusim.sim.screen`: a chunk
   whose sums bound every running sum inside the range is added at once), else product by
   product.

The "reference" engine runs the order-faithful kernel on every output (what the fast path is
tested against). Activations are channels last (N, H, W, C) and stored narrow (see
`simulator`); the NCHW kernels (order-faithful, float engine) get converted copies.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from npusim.ir import arith
from npusim.sim import kernels as K
from npusim.sim import lanes16, screen
from npusim.sim.engines import Engine
from npusim.sim.exact_conv import F64_EXACT, InexactError, l1_bound
from npusim.sim.int8_engine import Int8Conv, Int8Result, int8_conv, int8_conv_fused, window_nonzero
from npusim.sim.int8_engine import fusable as int8_fusable
from npusim.sim.kernels import LevelSpec

log = logging.getLogger(__name__)


@dataclass
class AccStats:
    """Per-batch accumulation facts of one layer."""

    pe_overflows: int | None = 0  # None: not counted (`wrap_shortcut`)
    acc_overflows: int | None = 0
    nonzero_macs: int = 0
    acc_min: int = 0
    acc_max: int = 0
    sequential_outputs: int = 0
    screened_chunks: int = 0  # chunks of the flagged pixels' outputs added at once (`screen`)
    walked_chunks: int = 0  # and those walked product by product


@dataclass(frozen=True)
class Requant:
    """Per-channel requantization of a layer's accumulators (see `arith.requantize`): the
    record the kernels take, plus what the engine paths ask of it."""

    rec: arith.RequantParams

    @classmethod
    def of(cls, m0, n, mf, scale_float: bool, code: int, mbits: int, zp: int, lo: int,
           hi: int) -> "Requant":
        """Built with `arith.requant_params` (which fixes the dtypes)."""
        return cls(arith.requant_params(m0, n, mf, scale_float, code, mbits, zp, lo, hi))

    def key(self) -> tuple:
        """Equal for requantizations that give equal outputs."""
        r = self.rec
        return (r.m0.tobytes(), r.n.tobytes(), r.mf.tobytes(), r.scale_float, r.code, r.mbits,
                r.zp, r.lo, r.hi)  # `km`, `sc`, `f64` derive from these

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype of the requantized values (they lie in [lo, hi])."""
        return arith.storage_dtype(self.rec.lo, self.rec.hi)

    def apply_channels_last(self, acc: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Requantize integer accumulators (..., O) (int64, or the register walk's int16),
        stored in `dtype`: (the output, min and max of `acc`, found in the same pass; 0, 0
        for none)."""
        flat = np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
        out = np.empty(flat.shape, self.dtype)
        if not flat.size:
            return out.reshape(acc.shape), 0, 0
        ext = np.empty((-(-len(flat) // K.REQUANT_ROWS), 2), np.int64)
        K.requant_rows_kernel(flat, self.rec, out, ext)
        return out.reshape(acc.shape), int(ext[:, 0].min()), int(ext[:, 1].max())

    def apply_points(self, vals: np.ndarray, chan: np.ndarray) -> np.ndarray:
        """Requantize int64 accumulators `vals`, each with the parameters of channel `chan`."""
        out = np.empty(len(vals), self.dtype)
        K.requant_points_kernel(np.ascontiguousarray(vals, np.int64),
                                np.ascontiguousarray(chan, np.int64), self.rec, out)
        return out


def risks(lv: LevelSpec, static_bits: int, static_bits_nobias: int) -> tuple[bool, bool]:
    """(pe level, acc level): whether the static bounds allow an overflow at that level."""
    return lv.order != K.OS and static_bits_nobias > lv.pe_bits, static_bits > lv.acc_bits


def wrap_shortcut(lv: LevelSpec, pe_risk: bool, acc_risk: bool) -> int | None:
    """Where a layer's values need no order-faithful walk: the width its exact accumulators
    are wrapped to (0: they are the exact sums), else None. Two's-complement sums are modular:
    bias + products wrapped at acc_bits, whatever the order and however often they wrapped on
    the way, is the exact sum wrapped once; a wrapping pe level at least as wide changes each
    chunk by a multiple of 2^pe_bits, so a multiple of 2^acc_bits too. Saturation at risk, or
    a narrower wrapping pe level at risk, depends on the order: None. Event counts (how often a
    running sum left the range) always need the walk."""
    if acc_risk and lv.acc_mode == K.SATURATE:
        return None
    pe_ok = not pe_risk or lv.pe_mode == K.EXACT or (
        lv.pe_mode == K.WRAP and lv.acc_mode == K.WRAP and lv.pe_bits >= lv.acc_bits)
    if not pe_ok:
        return None
    return lv.acc_bits if lv.acc_mode == K.WRAP else 0


def _shortcut(lv: LevelSpec, pe_risk: bool, acc_risk: bool, count_events: bool) -> int | None:
    """`wrap_shortcut` where it is used: events not counted and some level at risk."""
    if count_events or not (pe_risk or acc_risk):
        return None
    return wrap_shortcut(lv, pe_risk, acc_risk)


def prepare_conv(engine: Engine, w: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                 groups: int, zp_x: int, x_range: tuple[int, int], lv: LevelSpec,
                 static_bits: int, static_bits_nobias: int, count_events: bool = True,
                 packed=None) -> Int8Conv | None:
    """The int8-engine preparation of a layer whose raw inputs lie in `x_range`, or None
    (`engine` does not use int8, or cannot prove this layer exact in it, or its epilogue's
    float64 lanes cannot hold `bias` exactly: `_bias_fits`). `packed(key, make)`, if given,
    returns ``make()`` or a stored result of it for the same layer and `key` (the weight
    packing does not depend on the accumulator widths, the chunked plan only on the
    dataflow's order and rows and its chunk size; each preparation gets its own
    `ChunkPlan.flagged` hint)."""
    if not _bias_fits(bias):
        return None
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    signs = (pe_risk or acc_risk) and _shortcut(lv, pe_risk, acc_risk, count_events) is None

    def memo(key, make):
        return make() if packed is None else packed(key, make)
    prep = memo(signs, lambda: engine.prepare_int8(w, stride, padding, groups, zp_x, x_range,
                                                   signs))
    if prep is not None and prep.signs:
        # keyed by the chunk size too: it depends on the widths (`screen.chunk_channels`)
        cc = screen.chunk_channels(w.shape[1], w.shape[2] * w.shape[3], lv)
        cp = memo(("chunks", lv.order, lv.rows if lv.order != K.OS else 0, cc),
                  lambda: screen.prepare_chunks(prep, w, lv, x_range, engine.int8_kind))
        if cp is not None:
            # this preparation's own hints (`ChunkPlan.flagged`, `pooled_skip`)
            prep = dataclasses.replace(prep, chunks=dataclasses.replace(
                cp, flagged=np.zeros(1, np.bool_), pooled_skip=np.zeros(1, np.int64)))
    return prep


def _fits(lo: np.ndarray, hi: np.ndarray, bits: int) -> np.ndarray:
    return (lo >= -(1 << (bits - 1))) & (hi <= (1 << (bits - 1)) - 1)


_EPILOGUE_PIXELS = 256  # pixels per epilogue task
_EPILOGUE_BIAS = 1 << 52  # the epilogue's float64 bound lanes are exact below this
# Chunk sums (a conv over every pixel with nch x the columns) pay once more than 1/32 of a
# layer's outputs are flagged; below that the flagged outputs are walked whole. An estimate
# (walking a product costs ~30-50x a product of the int8 conv here), not a measured optimum.
_CHUNKS_PAY = 32
# Up to O / 32 flagged outputs per pixel are walked one by one (`_walk_points`, ~2-3 ns per
# product, one dependent chain each), more as every channel of their pixels in SIMD lanes
# (`_simulate_pixels`, ~3 ns per product and 16-32 lanes; ResNet-18 at 16 bits flagged
# 1-2 of 128 per pixel in layer2, walked in 2-3 ms per layer that way)
_ONE_BY_ONE = 32


def _bias_fits(bias: np.ndarray) -> bool:
    """Every |bias| below `_EPILOGUE_BIAS` (in Python integers: no int64 abs overflow)."""
    return not bias.size or max(-int(bias.min()), int(bias.max())) < _EPILOGUE_BIAS


def _blocks(n: int, units: int, cap: int) -> int:
    """Blocks per image for a kernel parallel over (image, block): enough tasks for every
    thread, and at most `cap` units per block."""
    import numba

    want = -(-2 * numba.get_num_threads() // max(n, 1))
    return max(1, min(units, max(want, -(-units // cap))))


def conv_accumulate(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int,
                    groups: int, zp_x: int, out_hw: tuple[int, int], lv: LevelSpec,
                    static_bits: int, static_bits_nobias: int, engine: Engine,
                    prep: Int8Conv | None = None, requant: Requant | None = None,
                    share: dict | None = None,
                    count_events: bool = True) -> tuple[np.ndarray, AccStats]:
    """Accumulators (N, Ho, Wo, O) int64 of a conv of channels-last `x` (N, H, W, C; padded
    with zp_x; any integer dtype), requantized (in `requant.dtype`) when `requant` is given,
    and their stats. `static_bits` bounds every running sum (bias included) of any input;
    `static_bits_nobias` every chunk sum (no bias) — both from `npusim.ir.bounds`. `engine`
    (`npusim.sim.engines.select`) computes the exact sums; `prep` (from `prepare_conv`) is the
    layer's int8 preparation.

    `share` (one dict per node, common to the configurations of `simulator.run_many`):
    configurations that bring the very same input object reuse the engine's sums (or the
    float engine's exact accumulators and sign sums), the per-output bounds, and the whole
    output object when it provably equals theirs (same requantization, and no addition that
    wrapped or saturated at this NPU's widths).

    `count_events` False: layers whose values need no walk (`wrap_shortcut`) skip it, and
    report their event counts as None (the reference engine always walks and counts)."""
    st = AccStats()
    pe_risk, acc_risk = risks(lv, static_bits, static_bits_nobias)
    short = None if engine.reference else _shortcut(lv, pe_risk, acc_risk, count_events)
    engine_failed = False
    if not engine.reference and prep is not None and (
            prep.signs or not (pe_risk or acc_risk) or short is not None):
        try:
            if share is None and int8_fusable(prep) and (short is not None
                                                         or not (pe_risk or acc_risk)):
                return _fused_from_engine(x, prep, bias, requant, lv, short, out_hw, st)
            exact = None if share is not None or short is not None else \
                _pooled(prep, x.shape[0], out_hw)
            if exact is not None:
                return _pooled_from_engine(x, prep.chunks, bias, requant, lv, out_hw, st,
                                           exact)
            if share is None and short is None and prep.walk_all[0]:
                prep.walk_all[0] -= 1
                return _walked_layer(x, w, bias, stride, padding, groups, zp_x, prep, lv,
                                     requant, out_hw, st)
            if share is None and short is None and int8_fusable(prep, risk=True) and \
                    not _chunked(prep, x.shape[0], out_hw):
                entry = _fused_risk_entry(x, prep, bias, requant, lv, pe_risk, out_hw)
            else:
                entry = _shared_entry(share, x, prep, out_hw)
            if short is not None:
                return _wrapped_from_engine(entry, bias, requant, lv, short, x.shape[0], out_hw,
                                            st)
            return _from_engine(entry, x, w, bias, stride, padding, groups, zp_x, out_hw, lv,
                                pe_risk, acc_risk, requant, st, prep.chunks)
        except InexactError as e:  # caught by the engine's checks: nothing wrong gets out
            if share is not None:
                share["conv"] = [c for c in share.get("conv", []) if not _same_array(c.x, x)]
            log.warning("%s (conv %s, stride %d, batch %d): recomputed with the float engine",
                        e, tuple(w.shape), stride, x.shape[0])
            st, engine_failed = AccStats(), True
    f = _float_entry(None if engine.reference else share, x, w, stride, padding, groups, zp_x, out_hw)
    st.nonzero_macs = f.nonzero_macs
    n, o = x.shape[0], w.shape[0]
    if engine.reference or f.bound >= F64_EXACT:
        acc = np.empty((n, o, *out_hw), np.int64)
        events = np.zeros((n, 2), np.int64)
        K.conv_kernel(_pad(f.xc, padding, zp_x), w, bias, stride, groups, zp_x, lv, acc, events)
        st.pe_overflows, st.acc_overflows = int(events[:, 0].sum()), int(events[:, 1].sum())
        st.sequential_outputs = acc.size
        return _output(acc.transpose(0, 2, 3, 1), requant, st), st
    if f.acc is None:
        f.acc = engine.exact_conv(f.xs, w, stride, padding, groups, f.bound,
                                  int8=not engine_failed)
        f.acc += bias.reshape(1, o, 1, 1)
    if short is not None:
        acc = arith.wrap(f.acc, short) if short else f.acc
        st.pe_overflows = st.acc_overflows = None
        return _output(acc.transpose(0, 2, 3, 1), requant, st), st
    if pe_risk or acc_risk:
        acc = f.acc.copy()
        _resimulate_at_risk(f, w, bias, stride, padding, groups, zp_x, lv, pe_risk, acc, st,
                            engine, not engine_failed)
        if st.pe_overflows or st.acc_overflows:
            return _output(acc.transpose(0, 2, 3, 1), requant, st), st
    # exact (no addition wrapped or saturated): one output object for every configuration
    key = None if requant is None else requant.key()
    if key not in f.outs:
        f.outs[key] = (_output(f.acc.transpose(0, 2, 3, 1), requant, st), st.acc_min,
                       st.acc_max)
    out, st.acc_min, st.acc_max = f.outs[key]
    return out, st


def _output(acc: np.ndarray, requant: Requant | None, st: AccStats) -> np.ndarray:
    """Channels-last accumulators (..., O) of any integer dtype as the layer's output
    (requantized when `requant`, else as they are, int64), their extremes into `st`: one pass
    over them."""
    if requant is None:
        acc = np.ascontiguousarray(acc, np.int64)
        _acc_range(acc, st)
        return acc
    out, st.acc_min, st.acc_max = requant.apply_channels_last(acc)
    return out


def _acc_range(acc: np.ndarray, st: AccStats) -> AccStats:
    """`st` with the extremes of the accumulators `acc` (0, 0 where there are none)."""
    lo, hi = K.extremes_kernel(np.ascontiguousarray(acc).reshape(-1)) if acc.size else (0, 0)
    st.acc_min, st.acc_max = int(lo), int(hi)
    return st


@dataclass
class _FloatShared:
    """The float engine's work on one input to a layer, common to the configurations of a
    sweep: NCHW int64 input (and minus the zero point), its L1 bound, the non-zero product
    count, the exact accumulators, the product sums of each sign, the exact outputs."""

    x: np.ndarray
    xc: np.ndarray
    xs: np.ndarray
    bound: int
    nonzero_macs: int
    acc: np.ndarray | None = None
    sign_sums: tuple | None = None
    outs: dict = field(default_factory=dict)  # requant key -> (output, acc min, acc max)


def _float_entry(share, x, w, stride, padding, groups, zp_x, out_hw) -> _FloatShared:
    if share is not None:
        for f in share.setdefault("float", []):
            if _same_array(f.x, x):
                return f
    xc = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.int64)  # NCHW int64
    xs = xc - zp_x if zp_x else xc
    f = _FloatShared(x, xc, xs, l1_bound(xs, w),
                     _nonzero_macs(xc, zp_x, w, stride, padding, groups, out_hw))
    if share is not None:
        share["float"].append(f)
    return f


@dataclass
class _Shared:
    """What configurations with one input to a layer have in common: the engine's sums, the
    exact results per requantization, and (once some configuration needed them) the bits each
    output's data-dependent bound needs at each level, with their maxima."""

    x: np.ndarray
    prep: Int8Conv
    res: Int8Result
    exact: dict = field(default_factory=dict)  # requant key -> (output, acc min, acc max)
    need_acc: np.ndarray | None = None  # (M, O) uint8: bits of [bias - neg, bias + pos]
    need_pe: np.ndarray | None = None  # (M, O) uint8: bits of [-neg, pos]
    need_max: tuple[int, int] = (0, 0)
    #: (M, O) uint8, non-zero where the output's bound leaves the widths of the one
    #: configuration that made it (`_fused_risk_entry`: no bound bits kept, none shared)
    flags: np.ndarray | None = None
    flag_rows: np.ndarray | None = None  # with `flags`: (M,) int32, the flagged outputs per row
    chunk_g: dict = field(default_factory=dict)  # chunk size -> `screen.chunk_sums` of x
    nch: int = 1  # > 1: `res` holds the columns per chunk (`screen`), summed by the epilogue
    #: the arrays of `_epilogue`'s pass (out, mnmx, sums, flags, flag_rows), made where the
    #: sums were
    pending: tuple | None = None


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """`a` and `b` are the same object, or views of the very same memory with one layout
    (activations are never written after they are made, so they hold the same values)."""
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _chunked(prep: Int8Conv, n: int, out_hw) -> bool:
    """The engine computes this layer's sums per chunk (the batch before had many flagged
    outputs, and this one fits the chunk plan)."""
    cp = prep.chunks
    return cp is not None and cp.flagged[0] and screen.fits(cp, n, out_hw[0] * out_hw[1])


def _pooled(prep: Int8Conv, n: int, out_hw) -> bool | None:
    """How `screen.pooled_screen` screens this layer in this call: None (not at all: it is
    not `_chunked` or has no pooled plans, or a pause after a batch that walked too many
    chunks with the pooled bound runs and the engine's tiles do not make the exact sums),
    False (the pooled bound) or True (the exact sums, on the tiles, while the pause runs).
    A running pause is counted down here, either way."""
    cp = prep.chunks
    if not _chunked(prep, n, out_hw) or cp.pooled is None:
        return None
    if not cp.pooled_skip[0]:
        return False
    cp.pooled_skip[0] -= 1
    return True if screen.fused(cp.plan) else None


def _pooled_from_engine(x, cp: screen.ChunkPlan, bias, requant, lv, out_hw, st, exact: bool):
    """A chunked layer of a single configuration by `screen.pooled_screen` (the pooled
    bound, or with `exact` the exact positive sums): every output screened (values and
    events those of the order-faithful walk); its `sequential_outputs` are the outputs the
    bound flags."""
    n, o = x.shape[0], cp.wl.shape[0]
    vals, flagged = screen.pooled_screen(x, cp, bias, lv, st, out_hw,
                                         _screen_shift(x, cp, bias, lv), exact)
    cp.flagged[0] = flagged * _CHUNKS_PAY > vals.size
    st.sequential_outputs = flagged
    return _output(vals, requant, st).reshape(n, *out_hw, o), st


def _shared_entry(share, x, prep, out_hw) -> _Shared:
    """The entry of an earlier configuration with this very input and a plan that serves this
    one (a plan with sign columns serves one without: its first columns are the same conv),
    or a new one."""
    if share is not None:
        for e in share.setdefault("conv", []):
            if _same_array(e.x, x) and (e.prep.signs or not prep.signs) and \
                    e.prep.zp_x == prep.zp_x and np.array_equal(e.prep.wq[:prep.q], prep.wq):
                return e
    cp = prep.chunks
    if _chunked(prep, x.shape[0], out_hw):  # the sign columns per chunk (the epilogue sums them)
        e = _Shared(x, prep, screen.chunked_result(int8_conv(x, cp.plan, out_hw), cp.plan, cp.nch),
                    nch=cp.nch)
        e.chunk_g[cp.size] = e.res.g
    else:
        e = _Shared(x, prep, int8_conv(x, prep, out_hw))
    if share is not None:
        share["conv"].append(e)
    return e


def _epilogue(e: _Shared, bias, requant, lv, pe_risk, acc_risk, n, pixels, wrap_bits=0):
    """One pass of the epilogue kernel over the engine's sums (or the pass a fused entry
    made, `_fused_risk_entry`): (output (M, O) requantized when `requant`, min and max of all
    accumulators, of the unflagged ones, `_flagged`); with a risk, the per-output bound bits
    (a fused pass: its flags) are stored in `e`."""
    if e.pending is not None:
        (out, mnmx, sums, e.flags, e.flag_rows), e.pending = e.pending, None
        return _epilogue_done(e, out, mnmx, sums, True, lv, pe_risk)
    o = e.prep.o
    risk = pe_risk or acc_risk
    rq, out, mnmx, sums = _epilogue_arrays(n, pixels, o, e.res.q, requant)
    need = np.empty((2, n * pixels, o) if risk else (2, 1, 1), np.uint8)
    K.gemm_epilogue_kernel(e.res.g, o, pixels, np.asarray(bias, np.int64), risk, pe_risk, lv,
                           requant is not None, rq.rec, out, need[0], need[1], mnmx, sums,
                           wrap_bits, e.nch)
    if risk:
        e.need_acc, e.need_pe = need[0], need[1]
        e.need_max = (int(need[0].max(initial=0)), int(need[1].max(initial=0)))
    return _epilogue_done(e, out, mnmx, sums, risk, lv, pe_risk)


def _epilogue_done(e: _Shared, out, mnmx, sums, risk, lv, pe_risk):
    """`_epilogue`'s result once its kernel has run (and, with `risk`, stored the bound bits
    or flags in `e`): the sums checked and the flagged outputs found."""
    mm = _checked_extremes(e.res, mnmx, sums, out.size)
    return out, mm, _flagged(e, lv, pe_risk) if risk else _NONE_FLAGGED


def _fused_risk_entry(x, prep: Int8Conv, bias, requant, lv, pe_risk, out_hw) -> _Shared:
    """A single configuration's entry for a layer with risk whose sums the engine consumes
    where it makes them (`int8_conv_fused` with flags; ``int8_fusable(prep, risk=True)``):
    its epilogue pass already made (`_epilogue` hands it on), no sums and no bound bits
    kept, only this configuration's flags."""
    n, o = x.shape[0], prep.o
    pixels = out_hw[0] * out_hw[1]
    rq, out, mnmx, sums = _epilogue_arrays(n, pixels, o, prep.q, requant)
    flags = np.empty((n * pixels, o), np.uint8)
    rows = np.empty(n * pixels, np.int32)
    res = int8_conv_fused(x, prep, out_hw, o, np.asarray(bias, np.int64), lv,
                          requant is not None, rq.rec, out, mnmx, sums, 0, pe_risk, flags, rows)
    return _Shared(x, prep, res, pending=(out, mnmx, sums, flags, rows))


def _epilogue_arrays(n: int, pixels: int, o: int, q: int, requant):
    """What an epilogue pass fills: (the requantization record or `_NO_RQ`, the output (M, O),
    per task extremes `mnmx` (N, B, 4) and column sums (N, B, q))."""
    rq = requant if requant is not None else _NO_RQ
    out = np.empty((n * pixels, o), rq.dtype if requant is not None else np.int64)
    nb = _blocks(n, pixels, _EPILOGUE_PIXELS)
    return rq, out, np.empty((n, nb, 4), np.int64), np.empty((n, nb, q), np.int64)


def _checked_extremes(res: Int8Result, mnmx: np.ndarray, sums: np.ndarray,
                      size: int) -> list[int]:
    """The epilogue's column sums checked against the engine's (`Int8Result.verify`), then
    [min, max] of all accumulators and of the unflagged ones from the per task extremes
    `mnmx` (N, B, 4); zeros for an empty output."""
    res.verify(sums.sum(axis=1))
    if not size:
        return [0, 0, 0, 0]
    ext = mnmx.reshape(-1, 4)
    lo, hi = ext[:, 0::2].min(axis=0), ext[:, 1::2].max(axis=0)
    return [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])]


def _fused_from_engine(x, prep: Int8Conv, bias, requant, lv, short, out_hw, st):
    """A layer none of whose outputs is walked (`short` None: no risk, the exact output;
    else wrapped once to `short` bits (0: not at all), events not counted) in one pass for a
    single configuration: the int8 engine's own kernels' sums consumed by the epilogue where
    they are made (`int8_engine.int8_conv_fused`), checked as usual, no sums kept (a sweep's
    configurations share the sums instead: `_shared_entry`)."""
    n, o = x.shape[0], prep.o
    ho, wo = out_hw
    rq, out, mnmx, sums = _epilogue_arrays(n, ho * wo, o, prep.q, requant)
    res = int8_conv_fused(x, prep, out_hw, o, np.asarray(bias, np.int64), lv,
                          requant is not None, rq.rec, out, mnmx, sums, short or 0)
    mm = _checked_extremes(res, mnmx, sums, out.size)
    st.nonzero_macs = res.nonzero_macs
    st.acc_min, st.acc_max = mm[0], mm[1]
    if short is not None:
        st.pe_overflows = st.acc_overflows = None
    return out.reshape(n, ho, wo, o), st


_NONE_FLAGGED = (np.zeros(0, np.int64), 0)


def _flag_mask(e: _Shared, lv, pe_risk, rows=slice(None)) -> np.ndarray:
    """(rows, O) bool: the outputs of `rows` whose bound leaves this NPU's widths."""
    if e.flags is not None:
        return e.flags[rows] != 0
    mask = e.need_acc[rows] > lv.acc_bits
    if pe_risk:
        mask |= e.need_pe[rows] > lv.pe_bits
    return mask


def _flagged_outputs(e: _Shared, lv, pe_risk, pix, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows m, channels) of the `count` flagged outputs in the rows `pix` (`_flagged`'s)."""
    if e.flags is not None:  # one pass over those rows' flags (`np.nonzero` made a mask first)
        at = np.empty(count, np.int64), np.empty(count, np.int64)
        if K.flagged_points_kernel(e.flags, pix, *at) != count:
            raise AssertionError("the flagged outputs' count disagrees with their flags")
        return at
    r, c = np.nonzero(_flag_mask(e, lv, pe_risk, pix))
    return pix[r], c


def _flagged(e: _Shared, lv, pe_risk) -> tuple[np.ndarray, int]:
    """(the rows m = (n, pixel) with an output whose bound leaves this NPU's widths, the
    number of such outputs)."""
    if e.flags is not None:  # counted per row by the kernel that flagged them
        if not e.flag_rows.any():
            return _NONE_FLAGGED
        pix = np.flatnonzero(e.flag_rows)
        return pix, int(e.flag_rows[pix].sum())
    if e.need_max[0] <= lv.acc_bits and (not pe_risk or e.need_max[1] <= lv.pe_bits):
        return _NONE_FLAGGED
    per = np.count_nonzero(_flag_mask(e, lv, pe_risk), axis=1)
    return np.flatnonzero(per), int(per.sum())


def _wrapped_from_engine(e: _Shared, bias, requant, lv, bits, n, out_hw, st):
    """`wrap_shortcut`'s layer from the int8 engine's sums: one epilogue pass wrapping every
    accumulator to `bits` (0: none) before requantization; events not counted."""
    ho, wo = out_hw
    key = (None if requant is None else requant.key(), "wrapped", bits)
    hit = e.exact.get(key)
    if hit is None:
        out, mm, _ = _epilogue(e, bias, requant, lv, False, False, n, ho * wo, bits)
        hit = e.exact[key] = (out.reshape(n, ho, wo, e.prep.o), mm[0], mm[1])
    out, st.acc_min, st.acc_max = hit
    st.nonzero_macs = e.res.nonzero_macs
    st.pe_overflows = st.acc_overflows = None
    return out, st


def _from_engine(e: _Shared, x, w, bias, stride, padding, groups, zp_x, out_hw, lv, pe_risk,
                 acc_risk, requant, st, cp=None):
    """Finish a layer from the int8 engine's sums: the exact output (requantization fused
    into the epilogue) where no output's bound leaves this NPU's widths; else the flagged
    outputs re-simulated order-faithfully (chunk screening with the `screen.ChunkPlan` `cp`
    where the batch fits it), requantized one by one and patched in."""
    n, o = x.shape[0], e.prep.o
    ho, wo = out_hw
    pixels = ho * wo
    st.nonzero_macs = e.res.nonzero_macs
    key = None if requant is None else requant.key()
    risk = pe_risk or acc_risk
    hit = e.exact.get(key)
    flat = _flagged(e, lv, pe_risk) if risk and e.need_acc is not None else _NONE_FLAGGED
    out = mm = None
    if hit is None or (risk and e.need_acc is None):
        out, mm, flat = _epilogue(e, bias, requant, lv, pe_risk, acc_risk, n, pixels)
        if not flat[1] and hit is None:
            # the very object is handed to every configuration that gets here, so the next
            # layers see identical inputs (`is`) and share in turn
            hit = e.exact[key] = (out.reshape(n, ho, wo, o), mm[0], mm[1])
    # many flagged outputs: chunk sums pay (made now if missing, up front for the next batch)
    many = flat[1] * _CHUNKS_PAY > n * pixels * o
    if cp is not None and risk:
        cp.flagged[0] = many
    if not flat[1]:  # the exact result, shared by every configuration that gets here
        out, st.acc_min, st.acc_max = hit
        return out, st
    pix, st.sequential_outputs = flat
    # the flagged outputs, or every output of their pixels (the others equal their exact
    # sums, events none)
    at = None
    gc = None if cp is None else e.chunk_g.get(cp.size)
    if cp is not None and screen.fits(cp, n, pixels) and (gc is not None or many):
        if gc is None:  # an entry made without chunks (a quiet last batch, another config)
            gc = e.chunk_g[cp.size] = screen.chunk_sums(x, cp, out_hw)
        vals = screen.screened_pixels(x, cp, gc, bias, lv, pix, st, out_hw, None,
                                      _screen_shift(x, cp, bias, lv))[0]
    elif flat[1] * _ONE_BY_ONE <= len(pix) * o:  # a few per pixel: walked alone
        at = _flagged_outputs(e, lv, pe_risk, pix, flat[1])
        vals = _walk_points(x, w, bias, stride, padding, groups, zp_x, lv, *at, st, out_hw,
                            e.prep.point_w)
    else:
        vals = _simulate_pixels(x, w, bias, stride, padding, groups, zp_x, lv, pix, st, out_hw)
        if e.flags is not None and len(pix) >= _WALK_ALL * n * pixels:
            e.prep.walk_all[0] = _WALK_ALL_RUN  # a single configuration's: see `_walked_layer`
    if not (st.pe_overflows or st.acc_overflows):
        # no addition wrapped or saturated: the flagged outputs are the exact ones, so the
        # whole output is the exact output (shared, as above)
        if hit is None:
            hit = e.exact[key] = (out.reshape(n, ho, wo, o), mm[0], mm[1])
        out, st.acc_min, st.acc_max = hit
        return out, st
    if out is None:  # the unflagged outputs' range at these widths: one epilogue pass
        out, mm, _ = _epilogue(e, bias, requant, lv, pe_risk, acc_risk, n, pixels)
    if at is not None:  # the flagged outputs alone
        out.reshape(-1, o)[at] = vals if requant is None else requant.apply_points(vals, at[1])
        _acc_range(vals, st)
    else:  # every output of the flagged pixels
        out.reshape(-1, o)[pix] = _output(vals, requant, st)
    st.acc_min, st.acc_max = min(mm[2], st.acc_min), max(mm[3], st.acc_max)
    return out.reshape(n, ho, wo, o), st


# A single configuration's layer without chunk sums whose call walked at least this share of
# its pixels whole walks every pixel in its next `_WALK_ALL_RUN` calls (`_walked_layer`),
# without the engine's conv that only found what to walk (ResNet-18's 3-channel stem at 16
# bits and narrower: every pixel flagged, the conv 22 ms of its 58 ms per 2 images)
_WALK_ALL = 0.9
_WALK_ALL_RUN = 16


def _walked_layer(x, w, bias, stride, padding, groups, zp_x, prep: Int8Conv, lv, requant,
                  out_hw, st):
    """Every output of a layer at risk simulated order-faithfully (`_simulate_pixels`), with
    no bound first: its values, events and extremes are those of the engine's path (an
    output no bound flags has its exact sum and no event), its `sequential_outputs` all of
    them; the non-zero product count from the engine's window counts."""
    n, o = x.shape[0], w.shape[0]
    ho, wo = out_hw
    st.nonzero_macs = window_nonzero(np.ascontiguousarray(x), prep, out_hw)
    vals = _simulate_pixels(x, w, bias, stride, padding, groups, zp_x, lv,
                            np.arange(n * ho * wo), st, out_hw)
    st.sequential_outputs = vals.size
    return _output(vals, requant, st).reshape(n, ho, wo, o), st


_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min
_NO_RQ = Requant.of(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), False,
                    0, 32, 0, 0, 0)


def _pad(x: np.ndarray, padding: int, value: int) -> np.ndarray:
    if not padding:
        return np.ascontiguousarray(x, dtype=np.int64)
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * padding, w + 2 * padding), value, np.int64)
    out[:, :, padding:padding + h, padding:padding + w] = x
    return out


def _nonzero_macs(x: np.ndarray, zp_x: int, w: np.ndarray, stride: int, padding: int,
                  groups: int, out_hw: tuple[int, int]) -> int:
    """Products with both operands non-zero: for each weight position (c, i, j), the count of
    non-zero inputs (``x != zp_x``) it meets over all outputs times its count of non-zero
    weights."""
    o, cg, kh, kw = w.shape
    ho, wo = out_hw
    og = o // groups
    ind = np.empty(x.shape[1:], np.int64)  # (C, H, W): non-zero inputs over the batch
    K.nonzero_count_kernel(np.ascontiguousarray(x), zp_x, ind)
    if padding:
        ind = np.pad(ind, ((0, 0), (padding, padding), (padding, padding)))
    wnz = (w != 0).reshape(groups, og, cg, kh, kw).sum(axis=1)  # (groups, cg, kh, kw)
    total = 0
    for i in range(kh):
        for j in range(kw):
            cnt = ind[:, i:i + stride * (ho - 1) + 1:stride,
                      j:j + stride * (wo - 1) + 1:stride].sum(axis=(1, 2))  # (C,)
            total += int((cnt.reshape(groups, cg) * wnz[:, :, i, j]).sum())
    return total


def _resimulate_at_risk(f: _FloatShared, w, bias, stride, padding, groups, zp_x, lv, pe_risk,
                        acc, st, engine: Engine, int8: bool):
    """Find outputs whose positive/negative product sums could leave a level's range and
    run the order-faithful kernel on exactly those (patched into `acc`)."""
    o = w.shape[0]
    if f.sign_sums is None:
        xp, xn = np.maximum(f.xs, 0), np.maximum(-f.xs, 0)
        wp, wn = np.maximum(w, 0), np.maximum(-w, 0)

        def conv(a, b):
            return engine.exact_conv(a, b, stride, padding, groups, f.bound, int8=int8)

        pos = conv(xp, wp)
        neg = conv(xp, wn)
        if xn.any():
            pos += conv(xn, wn)
            neg += conv(xn, wp)
        f.sign_sums = (pos, neg)
    pos, neg = f.sign_sums
    b = bias.reshape(1, o, 1, 1)
    risky = ~_fits(b - neg, b + pos, lv.acc_bits)
    if pe_risk:
        risky |= ~_fits(-neg, pos, lv.pe_bits)
    points = np.argwhere(risky.transpose(0, 2, 3, 1))  # pixel by pixel: (n, oy, ox, o)
    st.sequential_outputs = len(points)
    if len(points):
        ho, wo = acc.shape[2:]
        b, oy, ox, oc = points.T
        acc[b, oc, oy, ox] = _simulate_points(f.x, w, bias, stride, padding, groups, zp_x, lv,
                                              (b * ho + oy) * wo + ox, oc, st, (ho, wo))


_LANE_LIMIT = 1 << 30  # every addend and held value of the int32 walk stays below this


def _walk_lanes(x: np.ndarray, w: np.ndarray, bias: np.ndarray, zp_x: int, lv: LevelSpec,
                wmax: int | None = None):
    """The lanes the walk of this layer takes, or None where neither holds it. int16
    (`kernels.walk16_kernel`, in registers): wrap/saturate levels of at most 16 bits (pe no
    wider than acc), every product and input fitting the narrowest level's scaled lane; int32: a
    wrapping or saturating level at most 30 bits, an exact level bounded by its worst case
    (|bias| + k * max|product|) below 2^30 (`kernels.conv_walk_kernel`). `wmax`: max |w| where
    known."""
    k = int(np.prod(w.shape[1:]))
    xmax = max(abs(int(x.min(initial=0)) - zp_x), abs(int(x.max(initial=0)) - zp_x))
    pmax = xmax * (int(np.abs(w).max(initial=0)) if wmax is None else wmax)
    bmax = int(np.abs(bias).max(initial=0))
    ws = lv.order != K.OS
    widths = (lv.pe_bits, lv.acc_bits) if ws else (lv.acc_bits,)
    modes = (lv.pe_mode, lv.acc_mode) if ws else (lv.acc_mode,)
    if K.EXACT not in modes and max(widths) <= 16 and widths[0] <= widths[-1] and \
            k < (1 << 15) - 1 and xmax < (1 << 15) and pmax < (1 << (widths[0] - 1)):
        return np.int16

    def ok(bits: int, mode: int, worst: int) -> bool:
        return bits <= 30 if mode != K.EXACT else worst < _LANE_LIMIT

    fits = pmax < _LANE_LIMIT and ok(lv.acc_bits, lv.acc_mode, bmax + k * pmax)
    if ws:
        fits = fits and ok(lv.pe_bits, lv.pe_mode, min(lv.rows, k) * pmax)
    return np.int32 if fits else None


def _simulate_points(x, w, bias, stride, padding, groups, zp_x, lv, m, oc, st,
                     out_hw) -> np.ndarray:
    """Order-faithful accumulators of the outputs at output pixels `m` (flat (n, oy, ox),
    non-decreasing) and channels `oc` of channels-last `x`, events counted into `st`: every
    output channel of each such pixel is simulated (`_simulate_pixels`); the channels not
    asked for cannot overflow (their bound fits both levels), so the pixel's event counts are
    those of the outputs asked for."""
    m = np.asarray(m, np.int64)
    new = np.empty(len(m), bool)
    new[:1] = True
    np.not_equal(m[1:], m[:-1], out=new[1:])
    row = np.cumsum(new) - 1  # the row of each output's pixel in `pix`
    got = _simulate_pixels(x, w, bias, stride, padding, groups, zp_x, lv, m[new], st, out_hw)
    return got[row, np.asarray(oc, np.int64)]


def _simulate_pixels(x, w, bias, stride, padding, groups, zp_x, lv, pix, st,
                     out_hw) -> np.ndarray:
    """Order-faithful accumulators (len(pix), O) (int64; int16 from int16 lanes, whose levels
    are 16 bits at most) of every output channel of the output pixels
    `pix` (flat (n, oy, ox)) of channels-last `x`, events counted into `st`, vectorized across
    channels (`_walk_lanes`: `kernels.walk16_kernel` or `kernels.conv_walk_kernel`); layers
    whose sums fit neither's lanes take the one-output-at-a-time kernel."""
    ho, wo = out_hw
    pix = np.asarray(pix, np.int64)
    o, cg, kh, kw = w.shape
    lanes = _walk_lanes(x, w, bias, zp_x, lv)
    if lanes is None:
        return _walk_points(x, w, bias, stride, padding, groups, zp_x, lv, np.repeat(pix, o),
                            np.tile(np.arange(o), len(pix)), st, out_hw).reshape(len(pix), o)
    wt = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    # int16 lanes hold levels of at most 16 bits, so their values fit int16 (a quarter of
    # the memory to write and read back)
    got = np.empty((len(pix), o), lanes if lanes is np.int16 else np.int64)
    events = np.zeros((len(pix), 2), np.int64)
    x = np.ascontiguousarray(x)
    if lanes is np.int16:  # scaled to the top of the lane, in registers (`lanes16`)
        _walk16(x, lanes16.lane_weights(wt, _lane_shift(lv)), bias, kh, kw, stride, padding,
                zp_x, lv, pix, out_hw, got, events)
    else:
        K.conv_walk_kernel(x, np.ascontiguousarray(wt, dtype=lanes), np.asarray(bias, np.int64),
                           kh, kw, stride, padding, zp_x, lv, pix, ho, wo, got, events)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    return got


def _screen_shift(x: np.ndarray, cp: screen.ChunkPlan, bias, lv: LevelSpec) -> int | None:
    """`screen.screened_pixels`' `shift`: the lanes' scale where this layer's levels fit
    int16 lanes (the register walk), else None."""
    return _lane_shift(lv) if _walk_lanes(x, cp.wl, bias, cp.plan.zp_x, lv,
                                           cp.wmax) is np.int16 else None


def _lane_shift(lv: LevelSpec) -> int:
    """How far int16 lanes scale this layer's values: to the top of the narrower level."""
    return 16 - (lv.pe_bits if lv.order != K.OS else lv.acc_bits)


def _walk16(x, wt, bias, kh, kw, stride, padding, zp_x, lv, pix, out_hw, got, events,
            direct: bool | None = None):
    """`kernels.walk16_kernel` on the pixels `pix`, `wt` (G, K, og64) from
    `lanes16.lane_weights`; the inputs straight from a padded int16 copy (`direct`; None:
    where the walked pixels' patches hold at least as many values as the input), else each
    pixel's patch."""
    g, k, _ = wt.shape
    n, h, w, c = x.shape
    if direct is None:
        direct = len(pix) * k * g >= x.size
    if direct:
        xp = np.empty((n, h + 2 * padding, w + 2 * padding, c), np.int16)
        K.pad16_kernel(x, zp_x, padding, xp)
        i, j, cc = np.ix_(np.arange(kh), np.arange(kw), np.arange(c // g))
        corner = ((i * xp.shape[2] + j) * c + cc).transpose(2, 0, 1).reshape(-1)  # k: (c, i, j)
        koff = corner[None, :] + (np.arange(g) * (c // g))[:, None]
    else:
        xp, koff = _NO_COPY, np.arange(k, dtype=np.int64)[None, :]
    K.walk16_kernel(x, xp, np.ascontiguousarray(koff, np.int64), wt, np.asarray(bias, np.int64),
                    kh, kw, stride, padding, zp_x, lv, pix, *out_hw, got, events)


_NO_COPY = np.zeros((0, 1, 1, 1), np.int16)  # `_walk16` without the padded copy
#: products per chunk of `_walk_points`' screen (ResNet-18 224 at 16 bits, its few flagged
#: outputs of 1,152 products: reports/BENCHMARKS.md, round 23)
_POINT_CHUNK = 64


def _walk_points(x, w, bias, stride, padding, groups, zp_x, lv, m, oc, st,
                 out_hw, memo: list | None = None) -> np.ndarray:
    """Order-faithful accumulators of the outputs at output pixels `m` (flat (n, oy, ox)) and
    channels `oc` of channels-last `x`, one by one, each screened in chunks of whole input
    channels, about `_POINT_CHUNK` products (`kernels.points_screen_kernel`: a chunk that
    cannot overflow is added at once), their events counted into `st`; `memo`
    (`Int8Conv.point_w`) keeps the kernel's weights between calls."""
    ho, wo = out_hw
    b, p = np.divmod(np.asarray(m, np.int64), ho * wo)
    points = np.stack([b, np.asarray(oc, np.int64), p // wo, p % wo], axis=1)
    got = np.empty(len(points), np.int64)
    events = np.zeros((len(points), 2), np.int64)
    o, cg, kh, kw = w.shape
    khw = kh * kw
    unit = 1 if lv.order == K.OS else lv.rows // math.gcd(lv.rows, khw)  # whole pe chunks
    gch = unit * max(1, _POINT_CHUNK // (unit * khw))
    key = (x.dtype, zp_x)
    if memo is None or memo[0] is None or memo[0][0] != key:
        # int32 lanes where every per-channel sum (kh * kw products) fits them
        info = np.iinfo(x.dtype)
        xmax = max(abs(int(info.min) - zp_x), abs(int(info.max) - zp_x))
        wide = xmax * int(np.abs(w).max(initial=0)) * khw >= 1 << 31
        made = (key, np.ascontiguousarray(w.reshape(o, cg, khw).transpose(0, 2, 1),
                                          np.int64 if wide else np.int32))
        if memo is None:
            memo = [made]
        else:
            memo[0] = made
    wt = memo[0][1]
    K.points_screen_kernel(np.ascontiguousarray(x), wt, bias, kh, kw, stride, padding, zp_x,
                           groups, lv, points, gch, got, events)
    st.pe_overflows = int(events[:, 0].sum())
    st.acc_overflows = int(events[:, 1].sum())
    return got
