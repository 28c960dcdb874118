"""The register-lane walk (`kernels.walk16_kernel` on `npusim.sim.lanes16`, through
`accumulate._walk16`) against the independent oracle (`tests.npusim.naive`: values and event
totals over every pixel) and the one-output kernel (`kernels.conv_points_kernel`: values and
per-pixel event counts of a subset), both of its input feeds, every order and wrap/saturate
pair, widths up to 16 bits, output channels in partial blocks of 64 and in several."""

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from npusim.sim import kernels as K
from npusim.sim.accumulate import _walk16, _walk_lanes
from npusim.sim.lanes16 import lane_weights
from tests.npusim import naive

LANE_MODES = ["wrap", "saturate"]


@st.composite
def narrow_layer(draw):
    """A conv at 12-16-bit levels whose running sums overflow often: uint8 inputs at their
    extremes or random, int8 weights."""
    g = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.integers(1, 5))
    og = draw(st.sampled_from([1, 7, 33, 64, 70, 130]))
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2))
    h, wd = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    n = draw(st.integers(1, 2))
    zp = draw(st.sampled_from([0, 7, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([0, 255, zp, rng.integers(0, 256)], size=(n, h, wd, g * cg)).astype(np.uint8)
    w = rng.choice([-127, 127, 0, 1, -1, rng.integers(-127, 128)], size=(g * og, cg, k, k))
    bias = rng.integers(-3000, 3000, size=g * og)
    return x, w.astype(np.int64), bias, stride, pad, g, zp


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(narrow_layer(), st.sampled_from(["os", "ws"]), st.integers(1, 20),
       st.sampled_from(LANE_MODES), st.sampled_from(LANE_MODES), st.integers(0, 1),
       st.integers(0, 1), st.floats(0.05, 1.0), st.integers(0, 2 ** 32 - 1))
def test_walk16_equals_oracle_and_array_walk(case, order, rows, pe_mode, acc_mode, dpe, dacc,
                                             frac, seed):
    x, w, bias, s, pad, g, zp = case
    n, h, wd, _ = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h + 2 * pad - kh) // s + 1, (wd + 2 * pad - kw) // s + 1
    # the narrowest widths the int16 lanes take: a product (16 bits) fits the pe level
    pe_bits = 16 - dpe if order == "ws" else 16
    lv = K.LevelSpec(K.ORDER_CODES[order], rows, pe_bits, K.MODE_CODES[pe_mode],
                     max(pe_bits, 16 - dacc) if order == "ws" else 16 - dacc,
                     K.MODE_CODES[acc_mode])
    if min(lv.pe_bits, lv.acc_bits) < 16:  # a product must fit the narrowest level
        w = np.clip(w, -63, 63)
    assert _walk_lanes(x, w, bias, zp, lv) is np.int16
    wt = w.reshape(g, o // g, -1).transpose(0, 2, 1)
    w16 = lane_weights(wt, 16 - (lv.pe_bits if order == "ws" else lv.acc_bits))
    every = np.arange(n * ho * wo)
    got = np.empty((len(every), o), np.int64)
    ev = np.zeros((len(every), 2), np.int64)
    _walk16(x, w16, bias, kh, kw, s, pad, zp, lv, every, (ho, wo), got, ev, direct=True)
    names = {K.WRAP: "wrap", K.SATURATE: "saturate"}
    want, pe, acc = naive.conv2d_acc(x.transpose(0, 3, 1, 2), w, bias, s, pad, g, zp, order,
                                     rows, lv.pe_bits, names[lv.pe_mode], lv.acc_bits,
                                     names[lv.acc_mode])
    np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1).reshape(-1, o))
    event(f"overflows: {'yes' if ev.any() else 'no'}")
    assert (int(ev[:, 0].sum()) if order == "ws" else 0, int(ev[:, 1].sum())) == \
        (pe if order == "ws" else 0, acc)
    # a subset through the patches: the same rows, and per pixel the events of the
    # one-output kernel (`conv_points_kernel`) summed over the pixel's channels
    pix = every[np.random.default_rng(seed).random(len(every)) < frac]
    sub = np.empty((len(pix), o), np.int64)
    sub_ev = np.zeros((len(pix), 2), np.int64)
    _walk16(x, w16, bias, kh, kw, s, pad, zp, lv, pix, (ho, wo), sub, sub_ev, direct=False)
    np.testing.assert_array_equal(sub, got[pix])
    b, p = np.divmod(np.repeat(pix, o), ho * wo)
    points = np.stack([b, np.tile(np.arange(o), len(pix)), p // wo, p % wo], axis=1)
    one = np.empty(len(points), np.int64)
    one_ev = np.zeros((len(points), 2), np.int64)
    xc = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=zp)
    K.conv_points_kernel(xc, w, np.asarray(bias, np.int64), s, g, zp, lv,
                         np.ascontiguousarray(points, np.int64), one, one_ev)
    np.testing.assert_array_equal(sub.reshape(-1), one)
    per_pixel = one_ev.reshape(len(pix), o, 2).sum(axis=1)
    np.testing.assert_array_equal(sub_ev, per_pixel)
    np.testing.assert_array_equal(ev[pix], per_pixel)
