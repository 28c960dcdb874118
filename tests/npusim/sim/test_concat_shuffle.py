"""concat / slice / channel_shuffle kernels against the independent oracle (tests/npusim/naive.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.hw.config import NPUConfig
from npusim.ir.program import Node, ProgramError, TensorSpec
from npusim.ir.requant import RequantSpec, node_requant
from npusim.sim.simulator import Simulator
from tests.npusim import naive
from tests.npusim.programs import finish

# scale ratios that put many values exactly on a rounding tie, and arbitrary ones
RATIOS = st.one_of(st.sampled_from([1.0, 0.5, 2.0, 1.5, 0.25, 2.5, 1 / 3]),
                   st.floats(0.05, 4.0))


def _program(c, k, hw, sx, zpx, sb, zpb, sy, zpy, signed, groups, order, rq, clamp=None,
             relabel="maxpool2d"):
    """x -> slice [0,k) -> a;  x -> slice [k,c) -> relabel (other scale/zp: the same integers
    by a 1x1 max pool, or requantized by a one-input concat) -> b;
    concat(order of a/b) -> y; channel_shuffle(groups) -> z."""
    def spec(ch, s, zp):
        return TensorSpec((ch, hw, hw), 8, signed, s, zp)
    ins = {"a": spec(k, sx, zpx), "b": spec(c - k, sb, zpb)}
    cy = sum(ins[n].shape[0] for n in order)
    tensors = {"x": spec(c, sx, zpx), "a": ins["a"], "b0": spec(c - k, sx, zpx), "b": ins["b"],
               "y": spec(cy, sy, zpy), "z": spec(cy, sy, zpy)}
    lo, hi = clamp or tensors["y"].int_range()
    nodes = [Node("s1", "slice", ["x"], "a", {"start": 0, "stop": k}),
             Node("s2", "slice", ["x"], "b0", {"start": k, "stop": c}),
             Node("relabel", "maxpool2d", ["b0"], "b", {"kernel": 1, "stride": 1})
             if relabel == "maxpool2d" else
             Node("relabel", "concat", ["b0"], "b", {"clamp": list(ins["b"].int_range())}),
             Node("cat", "concat", list(order), "y", {"clamp": [lo, hi]}),
             Node("shuf", "channel_shuffle", ["y"], "z", {"groups": groups})]
    return finish(nodes, tensors, {}, "x", ["z"], rq.to_dict())


@st.composite
def cases(draw):
    c = draw(st.integers(2, 12))
    k = draw(st.integers(1, c - 1))
    order = draw(st.sampled_from([("a", "b"), ("b", "a"), ("a", "b", "a")]))
    cy = c + (k if len(order) == 3 else 0)
    groups = draw(st.sampled_from([g for g in range(1, cy + 1) if cy % g == 0]))
    signed = draw(st.booleans())
    zp = st.integers(-128, 127) if signed else st.integers(0, 255)
    sx = draw(st.floats(0.001, 1.0))
    return dict(c=c, k=k, hw=draw(st.integers(1, 3)), sx=sx, zpx=draw(zp),
                sb=sx * draw(RATIOS), zpb=draw(zp), sy=sx * draw(RATIOS), zpy=draw(zp),
                signed=signed, groups=groups, order=order, seed=draw(st.integers(0, 2 ** 31)))


def _run(case, rq, clamp=None):
    prog = _program(case["c"], case["k"], case["hw"], case["sx"], case["zpx"], case["sb"],
                    case["zpb"], case["sy"], case["zpy"], case["signed"], case["groups"],
                    case["order"], rq, clamp)
    lo, hi = prog.tensors["x"].int_range()
    x = np.random.default_rng(case["seed"]).integers(lo, hi + 1,
                                                    size=(2, *prog.tensors["x"].shape))
    res = Simulator(NPUConfig.ideal(rq.to_dict())).run(prog, x, trace=True)
    a = naive.slice_channels(x, 0, case["k"])
    b = naive.slice_channels(x, case["k"], case["c"])
    vals = {"a": (a, case["sx"], case["zpx"]), "b": (b, case["sb"], case["zpb"])}
    ins = [vals[n] for n in case["order"]]
    ylo, yhi = prog.nodes[3].attrs["clamp"]
    if rq.scale_mode == "float":
        y = naive.concat_ort([v for v, _, _ in ins], [float(np.float32(s)) for _, s, _ in ins],
                             [z for _, _, z in ins], float(np.float32(case["sy"])), case["zpy"],
                             ylo, yhi)
    else:
        p = node_requant(prog, prog.nodes[3], rq)
        y = naive.concat_fixed([v for v, _, _ in ins], [z for _, _, z in ins], p.m0, p.n,
                               rq.rounding, rq.multiplier_bits, case["zpy"], ylo, yhi,
                               pow2=rq.scale_mode == "pow2")
    np.testing.assert_array_equal(res.traces["a"], a)
    np.testing.assert_array_equal(res.traces["y"], y)
    np.testing.assert_array_equal(res.outputs["z"], naive.channel_shuffle(y, case["groups"]))
    return prog, x, y


@settings(max_examples=60, deadline=None)
@given(cases(), st.sampled_from(["half_away", "half_up", "half_even"]),
       st.sampled_from(["fixed", "pow2"]), st.sampled_from([32, 16, 8]))
def test_concat_slice_shuffle_match_oracle_fixed(case, rounding, scale_mode, mbits):
    _run(case, RequantSpec(scale_mode=scale_mode, rounding=rounding, multiplier_bits=mbits))


@settings(max_examples=60, deadline=None)
@given(cases())
def test_concat_matches_onnxruntime_qlinearconcat_formula_in_float_mode(case):
    _run(case, RequantSpec(scale_mode="float", rounding="half_even"))


def test_concat_hits_ties_and_copies_inputs_with_the_output_parameters():
    # s_b / s_y = 0.5 and 1.5: every odd value is a tie; a has the output's parameters
    case = dict(c=4, k=2, hw=2, sx=0.25, zpx=0, sb=0.125, zpb=0, sy=0.25, zpy=0, signed=True,
                groups=2, order=("a", "b"), seed=3)
    for rq in (RequantSpec(rounding="half_even"), RequantSpec(rounding="half_up"),
               RequantSpec(scale_mode="float", rounding="half_even")):
        prog, x, y = _run(case, rq)
        np.testing.assert_array_equal(y[:, :2], x[:, :2])  # an exact copy
        b = x[:, 2:].astype(np.int64)
        ties = b % 2 != 0
        assert ties.any()
        expect = {"half_even": np.round(b / 2),  # numpy rounds half to even
                  "half_up": np.floor((b + 1) / 2)}[rq.rounding]
        np.testing.assert_array_equal(y[:, 2:], expect)


@pytest.mark.parametrize("node, msg", [
    (Node("s", "slice", ["x"], "y", {"start": 2, "stop": 2}), "attrs.stop: expected start < stop"),
    (Node("s", "channel_shuffle", ["x"], "y", {"groups": 3}), "attrs.groups: 3 does not divide"),
    (Node("s", "concat", [], "y", {"clamp": [0, 255]}), r"concat takes 1 or more input\(s\), got 0"),
])
def test_bad_nodes_are_refused_naming_node_and_field(node, msg):
    spec = TensorSpec((4, 2, 2), 8, False, 0.1)
    with pytest.raises(ProgramError, match=msg):
        finish([node], {"x": spec, "y": TensorSpec((4, 2, 2), 8, False, 0.1)}, {}, "x", ["y"])


def test_a_view_keeps_its_inputs_parameters():
    nodes = [Node("s", "slice", ["x"], "y", {"start": 0, "stop": 2})]
    tensors = {"x": TensorSpec((4, 2, 2), 8, False, 0.1), "y": TensorSpec((2, 2, 2), 8, False, 0.2)}
    with pytest.raises(ProgramError, match="node 's': output: a slice keeps its input's"):
        finish(nodes, tensors, {}, "x", ["y"])
