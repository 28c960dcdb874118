"""The engine's own conv tiles (`npusim.sim.int8_tiles`) against a direct int64 conv.

They compile where the CPU has AVX-512 VNNI (``vpdpbusd``) or AVX2 (``vpmaddwd``), so these
tests run there and are skipped, saying so, elsewhere; on a VNNI host they run a second time
with the AVX2 tiles forced, in a process of their own. The int8 engine's tests run through
the tiles wherever they are available."""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.sim import int8_tiles

pytestmark = pytest.mark.skipif(not int8_tiles.available(),
                                reason="the CPU has neither AVX-512 VNNI nor AVX2 "
                                       "(or NPUSIM_TILES=none)")


def _direct(x: np.ndarray, w: np.ndarray, zp: int, stride: int, pad: int,
            groups: int = 1) -> np.ndarray:
    """For each output pixel and output o, the int64 dot product of its padded input patch
    (padding = zp) minus zp, on the channels of o's group, with w[o] (`w` (O, C / groups,
    kh, kw)): (N, Ho, Wo, O)."""
    n, h, wd, c = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    xp = np.full((n, h + 2 * pad, wd + 2 * pad, c), zp, np.int64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, ho, wo, o), np.int64)
    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                patch = xp[b, oy * stride:oy * stride + kh, ox * stride:ox * stride + kw] - zp
                for j in range(o):
                    g = j // og
                    mine = patch[:, :, g * cg:(g + 1) * cg]  # (kh, kw, cg)
                    out[b, oy, ox, j] = (mine * w[j].astype(np.int64).transpose(1, 2, 0)).sum()
    return out


