"""Import a quantized ONNX model (ONNX Runtime's quantizer, QDQ or QOperator) as an IntegerProgram.

The program runs in the `float` requantization mode, which is ONNX Runtime's MLAS arithmetic:
QLinearConv / QLinearMatMul / QGemm requantize with ``f32(f32(s_x*s_w)/s_y)``, QLinearAdd with
``ort_qlinearadd_one``, QLinearGlobalAveragePool with ``f32(s_x/f32(s_y*HW))``, QLinearAveragePool
with float32 sums of dequantized inputs (``ort_avgpool_one``; count_include_pad kept). Scales and zero
points are read from the initializers and recorded as their exact float32 values.

QDQ models are read the way ONNX Runtime runs them (its graph optimizer fuses
``DequantizeLinear -> op -> QuantizeLinear`` into the QLinear ops): a float op whose inputs are
dequantized tensors or constants becomes one program node at the QuantizeLinear that follows it;
Relu / Clip between them narrow that node's clamp; MaxPool / Flatten / Reshape pass quantized
tensors through. Concat / QLinearConcat become `concat` (ORT's QLinearConcat arithmetic; a
QuantizeLinear that changes the parameters of a dequantized tensor is a one-input `concat`),
Split / Slice on channels `slice` views, and the ``Reshape (N, g, C/g, H, W) -> Transpose
(0, 2, 1, 3, 4) -> Reshape (N, C, H, W)`` pattern a `channel_shuffle`. Shape arithmetic (the
Shape / Gather / Div... subgraphs torch exports for ``chunk`` and reshapes) is folded with
`onnx.reference` on the known activation shapes, the batch taken as 1 (only batch-free values
may depend on it: a reshape keeps dimension 0 as the batch). A MatMul / QLinearMatMul with a
constant B is the `linear` op. Anything else is refused with one line naming the node and its
op type.

Exactness: equal to ONNX Runtime on x86-64 (its AVX2 QLinearAdd kernel; the ARM NEON kernel
uses fixed point when the scale ratios allow, and differs) for every mapped op. A QDQ
``DequantizeLinear -> AveragePool -> QuantizeLinear`` is what ORT's optimizer (level extended
and up, the default) fuses into QLinearAveragePool; with optimizations off ORT runs MLAS float
pooling and QuantizeLinear instead, which can differ by one.
On CPUs without VNNI, ORT's u8s8 kernels saturate pairs of products to int16 unless the
weights are 7-bit (``reduce_range=True`` when quantizing): that is ORT's error, not ours.
On x86, ORT fuses QDQ groups with int8 (signed) activations into its integer kernels only
with the session option ``session.qdqisint8allowed=1`` (its default on ARM only); otherwise it
runs them as DequantizeLinear, a float Conv/Gemm/Concat and QuantizeLinear, whose float sums
can round a tie the other way than the exact integer arithmetic this program follows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npusim.errors import UserError
from npusim.ir.program import IntegerProgram, Node, TensorSpec, storage_dtype

log = logging.getLogger(__name__)

#: the requantization settings of an imported program (ONNX Runtime's float32 arithmetic)
FLOAT_REQUANT = {"scale_mode": "float", "multiplier_bits": 32, "max_shift": 62,
                 "rounding": "half_even", "add_frac_bits": 20}


#: model metadata key under which `export_onnx` records the program's requant settings
REQUANT_KEY = "npusim.requant"


class OnnxImportError(UserError):
    """An ONNX model this importer cannot map to a program; one line naming the node and op."""


@dataclass
class _Q:
    """A quantized activation tensor of the program being built."""

    name: str
    shape: tuple[int, ...]
    scale: float  # the exact float32 value
    zp: int
    signed: bool
    producer: Node | None = None


@dataclass
class _Const:
    """A quantized constant (weight or bias): integers and their per-tensor/per-axis scales."""

    q: np.ndarray
    scale: np.ndarray  # float32, 0-D or 1-D
    zp: np.ndarray
    axis: int = 1


@dataclass
class _Pending:
    """A float op (QDQ) whose result waits for its QuantizeLinear."""

    node: Any  # the onnx NodeProto
    op: str
    inputs: list[_Q]
    weight: _Const | None = None
    bias: _Const | None = None
    clip: tuple[float, float] = (-np.inf, np.inf)
    attrs: dict[str, Any] = field(default_factory=dict)


def _f32(v) -> float:
    """A float32 value as the Python float that holds it exactly."""
    return float(np.float32(v))


class _Importer:
    def __init__(self, model, pixels):
        import onnx
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.pixels = pixels
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i)
                                              for i in self.graph.initializer}
        for n in self.graph.node:  # Constant nodes are initializers too
            if n.op_type == "Constant" and n.attribute:
                a = n.attribute[0]
                if a.name == "value":
                    self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.onnx = onnx
        self.q: dict[str, _Q] = {}  # quantized activations by ONNX name
        self.deq: dict[str, _Q] = {}  # float ONNX names that are DequantizeLinear(activation)
        self.wdeq: dict[str, _Const] = {}  # float ONNX names that are DequantizeLinear(constant)
        self.pending: dict[str, _Pending] = {}
        self.nodes: list[Node] = []
        self.tensors: dict[str, TensorSpec] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.input: str | None = None
        self.float_inputs = {i.name for i in self.graph.input if i.name not in self.consts}
        # Reshape (N, g, C/g, H, W) of a tensor / its Transpose (0, 2, 1, 3, 4), by ONNX name:
        # (the quantized tensor, groups, transposed?, quantized or dequantized)
        self.virtual: dict[str, tuple[_Q, int, bool, bool]] = {}
        self.opsets = list(model.opset_import)

    # ------------------------------------------------------------------ helpers
    def fail(self, node, msg: str) -> None:
        raise OnnxImportError(f"node {node.name or node.output[0]!r} ({node.op_type}): {msg}")

    def attrs(self, node) -> dict[str, Any]:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, node, name: str, what: str) -> np.ndarray:
        if name not in self.consts:
            self.fail(node, f"{what} {name!r} must be an initializer")
        return self.consts[name]

    def scalar_q(self, node, scale_name: str, zp_name: str | None) -> tuple[float, int, bool]:
        """A tensor-wide (scale, zero point, signed) from initializers."""
        s = self.const(node, scale_name, "scale")
        if s.size != 1:
            self.fail(node, f"scale {scale_name!r}: expected one value, got {s.size}")
        if zp_name:
            z = self.const(node, zp_name, "zero point")
            if z.dtype not in (np.uint8, np.int8) or z.size != 1:
                self.fail(node, f"zero point {zp_name!r}: expected one uint8 or int8 value, got "
                                f"{z.size} of {z.dtype}")
            return _f32(s.reshape(())), int(z.reshape(())), z.dtype == np.int8
        return _f32(s.reshape(())), 0, False

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def weight_const(self, node, q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None,
                     axis: int = 0) -> _Const:
        if q.dtype != np.int8:
            self.fail(node, f"weights must be int8 (symmetric), got {q.dtype}")
        zp = np.zeros(1, np.int8) if zp is None else zp
        if np.any(zp != 0):
            self.fail(node, f"weight zero point must be 0 (symmetric weights), got "
                            f"{sorted(set(np.ravel(zp).tolist()))[:4]}")
        return _Const(q, np.asarray(scale, np.float32), zp, axis)

    def add_tensor(self, name: str, spec: TensorSpec) -> None:
        self.tensors[name] = spec

    def new_activation(self, onnx_name: str, shape, scale: float, zp: int, signed: bool,
                       producer: Node | None) -> _Q:
        name = onnx_name
        if name in self.tensors:
            name = self.unique(name)
        self.add_tensor(name, TensorSpec(tuple(int(d) for d in shape), 8, signed, scale, zp))
        q = _Q(name, tuple(int(d) for d in shape), scale, zp, signed, producer)
        self.q[onnx_name] = q
        return q

    def need_q(self, node, name: str) -> _Q:
        if name in self.q:
            return self.q[name]
        self.fail(node, f"input {name!r} is not a quantized tensor")
        raise AssertionError  # unreachable

    def need_deq(self, node, name: str) -> _Q:
        if name in self.deq:
            return self.deq[name]
        self.fail(node, f"input {name!r} is not a dequantized activation (DequantizeLinear)")
        raise AssertionError

    # ------------------------------------------------------------------ program nodes
    def emit(self, onnx_node, op: str, inputs: list[_Q], out_name: str, out: tuple[float, int, bool],
             attrs: dict[str, Any], weight: _Const | None = None, bias: np.ndarray | None = None,
             clip: tuple[float, float] = (-np.inf, np.inf)) -> _Q:
        """Add one requantizing program node (conv2d, linear, add, pooling) and its output."""
        name = self.unique(onnx_node.name or f"{onnx_node.op_type}_{len(self.nodes)}")
        s_y, zp_y, signed = out
        x = inputs[0]
        if op == "conv2d":
            w = weight.q
            h, wd = x.shape[1:]
            k, pad, st = w.shape[2:], attrs["padding"], attrs["stride"]
            shape = (w.shape[0], (h + 2 * pad - k[0]) // st + 1, (wd + 2 * pad - k[1]) // st + 1)
        elif op == "linear":
            shape = (weight.q.shape[0],)
        elif op == "add":
            shape = x.shape
        elif op == "concat":
            shape = (sum(i.shape[0] for i in inputs), *x.shape[1:])
        elif op == "global_avgpool":
            shape = (x.shape[0], 1, 1)
        else:  # avgpool2d
            k, st, pad = attrs["kernel"], attrs["stride"], attrs.get("padding", 0)
            shape = (x.shape[0], (x.shape[1] + 2 * pad - k) // st + 1,
                     (x.shape[2] + 2 * pad - k) // st + 1)
        node = Node(name, op, [i.name for i in inputs], "", dict(attrs))
        if op in ("conv2d", "linear"):
            node.attrs["requant"] = True
        if weight is not None:
            o = weight.q.shape[0]
            sc = weight.scale.reshape(-1)
            scale = _f32(sc[0]) if sc.size == 1 else [_f32(v) for v in sc]
            self.add_tensor(f"{name}.weight", TensorSpec(tuple(weight.q.shape), 8, True, scale))
            self.arrays[f"{name}.weight"] = np.ascontiguousarray(weight.q, np.int8)
            b = np.zeros(o, np.int32) if bias is None else np.asarray(bias, np.int32).reshape(o)
            self.add_tensor(f"{name}.bias", TensorSpec((o,), 32, True))
            self.arrays[f"{name}.bias"] = b
            k = o
        else:
            k = len(inputs) if op in ("add", "concat") else 1
        self.add_tensor(f"{name}.multiplier", TensorSpec((k,), 32, True))
        self.add_tensor(f"{name}.shift", TensorSpec((k,), 8, True))
        self.arrays[f"{name}.multiplier"] = np.zeros(k, np.int32)
        self.arrays[f"{name}.shift"] = np.zeros(k, np.int8)
        y = self.new_activation(out_name, shape, s_y, zp_y, signed, node)
        node.output = y.name
        lo, hi = self.tensors[y.name].int_range()
        if np.isfinite(clip[0]):
            lo = max(lo, int(np.clip(np.rint(np.float32(clip[0]) / np.float32(s_y)) + zp_y, lo, hi)))
        if np.isfinite(clip[1]):
            hi = min(hi, int(np.clip(np.rint(np.float32(clip[1]) / np.float32(s_y)) + zp_y, lo, hi)))
        node.attrs["clamp"] = [int(lo), int(hi)]
        self.nodes.append(node)
        return y

    def passthrough(self, onnx_node, op: str, x: _Q, out_name: str, attrs: dict[str, Any]) -> _Q:
        """maxpool2d / flatten / slice / channel_shuffle: the output keeps the input's scale
        and zero point."""
        name = self.unique(onnx_node.name or f"{onnx_node.op_type}_{len(self.nodes)}")
        if op == "flatten":
            shape = (int(np.prod(x.shape)),)
        elif op == "slice":
            shape = (attrs["stop"] - attrs["start"], *x.shape[1:])
        elif op == "channel_shuffle":
            shape = x.shape
        else:
            k, st, pad = attrs["kernel"], attrs["stride"], attrs["padding"]
            shape = (x.shape[0], (x.shape[1] + 2 * pad - k) // st + 1,
                     (x.shape[2] + 2 * pad - k) // st + 1)
        node = Node(name, op, [x.name], "", dict(attrs))
        y = self.new_activation(out_name, shape, x.scale, x.zp, x.signed, node)
        node.output = y.name
        self.nodes.append(node)
        return y

    # ------------------------------------------------------------------ attributes
    def conv_attrs(self, node, kshape: Sequence[int]) -> dict[str, Any]:
        a = self.attrs(node)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self.fail(node, f"auto_pad {a['auto_pad']!r} is not supported (give explicit pads)")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, f"dilations {a['dilations']} are not supported (only 1)")
        strides = list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(kshape) != 2:
            self.fail(node, f"only 2-D convolutions are supported, kernel {list(kshape)}")
        if len(set(strides)) != 1:
            self.fail(node, f"strides {strides}: only equal strides are supported")
        if len(set(pads)) != 1:
            self.fail(node, f"pads {pads}: only equal padding on all sides is supported")
        return {"stride": int(strides[0]), "padding": int(pads[0]), "groups": int(a.get("group", 1))}

    def pool_attrs(self, node, average: bool) -> dict[str, Any]:
        a = self.attrs(node)
        k = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", [1] * len(k)))
        pads = list(a.get("pads", [0] * 2 * len(k)))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self.fail(node, f"auto_pad {a['auto_pad']!r} is not supported (give explicit pads)")
        if len(k) != 2 or k[0] != k[1]:
            self.fail(node, f"kernel_shape {k}: only square 2-D windows are supported")
        if len(set(strides)) != 1:
            self.fail(node, f"strides {strides}: only equal strides are supported")
        if len(set(pads)) != 1:
            self.fail(node, f"pads {pads}: only equal padding on all sides is supported")
        if a.get("ceil_mode", 0):
            self.fail(node, "ceil_mode=1 is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, f"dilations {a['dilations']} are not supported (only 1)")
        if not average and a.get("storage_order", 0):
            self.fail(node, "storage_order=1 is not supported")
        attrs = {"kernel": int(k[0]), "stride": int(strides[0]), "padding": int(pads[0])}
        if average and pads[0]:  # ONNX's default divides by the in-map inputs only
            attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
        return attrs

    def check_flatten(self, node, x_shape: tuple[int, ...]) -> None:
        if node.op_type == "Flatten":
            axis = self.attrs(node).get("axis", 1)
            if axis != 1:
                self.fail(node, f"axis={axis}: only axis=1 (keep the batch) is supported")
            return
        shape = self.const(node, node.input[1], "shape").reshape(-1).tolist()
        flat = int(np.prod(x_shape))
        if not (len(shape) == 2 and shape[0] in (0, -1, 1) and shape[1] in (-1, flat)
                and not (shape[0] == -1 and shape[1] == -1)):
            self.fail(node, f"shape {shape}: only a reshape to (batch, features) is supported")

    # ------------------------------------------------------------------ the graph walk
    def run(self) -> IntegerProgram:
        for node in self.graph.node:
            handler = getattr(self, f"op_{node.op_type}", None)
            if node.op_type == "Constant" or self.fold(node):
                continue
            if handler is None or node.domain not in ("", "ai.onnx", "com.microsoft"):
                self.fail(node, "op not supported by npusim (no program op maps it)")
            handler(node)
        outputs = []
        for o in self.graph.output:
            if o.name in self.q:
                outputs.append(self.q[o.name].name)
            elif o.name in self.deq:
                outputs.append(self.deq[o.name].name)
            elif o.name in self.pending:
                self.fail(self.pending[o.name].node, "its output is not quantized "
                                                     "(no QuantizeLinear follows it)")
            else:
                raise OnnxImportError(f"graph output {o.name!r} is not a quantized tensor")
        if self.input is None:
            raise OnnxImportError("the model has no QuantizeLinear of its input: not a quantized "
                                  "model")
        prog = IntegerProgram(nodes=self.nodes, tensors=self.tensors, arrays=self.arrays,
                              input=self.input, outputs=outputs, requant=self.requant(),
                              producer={"name": "npusim.onnx", "source": self.model.producer_name
                                        or "unknown"})
        if self.pixels is not None:
            self.prepend_embed(prog)
        return prog.validate("<onnx import>")

    def requant(self) -> dict[str, Any]:
        """The float settings, or those an `export_onnx` model recorded (scale_mode float)."""
        import json

        meta = {p.key: p.value for p in self.model.metadata_props}
        rq = dict(FLOAT_REQUANT)
        if REQUANT_KEY in meta:
            try:
                rq = {**rq, **json.loads(meta[REQUANT_KEY]), "scale_mode": "float"}
            except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
                raise OnnxImportError(f"metadata {REQUANT_KEY!r}: not a JSON object") from None
        return rq

    def prepend_embed(self, prog: IntegerProgram) -> None:
        """Raw uint8 pixels -> the quantized input through a LUT computed by ONNX Runtime's
        QuantizeLinear on ``f32((p/scale - mean)/std)``."""
        spec = prog.tensors[prog.input]
        c = spec.shape[0]
        vals = [np.atleast_1d(np.asarray(v, np.float32)) for v in self.pixels]
        if len(vals) != 3 or any(v.ndim != 1 or v.size not in (1, c) for v in vals):
            raise OnnxImportError(f"pixels: expected (mean, std, scale), each one value or {c} "
                                  f"(one per input channel), got sizes {[v.size for v in vals]}")
        if any((v <= 0).any() for v in vals[1:]):
            raise OnnxImportError("pixels: std and scale must be positive")
        mean, std, scale = (np.broadcast_to(v, (c,)) for v in vals)
        p = np.arange(256, dtype=np.float32)
        f = ((p[None, :] / scale[:, None] - mean[:, None]) / std[:, None]).astype(np.float32)
        lut = ort_quantize_linear(f, spec.scale, spec.zero_point, spec.signed)
        name = self.unique("embed")
        raw = self.unique("pixels")
        prog.tensors[raw] = TensorSpec(spec.shape, 8, False, 1.0, 0)
        prog.tensors[f"{name}.lut"] = TensorSpec((c, 256, 1), 8, spec.signed)
        prog.arrays[f"{name}.lut"] = lut.reshape(c, 256, 1).astype(storage_dtype(8, spec.signed))
        prog.nodes.insert(0, Node(name, "embed", [raw], prog.input, {}))
        prog.input = raw
        prog.meta["pixels"] = {"mean": mean.tolist(), "std": std.tolist(), "scale": scale.tolist()}

    # ------------------------------------------------------------------ shape arithmetic
    _FOLDABLE = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Div", "Mul",
                           "Add", "Sub", "Cast", "Slice", "Range", "Reshape", "Floor", "Identity",
                           "ConstantOfShape", "Equal", "Where", "Expand"})

    def fold(self, node) -> bool:
        """Evaluate a shape-arithmetic node whose inputs are all known (constants, or the
        Shape of an activation, batch 1) into `consts`; False when it is not one."""
        if node.op_type == "Shape":
            x = self.q.get(node.input[0]) or self.deq.get(node.input[0])
            if x is None:
                return False
            a = self.attrs(node)
            self.consts[node.output[0]] = np.array([1, *x.shape], np.int64)[
                a.get("start", 0):a.get("end")]
            return True
        if node.op_type not in self._FOLDABLE or \
                not all(i == "" or i in self.consts for i in node.input):
            return False
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        ins = [i for i in node.input if i]
        vals = [self.consts[i] for i in ins]
        graph = helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for i, v in zip(ins, vals)],
            [helper.make_tensor_value_info(o, 0, None) for o in node.output])
        try:
            outs = ReferenceEvaluator(helper.make_model(graph, opset_imports=self.opsets)).run(
                None, dict(zip(ins, vals)))
        except Exception as e:  # noqa: BLE001 - the reference runtime raises many types
            self.fail(node, f"cannot evaluate this constant expression ({type(e).__name__})")
        for o, v in zip(node.output, outs):
            self.consts[o] = np.asarray(v)
        return True

    # ------------------------------------------------------------------ Q / DQ
    def op_QuantizeLinear(self, node) -> None:
        src = node.input[0]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        s, zp, signed = self.scalar_q(node, node.input[1], zp_name)
        if zp_name is None:
            self.fail(node, "a zero point input is required (uint8 or int8 output)")
        if src in self.float_inputs:
            if self.input is not None:
                self.fail(node, "a second quantized model input is not supported")
            shape = self.input_shape(src)
            q = self.new_activation(node.output[0], shape, s, zp, signed, None)
            self.input = q.name
        elif src in self.pending and self.pending[src].op == "clamp":
            self.narrow_clamp(node, self.pending.pop(src), node.output[0], (s, zp, signed))
        elif src in self.pending:
            pend = self.pending.pop(src)
            self.emit(pend.node, pend.op, pend.inputs, node.output[0], (s, zp, signed),
                      pend.attrs, pend.weight, None if pend.bias is None else pend.bias.q,
                      pend.clip)
        elif src in self.deq:
            x = self.deq[src]
            if (x.scale, x.zp, x.signed) != (s, zp, signed):  # DQ -> Q: a one-input concat
                self.emit(node, "concat", [x], node.output[0], (s, zp, signed), {})
            else:
                self.q[node.output[0]] = x
        elif src in self.virtual:
            x, g, tr, _ = self.virtual[src]
            if (x.scale, x.zp, x.signed) != (s, zp, signed):
                self.fail(node, "a QuantizeLinear inside a channel shuffle must keep the "
                                "parameters")
            self.virtual[node.output[0]] = (x, g, tr, True)
        else:
            self.fail(node, f"input {src!r} is neither the model input nor a supported op result")

    def narrow_clamp(self, qnode, pend: _Pending, out_name: str, out) -> None:
        """Relu/Clip between a DequantizeLinear and a QuantizeLinear of the same parameters: the
        clamp of the node that produced the tensor (its only reader), which takes the new name."""
        x = pend.inputs[0]
        if (x.scale, x.zp, x.signed) != out:
            self.fail(pend.node, "the QuantizeLinear after it changes scale/zero point (a "
                                 "requantization is not supported)")
        node = x.producer
        names = {pend.attrs["src"]} | {k for k, v in self.q.items() if v is x}
        readers = [n for n in self.graph.node if set(n.input) & names]
        if node is None or "clamp" not in node.attrs or len(readers) != 2 or \
                any(x.name in n.inputs for n in self.nodes):
            self.fail(pend.node, "only a Relu/Clip of a tensor read by nothing else, made by a "
                                 "requantizing node, is supported")
        lo, hi = node.attrs["clamp"]
        lo_c, hi_c = (int(np.rint(np.float32(v) / np.float32(x.scale))) + x.zp
                      if np.isfinite(v) else None for v in pend.clip)
        node.attrs["clamp"] = [max(lo, lo_c) if lo_c is not None else lo,
                               min(hi, hi_c) if hi_c is not None else hi]
        new = out_name if out_name not in self.tensors else self.unique(out_name)
        self.tensors[new] = self.tensors.pop(x.name)
        node.output = new
        x.name = new
        self.q[out_name] = x

    def input_shape(self, name: str) -> tuple[int, ...]:
        vi = next(i for i in self.graph.input if i.name == name)
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        if len(dims) != 4 or any(d is None or d <= 0 for d in dims[1:]):
            raise OnnxImportError(f"input {name!r}: expected a (N, C, H, W) image tensor with "
                                  f"fixed C, H, W, got {dims}")
        return tuple(dims[1:])

    def op_DequantizeLinear(self, node) -> None:
        src = node.input[0]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if src in self.consts:
            q = self.consts[src]
            scale = self.const(node, node.input[1], "scale").astype(np.float32)
            zp = self.consts.get(zp_name) if zp_name else None
            axis = self.attrs(node).get("axis", 1)
            self.wdeq[node.output[0]] = _Const(q, scale, np.zeros(1, q.dtype) if zp is None
                                               else zp, axis)
            return
        if src in self.virtual:
            x, g, tr, _ = self.virtual[src]
            self.virtual[node.output[0]] = (x, g, tr, False)
            return
        x = self.need_q(node, src)
        s, zp, _ = self.scalar_q(node, node.input[1], zp_name)
        if (x.scale, x.zp) != (s, zp):
            self.fail(node, f"scale/zero point differ from those {src!r} was quantized with")
        self.deq[node.output[0]] = x

    # ------------------------------------------------------------------ QDQ float ops
    def qdq_weight(self, node, name: str, axis_expected: int) -> _Const:
        if name not in self.wdeq:
            self.fail(node, f"weight {name!r} is not a quantized constant (DequantizeLinear of an "
                            f"int8 initializer)")
        c = self.wdeq[name]
        if c.scale.size > 1 and c.axis not in (axis_expected, axis_expected - c.q.ndim):
            self.fail(node, f"weight {name!r}: per-channel axis {c.axis}, expected {axis_expected}")
        return self.weight_const(node, c.q, c.scale, c.zp)

    def qdq_bias(self, node, name: str) -> _Const:
        if name not in self.wdeq or self.wdeq[name].q.dtype != np.int32:
            self.fail(node, f"bias {name!r} is not an int32 quantized constant")
        return self.wdeq[name]

    def op_Conv(self, node) -> None:
        x = self.need_deq(node, node.input[0])
        w = self.qdq_weight(node, node.input[1], 0)
        attrs = self.conv_attrs(node, w.q.shape[2:])
        bias = self.qdq_bias(node, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        self.pending[node.output[0]] = _Pending(node, "conv2d", [x], w, bias, attrs=attrs)

    def op_Gemm(self, node) -> None:
        a = self.attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            self.fail(node, "only transA=0, alpha=1, beta=1 is supported")
        x = self.need_deq(node, node.input[0])
        trans = a.get("transB", 0)
        w = self.qdq_weight(node, node.input[1], 0 if trans else 1)
        if not trans:
            w = _Const(np.ascontiguousarray(w.q.T), w.scale, w.zp)
        bias = self.qdq_bias(node, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        self.pending[node.output[0]] = _Pending(node, "linear", [self.flat(node, x)], w, bias)

    def op_MatMul(self, node) -> None:
        x = self.need_deq(node, node.input[0])
        w = self.qdq_weight(node, node.input[1], 1)
        w = _Const(np.ascontiguousarray(w.q.T), w.scale, w.zp)
        self.pending[node.output[0]] = _Pending(node, "linear", [self.flat(node, x)], w, None)

    def flat(self, node, x: _Q) -> _Q:
        if len(x.shape) != 1:
            self.fail(node, f"input {x.name!r} has shape {list(x.shape)}: a matrix product needs "
                            f"a (batch, features) input (Flatten first)")
        return x

    def op_Add(self, node) -> None:
        a, b = (self.need_deq(node, i) for i in node.input)
        if a.shape != b.shape:
            self.fail(node, f"inputs of shapes {list(a.shape)} and {list(b.shape)}: only "
                            f"same-shape adds are supported")
        self.pending[node.output[0]] = _Pending(node, "add", [a, b])

    def op_GlobalAveragePool(self, node) -> None:
        x = self.need_deq(node, node.input[0])
        self.pending[node.output[0]] = _Pending(node, "global_avgpool", [x])

    def op_AveragePool(self, node) -> None:
        x = self.need_deq(node, node.input[0])
        self.pending[node.output[0]] = _Pending(node, "avgpool2d", [x],
                                                attrs=self.pool_attrs(node, True))

    def op_MaxPool(self, node) -> None:
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the Indices output is not supported")
        attrs = self.pool_attrs(node, False)
        if node.input[0] in self.q:  # QOperator: MaxPool on the quantized tensor
            self.passthrough(node, "maxpool2d", self.q[node.input[0]], node.output[0], attrs)
            return
        x = self.need_deq(node, node.input[0])
        y = self.passthrough(node, "maxpool2d", x, node.output[0], attrs)
        self.deq[node.output[0]] = y

    def op_Flatten(self, node) -> None:
        src = node.input[0]
        if src in self.q:
            self.check_flatten(node, self.q[src].shape)
            self.passthrough(node, "flatten", self.q[src], node.output[0], {})
            return
        x = self.need_deq(node, src)
        self.check_flatten(node, x.shape)
        self.deq[node.output[0]] = self.passthrough(node, "flatten", x, node.output[0], {})

    def op_Reshape(self, node) -> None:
        src, shape = node.input[0], self.const(node, node.input[1], "shape").reshape(-1).tolist()
        if src in self.virtual:  # the last Reshape of a channel shuffle
            x, g, tr, quantized = self.virtual[src]
            if not tr or len(shape) != 4 or shape[0] not in (0, -1, 1) \
                    or shape[1:] != list(x.shape):
                self.fail(node, f"shape {shape}: only the channel shuffle pattern Reshape (N, g, "
                                f"C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (N, C, H, W) "
                                f"is supported")
            y = self.passthrough(node, "channel_shuffle", x, node.output[0], {"groups": g})
            if not quantized:
                self.deq[node.output[0]] = y
            return
        x = self.q.get(src) or self.deq.get(src)
        if x is not None and len(shape) == 5 and len(x.shape) == 3 and shape[0] in (0, -1, 1) \
                and shape[3:] == list(x.shape[1:]) and shape[1] * shape[2] == x.shape[0] \
                and shape[1] > 0:
            self.virtual[node.output[0]] = (x, int(shape[1]), False, src in self.q)
            return
        self.op_Flatten(node)

    def op_Transpose(self, node) -> None:
        src, perm = node.input[0], list(self.attrs(node).get("perm", []))
        if src not in self.virtual or perm != [0, 2, 1, 3, 4] or self.virtual[src][2]:
            self.fail(node, f"perm {perm}: only the Transpose (0, 2, 1, 3, 4) of a channel "
                            f"shuffle (Reshape -> Transpose -> Reshape) is supported")
        x, g, _, quantized = self.virtual[src]
        self.virtual[node.output[0]] = (x, g, True, quantized)

    def channel_slice(self, node, src: str, out: str, start: int, stop: int) -> None:
        """Channels [start, stop) of a quantized or dequantized activation (a view)."""
        if src in self.q:
            x, quantized = self.q[src], True
        else:
            x, quantized = self.need_deq(node, src), False
        c = x.shape[0]
        start, stop = (min(max(v + c if v < 0 else v, 0), c) for v in (start, stop))
        if start >= stop:
            self.fail(node, f"an empty channel range [{start}, {stop})")
        if (start, stop) == (0, c):  # the whole tensor
            (self.q if quantized else self.deq)[out] = x
            return
        y = self.passthrough(node, "slice", x, out, {"start": int(start), "stop": int(stop)})
        if not quantized:
            self.deq[out] = y

    def op_Slice(self, node) -> None:
        x = self.q.get(node.input[0]) or self.deq.get(node.input[0])
        rank = len(x.shape) + 1 if x is not None else 4
        ins = [self.const(node, i, what).reshape(-1).tolist() if i else None for i, what in
               zip(list(node.input[1:]) + [""] * (5 - len(node.input)),
                   ("starts", "ends", "axes", "steps"))]
        starts, ends, axes, steps = ins
        axes = [a + rank if a < 0 else a for a in (axes or range(len(starts)))]
        if axes != [1] or (steps is not None and steps != [1]):
            self.fail(node, f"axes {axes}, steps {steps}: only a slice of the channels (axis 1, "
                            f"step 1) is supported")
        self.channel_slice(node, node.input[0], node.output[0], int(starts[0]), int(ends[0]))

    def op_Split(self, node) -> None:
        a = self.attrs(node)
        x = self.q.get(node.input[0]) or self.deq.get(node.input[0])
        if x is None:
            self.need_deq(node, node.input[0])
        axis = a.get("axis", 0)
        if axis not in (1, 1 - len(x.shape) - 1):
            self.fail(node, f"axis={axis}: only a split of the channels (axis 1) is supported")
        if len(node.input) > 1 and node.input[1]:
            sizes = self.const(node, node.input[1], "split").reshape(-1).tolist()
        elif "split" in a:
            sizes = list(a["split"])
        else:
            c, k = x.shape[0], len(node.output)
            step = -(-c // k)
            sizes = [min(step, c - i * step) for i in range(k)]
        if sum(sizes) != x.shape[0] or len(sizes) != len(node.output):
            self.fail(node, f"split {sizes} does not cover {x.shape[0]} channels in "
                            f"{len(node.output)} outputs")
        start = 0
        for out, size in zip(node.output, sizes):
            self.channel_slice(node, node.input[0], out, start, start + int(size))
            start += int(size)

    def op_Concat(self, node) -> None:
        if self.attrs(node).get("axis") not in (1, -3):
            self.fail(node, f"axis={self.attrs(node).get('axis')}: only a concat of the channels "
                            f"(axis 1) is supported")
        xs = [self.need_deq(node, i) for i in node.input]
        if len({x.shape[1:] for x in xs}) != 1 or len({len(x.shape) for x in xs}) != 1:
            self.fail(node, f"inputs of shapes {[list(x.shape) for x in xs]} differ outside the "
                            f"channel axis")
        self.pending[node.output[0]] = _Pending(node, "concat", xs)

    def op_Relu(self, node) -> None:
        self.clip(node, 0.0, np.inf)

    def op_Clip(self, node) -> None:
        a = self.attrs(node)
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const(node, node.input[1], "min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const(node, node.input[2], "max"))
        self.clip(node, lo, hi)

    def clip(self, node, lo: float, hi: float) -> None:
        src = node.input[0]
        if src in self.deq:  # DequantizeLinear -> Relu/Clip -> QuantizeLinear on a node's output
            self.pending[node.output[0]] = _Pending(node, "clamp", [self.deq[src]],
                                                    clip=(lo, hi), attrs={"src": src})
            return
        if src not in self.pending:
            self.fail(node, "only a Relu/Clip right after a Conv/Gemm/MatMul/Add/pooling "
                            "(before its QuantizeLinear) is supported")
        pend = self.pending.pop(src)
        pend.clip = (max(pend.clip[0], lo), min(pend.clip[1], hi))
        self.pending[node.output[0]] = pend

    # ------------------------------------------------------------------ QOperator ops
    def out_q(self, node, scale_i: int, zp_i: int) -> tuple[float, int, bool]:
        return self.scalar_q(node, node.input[scale_i], node.input[zp_i])

    def check_in(self, node, x: _Q, scale_i: int, zp_i: int) -> None:
        s, zp, _ = self.scalar_q(node, node.input[scale_i], node.input[zp_i])
        if (s, zp) != (x.scale, x.zp):
            self.fail(node, f"input scale/zero point differ from those {x.name!r} was quantized "
                            f"with")

    def op_QLinearConv(self, node) -> None:
        x = self.need_q(node, node.input[0])
        self.check_in(node, x, 1, 2)
        w = self.weight_const(node, self.const(node, node.input[3], "weight"),
                              self.const(node, node.input[4], "weight scale"),
                              self.const(node, node.input[5], "weight zero point"))
        bias = self.const(node, node.input[8], "bias") if len(node.input) > 8 and node.input[8] \
            else None
        self.emit(node, "conv2d", [x], node.output[0], self.out_q(node, 6, 7),
                  self.conv_attrs(node, w.q.shape[2:]), w, bias)

    def op_QLinearMatMul(self, node) -> None:
        x = self.flat(node, self.need_q(node, node.input[0]))
        self.check_in(node, x, 1, 2)
        w = self.weight_const(node, self.const(node, node.input[3], "weight"),
                              self.const(node, node.input[4], "weight scale"),
                              self.const(node, node.input[5], "weight zero point"))
        w = _Const(np.ascontiguousarray(w.q.T), w.scale, w.zp)
        self.emit(node, "linear", [x], node.output[0], self.out_q(node, 6, 7), {}, w)

    def op_QGemm(self, node) -> None:
        a = self.attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
            self.fail(node, "only transA=0, alpha=1 is supported")
        if len(node.input) < 8 or not node.input[7]:
            self.fail(node, "a float output (no y_scale) is not supported")
        x = self.flat(node, self.need_q(node, node.input[0]))
        self.check_in(node, x, 1, 2)
        w = self.weight_const(node, self.const(node, node.input[3], "weight"),
                              self.const(node, node.input[4], "weight scale"),
                              self.const(node, node.input[5], "weight zero point"))
        if not a.get("transB", 0):
            w = _Const(np.ascontiguousarray(w.q.T), w.scale, w.zp)
        bias = self.const(node, node.input[6], "bias") if node.input[6] else None
        if bias is not None and bias.dtype != np.int32:
            self.fail(node, f"bias must be int32, got {bias.dtype}")
        self.emit(node, "linear", [x], node.output[0], self.out_q(node, 7, 8), {}, w, bias)

    def op_QLinearAdd(self, node) -> None:
        a, b = self.need_q(node, node.input[0]), self.need_q(node, node.input[3])
        self.check_in(node, a, 1, 2)
        self.check_in(node, b, 4, 5)
        if a.shape != b.shape:
            self.fail(node, f"inputs of shapes {list(a.shape)} and {list(b.shape)}: only "
                            f"same-shape adds are supported")
        self.emit(node, "add", [a, b], node.output[0], self.out_q(node, 6, 7), {})

    def op_QLinearConcat(self, node) -> None:
        if self.attrs(node).get("axis") not in (1, -3):
            self.fail(node, f"axis={self.attrs(node).get('axis')}: only a concat of the channels "
                            f"(axis 1) is supported")
        if (len(node.input) - 2) % 3 or len(node.input) < 5:
            self.fail(node, "expected Y_scale, Y_zero_point and (X, X_scale, X_zero_point) "
                            "triples")
        xs = []
        for i in range(2, len(node.input), 3):
            x = self.need_q(node, node.input[i])
            self.check_in(node, x, i + 1, i + 2)
            xs.append(x)
        if len({x.shape[1:] for x in xs}) != 1:
            self.fail(node, f"inputs of shapes {[list(x.shape) for x in xs]} differ outside the "
                            f"channel axis")
        self.emit(node, "concat", xs, node.output[0], self.out_q(node, 0, 1), {})

    def op_QLinearGlobalAveragePool(self, node) -> None:
        if self.attrs(node).get("channels_last", 0):
            self.fail(node, "channels_last=1 is not supported")
        x = self.need_q(node, node.input[0])
        self.check_in(node, x, 1, 2)
        self.emit(node, "global_avgpool", [x], node.output[0], self.out_q(node, 3, 4), {})

    def op_QLinearAveragePool(self, node) -> None:
        if self.attrs(node).get("channels_last", 0):
            self.fail(node, "channels_last=1 is not supported")
        x = self.need_q(node, node.input[0])
        self.check_in(node, x, 1, 2)
        self.emit(node, "avgpool2d", [x], node.output[0], self.out_q(node, 3, 4),
                  self.pool_attrs(node, True))


def ort_quantize_linear(values: np.ndarray, scale: float, zero_point: int,
                        signed: bool) -> np.ndarray:
    """ONNX Runtime's own QuantizeLinear (float32 -> u8/s8) of an array, run in a session."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    dt, npdt = (TensorProto.INT8, np.int8) if signed else (TensorProto.UINT8, np.uint8)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [float(scale)]),
             helper.make_tensor("z", dt, [], [int(zero_point)])]
    graph = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             list(values.shape))],
                              [helper.make_tensor_value_info("y", dt, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(values, np.float32)})[0].astype(npdt)


def import_onnx(path_or_model: str | os.PathLike | Any,
                pixels: tuple[Any, Any, Any] | None = None) -> IntegerProgram:
    """A quantized ONNX model (path or ModelProto) as a float-mode IntegerProgram; `pixels` =
    (mean, std, scale) per channel prepends an `embed` LUT from raw uint8 pixels."""
    import onnx

    if isinstance(path_or_model, (str, os.PathLike)):
        path = Path(path_or_model)
        if not path.is_file():
            raise OnnxImportError(f"{path}: file not found")
        try:
            model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - protobuf raises its own types for a corrupt file
            raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__})") \
                from None
    else:
        model = path_or_model
        path = None
    try:
        prog = _Importer(model, pixels).run()
    except OnnxImportError as e:
        if path is None:
            raise
        raise OnnxImportError(f"{path}: {e}") from None
    log.info("imported %d nodes from %s", len(prog.nodes), model.producer_name or "an ONNX model")
    return prog
