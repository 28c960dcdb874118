"""Float-mode global average pooling equals ONNX Runtime's QLinearGlobalAveragePool."""

import numpy as np
from onnx import TensorProto, helper

from npusim.ir.program import IntegerProgram, Node, TensorSpec
from npusim.onnx.importer import FLOAT_REQUANT
from npusim.sim.simulator import Simulator
from tests.npusim.onnx.helpers import float_config, session

F32 = np.float32


def ort_gap(x, s_x, zp_x, s_y, zp_y):
    inits = [helper.make_tensor("sx", TensorProto.FLOAT, [], [float(s_x)]),
             helper.make_tensor("zx", TensorProto.UINT8, [], [zp_x]),
             helper.make_tensor("sy", TensorProto.FLOAT, [], [float(s_y)]),
             helper.make_tensor("zy", TensorProto.UINT8, [], [zp_y])]
    node = helper.make_node("QLinearGlobalAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"],
                            domain="com.microsoft", channels_last=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.UINT8, list(x.shape))], [helper.make_tensor_value_info(
            "y", TensorProto.UINT8, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return session(model).run(None, {"x": x.astype(np.uint8)})[0].astype(np.int64)


def gap_program(c, h, s_x, zp_x, s_y, zp_y):
    tensors = {"x": TensorSpec((c, h, h), 8, False, float(s_x), zp_x),
               "y": TensorSpec((c, 1, 1), 8, False, float(s_y), zp_y),
               "g.multiplier": TensorSpec((1,), 32, True), "g.shift": TensorSpec((1,), 8, True)}
    arrays = {"g.multiplier": np.zeros(1, np.int32), "g.shift": np.zeros(1, np.int8)}
    node = Node("g", "global_avgpool", ["x"], "y", {"clamp": [0, 255]})
    return IntegerProgram([node], tensors, arrays, "x", ["y"], dict(FLOAT_REQUANT)).validate()


def test_multiplier_is_built_in_onnxruntimes_float32_order():
    # find scales where f32(s_x / f32(s_y * HW)) and the float64 quotient rounded once differ
    # on some reachable sum: the simulator must follow ORT there
    rng = np.random.default_rng(3)
    h, zp_x, zp_y = 7, 3, 5
    acc = np.arange(-zp_x * h * h, (255 - zp_x) * h * h + 1)
    for _ in range(2000):
        s_x, s_y = F32(rng.uniform(0.01, 0.1)), F32(rng.uniform(0.01, 0.1))
        ort_m = s_x / F32(s_y * F32(h * h))
        once = F32(float(s_x) / (h * h * float(s_y)))
        a, b = (np.clip(np.rint(acc.astype(F32) * m), -zp_y, 255 - zp_y) for m in (ort_m, once))
        if (a != b).any():
            break
    else:  # pragma: no cover
        raise AssertionError("no distinguishing scales found")
    # one channel per reachable sum: x = zp_x + a spread over the 49 pixels
    total = acc + zp_x * h * h
    x = np.zeros((len(acc), h * h), np.int64)
    for k in range(h * h):
        x[:, k] = np.clip(total - 255 * k, 0, 255)
    assert (x.sum(axis=1) == total).all()
    x = x.reshape(1, len(acc), h, h)
    ours = Simulator(float_config()).run(gap_program(len(acc), h, s_x, zp_x, s_y, zp_y), x)
    ref = ort_gap(x, s_x, zp_x, s_y, zp_y)
    np.testing.assert_array_equal(ours.outputs["y"], ref)
