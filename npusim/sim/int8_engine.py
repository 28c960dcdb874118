"""Exact integer convolution on the CPU's int8 dot-product units (the engine's own tiles, or
oneDNN through torch).

oneDNN's quantized convolution (``torch.ops.onednn.qconv2d_pointwise``, the kernel PyTorch's
x86 backend runs) multiplies uint8 activations by int8 weights and accumulates in int32. On
a CPU with VNNI (``vpdpbusd``) or AMX that accumulation is exact by construction: there is no
16-bit intermediate to saturate, unlike AVX2's ``vpmaddubsw`` (pytorch#44939). Asked for a
float32 output with every scale 1 and no bias, it returns ``float32(acc)``, which is exact
while ``|acc| < 2^24``. So when the inputs (shifted by one constant) fit uint8, the weights
fit int8 and the weights' L1 bound proves every sum below 2^24, this engine computes the exact
sums of a conv at the speed of a production int8 kernel, with no im2col and in the
simulator's channels-last layout. Where the bound reaches 2^24 (below 2^31), the conv runs as
convs over contiguous ranges of input channels, each below 2^24, their sums added in int32
(`Int8Conv.parts`).

Wherever numba compiles for a CPU with AVX-512 VNNI or AVX2, the convs run on the engine's
own kernel instead (`npusim.sim.int8_tiles`: ``vpdpbusd``, or on AVX2 ``vpmaddwd`` on inputs
and weights widened to int16, through an LLVM intrinsic in numba, exact in int32, its sums
returned as float32 like oneDNN's): on VNNI as fast as oneDNN at batch 64 and without its
per-call cost (~100 us) at batch 1, on AVX2 about as fast as fbgemm and without the weight
split below. Other processes keep oneDNN (`_pack` chooses); every check below applies to
both.

Where oneDNN runs on a CPU without VNNI (AVX2, AVX-512 without VNNI) it multiplies with
``vpmaddubsw``, which saturates the sum of two adjacent u8 x s8 products to int16, so there the
engine keeps every such pair below 2^15: weights with ``2 * u_max * |w| <= 32767`` go in as
they are, others split as ``w = 64 * hi + lo`` (``lo`` in [-32, 31], ``hi`` in [-2, 2]: two
column blocks of one conv, recombined exactly in float32). Depthwise convs (kh*kw products
per output) are computed by the engine's own kernel instead (`kernels.depthwise_sums_kernel`,
exact int32 sums in SIMD lanes across channels): with the split they are not depthwise for
oneDNN any more, and its grouped path ran ~100x slower.

Trust, in three layers: the engine is used only with its own tiles, or oneDNN on a CPU
that reports VNNI/AMX (or AVX2, within the pair bound), after a self-test on random and
extreme operands (the all-255 x 127 patterns that break saturating paths) over strides,
padding, zero points and groups; and every call is verified, (1) the sums of every output
column over the batch (images weighted 1..4), projected by two fixed vectors of random odd
int64 multipliers modulo 2^64 (`ColumnCheck`), against the same projections of the exact
sums, computed from the inputs' window sums (per weight position, exact int64;
`kernels.window_sums_kernel`) and the weights' projections, made once per plan
(`weights_projection`): a wrong value in one column always changes both projections (its
multipliers are odd); wrong values in several columns, all multiples of 2^v and no higher
power, cancel in one projection for at most a 2^(v-63) share of the multipliers (in both,
its square), and a fault does not know the multipliers; a call costs one product per
weight position and input channel, where checking each column against the window sums cost
one per weight (ResNet-18 224 at 2 images: 3 of 37 ms); and (2) a spot check of a few
output pixels (different ones each call), all columns, recomputed in int64, which catches
misplaced values (a permutation keeps the sums). A failed check raises `InexactError`; the
caller (`npusim.sim.engines`, the one place that chooses engines) recomputes the layer with
the float engine. torch is imported lazily and is optional."""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass, field

import numba
import numpy as np

from npusim.sim import int8_tiles
from npusim.sim import kernels as K
from npusim.sim.exact_conv import F32_EXACT, InexactError
from npusim.sim.threads import ELEM_WORK, parallel

log = logging.getLogger(__name__)

