"""Float-mode average pooling with a window equals ONNX Runtime's QLinearAveragePool (and the
QDQ ``DequantizeLinear -> AveragePool -> QuantizeLinear`` that ORT fuses into it), ties and
count_include_pad included."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from npusim.ir.program import IntegerProgram, Node, TensorSpec
from npusim.onnx.importer import FLOAT_REQUANT, import_onnx
from npusim.sim.simulator import SimulationError, Simulator
from tests.npusim import naive
from tests.npusim.onnx import helpers as H

F32 = np.float32


def ort_avgpool(x, k, s, p, cip, s_x, zp_x, s_y, zp_y, signed, fmt):
    """One QLinearAveragePool (fmt "qop") or DequantizeLinear -> AveragePool -> QuantizeLinear
    (fmt "qdq") run by ONNX Runtime with its default (fusing) optimizations."""
    dt, npdt = (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    inits = [helper.make_tensor("sx", TensorProto.FLOAT, [], [float(s_x)]),
             helper.make_tensor("zx", dt, [], [int(zp_x)]),
             helper.make_tensor("sy", TensorProto.FLOAT, [], [float(s_y)]),
             helper.make_tensor("zy", dt, [], [int(zp_y)])]
    pool = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, count_include_pad=int(cip))
    if fmt == "qop":
        nodes = [helper.make_node("QLinearAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"],
                                  domain="com.microsoft", **pool)]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
                 helper.make_node("AveragePool", ["xf"], ["yf"], **pool),
                 helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dt, list(x.shape))],
                              [helper.make_tensor_value_info("y", dt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return H.session(model).run(None, {"x": x.astype(npdt)})[0].astype(np.int64)


def avgpool_program(shape, k, s, p, cip, s_x, zp_x, s_y, zp_y, signed) -> IntegerProgram:
    c, h, w = shape
    out = (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    tensors = {"x": TensorSpec(shape, 8, signed, float(s_x), int(zp_x)),
               "y": TensorSpec(out, 8, signed, float(s_y), int(zp_y)),
               "a.multiplier": TensorSpec((1,), 32, True), "a.shift": TensorSpec((1,), 8, True)}
    arrays = {"a.multiplier": np.zeros(1, np.int32), "a.shift": np.zeros(1, np.int8)}
    lo, hi = tensors["y"].int_range()
    attrs = {"kernel": k, "stride": s, "padding": p, "clamp": [lo, hi], "count_include_pad": cip}
    node = Node("a", "avgpool2d", ["x"], "y", attrs)
    return IntegerProgram([node], tensors, arrays, "x", ["y"], dict(FLOAT_REQUANT)).validate()


def simulate(x, *args):
    prog = avgpool_program(x.shape[1:], *args)
    return Simulator(H.float_config()).run(prog, x).outputs["y"].astype(np.int64)


@st.composite
def cases(draw):
    k = draw(st.integers(1, 5))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    h = draw(st.integers(max(k - 2 * p, 1), 9))
    w = draw(st.integers(max(k - 2 * p, 1), 9))
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    # power-of-two scales make exact ties (.5 after the division) common
    scale = st.one_of(st.integers(-8, 2).map(lambda e: F32(2.0 ** e)),
                      st.floats(2.0**-10, 0.5, width=32).map(F32))
    s_x, s_y = draw(scale), draw(scale)
    # a window that is the whole input runs as ORT's global pool, whose MLAS kernel refuses
    # ("parameter out of computation range") a scale s_x / (s_y * k * k) in float32 outside
    # [2^-32, 256): ORT gives no reference there (found by Hypothesis: k = h = w = 2,
    # s_x = 1, s_y = 2^-10)
    ratio = F32(s_x) / (F32(s_y) * F32(k * k))
    assume(not (k == h == w and p == 0) or 2.0 ** -32 <= ratio < 256)
    zp_x, zp_y = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    seed = draw(st.integers(0, 2**31))
    x = np.random.default_rng(seed).integers(lo, hi + 1, size=(draw(st.integers(1, 2)),
                                                               draw(st.integers(1, 4)), h, w))
    return x, (k, s, p, draw(st.booleans()), s_x, zp_x, s_y, zp_y, signed)


@settings(max_examples=80, deadline=None)
@given(cases(), st.sampled_from(["qop", "qdq"]))
def test_equals_onnxruntime_windows_strides_pads(case, fmt):
    x, args = case
    ref = ort_avgpool(x, *args, fmt)
    np.testing.assert_array_equal(simulate(x, *args), ref)
    k, s, p, cip, s_x, zp_x, s_y, zp_y, signed = args
    if not (k == x.shape[2] == x.shape[3] and p == 0):  # ORT's global fallback: see below
        lo, hi = (-128, 127) if signed else (0, 255)
        np.testing.assert_array_equal(
            naive.ort_avgpool(x, k, s, p, cip, s_x, zp_x, s_y, zp_y, lo, hi), ref)


@pytest.mark.parametrize("signed", [False, True])
def test_ties_round_half_even_with_the_zero_point_inside(signed):
    # s_x = s_y = 1/16 and a 2x2 window: every mean is an exact quarter, half of the others a
    # tie; zp_y odd, so rounding before adding it (rint(x) + zp) would be off by one there
    rng = np.random.default_rng(7)
    lo, hi = (-128, 127) if signed else (0, 255)
    x = rng.integers(lo, hi + 1, size=(2, 8, 10, 10))
    zp_x, zp_y = (3, 5) if signed else (131, 101)
    args = (2, 2, 0, True, F32(1 / 16), zp_x, F32(1 / 16), zp_y, signed)
    ref = ort_avgpool(x, *args, "qop")
    got = simulate(x, *args)
    np.testing.assert_array_equal(got, ref)
    exact = (naive.avgpool_acc(x, 2, 2, zp_x) / 4.0)
    ties = (exact % 1 == 0.5) & (exact + zp_y > lo) & (exact + zp_y < hi)
    assert ties.sum() > 50
    assert (np.rint(exact[ties]) + zp_y != got[ties]).any()
    np.testing.assert_array_equal(got[ties], np.rint(exact[ties] + zp_y).astype(np.int64))


def test_window_over_the_whole_map_is_the_global_pool_like_onnxruntime():
    # ORT runs a window that covers the unpadded map as QLinearGlobalAveragePool (integer sum,
    # one float32 multiplier, rounded before zp_y is added): on exact ties with an odd zp_y it
    # differs from the float-sum arithmetic of a smaller window; the simulator follows ORT
    x = np.random.default_rng(4).integers(0, 256, size=(2, 64, 2, 2))
    args = (2, 2, 0, True, F32(1 / 16), 131, F32(1 / 16), 101, False)
    ref = ort_avgpool(x, *args, "qop")
    assert (naive.ort_avgpool(x, *args[:-1], 0, 255) != ref).any()
    np.testing.assert_array_equal(simulate(x, *args), ref)


def test_count_include_pad_false_is_float_mode_only():
    x = np.zeros((1, 1, 4, 4), np.int64)
    prog = avgpool_program((1, 4, 4), 3, 1, 1, False, F32(0.1), 0, F32(0.1), 0, False)
    with pytest.raises(SimulationError, match="count_include_pad"):
        Simulator(H.float_config().with_overrides({"requant.scale_mode": "fixed"})).run(prog, x)


class _Pools(torch.nn.Module):
    """conv, then average pools with padding, both count_include_pad settings."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.a = torch.nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)
        self.b = torch.nn.AvgPool2d(3, 1, padding=1, count_include_pad=True)
        self.c = torch.nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.c(self.b(self.a(torch.relu(self.conv(x)))))


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_imported_average_pools_equal_onnxruntime(tmp_path, fmt):
    torch.manual_seed(0)
    shape = (3, 12, 12)
    f = H.export_torch(_Pools(), shape, tmp_path / "f.onnx")
    q = H.quantize(f, tmp_path / "q.onnx", shape, fmt, True)
    prog = import_onnx(q)
    assert [n.op for n in prog.nodes].count("avgpool2d") == 3
    assert any(n.attrs.get("count_include_pad") is False for n in prog.nodes)
    x = np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32)
    assert H.compare_with_ort(prog, q, x) == {prog.outputs[0]: 0}
