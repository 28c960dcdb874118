"""The float-mode concat equals ONNX Runtime's QLinearConcat bit for bit on every input value,
ties included (its lookup table: float32 dequantize, MlasQuantizeLinear)."""

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from npusim.ir import arith
from tests.npusim import naive

ALL = np.arange(256)


def ort_qlinearconcat(xs, params, s_y, zp_y, signed):
    """One com.microsoft QLinearConcat (axis 1) of (1, C_k) int8/uint8 arrays in ONNX Runtime."""
    dt, npdt = (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    inits = [helper.make_tensor("ys", TensorProto.FLOAT, [], [float(s_y)]),
             helper.make_tensor("yz", dt, [], [int(zp_y)])]
    ins = ["ys", "yz"]
    for k, (s, zp) in enumerate(params):
        inits += [helper.make_tensor(f"s{k}", TensorProto.FLOAT, [], [float(s)]),
                  helper.make_tensor(f"z{k}", dt, [], [int(zp)])]
        ins += [f"x{k}", f"s{k}", f"z{k}"]
    node = helper.make_node("QLinearConcat", ins, ["y"], domain="com.microsoft", axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(f"x{k}", dt, x.shape)
                                            for k, x in enumerate(xs)],
                              [helper.make_tensor_value_info("y", dt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {f"x{k}": x.astype(npdt) for k, x in enumerate(xs)})[0].astype(np.int64)


f32 = st.floats(1e-4, 4.0).map(lambda v: float(np.float32(v)))
# power-of-two scales: x * s_x / s_y lands exactly on .5 for many x (the ties)
pow2 = st.integers(-10, 2).map(lambda e: 2.0 ** e)


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.lists(st.tuples(st.one_of(f32, pow2), st.integers(0, 255)), min_size=1,
                               max_size=3), st.one_of(f32, pow2), st.integers(0, 255))
def test_every_value_of_every_input_equals_onnxruntime(signed, params, s_y, zp_y):
    shift = 128 if signed else 0  # the same draws as int8: values and zero points - 128
    params = [(s, zp - shift) for s, zp in params]
    zp_y -= shift
    xs = [(ALL - shift).reshape(1, 256) for _ in params]
    ref = ort_qlinearconcat(xs, params, s_y, zp_y, signed)
    lo, hi = (-128, 127) if signed else (0, 255)
    ours = np.concatenate([arith.ort_requantize_linear(x, np.float32(s), zp, np.float32(s_y),
                                                       zp_y, lo, hi)
                           for x, (s, zp) in zip(xs, params)], axis=1)
    np.testing.assert_array_equal(ours, ref)
    oracle = naive.concat_ort([x.reshape(1, 256, 1) for x in xs], [s for s, _ in params],
                              [zp for _, zp in params], s_y, zp_y, lo, hi)
    np.testing.assert_array_equal(oracle.reshape(1, -1), ref)


def test_ties_round_to_even_before_the_zero_point():
    # s_x / s_y = 1/2: every odd x - zp_x is a tie; the output zero point (odd) is added after
    x = ALL.reshape(1, 256)
    ref = ort_qlinearconcat([x], [(0.25, 10)], 0.5, 3, False)
    v = (ALL - 10) / 2
    assert (v % 1 == 0.5).sum() > 100
    np.testing.assert_array_equal(ref.ravel(), np.clip(np.round(v) + 3, 0, 255))  # half even