_CALLS = itertools.count(1)  # spot-check calls in this process (picks different pixels)
_SPOT_PIXELS = 4  # output pixels recomputed in int64 per call (a misplacement moves most)
_SPOT_MACS = 1 << 18  # products per spot check: deep layers check a subset of the columns
_SPOT_SHARE = 32  # and at most 1/32 of the conv's own products (scalar int64 products cost
# ~30x the engine's: at batch 1 the full budget took longer than the conv)
#: products per spot check of the engine's own kernels (`int8_tiles`, the depthwise kernel):
#: code of this repository, exact by construction and tested against int64 references, so the
#: check only has to see a systematic misplacement (the column sums still check every value).
#: ResNet-20 W8A8 on VNNI, spot checks per run: 0.47 -> 0.12 ms at batch 1 (a run: ~3.5 ms),
#: 0.96 -> 0.17 ms at batch 64 (~34 ms)
_SPOT_OWN = 1 << 12
_PAIR_MAX = 2 ** 15 - 1  # vpmaddubsw: two adjacent u8 x s8 products summed, saturated to int16
_RADIX = 64  # weight split on pair-saturating CPUs: 2 * 255 * 32 <= _PAIR_MAX
#: output pixels per side of a block sharing one bound on the positive product sums
#: (`Int8Conv.bound`; reports/risk_bounds.md: 2 x 2 blocks cleared every pixel of
#: ResNet-20's 16-channel layers at 16 bits, 3 x 3 not, at a quarter of the conv's cost)
BOUND_G = 2
#: where the bound leaves more than this share of the pixels' positive sums to compute, the
#: next `_BOUND_RETRY` calls of the plan run without it (reports/BENCHMARKS.md, round 17:
#: break-even at ~1/3 on ResNet-20's 64-channel layers)
_BOUND_SHARE = 0.5
_BOUND_RETRY = 16
#: the bound's fixed costs (a second conv call, its checks, the pooling) pay only on calls
#: with this many positive-sum products or more (ResNet-20 W8A8 at 16-bit wrap on AVX2,
#: reports/BENCHMARKS.md round 17: batch 64 (115 M per layer) 7% faster, batches 8-32
#: (14-58 M) even, batch 1 (1.8 M) 30% slower with it); on AVX-512 VNNI never: there
#: ``vpdpbusd`` makes the positive sums half as dear per product, and the bound's passes
#: cost more than they save even where it clears every pixel (round 20, a Xeon with VNNI:
#: ResNet-20's 16-channel layers 1.5 -> 2.0 ms each with it, the b64 run 28 -> 37 ms).
#: None: no plan gets a bound, and sign columns pack as one conv (`int8_tiles.pack`)
_BOUND_MACS: int | None = 1 << 26 if int8_tiles.ISA == "avx2" else None


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return []


_EXACT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def _cpu_has_exact_int8() -> bool:
    """VNNI or AMX: int8 dot products accumulate in int32 with no saturating intermediate."""
    return any(f in _cpu_flags() for f in _EXACT_FLAGS)


def _cpu_int8_kind() -> str | None:
    """"exact" (the engine's own tiles, `int8_tiles`, on AVX-512 VNNI or AVX2, or oneDNN on
    VNNI/AMX), "pairs" (oneDNN on AVX2 without VNNI, where numba does not compile for the
    host: exact while each pair of adjacent products fits int16) or None (no int8 path)."""
    if int8_tiles.available():
        return "exact"
    flags = _cpu_flags()
    if any(f in flags for f in _EXACT_FLAGS):
        return "exact"
    return "pairs" if "avx2" in flags else None


@dataclass(frozen=True)
class Int8Support:
    """What the int8 engine can do in this process: `kind` "exact" (VNNI/AMX) or "pairs"
    (AVX2, pairs of products kept below 2^15), None when unusable, with the `reason`; `cpu`:
    the CPU has an int8 path (so an unusable engine means a broken op or failed self-test)."""

    kind: str | None
    reason: str = ""
    cpu: bool = True

    @property
    def ok(self) -> bool:
        """The engine is usable."""
        return self.kind is not None


