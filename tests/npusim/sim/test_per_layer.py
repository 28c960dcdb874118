"""Per-layer precision ([[layer]] tables): every node runs at its own widths, checked against
the independent oracle at both levels in every dataflow, on every engine; the observed
running-sum widths of `npusim.sim.observe` against the oracle's overflow events."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.ir.requant import RequantSpec, node_requant
from npusim.sim.simulator import SimulationError, Simulator, run_many
from tests.npusim import naive
from tests.npusim.programs import conv_program, stem_fc_program

MODES = ["exact", "wrap", "saturate"]
STEM_PRODUCT_BITS, FC_PRODUCT_BITS = 9, 12  # 5-bit unsigned x 4-bit, 8-bit unsigned x 4-bit


def _images(seed, n=2):
    rng = np.random.default_rng(seed)
    # steer into the extremes so narrow accumulators overflow
    return rng.choice([0, 31, 17, rng.integers(0, 32)], size=(n, 1, 8, 8)).astype(np.uint8)


def _oracle(prog, x, dataflow, rows, widths):
    """Logits and per-layer events of `prog` with each layer at its own (pe, pe_mode, acc,
    acc_mode) in `widths`."""
    t = prog.tensors
    rq = RequantSpec.from_dict(prog.requant)
    pe, pm, ab, am = widths["stem"]
    acc, pe1, acc1 = naive.conv2d_acc(x, prog.arrays["stem.weight"], prog.arrays["stem.bias"], 1, 1,
                                      1, 0, dataflow=dataflow, rows=rows, pe_bits=pe, pe_mode=pm,
                                      acc_bits=ab, acc_mode=am)
    p = node_requant(prog, prog.node("stem"), rq)
    s = naive.requantize(acc, p.m0, p.n, rq.rounding, rq.multiplier_bits, 0, *t["s"].int_range())
    pe, pm, ab, am = widths["fc"]
    y, pe2, acc2 = naive.linear_acc(s.reshape(len(s), -1), prog.arrays["fc.weight"],
                                    prog.arrays["fc.bias"], 0, dataflow=dataflow, rows=rows,
                                    pe_bits=pe, pe_mode=pm, acc_bits=ab, acc_mode=am)
    return y, {"stem": (pe1, acc1), "fc": (pe2, acc2)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["os", "ws", "is"]), st.integers(1, 5), st.booleans(),
       st.tuples(st.integers(0, 4), st.sampled_from(MODES), st.integers(0, 4), st.sampled_from(MODES)),
       st.tuples(st.integers(0, 6), st.sampled_from(MODES), st.integers(0, 6), st.sampled_from(MODES)),
       st.sampled_from(["auto", "float", "reference"]), st.integers(0, 2 ** 16))
def test_each_layer_runs_at_its_own_widths_like_the_oracle(dataflow, rows, stem_in_table, w1, w2,
                                                           engine, seed):
    """One layer takes its widths and modes from a [[layer]] table, the other from the body;
    outputs, per-layer overflow events and the stats' width columns equal the oracle's."""
    prog = stem_fc_program(seed=seed % 7)
    x = _images(seed)
    # the partial sums are never wider than the accumulator (the config refuses that)
    stem = (STEM_PRODUCT_BITS + min(w1[0], w1[2]), w1[1], STEM_PRODUCT_BITS + max(w1[0], w1[2]), w1[3])
    fc = (FC_PRODUCT_BITS + min(w2[0], w2[2]), w2[1], FC_PRODUCT_BITS + max(w2[0], w2[2]), w2[3])
    table, body = ("stem", stem), ("fc", fc)
    if not stem_in_table:
        table, body = body, table
    over = {"array.dataflow": dataflow, "array.rows": rows,
            "precision.pe_acc_bits": body[1][0], "precision.pe_overflow": body[1][1],
            "precision.acc_bits": body[1][2], "precision.acc_overflow": body[1][3],
            "layer[0].match": table[0] + "*",
            "layer[0].precision.pe_acc_bits": table[1][0],
            "layer[0].precision.pe_overflow": table[1][1],
            "layer[0].precision.acc_bits": table[1][2],
            "layer[0].precision.acc_overflow": table[1][3]}
    cfg = NPUConfig.preset("edge16").with_overrides(over)
    res = Simulator(cfg, engine=engine).run(prog, x)
    want, events = _oracle(prog, x, dataflow, rows, {"stem": stem, "fc": fc})
    np.testing.assert_array_equal(res.logits, want)
    stats = res.stats.set_index("layer")
    for name, (pe, pm, ab, am) in (("stem", stem), ("fc", fc)):
        row = stats.loc[name]
        assert (row["pe_acc_bits"], row["acc_bits"]) == (pe, ab)
        assert row["overflow"] == (am if pm == am else f"{pm}/{am}")
        pe_ev, acc_ev = events[name]
        assert row["acc_overflows"] == acc_ev
        if dataflow != "os":
            assert row["pe_overflows"] == pe_ev


def test_first_matching_table_wins_and_run_many_equals_separate_runs():
    prog = stem_fc_program(seed=3)
    x = _images(1, n=4)
    base = NPUConfig.preset("edge16").with_overrides({
        "precision.acc_bits": 13, "precision.pe_acc_bits": 13, "precision.overflow": "wrap",
        "layer[0].match": "st*", "layer[0].precision.acc_bits": 10,
        "layer[0].precision.pe_acc_bits": 10, "layer[1].match": "*",
        "layer[1].precision.acc_bits": 24, "layer[1].precision.pe_acc_bits": 24})
    res = Simulator(base).run(prog, x)
    st_ = res.stats.set_index("layer")
    assert st_.loc["stem", "acc_bits"] == 10 and st_.loc["fc", "acc_bits"] == 24
    # the same widths given without tables run the same
    cfgs = [base, base.with_overrides({"precision.overflow": "saturate"}),
            base.with_overrides({"precision.acc_bits": 9, "precision.pe_acc_bits": 9})]
    many = run_many([Simulator(c) for c in cfgs], prog, x)
    for c, got in zip(cfgs, many):
        one = Simulator(c).run(prog, x)
        np.testing.assert_array_equal(got.logits, one.logits)
        assert got.stats.equals(one.stats)


def test_a_pattern_that_matches_no_node_is_refused_in_one_line():
    prog = stem_fc_program()
    cfg = NPUConfig.preset("edge16").with_overrides({"layer[0].match": "conv*",
                                                     "layer[0].precision.acc_bits": 20})
    with pytest.raises(SimulationError) as e:
        Simulator(cfg).run(prog, _images(0))
    msg = str(e.value)
    assert "\n" not in msg and "layer[0].match 'conv*' matches no node" in msg and "stem" in msg


def test_a_layer_narrower_than_one_product_is_refused_naming_its_table():
    prog = stem_fc_program()
    cfg = NPUConfig.preset("edge16").with_overrides({"layer[0].match": "fc",
                                                     "layer[0].precision.acc_bits": 8})
    with pytest.raises(SimulationError, match=r"node 'fc'.*layer\[0\]\.precision\.acc_bits"):
        Simulator(cfg).run(prog, _images(0))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["os", "ws", "is"]), st.integers(1, 6), st.integers(0, 2 ** 16))
def test_observed_widths_are_the_narrowest_without_an_oracle_overflow(dataflow, rows, seed):
    """At the observed widths the oracle counts no overflow event; one bit narrower at a
    level, it counts some at that level."""
    from npusim.sim.observe import observed_widths

    rng = np.random.default_rng(seed)
    w = rng.choice([-7, 7, 0, 1, -3], size=(3, 2, 3, 3))
    bias = rng.integers(-300, 300, size=3)
    prog = conv_program(w, bias, (2, 5, 5), x_bits=8, w_bits=4, padding=1, requant=False)
    x = rng.choice([0, 255, 3, 128], size=(2, 2, 5, 5)).astype(np.uint8)
    obs = observed_widths(prog, x, dataflow, rows).iloc[0]
    acc_bits = int(obs["observed_acc_bits"])
    pe_bits = 62 if dataflow == "os" else int(obs["observed_pe_bits"])

    def events(pe, acc):
        _, pe_ev, acc_ev = naive.conv2d_acc(x, w, bias, 1, 1, 1, 0, dataflow=dataflow, rows=rows,
                                            pe_bits=pe, pe_mode="exact", acc_bits=acc,
                                            acc_mode="exact")
        return pe_ev, acc_ev

    assert events(pe_bits, acc_bits) == (0, 0)
    assert events(pe_bits, acc_bits - 1)[1] > 0
    if dataflow != "os":
        assert events(pe_bits - 1, acc_bits)[0] > 0
