"""The lane-vectorized order-faithful kernel (`kernels.conv_walk_kernel`, reached through
`accumulate._simulate_points`) and the chunk-screened one-output walk
(`kernels.points_screen_kernel`, through `accumulate._walk_points`) against the
one-output-at-a-time kernel and the independent oracle: values and event counts, both
levels, every dataflow and overflow mode."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.sim import accumulate
from npusim.sim import kernels as K
from npusim.sim.accumulate import AccStats, _simulate_points, _walk_lanes
from tests.npusim import naive
from tests.npusim.programs import conv_program
from tests.npusim.sim.helpers import equals_reference, narrow_npu

MODES = ["exact", "wrap", "saturate"]


@st.composite
def layer(draw):
    """A small conv whose narrow accumulators overflow often: operands at their extremes."""
    g = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 4))
    og = draw(st.sampled_from([1, 2, 5, 9]))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2 + (k == 2)))
    h, wd = draw(st.integers(k, 7)), draw(st.integers(k, 7))
    n = draw(st.integers(1, 2))
    x_bits = draw(st.sampled_from([4, 8]))
    x_signed = draw(st.booleans())
    zp_x = draw(st.sampled_from([0, 3])) if not x_signed else 0
    w_bits = draw(st.sampled_from([3, 8]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    xlo, xhi = (-(1 << (x_bits - 1)), (1 << (x_bits - 1)) - 1) if x_signed else (0, (1 << x_bits) - 1)
    wq = (1 << (w_bits - 1)) - 1
    x = rng.choice([xlo, xhi, zp_x, rng.integers(xlo, xhi + 1)], size=(n, h, wd, g * cg))
    w = rng.choice([-wq, wq, 0, 1, -1], size=(g * og, cg, k, k)).astype(np.int64)
    bias = rng.integers(-3000, 3000, size=g * og)
    # product of the extremes, as the simulator's width check sees it
    prod_bits = max(abs(xlo - zp_x), abs(xhi - zp_x)).bit_length() + w_bits
    # the simulator's storage dtype (one compiled signature for tests and production)
    return dict(x=x.astype(np.int8 if x_signed else np.uint8), w=w, bias=bias, stride=stride,
                pad=pad, groups=g, zp_x=zp_x, prod_bits=prod_bits)


def geometry(case, order, rows, pe_mode, acc_mode, dpe, dacc):
    """(ho, wo, the `LevelSpec`) of a `layer` case: levels `dpe` / `dacc` bits above its
    widest product."""
    (_, h, wd, _), (_, _, kh, kw) = case["x"].shape, case["w"].shape
    s, pad = case["stride"], case["pad"]
    lv = K.LevelSpec(K.ORDER_CODES[order], rows, case["prod_bits"] + dpe, K.MODE_CODES[pe_mode],
                     case["prod_bits"] + dacc, K.MODE_CODES[acc_mode])
    return (h + 2 * pad - kh) // s + 1, (wd + 2 * pad - kw) // s + 1, lv


def equals_one_output_kernel(case, lv, points, got, got_st) -> None:
    """`got` and the event totals in `got_st` equal `conv_points_kernel` on the outputs
    `points` ((n, o, oy, ox) rows) of the layer `case`."""
    pad = case["pad"]
    want = np.empty(len(points), np.int64)
    ev = np.zeros((len(points), 2), np.int64)
    pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    xc = np.pad(case["x"], pads, constant_values=case["zp_x"])  # channels last, padded
    K.conv_points_kernel(xc, case["w"], case["bias"], case["stride"], case["groups"],
                         case["zp_x"], lv, points, want, ev)
    np.testing.assert_array_equal(got, want)
    assert (got_st.pe_overflows, got_st.acc_overflows) == tuple(int(v) for v in ev.sum(axis=0))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer(), st.sampled_from(["os", "ws"]), st.integers(1, 20), st.sampled_from(MODES),
       st.sampled_from(MODES), st.integers(0, 6), st.integers(0, 6), st.floats(0.1, 1.0),
       st.integers(0, 2 ** 32 - 1))
def test_walk_equals_one_output_kernel(case, order, rows, pe_mode, acc_mode, dpe, dacc, frac,
                                       seed):
    """Values and per-call event totals of the outputs of a random subset of pixels (every
    channel of each), against `conv_points_kernel` on the same outputs."""
    x, w, bias = case["x"], case["w"], case["bias"]
    n, o = x.shape[0], w.shape[0]
    s, pad = case["stride"], case["pad"]
    ho, wo, lv = geometry(case, order, rows, pe_mode, acc_mode, dpe, dacc)
    assert _walk_lanes(x, w, bias, case["zp_x"], lv) is not None
    rng = np.random.default_rng(seed)
    pix = np.flatnonzero(rng.random(n * ho * wo) < frac)
    m = np.repeat(pix, o)
    oc = np.tile(np.arange(o), len(pix))
    got_st = AccStats()
    got = _simulate_points(x, w, bias, s, pad, case["groups"], case["zp_x"], lv, m, oc, got_st,
                           (ho, wo))
    b, p = np.divmod(m, ho * wo)
    points = np.stack([b, oc, p // wo, p % wo], axis=1).astype(np.int64)
    equals_one_output_kernel(case, lv, points, got, got_st)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(layer(), st.sampled_from(["os", "ws"]), st.integers(1, 20), st.sampled_from(MODES),
       st.sampled_from(MODES), st.integers(0, 6), st.integers(0, 6), st.sampled_from([1, 3, 64]),
       st.floats(0.1, 1.0), st.integers(0, 2 ** 32 - 1))
def test_screened_points_equal_one_output_kernel(monkeypatch, case, order, rows, pe_mode,
                                                 acc_mode, dpe, dacc, chunk, frac, seed):
    """`accumulate._walk_points` (each output screened in chunks, `points_screen_kernel`;
    chunks of 1 to 64 products, so partial and whole-chunk adds both happen) against
    `conv_points_kernel` on the same random outputs: values and event totals."""
    monkeypatch.setattr(accumulate, "_POINT_CHUNK", chunk)  # set anew by every example
    x, w, bias = case["x"], case["w"], case["bias"]
    n, o = x.shape[0], w.shape[0]
    s, pad = case["stride"], case["pad"]
    ho, wo, lv = geometry(case, order, rows, pe_mode, acc_mode, dpe, dacc)
    rng = np.random.default_rng(seed)
    b = rng.integers(0, n, 40)
    p = rng.integers(0, ho * wo, 40)
    oc = rng.integers(0, o, 40)
    points = np.stack([b, oc, p // wo, p % wo], axis=1).astype(np.int64)
    keep = rng.random(40) < frac
    points, m, oc = points[keep], (b * ho * wo + p)[keep], oc[keep]
    got_st = AccStats()
    got = accumulate._walk_points(x, w, bias, s, pad, case["groups"], case["zp_x"], lv, m, oc,
                                  got_st, (ho, wo))
    equals_one_output_kernel(case, lv, points, got, got_st)


def test_walk_refuses_sums_beyond_its_lanes():
    """Widths over 30 bits, or an exact level whose worst case reaches 2^30, take the
    one-output kernel; its answer is the same."""
    x = np.full((1, 3, 3, 4), 255, np.uint8)
    w = np.full((2, 4, 3, 3), 127, np.int64)
    bias = np.array([5, -5])
    narrow = K.LevelSpec(K.WS, 4, 16, K.WRAP, 16, K.SATURATE)
    assert _walk_lanes(x, w, bias, 0, narrow) is np.int16
    assert _walk_lanes(x, w, bias, 0, narrow._replace(acc_bits=17)) is np.int32
    assert _walk_lanes(x, w, bias, 0, narrow._replace(pe_bits=17)) is np.int32  # pe > acc
    assert _walk_lanes(x, w, bias, 0, narrow._replace(pe_mode=K.EXACT)) is np.int32
    assert _walk_lanes(x, w, bias, 0, narrow._replace(acc_bits=31)) is None
    assert _walk_lanes(x, w, bias, 0, narrow._replace(pe_bits=31)) is None
    assert _walk_lanes(x, w, bias, 0, narrow._replace(order=K.OS, pe_bits=31)) is np.int16
    assert _walk_lanes(x, w, 2 ** 30 + bias, 0, narrow._replace(acc_mode=K.EXACT)) is None
    for lv in (narrow, narrow._replace(acc_bits=31)):
        st_ = AccStats()
        got = _simulate_points(x, w, bias, 1, 1, 1, 0, lv, np.repeat(np.arange(9), 2),
                               np.tile(np.arange(2), 9), st_, (3, 3))
        ref, pe, acc = naive.conv2d_acc(x.transpose(0, 3, 1, 2), w, bias, 1, 1, 1, 0, "ws", 4,
                                        16, "wrap", lv.acc_bits, "saturate")
        np.testing.assert_array_equal(got, ref.transpose(0, 2, 3, 1).reshape(-1))
        assert (st_.pe_overflows, st_.acc_overflows) == (pe, acc)


@pytest.mark.parametrize("dataflow, mode, bits", [("os", "wrap", 16), ("os", "saturate", 17),
                                                  ("ws", "wrap", 17), ("ws", "saturate", 16),
                                                  ("is", "wrap", 18)])
def test_simulator_wide_layer_equals_reference(dataflow, mode, bits):
    """A layer wider than one lane block (130 output channels) and more pixels than one
    tile, nearly every output flagged: the simulator's fast path equals the reference engine
    and the oracle, outputs and event counts."""
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 256, size=(2, 6, 9, 9))
    w = rng.choice([-127, 127, -60, 60, 0], size=(130, 6, 3, 3))
    bias = rng.integers(-5000, 5000, size=130)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    fast = equals_reference(narrow_npu(dataflow, 7, bits, mode), prog, x)
    row = fast.stats.iloc[0]
    assert row["acc_overflows"] + row["pe_overflows"] > 100
    assert row["sequential_outputs"] > 0.5 * 2 * 130 * 81
    want, pe, acc = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, dataflow, 7, bits, mode, bits, mode)
    np.testing.assert_array_equal(fast.outputs["y"], want)
    assert row["acc_overflows"] == acc and (dataflow == "os" or row["pe_overflows"] == pe)


@pytest.mark.parametrize("dataflow, mode, bits, padding", [("os", "wrap", 16, 1),
                                                           ("ws", "saturate", 17, 0),
                                                           ("os", "saturate", 16, 1)])
def test_a_few_flagged_outputs_per_pixel_are_walked_alone(dataflow, mode, bits, padding):
    """Two of 64 output channels with large weights: only they are flagged (at most
    O / 32 per pixel), so they are walked one by one (`accumulate._walk_points`, on x padded
    in its own dtype); outputs and statistics equal the reference engine's, event counts the
    oracle's, with overflows."""
    rng = np.random.default_rng(bits + padding)
    x = rng.integers(0, 256, size=(2, 8, 7, 7))
    w = rng.choice([-1, 0, 1], size=(64, 8, 3, 3))
    w[[5, 40]] = rng.choice([-127, 127, 90], size=(2, 8, 3, 3))
    bias = rng.integers(-500, 500, size=64)
    prog = conv_program(w, bias, x.shape[1:], padding=padding, requant=True)
    fast = equals_reference(narrow_npu(dataflow, 8, bits, mode), prog, x)
    row = fast.stats.iloc[0]
    assert row["acc_overflows"] + row["pe_overflows"] > 0
    assert 0 < row["sequential_outputs"] <= 2 * x.shape[2] * x.shape[3] * 2
    _, pe, acc = naive.conv2d_acc(x, w, bias, 1, padding, 1, 0, dataflow, 8, bits, mode, bits,
                                  mode)
    assert row["acc_overflows"] == acc and (dataflow == "os" or row["pe_overflows"] == pe)