def _probe() -> Int8Support:
    """Probe the int8 engine (uncached; see `probe`)."""
    kind = _cpu_int8_kind()
    if kind is None:
        return Int8Support(None, "the CPU reports no AVX2/VNNI/AMX", cpu=False)
    try:
        ok = _self_test(127 if kind == "exact" else _RADIX)
    except Exception as e:  # no torch, or no oneDNN quantized conv in this build
        return Int8Support(None, f"torch.ops.onednn.qconv2d_pointwise unusable "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if not ok:
        return Int8Support(None, "oneDNN's int8 conv failed its exactness self-test")
    return Int8Support(kind)


#: The int8 engine's support in this process: the CPU's int8 path, then a self-test of
#: oneDNN's conv on random and extreme operands (run once per process, then cached).
probe = functools.cache(_probe)


@dataclass(frozen=True)
class Int8Conv:
    """A conv's weights prepared for the engine.

    Output columns (q of them): the O weights' outputs, then (with `signs`) the O sums of the
    positive products (inputs are ``>= zp_x`` then, so the negative products sum to
    ``positive - output``). Inputs enter as ``x - sub`` in uint8 with
    zero point ``zp_x - sub`` (padding reads the zero point). With `radix` the packed conv has
    2q columns, ``wq = radix * hi + lo``, recombined before anything reads the sums.
    """

    packed: object  # the prepacked oneDNN weight (torch tensor)
    wq: np.ndarray  # (q, C/groups, kh, kw) int64: the weights of every output column
    o: int
    sub: int
    zp_x: int
    kh: int
    kw: int
    stride: int
    padding: int
    groups: int
    signs: bool
    wnz: np.ndarray  # (C, kh, kw) int64: non-zero weights each input position meets
    radix: int = 0  # 0: wq packed as it is; else the hi/lo split
    #: wq as (q, kh, kw, C/groups) int8 (`prepare_int8_conv` admits int8 weights only),
    #: channels innermost like the inputs (the checks' loops)
    wq_hwc: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wq_hwc",
                           np.ascontiguousarray(self.wq.transpose(0, 2, 3, 1), np.int8))
    subsample: int = 1  # > 1: a 1x1 conv run at stride 1 on x[:, ::stride, ::stride]
    #: with `signs`: the chunked plan (`npusim.sim.screen.ChunkPlan`) that computes the same
    #: columns per chunk of input channels, for chunk screening; None: not screened
    chunks: object = None
    #: a depthwise conv computed by the engine's own kernel (`kernels.depthwise_sums_kernel`,
    #: exact int32 sums) instead of oneDNN: its weights as (kh, kw, C) int32; None: oneDNN
    dw: np.ndarray | None = None
    #: a conv whose sums may reach 2^24 (float32's exact range) as the sum of convs over
    #: ranges of input channels, each below 2^24: ((c0, c1, plan), ...), summed in int32
    parts: tuple = ()
    #: with `signs`, on the engine's own tiles, where `_BOUND_MACS` is set: the plan of the
    #: conv of max(w, 0) over the input max-pooled across `BOUND_G` x `BOUND_G` output
    #: pixels' patches (stride `BOUND_G` * stride, no padding), an upper bound on their
    #: positive product sums (`int8_conv_fused`); None: none
    bound: object = None
    #: calls of `int8_conv_fused` with risk left to run without `bound` (it computed the
    #: positive sums of most pixels anyway the last time: `_BOUND_SHARE`)
    bound_skip: list = field(default_factory=lambda: [0], repr=False, compare=False)
    #: calls of a single configuration at risk left to walk every output pixel without the
    #: engine (`accumulate._walked_layer`): its last call flagged nearly every pixel
    walk_all: list = field(default_factory=lambda: [0], repr=False, compare=False)
    #: `accumulate._walk_points`' weights for this layer, made on its first call: [(input
    #: dtype, zero point, weights)] (the layer's few flagged outputs, each call)
    point_w: list = field(default_factory=lambda: [None], repr=False, compare=False)
    #: the check's weight side per projection (`weights_projection`), made once
    proj: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def q(self) -> int:
        return self.wq.shape[0]

    @property
    def own_kernel(self) -> bool:
        """The sums come from the engine's own kernels (`int8_tiles`, the depthwise kernel),
        not oneDNN."""
        return self.dw is not None or isinstance(self.packed, int8_tiles.TileWeights)


