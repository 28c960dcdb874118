"""Build, quantize and run small ONNX models locally for the import/export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from npusim.hw.config import NPUConfig
from npusim.ir.program import IntegerProgram
from npusim.onnx.importer import ort_quantize_linear
from npusim.sim.int8_engine import _cpu_has_exact_int8
from npusim.sim.simulator import Simulator

# ORT's u8s8 kernels on AVX2 CPUs without VNNI saturate pairs of products to int16: quantize the
# weights to 7 bits there (ORT's documented reduce_range), as tests/npusim/sim/test_onnxruntime.py
REDUCE_RANGE = not _cpu_has_exact_int8()


def inline_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace Identity nodes of initializers (torch's exporter shares equal constants that way,
    which ORT's quantizer does not follow) by copies of the initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    keep = []
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            model.graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def export_torch(module, shape, path: Path) -> Path:
    """A float torch module -> ONNX (legacy TorchScript exporter, dynamic batch)."""
    import torch

    module = module.eval()
    torch.onnx.export(module, torch.zeros(1, *shape), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=13,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    onnx.save(inline_identities(onnx.load(str(path))), str(path))
    return path


class RandomReader(CalibrationDataReader):
    """Synthetic calibration data: a few batches of random images."""

    def __init__(self, shape, n: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"x": rng.standard_normal((2, *shape)).astype(np.float32)}
                             for _ in range(n)])

    def get_next(self):
        return next(self.batches, None)


def quantize(float_path: Path, out_path: Path, shape, fmt: str = "qdq", per_channel: bool = True,
             signed_act: bool = False, seed: int = 0) -> Path:
    """ONNX Runtime's quantize_static on synthetic calibration data."""
    quantize_static(str(float_path), str(out_path), RandomReader(shape, seed=seed),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel, reduce_range=REDUCE_RANGE,
                    activation_type=QuantType.QInt8 if signed_act else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out_path


def session(model) -> ort.InferenceSession:
    """An ORT session on one thread that runs QDQ groups with int8 activations as ORT's
    integer kernels, not as float ops (``session.qdqisint8allowed``: see
    `npusim.onnx.importer`'s docstring)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.qdqisint8allowed", "1")
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def float_config():
    """edge16 with the program's float requantization and 32-bit accumulators (as ORT)."""
    return NPUConfig.load("edge16").with_overrides({
        "requant.scale_mode": "float", "requant.rounding": "half_even",
        "precision.acc_bits": 32, "precision.pe_acc_bits": 32})


def compare_with_ort(prog: IntegerProgram, model_path: Path, x: np.ndarray) -> dict[str, int]:
    """Mismatches per program output between the simulator and ORT on float images `x`
    (quantized by ORT's QuantizeLinear); ORT's dequantized float output is compared with the
    simulator's integers dequantized the same way (a float32 (q - zp) * s, exact per integer)."""
    spec = prog.tensors[prog.input]
    xq = ort_quantize_linear(x, spec.scale, spec.zero_point, spec.signed)
    res = Simulator(float_config()).run(prog, xq)
    ref = session(model_path).run(None, {"x": x})
    out = {}
    for name, r in zip(prog.outputs, ref):
        o = prog.tensors[name]
        ours = (res.outputs[name] - o.zero_point).astype(np.float32) * np.float32(o.scale)
        out[name] = int((ours.reshape(r.shape) != r).sum())
    return out


def with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names`."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def qdq_model(extra_nodes, w_zp: int = 0, outputs=("y",)) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(w)) -> Q -> DQ -> extra nodes; output `outputs` (a 1x3x4x4
    input, 4 output channels: the smallest QDQ model the refusal tests extend)."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "wq"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(w_zp, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dqw"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="qc"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dqc"),
             *extra_nodes]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(o, f, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
