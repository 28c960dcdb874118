"""import_onnx: ONNX Runtime-quantized models (QDQ and QOperator) simulate equal to ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from models.registry import create_model
from npusim.ir.program import load_program, save_program
from npusim.onnx import OnnxImportError, import_onnx
from npusim.onnx.importer import ort_quantize_linear
from npusim.sim.simulator import Simulator
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.nets import AllOps, NoAvgPool

SHAPE = (3, 16, 16)


def traced_mismatches(prog, model_path, x) -> dict[str, tuple[int, int]]:
    """{program tensor: (mismatches, size)} over every node output, simulator vs ORT."""
    spec = prog.tensors[prog.input]
    xq = ort_quantize_linear(x, spec.scale, spec.zero_point, spec.signed)
    res = Simulator(H.float_config()).run(prog, xq, trace=True)
    names = [n.output for n in prog.nodes]
    outs = H.session(H.with_outputs(onnx.load(str(model_path)), names)).run(names, {"x": x})
    bad = {}
    for name, ref in zip(names, outs):
        ours = res.traces[name]
        if ref.dtype == np.float32:  # a graph output after its DequantizeLinear
            t = prog.tensors[name]
            ours = (ours - t.zero_point).astype(np.float32) * np.float32(t.scale)
        bad[name] = (int((ours.reshape(ref.shape) != ref).sum()), ref.size)
    return bad


def images(n=16, seed=1, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def allops_float(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("onnx")
    return {"noavg": H.export_torch(NoAvgPool(), SHAPE, d / "noavg.onnx"),
            "all": H.export_torch(AllOps(), SHAPE, d / "all.onnx")}


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
@pytest.mark.parametrize("signed_act", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_every_tensor_equals_onnxruntime(allops_float, tmp_path, fmt, signed_act, per_channel):
    q = H.quantize(allops_float["noavg"], tmp_path / "q.onnx", SHAPE, fmt, per_channel,
                   signed_act)
    prog = import_onnx(q)
    ops = [n.op for n in prog.nodes]
    assert {"conv2d", "add", "maxpool2d", "global_avgpool", "flatten", "linear"} <= set(ops)
    assert sorted(n.attrs.get("groups", 1) for n in prog.nodes if n.op == "conv2d") == [1, 1, 2, 8]
    assert prog.tensors[prog.input].signed == signed_act
    assert prog.requant["scale_mode"] == "float"
    # relu / relu6 folded into the producers' clamps
    dw = next(n for n in prog.nodes if n.attrs.get("groups") == 8)
    t = prog.tensors[dw.output]
    assert dw.attrs["clamp"][1] <= t.int_range()[1]
    assert dw.attrs["clamp"][0] == max(t.zero_point, t.int_range()[0])
    bad = traced_mismatches(prog, q, images())
    assert all(v[0] == 0 for v in bad.values()), bad


def test_scales_are_the_initializers_float32_values(allops_float, tmp_path):
    q = H.quantize(allops_float["noavg"], tmp_path / "q.onnx", SHAPE, "qop", True)
    prog = import_onnx(q)
    model = onnx.load(str(q))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "QLinearConv")
    node = next(n for n in prog.nodes if n.op == "conv2d")
    assert prog.tensors[node.inputs[0]].scale == float(inits[conv.input[1]])
    assert prog.tensors[f"{node.name}.weight"].scale == [float(v) for v in inits[conv.input[4]]]
    np.testing.assert_array_equal(prog.arrays[f"{node.name}.weight"], inits[conv.input[3]])
    np.testing.assert_array_equal(prog.arrays[f"{node.name}.bias"], inits[conv.input[8]])
    # and they survive the file
    save_program(prog, tmp_path / "p.safetensors")
    back = load_program(tmp_path / "p.safetensors")
    assert back.tensors == prog.tensors


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_average_pool_equals_onnxruntime(allops_float, tmp_path, fmt):
    # QLinearAveragePool (and the QDQ AveragePool ORT fuses into it) averages dequantized
    # floats; the float mode's avgpool2d does the same (tests/npusim/onnx/test_avgpool.py)
    q = H.quantize(allops_float["all"], tmp_path / "q.onnx", SHAPE, fmt, True)
    prog = import_onnx(q)
    spec = prog.tensors[prog.input]
    x = images()
    xq = ort_quantize_linear(x, spec.scale, spec.zero_point, spec.signed)
    res = Simulator(H.float_config()).run(prog, xq, trace=True)
    node = next(n for n in prog.nodes if n.op == "avgpool2d")
    ref = H.session(H.with_outputs(onnx.load(str(q)), [node.output])).run([node.output],
                                                                         {"x": x})[0]
    np.testing.assert_array_equal(res.traces[node.output].astype(np.int64), ref.astype(np.int64))


@pytest.mark.parametrize("name, fmt", [("resnet20", "qdq"), ("mobilenetv2", "qop")])
def test_models_from_the_zoo_equal_onnxruntime(tmp_path, name, fmt):
    torch.manual_seed(0)
    m = create_model(name, num_classes=10, in_channels=3, width=0.25)
    pad = m.input_norm.padding  # the NPU input is the normalised image: pad in the stem conv
    m.input_norm = torch.nn.Identity()
    m.stem.conv.padding = (pad, pad)
    f = H.export_torch(m, SHAPE, tmp_path / "f.onnx")
    q = H.quantize(f, tmp_path / "q.onnx", SHAPE, fmt, True)
    prog = import_onnx(q)
    bad = traced_mismatches(prog, q, images(8))
    assert all(v[0] == 0 for v in bad.values()), {k: v for k, v in bad.items() if v[0]}
    assert H.compare_with_ort(prog, q, images(8, seed=5)) == {prog.outputs[0]: 0}


def test_pixels_embed_lut_is_onnxruntimes_quantizelinear(allops_float, tmp_path):
    q = H.quantize(allops_float["noavg"], tmp_path / "q.onnx", SHAPE, "qdq", True)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    prog = import_onnx(q, pixels=(mean, std, 255.0))
    assert prog.nodes[0].op == "embed" and prog.tensors[prog.input].signed is False
    pix = np.random.default_rng(4).integers(0, 256, (4, *SHAPE), dtype=np.uint8)
    xf = ((pix.astype(np.float32) / np.float32(255.0)
           - np.asarray(mean, np.float32)[:, None, None])
          / np.asarray(std, np.float32)[:, None, None]).astype(np.float32)
    res = Simulator(H.float_config()).run(prog, pix)
    ref = H.session(q).run(None, {"x": xf})[0]
    o = prog.tensors[prog.outputs[0]]
    ours = (res.outputs[prog.outputs[0]] - o.zero_point).astype(np.float32) * np.float32(o.scale)
    np.testing.assert_array_equal(ours, ref)
    # the LUT equals the numpy float32 formula rint(x / s) + zp, clamped
    spec = prog.tensors[prog.nodes[0].output]
    lut = prog.arrays[f"{prog.nodes[0].name}.lut"][..., 0].astype(np.int64)
    p = np.arange(256, dtype=np.float32)
    f = ((p[None] / np.float32(255.0) - np.asarray(mean, np.float32)[:, None])
         / np.asarray(std, np.float32)[:, None]).astype(np.float32)
    mine = np.clip(np.rint(f / np.float32(spec.scale)) + spec.zero_point, *spec.int_range())
    np.testing.assert_array_equal(lut, mine)


# ---------------------------------------------------------------- refusals, one line each

@pytest.mark.parametrize("op, attrs", [("Softmax", {"axis": 1}), ("Transpose", {"perm": [0, 1, 3, 2]}),
                                       ("Sigmoid", {})])
def test_unmapped_op_is_refused_naming_node_and_op(op, attrs):
    model = H.qdq_model([helper.make_node(op, ["cd"], ["y"], name="the_node", **attrs)])
    with pytest.raises(OnnxImportError) as e:
        import_onnx(model)
    msg = str(e.value)
    assert "'the_node'" in msg and op in msg and "\n" not in msg


def test_concat_off_the_channels_is_refused():
    model = H.qdq_model([helper.make_node("Concat", ["cd", "cd"], ["y"], name="cat", axis=2)])
    with pytest.raises(OnnxImportError, match=r"'cat' \(Concat\): axis=2: only a concat of the "
                                              r"channels"):
        import_onnx(model)


def test_asymmetric_weights_are_refused():
    model = H.qdq_model([], w_zp=3, outputs=("cd",))
    with pytest.raises(OnnxImportError, match=r"'conv' \(Conv\): weight zero point must be 0"):
        import_onnx(model)
    assert import_onnx(H.qdq_model([], outputs=("cd",))).nodes[0].op == "conv2d"


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model")
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        import_onnx(bad)
    with pytest.raises(OnnxImportError, match="file not found"):
        import_onnx(tmp_path / "missing.onnx")