def prepare_int8_conv(w: np.ndarray, stride: int, padding: int, groups: int, zp_x: int,
                      lo: int, hi: int, signs: bool = False,
                      kind: str = "exact") -> Int8Conv | None:
    """Prepare `w` (O, C/groups, kh, kw) for raw inputs in [lo, hi] with zero point zp_x on a
    CPU whose int8 path is `kind` (`probe().kind`), or None when the engine cannot prove the
    conv exact. Does not check that the engine is usable (`npusim.sim.engines` does).

    `signs` adds the positive product sums (needs ``x - zp_x >= 0``, groups == 1)."""
    w = np.asarray(w, np.int64)
    if w.size == 0 or w.min() < -128 or w.max() > 127:
        return None
    sub = min(lo, zp_x)
    if max(hi, zp_x) - sub > 255:
        return None
    # oneDNN returned garbage for outputs that lie wholly in the padding (padding >= kernel,
    # found by the spot check); such layers take the float engine
    if padding and padding >= min(w.shape[2], w.shape[3]):
        return None
    if signs and (lo < zp_x or groups > 1):
        return None
    o = w.shape[0]
    xmax = max(hi - zp_x, zp_x - lo)
    if xmax * int(np.abs(w.reshape(o, -1)).sum(axis=1).max()) >= F32_EXACT:
        return _split_channels(w, stride, padding, groups, zp_x, lo, hi, signs, kind, xmax)
    cg = w.shape[1]
    wnz = (w != 0).reshape(groups, o // groups, cg, *w.shape[2:]).sum(axis=1)
    wnz = wnz.reshape(groups * cg, *w.shape[2:]).astype(np.int64)
    if groups > 1 and cg == 1 and o == groups:
        # depthwise: kh*kw products per output, where oneDNN's grouped conv is slow (with the
        # weight split below it is not depthwise any more: ~100x slower), so the engine's own
        # kernel computes the sums, exactly in int32 (|sum| < 2^24 by the bound above)
        return Int8Conv(None, w, o, sub, zp_x, w.shape[2], w.shape[3], stride, padding, groups,
                        False, wnz, dw=np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), np.int32))
    # on AVX2 (no VNNI) oneDNN's strided 1x1 conv (it gathers the strided input into a
    # scratch buffer) gave wrong sums with 2 threads, at random batch sizes (found by the
    # column-sum check on an AMD EPYC): there the input is subsampled first and the conv
    # runs at stride 1 (a 1x1 conv reaches the engine only without padding)
    subsample = stride if (kind == "pairs" and stride > 1
                           and w.shape[2] == w.shape[3] == 1) else 1
    wq = np.concatenate([w, np.maximum(w, 0)]) if signs else w
    packed, radix = wq, 0
    u_max = max(hi, zp_x) - sub  # the largest uint8 value the conv multiplies (padding: zp)
    if kind == "pairs" and 2 * u_max * int(np.abs(wq).max()) > _PAIR_MAX:
        radix = _RADIX
        hi_part = np.floor_divide(wq + radix // 2, radix)  # lo = wq - radix * hi in [-32, 31]
        # per group, its hi columns then its lo columns (the layout `_combine` reads back)
        split = np.stack([hi_part, wq - radix * hi_part]).reshape(2, groups, -1, *wq.shape[1:])
        packed = split.transpose(1, 0, *range(2, split.ndim)).reshape(-1, *wq.shape[1:])
        if xmax * int(np.abs(packed).reshape(len(packed), -1).sum(axis=1).max()) >= F32_EXACT:
            return None
    bounded = signs and not radix and _BOUND_MACS is not None
    tiles = _pack(packed, zp_x - sub, stride // subsample, padding, groups, bounded)
    bound = None
    if bounded and isinstance(tiles, int8_tiles.TileWeights) and \
            int8_tiles.risk_fusable(tiles, o):
        bound = prepare_int8_conv(np.maximum(w, 0), BOUND_G * stride, 0, 1, zp_x - sub,
                                  lo - sub, hi - sub, kind=kind)
    return Int8Conv(tiles, wq, o, sub, zp_x, w.shape[2], w.shape[3], stride, padding, groups,
                    signs, wnz, radix, subsample, bound=bound)


def _pack(wq: np.ndarray, zp_u8: int, stride: int, padding: int, groups: int,
          halves: bool = False):
    """The weights for `_run`: packed for the engine's own tiles (`int8_tiles`, where they
    run; with `halves`, sign columns in blocks within each half), else prepacked for
    oneDNN."""
    if int8_tiles.available():
        return int8_tiles.pack(wq, groups, halves=halves)
    import torch

    return torch.ops.onednn.qconv_prepack(
        torch.from_numpy(np.ascontiguousarray(wq, np.int8)), torch.ones(wq.shape[0]), 1.0,
        zp_u8, [stride, stride], [padding, padding], [1, 1], groups, None)


def _run(xu: np.ndarray, zp_u8: int, packed, q: int, stride: int, padding: int,
         groups: int, sums: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The conv of uint8 NHWC `xu` (zero point zp_u8) by the engine's VNNI kernel or oneDNN
    (as `_pack` chose): (float32 (N, Ho, Wo, q); with `sums`, where the engine's own kernel
    runs, its column sums per image (N, q) int64, made as it wrote them, else None)."""
    if isinstance(packed, int8_tiles.TileWeights):
        if sums:
            return int8_tiles.conv(xu, zp_u8, packed, stride, padding, sums=True)
        return int8_tiles.conv(xu, zp_u8, packed, stride, padding), None
    import torch

    tx = torch.from_numpy(np.ascontiguousarray(xu)).permute(0, 3, 1, 2)  # NCHW view, NHWC data
    y = torch.ops.onednn.qconv2d_pointwise(
        tx, 1.0, zp_u8, packed, *_unit_scales(q), None,
        [stride] * 2, [padding] * 2, [1, 1], groups, 1.0, 0, torch.float32, "none", [], "")
    y = y.permute(0, 2, 3, 1)
    return (y if y.is_contiguous() else y.contiguous()).numpy(), None


@functools.lru_cache(maxsize=64)
def _unit_scales(q: int):
    """Weight scales 1 and zero points 0 for q columns (read only by oneDNN)."""
    import torch

    return torch.ones(q), torch.zeros(q, dtype=torch.int64)


#: independent random projections of a call's column sums that its check compares
#: (`ColumnCheck`)
_PROJECTIONS = 2


@functools.lru_cache(maxsize=None)
def projection(q: int) -> np.ndarray:
    """(`_PROJECTIONS`, q) int64: the check's fixed odd multipliers of q columns (seeded by q,
    read only; odd, so a wrong value in one column always changes a projection)."""
    rng = np.random.default_rng([0x5EED, q])
    r = rng.integers(-(1 << 62), 1 << 62, (_PROJECTIONS, q), dtype=np.int64) * 2 + 1
    r.flags.writeable = False
    return r


@dataclass(frozen=True)
class ColumnCheck:
    """The check of a result's q columns: their image-weighted sums over the batch (images
    weighted ``1 + n % 4``) projected by `r` (P, q) int64 must equal `e` (P,) int64, the same
    projections of the exact sums, computed from the inputs' window sums and the weights
    (`own_check`); both modulo 2^64 (int64 arithmetic wraps)."""

    r: np.ndarray
    e: np.ndarray

    def verify(self, sums: np.ndarray) -> None:
        """Raise InexactError unless `sums` (N, q), the column sums per image, project to `e`."""
        if not np.array_equal(self.r @ (_image_weights(len(sums)) @ sums), self.e):
            raise InexactError("int8 engine: output sums disagree with the input window sums")


@dataclass
class Int8Result:
    """The engine's raw sums: ``g`` (N*Ho*Wo, q) float32 (exact integers; int32 for a plan
    split over input channels, whose sums may pass 2^24), the check their column sums must
    pass (`verify`), and the number of products with both operands non-zero."""

    g: np.ndarray | None  # None: consumed where it was made (`int8_conv_fused`)
    check: ColumnCheck
    nonzero_macs: int
    #: (N, q) int64: the column sums of `g` per image where the conv made them as it wrote
    #: `g` (`int8_conv` with `sums`, the engine's own tiles), else None
    sums: np.ndarray | None = None
    #: (1, kh, kw, C) int64: the inputs' image-weighted window sums (`_window_sums`), from
    #: which other checks of these sums are made (`screen.chunked_result`)
    window: np.ndarray | None = None

    @property
    def q(self) -> int:
        """The columns the check covers."""
        return self.check.r.shape[1]

    def verify(self, sums: np.ndarray) -> None:
        """Raise InexactError unless `sums` (N, q), the column sums of `g` per image, match."""
        self.check.verify(sums)


def weights_projection(plan: "Int8Conv", key: str, r: np.ndarray) -> np.ndarray:
    """(P, kh, kw, C) int64 ``u``: per weight position and input channel, the sum over the
    columns reading it of ``r[p, column] * weight`` (modulo 2^64), so that `r` projects a
    call's exact column sums to ``sum(u * window sums)``; made once per plan and `key` (`r`
    is a fixed function of the plan and key). Per group, one float64 product of `r`'s four
    16-bit limbs by the weights (exact: every sum below 2^16 * 128 * 2^20 < 2^53 for up to
    2^20 columns a group), the limbs' sums then shifted into place in int64 (wrapping)."""
    u = plan.proj.get(key)
    if u is None:
        q, kh, kw, cg = plan.wq_hwc.shape
        if q // plan.groups >= 1 << 20:
            raise ValueError(f"weights_projection: over 2^20 columns a group ({q})")
        p_n = len(r)
        group = (np.arange(q) % plan.o) // (plan.o // plan.groups)
        limbs = (np.asarray(r, np.int64)[:, :, None] >> (16 * np.arange(4))) & 0xFFFF
        limbs = limbs.transpose(0, 2, 1).reshape(4 * p_n, q).astype(np.float64)  # (p, limb)
        w = plan.wq_hwc.reshape(q, kh * kw * cg)
        u = np.empty((p_n, plan.groups, kh * kw * cg), np.int64)
        shift = (np.int64(1) << (16 * np.arange(4, dtype=np.int64)))[None, :, None]
        for g in range(plan.groups):
            cols = np.flatnonzero(group == g)
            part = (limbs[:, cols] @ w[cols].astype(np.float64)).astype(np.int64)
            u[:, g] = (part.reshape(p_n, 4, -1) * shift).sum(axis=1)  # wraps modulo 2^64
        u = np.ascontiguousarray(u.reshape(p_n, plan.groups, kh, kw, cg).transpose(0, 2, 3, 1, 4)
                                 .reshape(p_n, kh, kw, plan.groups * cg))
        u.flags.writeable = False
        plan.proj[key] = u
    return u


