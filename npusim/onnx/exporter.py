"""Export a float-mode IntegerProgram as a QOperator ONNX model that ONNX Runtime runs.

conv2d -> QLinearConv, linear -> QGemm (com.microsoft, transB=1, int32 bias), add ->
QLinearAdd, global_avgpool -> QLinearGlobalAveragePool, avgpool2d -> QLinearAveragePool,
maxpool2d -> MaxPool, flatten -> Flatten, concat -> QLinearConcat, slice -> Slice (axis 1),
channel_shuffle -> Reshape (N, g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape. The
model takes the float image, quantizes it with the input tensor's scale/zero point and
dequantizes each program output. A clamp narrower than the output's integer range (a fused
ReLU with a zero point above the minimum, ReLU6) becomes
``DequantizeLinear -> Clip -> QuantizeLinear`` with the same parameters, exact in float32.
ONNX Runtime equals the simulator on every op (see `npusim.onnx.importer`). Tensor and node
names are the program's, so `import_onnx` of the file gives the program back.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from npusim.ir.ops import OPS, requantizes
from npusim.ir.program import IntegerProgram, Node
from npusim.onnx.importer import REQUANT_KEY, OnnxImportError

log = logging.getLogger(__name__)


class OnnxExportError(OnnxImportError):
    """A program that has no QOperator ONNX form; one line naming the node or tensor."""


class _Exporter:
    def __init__(self, program: IntegerProgram):
        from onnx import TensorProto, helper, numpy_helper

        self.p = program
        self.helper, self.TP, self.nh = helper, TensorProto, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.qparams: set[str] = set()
        self.ms = False  # uses com.microsoft ops

    def fail(self, node: Node, msg: str) -> None:
        raise OnnxExportError(f"node {node.name!r} ({node.op}): {msg}")

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.nh.from_array(np.asarray(arr), name))
        return name

    def act(self, name: str) -> tuple[str, str]:
        """The scale and zero point initializers of activation `name` (made once)."""
        t = self.p.tensors[name]
        s, z = f"{name}.scale", f"{name}.zero_point"
        if name not in self.qparams:
            if t.bits != 8 or len(t.scales()) != 1:
                raise OnnxExportError(f"tensor {name!r}: only 8-bit tensors with one scale can "
                                      f"be exported, got {t.bits}-bit")
            self.init(s, np.array(t.scales()[0], np.float32))
            self.init(z, np.array(t.zero_point, np.int8 if t.signed else np.uint8))
            self.qparams.add(name)
        return s, z

    def weight(self, node: Node, w: np.ndarray) -> tuple[str, str, str]:
        t = self.p.tensors[f"{node.name}.weight"]
        if t.bits > 8:
            self.fail(node, f"{t.bits}-bit weights: only 8-bit weights can be exported")
        if t.zero_point:
            self.fail(node, "weights with a zero point cannot be exported")
        sc = np.asarray(t.scale, np.float32)
        if sc.ndim:
            sc = np.broadcast_to(sc, (w.shape[0],)).astype(np.float32)
        name = f"{node.name}.weight"
        return (self.init(name, w.astype(np.int8)), self.init(f"{name}.scale", sc),
                self.init(f"{name}.zero_point", np.zeros(sc.shape, np.int8)))

    def out(self, node: Node) -> str:
        """The ONNX name the op writes: the output itself, or a pre-clamp tensor."""
        t = self.p.tensors[node.output]
        clamp = node.attrs.get("clamp")
        if clamp is None or tuple(clamp) == t.int_range():
            return node.output
        pre = f"{node.output}.unclamped"
        s, z = self.act(node.output)
        lo, hi = ((np.float32(v - t.zero_point) * np.float32(t.scales()[0])) for v in clamp)
        mn = self.init(f"{node.output}.clip_min", np.array(lo, np.float32))
        mx = self.init(f"{node.output}.clip_max", np.array(hi, np.float32))
        h = self.helper
        self._post = [h.make_node("DequantizeLinear", [pre, s, z], [f"{pre}.dq"],
                                  name=f"{node.name}.dq"),
                      h.make_node("Clip", [f"{pre}.dq", mn, mx], [f"{pre}.clip"],
                                  name=f"{node.name}.clip"),
                      h.make_node("QuantizeLinear", [f"{pre}.clip", s, z], [node.output],
                                  name=f"{node.name}.q")]
        return pre

    def add(self, op: str, inputs: list[str], output: str, name: str, domain: str = "",
            **attrs) -> None:
        self.ms |= domain == "com.microsoft"
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=name, domain=domain,
                                                **attrs))
        self.nodes.extend(self._post)
        self._post = []

    def node(self, n: Node) -> None:
        p, a = self.p, n.attrs
        self._post = []
        if OPS[n.op].real_multipliers is not None and not requantizes(n):
            self.fail(n, "a node without requantization (int32 output) cannot be exported")
        x = n.inputs[0]
        if n.op == "conv2d":
            w = p.arrays[f"{n.name}.weight"]
            xs, xz = self.act(x)
            ws, wsc, wz = self.weight(n, w)
            ys, yz = self.act(n.output)
            b = self.init(f"{n.name}.bias", p.arrays[f"{n.name}.bias"].astype(np.int32))
            pad = a["padding"]
            self.add("QLinearConv", [x, xs, xz, ws, wsc, wz, ys, yz, b], self.out(n), n.name,
                     kernel_shape=list(w.shape[2:]), strides=[a["stride"]] * 2, pads=[pad] * 4,
                     group=a["groups"], dilations=[1, 1])
        elif n.op == "linear":
            w = p.arrays[f"{n.name}.weight"]
            xs, xz = self.act(x)
            ws, wsc, wz = self.weight(n, w)
            ys, yz = self.act(n.output)
            b = self.init(f"{n.name}.bias", p.arrays[f"{n.name}.bias"].astype(np.int32))
            self.add("QGemm", [x, xs, xz, ws, wsc, wz, b, ys, yz], self.out(n), n.name,
                     domain="com.microsoft", transB=1)
        elif n.op == "add":
            (a_s, a_z), (b_s, b_z) = self.act(n.inputs[0]), self.act(n.inputs[1])
            ys, yz = self.act(n.output)
            self.add("QLinearAdd", [n.inputs[0], a_s, a_z, n.inputs[1], b_s, b_z, ys, yz],
                     self.out(n), n.name, domain="com.microsoft")
        elif n.op == "global_avgpool":
            xs, xz = self.act(x)
            ys, yz = self.act(n.output)
            self.add("QLinearGlobalAveragePool", [x, xs, xz, ys, yz], self.out(n), n.name,
                     domain="com.microsoft", channels_last=0)
        elif n.op == "avgpool2d":
            xs, xz = self.act(x)
            ys, yz = self.act(n.output)
            k, pad = a["kernel"], a.get("padding", 0)
            self.add("QLinearAveragePool", [x, xs, xz, ys, yz], self.out(n), n.name,
                     domain="com.microsoft", kernel_shape=[k, k], strides=[a["stride"]] * 2,
                     pads=[pad] * 4, count_include_pad=int(a.get("count_include_pad", True)))
        elif n.op == "maxpool2d":
            self.same_params(n)
            k, pad = a["kernel"], a.get("padding", 0)
            self.add("MaxPool", [x], n.output, n.name, kernel_shape=[k, k],
                     strides=[a["stride"]] * 2, pads=[pad] * 4)
        elif n.op == "flatten":
            self.same_params(n)
            self.add("Flatten", [x], n.output, n.name, axis=1)
        elif n.op == "concat":
            ys, yz = self.act(n.output)
            ins = [v for i in n.inputs for v in (i, *self.act(i))]
            self.add("QLinearConcat", [ys, yz, *ins], self.out(n), n.name,
                     domain="com.microsoft", axis=1)
        elif n.op == "slice":
            self.same_params(n)
            i64 = [self.init(f"{n.name}.{k}", np.array([v], np.int64))
                   for k, v in (("starts", a["start"]), ("ends", a["stop"]), ("axes", 1))]
            self.add("Slice", [x, *i64], n.output, n.name)
        elif n.op == "channel_shuffle":
            self.same_params(n)
            c, *hw = p.tensors[x].shape
            g = a["groups"]
            grouped = self.init(f"{n.name}.grouped_shape", np.array([-1, g, c // g, *hw], np.int64))
            back = self.init(f"{n.name}.shape", np.array([-1, c, *hw], np.int64))
            self.add("Reshape", [x, grouped], f"{n.name}.grouped", f"{n.name}.group")
            self.add("Transpose", [f"{n.name}.grouped"], f"{n.name}.transposed",
                     f"{n.name}.transpose", perm=[0, 2, 1, 3, 4])
            self.add("Reshape", [f"{n.name}.transposed", back], n.output, n.name)
        else:
            self.fail(n, "op has no QOperator ONNX form")

    def same_params(self, n: Node) -> None:
        ti, to = self.p.tensors[n.inputs[0]], self.p.tensors[n.output]
        if (ti.scales()[0], ti.zero_point, ti.signed, ti.bits) != \
                (to.scales()[0], to.zero_point, to.signed, to.bits):
            self.fail(n, "input and output must share scale, zero point and type")

    def run(self) -> Any:
        p, h, TP = self.p, self.helper, self.TP
        if p.requant.get("scale_mode") != "float":
            raise OnnxExportError(f"requant.scale_mode is {p.requant.get('scale_mode')!r}: only "
                                  f"float-mode programs (ONNX Runtime's arithmetic) can be "
                                  f"exported")
        spec = p.tensors[p.input]
        if len(spec.shape) != 3:
            raise OnnxExportError(f"input {p.input!r}: expected a (C, H, W) image, got "
                                  f"{list(spec.shape)}")
        xs, xz = self.act(p.input)
        self.nodes.append(h.make_node("QuantizeLinear", ["image", xs, xz], [p.input],
                                      name=f"{p.input}.quantize"))
        for n in p.nodes:
            self.node(n)
        outs = []
        for o in p.outputs:
            s, z = self.act(o)
            self.nodes.append(h.make_node("DequantizeLinear", [o, s, z], [f"{o}.float"],
                                          name=f"{o}.dequantize"))
            outs.append(h.make_tensor_value_info(f"{o}.float", TP.FLOAT,
                                                 ["n", *p.tensors[o].shape]))
        graph = h.make_graph(self.nodes, "npusim", [h.make_tensor_value_info(
            "image", TP.FLOAT, ["n", *spec.shape])], outs, self.inits)
        opsets = [h.make_opsetid("", 13)]
        if self.ms:
            opsets.append(h.make_opsetid("com.microsoft", 1))
        model = h.make_model(graph, opset_imports=opsets, producer_name="npusim")
        model.ir_version = 8
        h.set_model_props(model, {REQUANT_KEY: json.dumps(p.requant, sort_keys=True)})
        return model


def to_onnx(program: IntegerProgram) -> Any:
    """A float-mode program as a QOperator `onnx.ModelProto` (checked by onnx.checker)."""
    import onnx

    if any(n.op == "embed" for n in program.nodes):
        node = next(n for n in program.nodes if n.op == "embed")
        raise OnnxExportError(f"node {node.name!r} (embed): a pixel lookup table has no "
                              f"QOperator ONNX form")
    model = _Exporter(program).run()
    onnx.checker.check_model(model)
    return model


def export_onnx(program: IntegerProgram, path: str | os.PathLike) -> Path:
    """Write a float-mode program as a QOperator ONNX model to `path` (atomically)."""
    from npusim.io import atomic_write_bytes

    model = to_onnx(program)
    path = Path(path)
    atomic_write_bytes(path, model.SerializeToString())  # a fresh mkstemp name, never a planted one
    log.info("exported %d nodes to %s", len(program.nodes), path)
    return path



