"""`count_events=False` (`accumulate.wrap_shortcut`): layers whose risky levels only wrap get
their values from the exact sums wrapped once, without the order-faithful walk. The values
must equal the reference engine's (and the independent oracle's) bit for bit; the layers that
still need the walk (saturation, a narrower wrapping pe level) keep exact event counts."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.ir.bounds import layer_bounds
from npusim.sim import kernels as K
from npusim.sim.accumulate import risks, wrap_shortcut
from npusim.sim.engines import select
from npusim.sim.simulator import Simulator, overflow_rate
from tests.npusim import naive
from tests.npusim.programs import conv_program

MODES = ["exact", "wrap", "saturate"]
ENGINES = ["float"] + (["int8"] if select("auto").int8_kind else [])


@st.composite
def case(draw):
    """A small conv with operands at their extremes (narrow accumulators overflow often), zero
    points, groups, strides and padding; requantized or raw."""
    g = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.integers(1, 4))
    og = draw(st.sampled_from([1, 3, 6]))
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, k // 2))
    h, wd = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    n = draw(st.integers(1, 2))
    zp_x = draw(st.sampled_from([0, 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.choice([0, 255, zp_x, int(rng.integers(0, 256))], size=(n, g * cg, h, wd))
    w = rng.choice([-127, 127, 0, 1, -1, int(rng.integers(-127, 128))], size=(g * og, cg, k, k))
    bias = rng.integers(-3000, 3000, size=g * og)
    return dict(x=x, w=w, bias=bias, stride=stride, pad=pad, groups=g, zp_x=zp_x,
                requant=draw(st.booleans()))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case(), st.sampled_from(["os", "ws", "is"]), st.integers(1, 12), st.sampled_from(MODES),
       st.sampled_from(MODES), st.integers(16, 19), st.integers(0, 3),
       st.sampled_from(ENGINES))
def test_values_without_events_equal_reference(c, dataflow, rows, pe_mode, acc_mode, acc_bits,
                                               narrower, engine):
    """Widths just above a product's 16 bits: outputs equal the reference engine's; events are
    None exactly where the shortcut applies, else the reference's counts."""
    pe_bits = max(16, acc_bits - narrower)
    prog = conv_program(c["w"], c["bias"], c["x"].shape[1:], zp_x=c["zp_x"], stride=c["stride"],
                        padding=c["pad"], groups=c["groups"], requant=c["requant"])
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"array.dataflow": dataflow, "array.rows": rows, "precision.acc_bits": acc_bits,
         "precision.pe_acc_bits": pe_bits, "precision.pe_overflow": pe_mode,
         "precision.acc_overflow": acc_mode})
    fast = Simulator(cfg, engine=engine, count_events=False).run(prog, c["x"])
    ref = Simulator(cfg, engine="reference").run(prog, c["x"])
    np.testing.assert_array_equal(fast.outputs["y"], ref.outputs["y"])
    got, want = fast.stats.iloc[0], ref.stats.iloc[0]
    assert (got["acc_min"], got["acc_max"]) == (want["acc_min"], want["acc_max"])
    if pd.isna(got["acc_overflows"]):  # not counted: only where the walk was skipped
        assert pd.isna(got["pe_overflows"])
        lv = Simulator(cfg)._levels(cfg.precision)
        lb = layer_bounds(prog, prog.nodes[0])
        at_risk = risks(lv, lb.bound_l1_bits, lb.bound_l1_nobias_bits)
        assert any(at_risk) and wrap_shortcut(lv, *at_risk) is not None
        assert np.isnan(overflow_rate(fast.stats))
    else:
        assert (got["pe_overflows"], got["acc_overflows"]) == \
            (want["pe_overflows"], want["acc_overflows"])
    if not c["requant"]:  # raw accumulators: against the independent oracle too
        acc, _, _ = naive.conv2d_acc(c["x"], c["w"], c["bias"], c["stride"], c["pad"],
                                     c["groups"], c["zp_x"], dataflow, rows, pe_bits, pe_mode,
                                     acc_bits, acc_mode)
        np.testing.assert_array_equal(fast.outputs["y"], acc)


def test_shortcut_rule():
    """Where the values are order-independent (wrap; a wrapping pe level at least as wide as the
    accumulator; exact levels) and where they are not (saturation, a narrower wrapping pe)."""
    lv = K.LevelSpec(K.WS, 16, 16, K.WRAP, 16, K.WRAP)
    assert wrap_shortcut(lv, True, True) == 16
    assert wrap_shortcut(lv._replace(pe_bits=15), True, True) is None
    assert wrap_shortcut(lv._replace(pe_bits=15), False, True) == 16
    assert wrap_shortcut(lv._replace(acc_mode=K.SATURATE), True, True) is None
    assert wrap_shortcut(lv._replace(pe_mode=K.SATURATE), True, True) is None
    assert wrap_shortcut(lv._replace(pe_mode=K.SATURATE), False, True) == 16
    assert wrap_shortcut(lv._replace(pe_mode=K.EXACT, acc_mode=K.EXACT), True, True) == 0
    assert wrap_shortcut(lv._replace(order=K.OS, pe_mode=K.SATURATE), False, True) == 16


@pytest.mark.parametrize("engine", ENGINES)
def test_wide_layer_many_wraps(engine):
    """130 channels, nearly every output wrapping at 16 bits: values equal the reference and
    the oracle; the event columns are missing (not zero) without counting."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(2, 6, 9, 9))
    w = rng.choice([-127, 127, -60, 60, 0], size=(130, 6, 3, 3))
    bias = rng.integers(-5000, 5000, size=130)
    prog = conv_program(w, bias, x.shape[1:], padding=1, requant=False)
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"array.dataflow": "ws", "array.rows": 7, "precision.acc_bits": 16,
         "precision.overflow": "wrap"})
    fast = Simulator(cfg, engine=engine, count_events=False).run(prog, x)
    want, pe, acc = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, "ws", 7, 16, "wrap", 16, "wrap")
    assert acc > 100
    np.testing.assert_array_equal(fast.outputs["y"], want)
    row = fast.stats.iloc[0]
    assert pd.isna(row["acc_overflows"]) and row["sequential_outputs"] == 0
    counted = Simulator(cfg, engine=engine).run(prog, x).stats.iloc[0]
    assert (counted["pe_overflows"], counted["acc_overflows"]) == (pe, acc)
