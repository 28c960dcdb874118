"""Concat / Split / Slice / channel shuffle: ONNX Runtime-quantized models import to `concat`,
`slice` and `channel_shuffle` and simulate equal to ORT; exported programs run equal in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from models.layers import ChannelShuffle
from npusim.ir.requant import RequantSpec
from npusim.onnx import OnnxImportError, import_onnx
from npusim.onnx.exporter import to_onnx
from npusim.sim.simulator import Simulator
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.test_import import images, traced_mismatches
from tests.npusim.sim.test_concat_shuffle import _program

SHAPE = (3, 8, 8)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit (chunk, branch, concat, shuffle), a channel slice, a
    three-way split and a concat of inputs with different scales."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 1)
        self.c3 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        x1, x2 = a.chunk(2, dim=1)
        y = ChannelShuffle(2)(torch.cat([x1, torch.relu(self.c2(x2))], 1))
        p, q, r = torch.split(y, [4, 4, 4], dim=1)
        z = torch.cat([r, self.c3(p), y[:, 2:6]], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.fixture(scope="module")
def unit_float(tmp_path_factory):
    torch.manual_seed(0)
    return H.export_torch(ShuffleUnit(), SHAPE, tmp_path_factory.mktemp("onnx") / "unit.onnx")


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("signed_act", [False, True])
def test_every_tensor_equals_onnxruntime(unit_float, tmp_path, fmt, signed_act):
    q = H.quantize(unit_float, tmp_path / "q.onnx", SHAPE, fmt, True, signed_act)
    prog = import_onnx(q)
    ops = [n.op for n in prog.nodes]
    assert ops.count("channel_shuffle") == 1 and ops.count("slice") >= 6
    assert sum(len(n.inputs) > 1 for n in prog.nodes if n.op == "concat") == 2
    bad = traced_mismatches(prog, q, images(32, shape=SHAPE))
    assert all(v[0] == 0 for v in bad.values()), {k: v for k, v in bad.items() if v[0]}
    assert H.compare_with_ort(prog, q, images(32, seed=7, shape=SHAPE)) == {prog.outputs[0]: 0}


@pytest.fixture(scope="module")
def programs():
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - ONNX holds float32 scales
    case = dict(c=6, k=2, hw=3, sx=f32(0.05), zpx=3, sb=f32(0.031), zpb=10, sy=f32(0.04), zpy=7,
                signed=False, groups=2, order=("b", "a", "a"))
    out = {}
    for signed in (False, True):
        args = {**case, "signed": signed, "zpx": -3 if signed else 3}
        out[signed] = _program(**args, rq=RequantSpec(scale_mode="float", rounding="half_even"),
                               relabel="concat")
    out["clamped"] = _program(**case, rq=RequantSpec(scale_mode="float", rounding="half_even"),
                              clamp=(20, 200), relabel="concat")
    return out


@pytest.mark.parametrize("key", [False, True, "clamped"])
def test_export_runs_in_onnxruntime_equal_to_the_simulator_and_imports_back(programs, key):
    prog = programs[key]
    model = to_onnx(prog)
    assert {"QLinearConcat", "Slice", "Transpose"} <= {n.op_type for n in model.graph.node}
    lo, hi = prog.tensors["x"].int_range()
    xq = np.random.default_rng(1).integers(lo, hi + 1, (64, *prog.tensors["x"].shape))
    t = prog.tensors["x"]
    xf = ((xq - t.zero_point).astype(np.float32) * np.float32(t.scale)).astype(np.float32)
    ref = H.session(model).run(None, {"image": xf})[0]
    res = Simulator(H.float_config()).run(prog, xq).outputs["z"]
    o = prog.tensors["z"]
    np.testing.assert_array_equal((res - o.zero_point).astype(np.float32) * np.float32(o.scale),
                                  ref)
    back = import_onnx(onnx.load_from_string(model.SerializeToString()))
    assert back.manifest()["nodes"] == prog.manifest()["nodes"]
    assert back.manifest()["tensors"] == prog.manifest()["tensors"]


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


@pytest.mark.parametrize("nodes, inits, msg", [
    ([helper.make_node("Slice", ["cd", "st", "en", "ax"], ["y"], name="sl")],
     [_i64("st", [0]), _i64("en", [2]), _i64("ax", [2])],
     r"'sl' \(Slice\): axes \[2\], steps None: only a slice of the channels"),
    ([helper.make_node("Split", ["cd", "sp"], ["y", "y2"], name="spl", axis=2)],
     [_i64("sp", [2, 2])], r"'spl' \(Split\): axis=2: only a split of the channels"),
    ([helper.make_node("Reshape", ["cd", "sh"], ["r"], name="r1"),
      helper.make_node("Transpose", ["r"], ["y"], name="tr", perm=[0, 1, 2, 4, 3])],
     [_i64("sh", [1, 2, 2, 4, 4])], r"'tr' \(Transpose\): perm \[0, 1, 2, 4, 3\]: only the "),
])
def test_other_slices_splits_and_transposes_are_refused_in_one_line(nodes, inits, msg):
    model = H.qdq_model(nodes)
    model.graph.initializer.extend(inits)
    with pytest.raises(OnnxImportError, match=msg) as e:
        import_onnx(model)
    assert "\n" not in str(e.value)


class MatMulNet(nn.Module):
    """A matrix product with a constant B (ONNX MatMul; QLinearMatMul in QOperator form)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.b = nn.Parameter(torch.randn(4 * 3 * 3, 6) * 0.1)

    def forward(self, x):
        return torch.flatten(torch.relu(self.conv(x)), 1) @ self.b


@pytest.mark.parametrize("fmt, onnx_op", [("qdq", "MatMul"), ("qop", "QLinearMatMul")])
def test_matmul_with_a_constant_b_is_linear_and_equals_onnxruntime(tmp_path, fmt, onnx_op):
    torch.manual_seed(0)
    shape = (3, 7, 7)
    f = H.export_torch(MatMulNet(), shape, tmp_path / "f.onnx")
    q = H.quantize(f, tmp_path / "q.onnx", shape, fmt, True)
    assert onnx_op in {n.op_type for n in onnx.load(str(q)).graph.node}
    prog = import_onnx(q)
    assert [n.op for n in prog.nodes][-1] == "linear"
    assert H.compare_with_ort(prog, q, images(32, seed=3, shape=shape)) == {prog.outputs[0]: 0}