def project(u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(P,) int64: ``sum(u[p] * s)`` modulo 2^64 (`weights_projection`'s `u`, window sums `s`
    of shape (1, kh, kw, C))."""
    return u.reshape(len(u), -1) @ s.reshape(-1)


def own_check(plan: "Int8Conv", s: np.ndarray) -> ColumnCheck:
    """The check of all `plan.q` columns of a call whose window sums are `s`."""
    r = projection(plan.q)
    return ColumnCheck(r, project(weights_projection(plan, "own", r), s))


_I32_EXACT = 2 ** 31  # the split's parts are summed in int32


def _split_channels(w, stride, padding, groups, zp_x, lo, hi, signs, kind, xmax):
    """A plan whose input channels are cut into contiguous ranges, each of whose sums stays
    below 2^24 (so each part is exact in float32), the parts summed in int32; None where
    that cannot be done (groups, sign columns, a whole sum from 2^31, or one channel alone
    from 2^24)."""
    if groups != 1 or signs:
        return None
    per_c = np.abs(w).sum(axis=(2, 3))  # (O, C): each output's L1 per input channel
    if xmax * int(per_c.sum(axis=1).max()) >= _I32_EXACT:
        return None
    parts, c0, run = [], 0, np.zeros(w.shape[0], np.int64)
    for c in range(w.shape[1]):
        if xmax * int((run + per_c[:, c]).max()) >= F32_EXACT:
            if c == c0:
                return None
            parts.append((c0, c))
            c0, run = c, np.zeros(w.shape[0], np.int64)
        run += per_c[:, c]
    parts.append((c0, w.shape[1]))
    plans = []
    for a, b in parts:
        part = prepare_int8_conv(w[:, a:b], stride, padding, 1, zp_x, lo, hi, kind=kind)
        if part is None or part.parts:
            return None
        plans.append((a, b, part))
    return Int8Conv(None, w, w.shape[0], min(lo, zp_x), zp_x, w.shape[2], w.shape[3], stride,
                    padding, 1, False, (w != 0).sum(axis=0).astype(np.int64),
                    parts=tuple(plans))


def _window_sums(x: np.ndarray, plan: "Int8Conv", out_hw: tuple[int, int]):
    """Window sums of x - zp (images weighted 1..4, so values moved between images are seen
    too) and of (x != zp) per weight position: one check per column over the batch."""
    s = np.zeros((1, plan.kh, plan.kw, x.shape[3]), np.int64)
    cnt = np.zeros((plan.kh, plan.kw, x.shape[3]), np.int64)
    K.window_sums_kernel(x, plan.zp_x, plan.stride, plan.padding, out_hw[0], out_hw[1], s[0],
                         cnt)
    return s, cnt


def window_nonzero(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int]) -> int:
    """The conv's products with both operands non-zero (`Int8Result.nonzero_macs`) from its
    window counts, without the conv."""
    return _nonzero(_window_sums(x, plan, out_hw)[1], plan)


def _nonzero(cnt: np.ndarray, plan: Int8Conv) -> int:
    """Products with both operands non-zero from the window counts `cnt` (`_window_sums`)."""
    return int((cnt.transpose(2, 0, 1) * plan.wnz).sum())


def int8_conv(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int],
              sums: bool = False) -> Int8Result:
    """The exact sums of raw channels-last inputs `x` (N, H, W, C; any integer dtype; values in
    the range the plan was prepared for) under `plan`. Spot-checked here; call
    ``result.verify`` with the per-image column sums of ``g`` (the epilogue computes them;
    with `sums`, the engine's own tiles as they write them: ``result.sums``)."""
    n, _, _, c = x.shape
    ho, wo = out_hw
    if plan.parts:  # exact sums of each part (checked there), added in int32
        g = np.zeros((n * ho * wo, plan.q), np.int32)
        e = np.zeros(_PROJECTIONS, np.int64)  # the parts' projections (one `projection(q)`)
        windows = []
        nonzero = 0
        for c0, c1, part in plan.parts:
            r = int8_conv(x[..., c0:c1], part, out_hw)
            g += r.g.astype(np.int32)
            e += r.check.e
            windows.append(r.window)
            nonzero += r.nonzero_macs
        return Int8Result(g, ColumnCheck(projection(plan.q), e), nonzero,
                          window=np.concatenate(windows, axis=3))
    x, xu, s, nonzero = prologue(x, plan, out_hw)
    q, sk = plan.q, plan.subsample
    made = None
    if plan.dw is not None:
        g = np.empty((n * ho * wo, q), np.float32)
        K.depthwise_sums_kernel(x, plan.zp_x, plan.dw, plan.stride, plan.padding, ho, wo, g)
    else:
        g, made = _run(xu[:, ::sk, ::sk] if sk > 1 else xu, plan.zp_x - plan.sub, plan.packed,
                       2 * q if plan.radix else q, plan.stride // sk, plan.padding,
                       plan.groups, sums and not plan.radix)  # (radix: halves combined first)
        g = g.reshape(n * ho * wo, g.shape[-1])
    if plan.radix:  # radix * hi + lo: a multiple of 64 plus an integer, exact below 2^24
        g = _combine(g, plan)
    _spot_check(x, plan, out_hw, g)
    return Int8Result(g, own_check(plan, s), nonzero, made, s)


def u8_operand(x: np.ndarray, plan: Int8Conv) -> np.ndarray:
    """The uint8 operand of the plan's tiles, ``x - plan.sub`` (C-contiguous raw `x`; `x`
    itself where that is the same, and for the depthwise kernel, which reads raw `x`)."""
    if plan.dw is not None or (x.dtype == np.uint8 and plan.sub == 0):
        return x
    return K.to_u8_kernel(x.reshape(-1), plan.sub, np.empty(x.size, np.uint8)).reshape(x.shape)


def checked_conv(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int]) -> Int8Result:
    """`int8_conv` with its sums verified at once (for callers that keep them): their column
    sums per image against the window sums (`Int8Result.verify`)."""
    res = int8_conv(x, plan, out_hw, sums=True)
    sums = res.sums
    if sums is None:  # not made by the conv: one pass over its sums
        sums = np.empty((x.shape[0], plan.q), np.int64)
        K.image_column_sums_kernel(res.g, x.shape[0], sums)
    res.verify(sums)
    return res


def prologue(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int]):
    """What a call needs before the conv: (contiguous `x`, the uint8 operand, the window sums
    its check is made from (`own_check`), the non-zero product count)."""
    x = np.ascontiguousarray(x)
    threads = numba.get_num_threads()
    # one pass over the input, on one thread where it is not worth more (`threads.parallel`)
    serial = threads > 1 and not parallel(ELEM_WORK * x.size)
    if serial:
        numba.set_num_threads(1)
    try:
        xu = u8_operand(x, plan)
        s, cnt = _window_sums(x, plan, out_hw)
    finally:
        if serial:
            numba.set_num_threads(threads)
    return x, xu, s, _nonzero(cnt, plan)


