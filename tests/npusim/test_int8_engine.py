"""The exact int8 GEMM engine (`npusim.exact_conv`) against independent references.

The engine is an im2col + int8 x int8 -> int32 GEMM with an input shift, a per-channel
correction, positive/negative product sums for the overflow-risk bound and a checksum. Every
piece is checked here against a plain int64 NumPy convolution, on random shapes and on the
extreme values where int8 arithmetic breaks (-128, the shift, 16-bit saturation).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim import exact_conv
from npusim.config import NPUConfig
from npusim.exact_conv import (InexactError, exact_conv2d, int8_conv_gemm, int8_gemm_available,
                               prepare_int8_conv)
from npusim.simulator import Simulator
from tests.npusim import naive
from tests.npusim.programs import conv_program

pytestmark = pytest.mark.skipif(not int8_gemm_available(), reason="no exact int8 GEMM here")


def ref_conv(x, w, stride, padding, pad_value=0):
    """int64 conv by explicit windows (padding with `pad_value`)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=pad_value)
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride,
                                                                                ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.int64))


@st.composite
def int8_case(draw):
    c = draw(st.integers(1, 5))
    o = draw(st.integers(1, 5))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    h = draw(st.integers(max(k - 2 * pad, 1), 7))
    wd = draw(st.integers(max(k - 2 * pad, 1), 7))
    n = draw(st.integers(1, 3))
    lo, hi = draw(st.sampled_from([(0, 255), (-128, 127), (0, 15), (-8, 7), (3, 200), (-255, 0)]))
    zp = draw(st.sampled_from([0, 0, 3, -5, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([lo, hi, min(max(0, lo), hi), rng.integers(lo, hi + 1)], size=(n, c, h, wd)) + zp
    w = rng.choice([-128, 127, -127, 0, 1, rng.integers(-128, 128)], size=(o, c, k, k))
    return x.astype(np.int64), w.astype(np.int64), stride, pad, zp, (lo, hi)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int8_case(), st.booleans())
def test_int8_gemm_equals_int64_reference(case, signs):
    """Sums, positive and negative product sums: exact for any shift, zero point, padding."""
    x, w, stride, pad, zp, (lo, hi) = case
    plan = prepare_int8_conv(w, stride, pad, zp, lo, hi, signs=signs)
    if plan is None:  # only refused for a sign split of signed inputs or of -128 weights
        assert signs and (min(lo, 0) < 0 or w.min() == -128)
        return
    ho = (x.shape[2] + 2 * pad - w.shape[2]) // stride + 1
    wo = (x.shape[3] + 2 * pad - w.shape[3]) // stride + 1
    res = int8_conv_gemm(x, plan, (ho, wo))
    assert res is not None
    g = res.g.astype(np.int64) + (plan.shift * plan.colsum)[:, None]
    o = w.shape[0]
    n = x.shape[0]

    def as_nchw(rows):
        return rows.reshape(-1, n, ho, wo).transpose(1, 0, 2, 3)

    xs = x - zp
    np.testing.assert_array_equal(as_nchw(g[:o]), ref_conv(xs, w, stride, pad))
    if signs:
        np.testing.assert_array_equal(as_nchw(g[o:2 * o]), ref_conv(xs, np.maximum(w, 0), stride, pad))
        np.testing.assert_array_equal(as_nchw(g[2 * o:]), ref_conv(xs, np.maximum(-w, 0), stride, pad))
    chk = np.array([[sum((1 + (m & 3)) * int(res.g[q, m]) for m in range(b * ho * wo,
                                                                          (b + 1) * ho * wo))
                     for b in range(n)] for q in range(res.g.shape[0])], dtype=np.int64)
    res.verify(chk)


def test_inputs_outside_the_proved_range_are_refused():
    w = np.ones((2, 1, 3, 3), np.int64)
    plan = prepare_int8_conv(w, 1, 1, 0, 0, 255)
    x = np.full((1, 1, 4, 4), 300, np.int64)
    assert int8_conv_gemm(x, plan, (4, 4)) is None


def test_refuses_what_int32_or_int8_cannot_hold():
    assert prepare_int8_conv(np.full((1, 1, 1, 1), 200), 1, 0, 0, 0, 255) is None  # weight
    assert prepare_int8_conv(np.ones((1, 1, 1, 1)), 1, 0, 0, -200, 200) is None  # input span
    big = np.full((1, 20000, 3, 3), 127)  # 255 * 127 * 180000 >= 2^31
    assert prepare_int8_conv(big, 1, 0, 0, 0, 255) is None


def test_checksum_catches_a_wrong_gemm(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 3, 5, 5))
    w = rng.integers(-127, 128, size=(4, 3, 3, 3))
    real = exact_conv._int_mm

    def saturating(a, b):  # what 16-bit intermediate saturation would do to one entry
        g = real(a, b).copy()
        g[7, 1] -= 3
        return g

    monkeypatch.setattr(exact_conv, "_int_mm", saturating)
    with pytest.raises(InexactError):
        exact_conv2d(x, w, 1, 1)


def test_exact_conv2d_uses_int8_engine_and_agrees(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(3, 8, 9, 9))
    w = rng.integers(-128, 128, size=(5, 8, 3, 3))
    calls = []
    real = exact_conv._int_mm
    monkeypatch.setattr(exact_conv, "_int_mm", lambda a, b: calls.append(1) or real(a, b))
    got = exact_conv2d(x, w, 2, 1)
    assert calls
    np.testing.assert_array_equal(got, ref_conv(x, w, 2, 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(["os", "ws"]), st.integers(10, 22),
       st.sampled_from(["exact", "wrap", "saturate"]), st.booleans())
def test_simulator_int8_engine_equals_float_engine_and_oracle(seed, dataflow, bits, mode, relu):
    """The simulator's int8 path (fused requant, risk bounds from GEMM rows, re-simulation)
    against the float engine and the oracle: values and overflow events."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(2, 3, 6, 6))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(4, 3, 3, 3))
    bias = rng.integers(-3000, 3000, size=4)
    cfg = NPUConfig.preset("edge16").with_overrides({
        "array.dataflow": dataflow, "array.rows": 5, "precision.acc_bits": max(bits, 17),
        "precision.pe_acc_bits": max(bits, 17), "precision.overflow": mode})
    for requant in (False, True):
        prog = conv_program(w, bias, x.shape[1:], padding=1, requant=requant, y_signed=not relu)
        sim = Simulator(cfg)
        assert sim.plan(prog)[0].prep is not None
        fast = sim.run(prog, x)
        monkey = exact_conv._INT8_OK
        try:
            exact_conv._INT8_OK = False
            flt = Simulator(cfg).run(prog, x)
        finally:
            exact_conv._INT8_OK = monkey
        np.testing.assert_array_equal(fast.outputs["y"], flt.outputs["y"])
        cols = ["pe_overflows", "acc_overflows", "nonzero_macs", "acc_min", "acc_max",
                "sequential_outputs"]
        assert fast.stats[cols].equals(flt.stats[cols])
        if not requant:
            b = max(bits, 17)
            ref, pe_ovf, acc_ovf = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, dataflow=dataflow,
                                                    rows=5, pe_bits=b, pe_mode=mode, acc_bits=b,
                                                    acc_mode=mode)
            np.testing.assert_array_equal(fast.outputs["y"], ref)
            row = fast.stats.iloc[0]
            assert row["acc_overflows"] == acc_ovf
            if dataflow == "ws":
                assert row["pe_overflows"] == pe_ovf


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.booleans())
def test_run_many_equals_separate_runs(seed, requant):
    """A sweep sharing GEMMs (`run_many`) gives every configuration exactly its own run."""
    from npusim.simulator import run_many

    rng = np.random.default_rng(seed)
    x = rng.choice([0, 255, rng.integers(0, 256)], size=(3, 3, 5, 5))
    w = rng.choice([-127, 127, 0, rng.integers(-127, 128)], size=(4, 3, 3, 3))
    bias = rng.integers(-3000, 3000, size=4)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=requant)
    base = NPUConfig.preset("edge16")
    cfgs = [base] + [base.with_overrides({"precision.acc_bits": b, "precision.pe_acc_bits": b,
                                          "precision.overflow": m, "array.dataflow": d})
                     for b in (17, 19, 32) for m in ("wrap", "saturate") for d in ("os", "ws")]
    many = run_many([Simulator(c) for c in cfgs], prog, x, batch_size=2)
    for cfg, got in zip(cfgs, many):
        one = Simulator(cfg).run(prog, x, batch_size=2)
        np.testing.assert_array_equal(got.outputs["y"], one.outputs["y"])
        assert got.stats.equals(one.stats)
