"""export_onnx: ONNX Runtime runs the exported model equal to the simulator; import(export(p)) == p."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from npusim.ir.program import save_program
from npusim.onnx import (
    OnnxExportError,
    OnnxImportError,
    export_onnx,
    import_onnx,
    to_onnx,
)
from npusim.onnx.importer import ort_quantize_linear
from npusim.sim.simulator import Simulator
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.nets import AllOps, NoAvgPool

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Imported programs: QOperator u8 / QDQ s8, with and without average pooling."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("export")
    out = {}
    for net in (NoAvgPool, AllOps):
        f = H.export_torch(net(), SHAPE, d / f"{net.__name__}.onnx")
        for fmt, signed in (("qop", False), ("qdq", True)):
            q = H.quantize(f, d / f"{net.__name__}_{fmt}.onnx", SHAPE, fmt, True, signed)
            out[(net.__name__, fmt)] = import_onnx(q)
    return out


def narrowed(prog, seed):
    """The program with every clamp narrowed at random (a ReLU above the zero point, a cap)."""
    p = copy.deepcopy(prog)
    rng = np.random.default_rng(seed)
    for n in p.nodes:
        if "clamp" in n.attrs:
            lo, hi = n.attrs["clamp"]
            n.attrs["clamp"] = [int(lo + rng.integers(0, 20)), int(hi - rng.integers(0, 40))]
    return p.validate()


def assert_same_program(a, b):
    assert [n.to_json() for n in a.nodes] == [n.to_json() for n in b.nodes]
    assert a.tensors == b.tensors
    assert (a.input, a.outputs, a.requant) == (b.input, b.outputs, b.requant)
    assert set(a.arrays) == set(b.arrays)
    for k, v in a.arrays.items():
        assert v.dtype == b.arrays[k].dtype, k
        np.testing.assert_array_equal(v, b.arrays[k])


@pytest.mark.parametrize("key", [("AllOps", "qop"), ("AllOps", "qdq"), ("NoAvgPool", "qdq")])
@pytest.mark.parametrize("narrow", [False, True])
def test_import_of_export_is_the_program(programs, tmp_path, key, narrow):
    prog = narrowed(programs[key], 1) if narrow else programs[key]
    path = export_onnx(prog, tmp_path / "m.onnx")
    assert_same_program(import_onnx(path), prog)


@pytest.mark.parametrize("key", [("NoAvgPool", "qop"), ("NoAvgPool", "qdq"), ("AllOps", "qop"),
                                 ("AllOps", "qdq")])
@pytest.mark.parametrize("seed", [None, 2, 3])
def test_onnxruntime_runs_the_export_equal_to_the_simulator(programs, key, seed):
    prog = programs[key] if seed is None else narrowed(programs[key], seed)
    model = to_onnx(prog)
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool", "MaxPool"} <= ops
    assert ("Clip" in ops) == (seed is not None)
    spec = prog.tensors[prog.input]
    xq = np.random.default_rng(7).integers(*spec.int_range(), size=(12, *SHAPE), endpoint=True)
    res = Simulator(H.float_config()).run(prog, xq, trace=True)
    # the float image that ORT's QuantizeLinear maps back onto these integers
    x = ((xq - spec.zero_point).astype(np.float32) * np.float32(spec.scale))
    assert np.array_equal(ort_quantize_linear(x, spec.scale, spec.zero_point, spec.signed), xq)
    names = [n.output for n in prog.nodes]
    outs = H.session(H.with_outputs(model, names)).run(names, {"image": x})
    for name, ref in zip(names, outs):
        np.testing.assert_array_equal(res.traces[name], ref.astype(np.int64), err_msg=name)


def test_refusals_are_one_line(programs, tmp_path):
    prog = programs[("NoAvgPool", "qop")]
    fixed = copy.deepcopy(prog)
    fixed.requant["scale_mode"] = "fixed"
    with pytest.raises(OnnxExportError, match="only float-mode programs"):
        to_onnx(fixed)
    embedded = import_onnx(to_onnx(prog), pixels=([0.5] * 3, [0.25] * 3, 255.0))
    with pytest.raises(OnnxExportError, match=r"\(embed\): a pixel lookup table"):
        to_onnx(embedded)
    narrow_bits = copy.deepcopy(prog)
    name = narrow_bits.nodes[0].output
    narrow_bits.tensors[name].bits = 7
    narrow_bits.nodes[0].attrs["clamp"] = [0, 127]
    with pytest.raises(OnnxExportError, match=f"tensor '{name}': only 8-bit"):
        to_onnx(narrow_bits)
    save_program(prog, tmp_path / "p.safetensors")  # a valid program stays valid
    assert onnx.load(str(export_onnx(prog, tmp_path / "m.onnx"))).producer_name == "npusim"


def test_clip_of_a_shared_tensor_is_refused(programs):
    # DQ -> Clip -> Q may only narrow the clamp of a node whose output nothing else reads
    prog = narrowed(programs[("NoAvgPool", "qop")], 4)
    model = to_onnx(prog)
    clip = next(n for n in model.graph.node if n.op_type == "Clip")
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.output[0] == clip.input[0])
    extra = onnx.helper.make_node("DequantizeLinear", list(dq.input), ["d2"],
                                  name="second_reader")
    model.graph.node.insert(list(model.graph.node).index(clip), extra)
    with pytest.raises(OnnxImportError, match=r"\(Clip\): only a Relu/Clip of a tensor read by "
                                              r"nothing else"):
        import_onnx(model)