def fusable(plan: Int8Conv, risk: bool = False) -> bool:
    """The plan's sums can be consumed where they are made (`int8_conv_fused`): the engine's
    own kernels (VNNI, depthwise), in one part; with `risk`, VNNI with sign columns
    (`int8_tiles.risk_fusable`)."""
    if risk:
        return plan.signs and not plan.parts and isinstance(plan.packed, int8_tiles.TileWeights) \
            and int8_tiles.risk_fusable(plan.packed, plan.o)
    return plan.own_kernel and not plan.parts


def int8_conv_fused(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int], o_n: int,
                    bias: np.ndarray, lv, do_rq: bool, rq, out: np.ndarray, mnmx: np.ndarray,
                    sums: np.ndarray, wrap_bits: int, pe_risk: bool = False,
                    flags: np.ndarray | None = None,
                    rows: np.ndarray | None = None) -> Int8Result:
    """`int8_conv` for a `fusable` plan, its sums passed straight to the epilogue
    (`kernels.gemm_epilogue_kernel`'s arguments from `o_n` on, without chunks: it fills
    `out`, `mnmx`, `sums`, and with a risk (`flags` (M, o_n) uint8 and `rows` (M,) int32
    given; ``fusable(plan, risk=True)``, no wrapping) marks the flagged outputs in `flags`
    and counts them per row in `rows`): `int8_tiles.conv_epilogue`,
    `int8_tiles.conv_risk` (with the plan's pooled bound where it has one: `_pooled_bound`;
    the expected sums of the positive columns then cover the pixels it computed) or
    `kernels.depthwise_epilogue_kernel`. A few rows' sums are spot-checked here; the result
    holds no ``g`` (``verify`` it with `sums` as usual)."""
    n = x.shape[0]
    ho, wo = out_hw
    x, xu, s, nonzero = prologue(x, plan, out_hw)
    check = own_check(plan, s)
    call = next(_CALLS)
    m_n = n * ho * wo
    ms = spot_rows(call, m_n)
    if flags is not None:
        bound = None
        if plan.bound is not None and _BOUND_MACS is not None and \
                m_n * plan.wq[plan.o:].size >= _BOUND_MACS:
            if plan.bound_skip[0]:
                plan.bound_skip[0] -= 1
            else:
                bound = _pooled_bound(xu, plan, out_hw)
        gs, win, share = int8_tiles.conv_risk(
            xu, plan.zp_x - plan.sub, plan.packed, plan.stride, plan.padding, o_n, bias, lv,
            do_rq, rq, out, mnmx, sums, ms, pe_risk, flags, rows, bound, BOUND_G)
        if win is not None:  # the positive sums' columns sum over the pixels computed
            _check_bound(bound, ms, gs[:, plan.o:], out_hw)
            # the sums' columns over every pixel, the positive columns' over those computed
            sums_r = np.where(np.arange(plan.q) < plan.o, check.r, 0)
            check = ColumnCheck(check.r, project(weights_projection(plan, "sums", sums_r), s)
                                + project(weights_projection(plan, "pos", check.r - sums_r),
                                          np.tensordot(_image_weights(n), win, 1)))
            if share > _BOUND_SHARE:
                plan.bound_skip[0] = _BOUND_RETRY
    elif plan.dw is not None:
        gs = np.zeros((len(ms), plan.q), np.int32)
        K.depthwise_epilogue_kernel(x, plan.zp_x, plan.dw, plan.stride, plan.padding, ho, wo,
                                    o_n, bias, lv, do_rq, rq, out, int8_tiles.NO_NEED, mnmx, sums,
                                    wrap_bits, ms, gs)
    else:
        gs = int8_tiles.conv_epilogue(xu, plan.zp_x - plan.sub, plan.packed, plan.stride,
                                      plan.padding, o_n, bias, lv, do_rq, rq, out, mnmx, sums,
                                      wrap_bits, ms)
    spot_check_rows(x, plan, out_hw, m_n, ms, gs, call)
    return Int8Result(None, check, nonzero)


