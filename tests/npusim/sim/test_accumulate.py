"""`npusim.sim.accumulate`: the requantization of whole channels-last arrays against the
independent oracle (tests/npusim/naive.py); a layer's path chosen from its last batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.ir import arith as A
from npusim.sim import int8_tiles
from npusim.sim.accumulate import Requant
from npusim.sim.simulator import Simulator
from tests.npusim import naive
from tests.npusim.programs import conv_program
from tests.npusim.sim.helpers import narrow_npu

CODES = {"half_away": A.TFLITE_DOUBLE, "half_up": A.HALF_UP, "half_even": A.HALF_EVEN}


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 70), st.integers(1, 12), st.sampled_from([*sorted(CODES), "float"]),
       st.sampled_from([8, 16, 32]), st.integers(2, 30), st.integers(0, 2 ** 32 - 1))
def test_apply_channels_last_equals_the_oracle(m, o, rounding, mbits, acc_bits, seed):
    """`Requant.apply_channels_last` (`kernels.requant_rows_kernel`: float64 lanes where the
    record allows it and they are exact, else the int64 rule) per channel against the
    oracle's per-element rule (int64 or int16 accumulators): every rounding, the float
    multiplier, rows past a task's 64, accumulators whose products leave float64's exact
    range (the int64 fallback; visible where the int32 output range does not clamp them),
    ties."""
    rng = np.random.default_rng(seed)
    top = (1 << (acc_bits - 1)) - 1
    acc = rng.integers(-top - 1, top + 1, size=(m, o))
    acc[rng.random((m, o)) < 0.2] = rng.choice([-top - 1, top, 0, 1 << (acc_bits - 2)])
    m0 = rng.integers(0, 1 << (mbits - 1), size=o)
    m0[rng.random(o) < 0.2] = (1 << (mbits - 1)) - 1
    shift_top = 53 if rng.random() < 0.7 else 63  # within the float64 path's shifts, or not
    n = rng.integers(max(0, mbits - 1 - (62 - acc_bits - mbits)), shift_top, size=o)
    mf = rng.uniform(1e-6, 4.0, size=o).astype(np.float32)
    zp = int(rng.integers(-20, 20))
    lo, hi = (-128, 127) if rng.random() < 0.5 else (-(1 << 31), (1 << 31) - 1)  # unclamped
    if rounding == "float":
        rq = Requant.of(m0, n, mf, True, 0, mbits, zp, lo, hi)
        want = naive.requantize_float(acc, mf, zp, lo, hi)
    else:
        rq = Requant.of(m0, n, mf, False, CODES[rounding], mbits, zp, lo, hi)
        want = naive.requantize(acc, m0, n, rounding, mbits, zp, lo, hi)
    # the register walk hands int16 accumulators over as they are
    dt = np.int16 if acc_bits <= 16 and rng.random() < 0.5 else np.int64
    got, lo, hi = rq.apply_channels_last(acc.reshape(1, m, o).astype(dt))
    assert got.dtype == rq.dtype and got.shape == (1, m, o)
    np.testing.assert_array_equal(got[0].astype(np.int64), want)
    assert (lo, hi) == ((int(acc.min()), int(acc.max())) if acc.size else (0, 0))


def test_apply_channels_last_falls_back_where_float64_would_round():
    """An accumulator just below a rounding tie whose product float64 cannot hold (2^55 +
    2^29 - 1 at m0 = 1, shift 30: float64 rounds it onto the tie, and half_up then rounds
    up): the int64 rule's result, as the oracle's; beside it a row float64 holds exactly."""
    acc = np.array([[(1 << 55) + (1 << 29) - 1, 3 << 29], [5, -(3 << 29)]], np.int64)
    m0, n = np.ones(2, np.int64), np.full(2, 30, np.int64)
    rq = Requant.of(m0, n, np.ones(2, np.float32), False, A.HALF_UP, 32, 0, -(1 << 31),
                    (1 << 31) - 1)
    assert rq.rec.f64
    want = naive.requantize(acc, m0, n, "half_up", 32, 0, -(1 << 31), (1 << 31) - 1)
    assert want[0, 0] == 1 << 25  # not 2^25 + 1
    np.testing.assert_array_equal(rq.apply_channels_last(acc)[0].astype(np.int64), want)


@pytest.mark.skipif(not int8_tiles.available(), reason="the fused risk conv runs on the own tiles")
@pytest.mark.parametrize("dataflow, mode", [("os", "wrap"), ("ws", "saturate")])
def test_a_layer_that_flagged_every_pixel_walks_them_all_next(monkeypatch, dataflow, mode):
    """A single configuration's layer without chunk sums (3 input channels) whose call flagged
    every pixel walks all of them in its next `_WALK_ALL_RUN` calls without the engine's
    conv, then runs the conv again: outputs, event counts, extremes and non-zero products
    equal the reference engine's in every batch; a walked batch's `sequential_outputs` is
    every output."""
    from npusim.sim import accumulate

    monkeypatch.setattr(accumulate, "_WALK_ALL_RUN", 2)
    convs = []
    real = accumulate.int8_conv_fused
    monkeypatch.setattr(accumulate, "int8_conv_fused", lambda *a: convs.append(1) or real(*a))
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, size=(16, 3, 5, 5))
    prog = conv_program(w, rng.integers(-500, 500, size=16), (3, 12, 12), padding=2,
                        requant=False)
    cfg = narrow_npu(dataflow, 8, 16, mode)
    sim, ref = Simulator(cfg), Simulator(cfg, engine="reference")
    cols = ["pe_overflows", "acc_overflows", "acc_min", "acc_max", "nonzero_macs"]
    seen = []
    for seed in range(4):
        x = np.random.default_rng(seed).integers(0, 256, size=(2, 3, 12, 12))
        got, want = sim.run(prog, x), ref.run(prog, x)
        np.testing.assert_array_equal(got.outputs["y"], want.outputs["y"])
        assert got.stats[cols].equals(want.stats[cols])
        assert got.stats["acc_overflows"].sum() + got.stats["pe_overflows"].sum() > 0
        seen.append((len(convs), int(got.stats.iloc[0]["sequential_outputs"])))
        convs.clear()
    assert seen == [(1, seen[0][1]), (0, 2 * 12 * 12 * 16), (0, 2 * 12 * 12 * 16),
                    (1, seen[3][1])]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.sampled_from([1, 3, 8, 16, 24, 70]), st.floats(0.0, 0.3),
       st.integers(0, 2 ** 32 - 1))
def test_flagged_points_equal_numpys_nonzero(m, o, density, seed):
    """`kernels.flagged_points_kernel` (the few flagged outputs' coordinates, eight flags at a
    time where they are all zero) against `np.nonzero` on random flags of some rows, whole
    words of eight and a remainder; a count short of the flags writes only what fits."""
    from npusim.sim import kernels as K

    rng = np.random.default_rng(seed)
    flags = (rng.random((m, o)) < density).astype(np.uint8) * rng.integers(1, 256, (m, o))
    flags = flags.astype(np.uint8)
    pix = np.flatnonzero(rng.random(m) < 0.7)
    r, c = np.nonzero(flags[pix])
    got = np.full(len(r), -1, np.int64), np.full(len(r), -1, np.int64)
    assert K.flagged_points_kernel(flags, pix, *got) == len(r)
    assert got[0].tolist() == pix[r].tolist() and got[1].tolist() == c.tolist()
    if len(r):
        short = np.full(len(r) - 1, -1, np.int64), np.full(len(r) - 1, -1, np.int64)
        assert K.flagged_points_kernel(flags, pix, *short) == len(r)
        assert short[0].tolist() == pix[r][:-1].tolist() and short[1].tolist() == c[:-1].tolist()