@st.composite
def _case(draw):
    k = draw(st.sampled_from([1, 2, 3, 5, 7]))
    pad = draw(st.integers(0, k - 1))
    h = draw(st.integers(max(1, k - 2 * pad), 12))
    wd = draw(st.integers(max(1, k - 2 * pad), 12))
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3, 5]))
    c = groups * draw(st.integers(1, 40 // groups))
    o = groups * draw(st.integers(1, 70 // groups))
    stride = draw(st.integers(1, 3))
    zp = draw(st.sampled_from([0, 1, 128, 255]) | st.integers(0, 255))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    pattern = draw(st.sampled_from(["random", "extreme", "max"]))
    if pattern == "max":  # every product at its extreme: the largest sums the lanes hold
        x = np.full((n, h, wd, c), draw(st.sampled_from([0, 255])), np.uint8)
        w = np.full((o, c // groups, k, k), draw(st.sampled_from([-128, 127])), np.int8)
    elif pattern == "extreme":
        x = rng.choice(np.array([0, 255, zp], np.uint8), size=(n, h, wd, c))
        w = rng.choice(np.array([-128, 127, -1, 0, 1], np.int8), size=(o, c // groups, k, k))
    else:
        x = rng.integers(0, 256, (n, h, wd, c), dtype=np.uint8)
        w = rng.integers(-128, 128, (o, c // groups, k, k), dtype=np.int8)
    return x, w, zp, stride, pad, groups


@settings(max_examples=150, deadline=None)
@given(_case(), st.sampled_from([np.int32, np.float32]), st.booleans())
def test_conv_equals_direct_int64(case, dtype, sums):
    """Random shapes (channels and outputs not multiples of the tile, segments of bytes not
    multiples of 4, groups, strides, padding, every zero point), random and extreme
    operands; with `sums`, the column sums per image the kernel makes as it writes (images
    of up to 144 pixels: one or two tasks each)."""
    x, w, zp, stride, pad, groups = case
    want = _direct(x, w, zp, stride, pad, groups)
    if dtype == np.float32 and np.abs(want).max(initial=0) >= 2 ** 24:
        dtype = np.int32  # float32 holds the sums exactly only below 2^24 (the engine's bound)
    got = int8_tiles.conv(x, zp, int8_tiles.pack(w, groups), stride, pad, dtype, sums=sums)
    if sums:
        got, col = got
        np.testing.assert_array_equal(col, want.sum(axis=(1, 2)))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.astype(np.int64), want)


def test_lanes_wrap_modulo_2_32():
    """A sum of uint8 x int8 products past 2^31 (70,000 channels of 255 * 127) wraps in the
    int32 lanes; the zero point's share, subtracted modulo 2^32 too, brings the exact result
    back: here 0 with zp = 255, and -127 * 70,000 with one input at 254."""
    c = 70_000
    x = np.full((1, 1, 2, c), 255, np.uint8)
    x[0, 0, 1, 0] = 254
    w = np.full((1, c, 1, 1), 127, np.int8)
    got = int8_tiles.conv(x, 255, int8_tiles.pack(w), 1, 0, np.int32)
    assert got[0, 0, :, 0].tolist() == [0, -127]


@pytest.mark.slow
@pytest.mark.skipif(int8_tiles.ISA != "vnni",
                    reason="the host's tiles are the AVX2 ones: the tests above ran them")
def test_the_avx2_tiles_on_a_vnni_host():
    """``NPUSIM_TILES=avx2``: a fresh process compiles the AVX2 tiles (in a numba cache
    directory of their own) and passes this module's tests with them."""
    code = ("import sys, pytest; from npusim.sim import int8_tiles; "
            "assert int8_tiles.ISA == 'avx2', int8_tiles.ISA; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {__file__!r}, "
            "'-k', 'not on_a_vnni_host']))")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NPUSIM_TILES": "avx2"},
                       capture_output=True, text=True)
    assert r.returncode == 0 and " passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_npusim_tiles_chooses_or_refuses(monkeypatch):
    """``NPUSIM_TILES``: none turns the own tiles off, avx2 takes them wherever the CPU has
    AVX2, anything else is a one-line error naming the variable."""
    monkeypatch.setenv("NPUSIM_TILES", "none")
    assert int8_tiles._host_isa() is None
    monkeypatch.setenv("NPUSIM_TILES", "avx2")
    assert int8_tiles._host_isa() == "avx2"  # every host that runs this module has AVX2
    monkeypatch.setenv("NPUSIM_TILES", "avx512")
    with pytest.raises(ValueError, match=r"^NPUSIM_TILES: expected auto, avx2 or none; "
                                         r"got 'avx512'$"):
        int8_tiles._host_isa()


def _pooled_ref(x: np.ndarray, zp: int, pad: int, g: int, s: int) -> np.ndarray:
    """`int8_tiles.pooled_input` in NumPy: x padded at zp (and with zp past its far edges),
    max over the g x g shifts `s` apart."""
    n, h, w, c = x.shape
    e = (g - 1) * s
    xp = np.full((n, h + 2 * pad + e, w + 2 * pad + e, c), zp, np.uint8)
    xp[:, pad:pad + h, pad:pad + w] = x
    hp, wp = h + 2 * pad, w + 2 * pad
    return np.max([xp[:, dy * s:dy * s + hp, dx * s:dx * s + wp]
                   for dy in range(g) for dx in range(g)], axis=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 20),
       st.integers(0, 2), st.integers(1, 4), st.integers(1, 3), st.integers(0, 255),
       st.integers(0, 2 ** 32 - 1))
def test_pooled_input_equals_numpy(n, h, w, c, pad, g, s, zp, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    np.testing.assert_array_equal(int8_tiles.pooled_input(x, zp, pad, g, s),
                                  _pooled_ref(x, zp, pad, g, s))


@st.composite
def _risk_case(draw):
    """A conv with sign columns at risk: inputs at or above the zero point, outputs in 16s or
    32s, an accumulator narrow enough that some outputs are flagged and some are not."""
    k = draw(st.sampled_from([1, 3]))
    pad = draw(st.integers(0, k - 1))
    h, wd = draw(st.integers(max(1, k - 2 * pad), 13)), draw(st.integers(max(1, k - 2 * pad), 13))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 24))
    o = draw(st.sampled_from([16, 32, 48, 64]))
    stride, zp = draw(st.integers(1, 2)), draw(st.sampled_from([0, 3, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.integers(zp, 256, (n, h, wd, c)).astype(np.uint8)
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.5, 0.9]))] = zp  # sparse, as ReLUs
    w = rng.integers(-128, 128, (o, c, k, k), dtype=np.int8)
    bias = rng.integers(-4000, 4000, o)
    bits = draw(st.integers(10, 22))
    bound = draw(st.sampled_from(["pooled", "tight", "none_cleared"]))
    return x, w, zp, stride, pad, bias, bits, bound, rng


def _windows_conv(x: np.ndarray, w: np.ndarray, zp: int, stride: int, pad: int) -> np.ndarray:
    """`_direct` (groups 1) as one int64 einsum over the padded input's windows."""
    xp = np.pad(x.astype(np.int64) - zp, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(1, 2))
    return np.einsum("nhwcij,ocij->nhwo", win[:, ::stride, ::stride], w.astype(np.int64))


@settings(max_examples=60, deadline=None)
@given(_risk_case())
def test_risk_conv_with_a_bound_equals_the_full_risk_conv(case):
    """`conv_risk` with an upper bound on the positive product sums per 2 x 2 block of
    output pixels (the pooled one; one at most a little above the exact sums, which clears
    some pixels and not others; one that clears none) gives the outputs, flags, extremes and
    sums' column sums of the conv that computes every positive sum (whose weights need not
    keep the halves apart: with 16 * odd outputs a block of 32 columns spans both); its
    positive columns sum over the pixels the bound left to compute, whose window sums (and
    share) it returns."""
    from npusim.sim import kernels as K
    from npusim.sim.accumulate import _EPILOGUE_PIXELS, _NO_RQ, _blocks

    x, w, zp, stride, pad, bias, bits, kind, rng = case
    o = w.shape[0]
    wq = np.concatenate([w, np.maximum(w, 0)])
    exact = _windows_conv(x, wq, zp, stride, pad)
    n, ho, wo = exact.shape[:3]
    S, P = exact[..., :o], exact[..., o:]
    g = 2
    hb, wb = -(-ho // g), -(-wo // g)
    blockmax = np.zeros((n, hb * g, wb * g, o), np.int64)
    blockmax[:, :ho, :wo] = P
    blockmax = blockmax.reshape(n, hb, g, wb, g, o).max(axis=(2, 4))
    if kind == "pooled":
        m = _pooled_ref(x, zp, pad, g, stride)
        bound = _windows_conv(m, np.maximum(w, 0), zp, g * stride, 0)[:, :hb, :wb]
    elif kind == "tight":
        bound = blockmax + rng.integers(0, 3000, blockmax.shape)
    else:
        bound = np.full_like(blockmax, 1 << 30)
    assert (bound >= blockmax).all()
    bound = bound.astype(np.int32)
    lv = K.LevelSpec(K.OS, 32, 32, K.MODE_CODES["wrap"], bits, K.MODE_CODES["wrap"])
    pixels = ho * wo
    nb = _blocks(n, pixels, _EPILOGUE_PIXELS)
    ms = rng.integers(0, n * pixels, 4)
    runs = []
    for b in (None, bound):
        packed = int8_tiles.pack(wq, halves=b is not None)
        assert b is not None or packed.nv == 2  # the blocks of 32 columns
        arrays = (np.empty((n * pixels, o), np.int64), np.empty((n, nb, 4), np.int64),
                  np.empty((n, nb, 2 * o), np.int64), np.empty((n * pixels, o), np.uint8),
                  np.empty(n * pixels, np.int32))
        gs, win, share = int8_tiles.conv_risk(x, zp, packed, stride, pad, o, bias, lv, False,
                                              _NO_RQ.rec, arrays[0], arrays[1], arrays[2], ms,
                                              False, arrays[3], arrays[4], b, g)
        np.testing.assert_array_equal(arrays[4], arrays[3].sum(axis=1))  # flags per row
        runs.append((arrays, gs, win, share))
    (full, gs_full, _, _), (part, gs_part, win, share) = runs
    for a, b in zip(full[:2] + full[3:], part[:2] + part[3:]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full[2][..., :o], part[2][..., :o])
    np.testing.assert_array_equal(gs_full, gs_part)
    np.testing.assert_array_equal(gs_full, exact.reshape(-1, 2 * o)[ms])
    # the pixels left to compute: those the bound flags (as the epilogue's thresholds do),
    # and the spot-checked rows
    th = np.array([K.risk_thresholds(bb, bits, 32, False) for bb in bias], np.int64)
    pb = np.repeat(np.repeat(bound, g, axis=1), g, axis=2)[:, :ho, :wo].astype(np.int64)
    need = ((pb > th[:, 0]) | (pb - S > th[:, 1])).any(axis=3).reshape(-1)
    need[ms] = True
    if kind == "none_cleared":
        assert need.all()
    assert share == pytest.approx(need.mean())
    np.testing.assert_array_equal(
        part[2][..., o:].sum(axis=1),
        (P.reshape(n, pixels, o) * need.reshape(n, pixels, 1)).sum(axis=1))
    xp = np.full((n, x.shape[1] + 2 * pad, x.shape[2] + 2 * pad, x.shape[3]), zp, np.int64)
    xp[:, pad:pad + x.shape[1], pad:pad + x.shape[2]] = x
    k = w.shape[2]
    want = np.zeros((n, k, k, x.shape[3]), np.int64)
    for i in np.flatnonzero(need):
        b, p = divmod(int(i), pixels)
        oy, ox = divmod(p, wo)
        want[b] += xp[b, oy * stride:oy * stride + k, ox * stride:ox * stride + k] - zp
    np.testing.assert_array_equal(win, want)