def _pooled_bound(xu: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, Hb, Wb, O) int32: per `BOUND_G` x `BOUND_G` block of output pixels an upper
    bound on their positive product sums (`pooled_conv` with `plan.bound`)."""
    return pooled_conv(xu, plan.bound, plan.zp_x - plan.sub, plan.padding, plan.stride, out_hw)


def pooled_conv(xu: np.ndarray, plan: Int8Conv, zp_u8: int, padding: int, stride: int,
                out_hw: tuple[int, int], dtype=np.int32) -> np.ndarray:
    """(N, Hb, Wb, plan.q) `dtype` (int32, or the checked conv's own float32: no copy), Hb x Wb the
    `BOUND_G` x `BOUND_G` blocks of the out_hw output pixels of a conv (`stride`, `padding`) of
    uint8 NHWC `xu` (values at or above its zero point `zp_u8`): the checked conv `plan`
    (non-negative weights, stride `BOUND_G` * `stride`, no padding) of `xu` max-pooled across
    each block's patches (`int8_tiles.pooled_input`), so at or above every sum of the block's
    pixels with those weights. The caller checks that against a few pixels (the conv's own
    checks cannot see a wrong pooling): `_check_bound`, `screen.pooled_screen`."""
    g = BOUND_G
    m = int8_tiles.pooled_input(xu, zp_u8, padding, g, stride)
    hw = (-(-out_hw[0] // g), -(-out_hw[1] // g))
    res = checked_conv(m, plan, hw)
    return res.g.astype(dtype, copy=False).reshape(m.shape[0], *hw, plan.q)


def _check_bound(bound: np.ndarray, ms: np.ndarray, pos: np.ndarray,
                 out_hw: tuple[int, int]) -> None:
    """Raise InexactError unless the pooled bound is at or above the spot-checked rows' `ms`
    positive sums `pos` (the check of the pooling, whose conv its column sums check)."""
    for m, row in zip(ms, pos):
        b, p = divmod(int(m), out_hw[0] * out_hw[1])
        oy, ox = divmod(p, out_hw[1])
        if (row > bound[b, oy // BOUND_G, ox // BOUND_G]).any():
            raise InexactError("int8 engine: the pooled bound is below a positive product sum")


def _combine(g: np.ndarray, plan: Int8Conv) -> np.ndarray:
    """Columns (per group) [hi | lo] of the split conv back to ``radix * hi + lo``."""
    og = plan.q // plan.groups
    parts = g.reshape(len(g), plan.groups, 2, og)
    out = parts[:, :, 0] * np.float32(plan.radix)
    out += parts[:, :, 1]
    return out.reshape(len(g), plan.q)


def _image_weights(n: int) -> np.ndarray:
    return 1 + np.arange(n, dtype=np.int64) % 4


def _spot_check(x: np.ndarray, plan: Int8Conv, out_hw: tuple[int, int], g: np.ndarray) -> None:
    """Recompute a few output pixels in int64 and compare (`kernels.spot_check_kernel`): every
    column where that stays within `_SPOT_MACS` products (`_SPOT_OWN` for the engine's own
    kernels) and 1/`_SPOT_SHARE` of the conv's,
    else a different subset of columns each call (at least one per pixel; every column is
    still checked by the column sums, `Int8Result.verify`)."""
    call = next(_CALLS)
    ms = spot_rows(call, len(g))
    spot_check_rows(x, plan, out_hw, len(g), ms, g[ms], call)


def spot_rows(call: int, m_n: int) -> np.ndarray:
    """The `_SPOT_PIXELS` rows m = (n, pixel) of `m_n` that spot check `call` recomputes
    (a multiplicative hash: each call checks different ones)."""
    return np.array([(call * 2654435761 + t * 40503) % m_n for t in range(_SPOT_PIXELS)]
                    if m_n else [], np.int64)


def spot_check_rows(x, plan: Int8Conv, out_hw, m_n: int, ms, gs, call: int) -> None:
    """`_spot_check` of the rows `ms` of the engine's sums, `gs` (len(ms), q), of `m_n` rows."""
    if not len(ms):  # an empty batch
        return
    budget = min(_SPOT_OWN if plan.own_kernel else _SPOT_MACS,
                 m_n * plan.wq_hwc.size // _SPOT_SHARE)
    if not K.spot_check_kernel(x, plan.wq_hwc, plan.zp_x, plan.stride, plan.padding,
                               plan.groups, plan.o, out_hw[0], out_hw[1], ms, gs, call, budget):
        raise InexactError("int8 engine: a spot-checked output pixel disagrees with int64")


def _ref_nhwc(x, w, zp, stride, padding, groups):
    """int64 conv of NHWC `x` (padding at zp) with `w` (O, C/g, kh, kw): (N, Ho, Wo, O)."""
    xs = np.pad(x.astype(np.int64) - zp, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    o, cg, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(1, 2))[:, ::stride,
                                                                             ::stride]
    og = o // groups
    outs = []
    for gi in range(groups):
        part = win[:, :, :, gi * cg:(gi + 1) * cg]  # (n, ho, wo, cg, kh, kw)
        outs.append(np.einsum("nhwcij,ocij->nhwo", part, w[gi * og:(gi + 1) * og]))
    return np.concatenate(outs, axis=3)


def _self_test(w_max: int = 127) -> bool:
    """Random and extreme operands (weights up to `w_max`) over the configurations the
    simulator dispatches."""
    rng = np.random.default_rng(1234)
    cases = [  # (n, c, h, o, k, stride, pad, groups, lo, hi, zp)
        (2, 3, 7, 5, 3, 1, 1, 1, 0, 255, 0), (1, 16, 9, 16, 3, 2, 1, 1, -128, 127, 0),
        (3, 8, 5, 4, 1, 1, 0, 1, 0, 255, 7), (2, 8, 6, 8, 3, 1, 1, 8, 0, 255, 0),
        (1, 64, 4, 24, 3, 1, 1, 1, 0, 255, 0), (2, 5, 1, 3, 1, 1, 0, 1, -100, 100, -3),
    ]
    w_min = -128 if w_max == 127 else -w_max
    for n, c, h, o, k, s, p, g, lo, hi, zp in cases:
        sub = min(lo, zp)
        for xv, wv in [(hi, w_max), (hi, w_min), (lo, w_max), (None, None)]:
            if xv is None:
                x = rng.choice(np.array([lo, hi, zp, (lo + hi) // 2]), size=(n, h, h, c))
                w = rng.choice(np.array([w_min, w_max, -1, 0, 1]),
                               size=(o, c // g, k, k))
            else:
                x = np.full((n, h, h, c), xv)
                w = np.full((o, c // g, k, k), wv)
            y = _run((x - sub).astype(np.uint8), zp - sub, _pack(w, zp - sub, s, p, g), o, s, p,
                     g)[0]
            if not np.array_equal(y.astype(np.int64), _ref_nhwc(x, w, zp, s, p, g)):
                return False
    return True
