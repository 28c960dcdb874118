"""The op table: what each IntegerProgram op means, declared once (docs/program_format.md).

Every op is one `OpDef` record: how many inputs it takes, its attributes (type, range,
default), the arrays a node owns, the rule that gives its output shape, whether and how it
requantizes (its real multipliers and the float32 multipliers of the ``float`` mode), its MACs
per image and the work it gives the MAC array (a GEMM) or the vector unit. Validation
(`npusim.ir.program`), the simulator's kernels (`npusim.sim.simulator.KERNELS`, keyed by the
same names), the cost model and the exporter read this table; adding an op is one `OpDef` in
`OPS` plus its kernel.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from npusim.ir.program import IntegerProgram, Node

Shape = tuple[int, ...]
_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: ``int`` (with a range), ``bool`` or ``clamp`` ([lo, hi])."""

    name: str
    kind: Literal["int", "bool", "clamp"]
    lo: int | None = None
    hi: int | None = None
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (None when it is valid)."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
        if self.kind == "clamp":
            ok = (isinstance(value, list) and len(value) == 2
                  and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                          for v in value)
                  and value[0] <= value[1])
            return None if ok else f"expected [lo, hi] with lo <= hi, got {value!r}"
        ok = isinstance(value, int) and not isinstance(value, bool) \
            and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)
        if ok:
            return None
        rng = f"[{self.lo}, {self.hi}]" if self.hi is not None else f">= {self.lo}"
        return f"expected an int {rng}, got {value!r}" if self.lo is not None \
            else f"expected an int, got {value!r}"


@dataclass(frozen=True)
class OpDef:
    """An op of the IntegerProgram format, declared once.

    `shape(ins, arrays, attrs)` gives the output shape from the input shapes, the node's own
    arrays (by key: ``weight``, ``lut``...) and its attributes (defaults filled in), raising
    ValueError(``"field: what is wrong"``) on a mismatch. `real_multipliers` (None: the op never
    requantizes) gives the float64 multipliers M (docs/architecture.md), `float_multipliers` the float32
    ones of the ``float`` mode in ONNX Runtime's order. `macs(program, node)` counts the
    multiply-accumulates per image, `gemm` gives a node's ``(M, K, N, groups)`` per group on the
    MAC array (unit ``array``), `vector_ops` its operations per image on the vector unit (unit
    ``vector``). `view` ops only reinterpret or re-address their input's buffer (their output
    keeps the input's bits, sign, scale and zero point). A `variadic` op takes `inputs` or more.
    `doc` is the op's meaning in one sentence (the program-format reference prints it).
    """

    name: str
    inputs: int
    attrs: tuple[Attr, ...]
    arrays: tuple[str, ...]
    shape: Callable[[list[Shape], dict[str, np.ndarray], dict[str, Any]], Shape]
    unit: Literal["array", "vector", "none"]
    macs: Callable[[IntegerProgram, Node], int] = lambda program, node: 0
    real_multipliers: Callable[[IntegerProgram, Node], np.ndarray] | None = None
    float_multipliers: Callable[[IntegerProgram, Node], np.ndarray] | None = None
    gemm: Callable[[IntegerProgram, Node], tuple[int, int, int, int]] | None = None
    vector_ops: Callable[[IntegerProgram, Node], int] | None = None
    view: bool = False
    variadic: bool = False
    doc: str = ""

    def attr(self, node: Node, name: str) -> Any:
        """A node's attribute, or the op's default for it."""
        if name in node.attrs:
            return node.attrs[name]
        return next(a.default for a in self.attrs if a.name == name)

    def has_attr(self, name: str) -> bool:
        """Whether the op declares attribute `name`."""
        return any(a.name == name for a in self.attrs)

    def requantizes(self, node: Node) -> bool:
        """Whether `node`'s outputs pass through requantization (per-channel multiplier/shift)."""
        return self.real_multipliers is not None and bool(node.attrs.get("requant", True))


def op_of(node: Node) -> OpDef:
    """The table entry of a node's op."""
    return OPS[node.op]


def requantizes(node: Node) -> bool:
    """Whether a node's outputs pass through requantization."""
    return OPS[node.op].requantizes(node)


# ------------------------------------------------------------------------ shape rules

def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    """Output length of a window `k` sliding with `stride` over `size` padded by `pad`."""
    return (size + 2 * pad - k) // stride + 1


def _conv_shape(ins, arrays, a) -> Shape:
    w = arrays["weight"]
    if w.ndim != 4 or len(ins[0]) != 3:
        raise ValueError("weight must be 4-D and the input (C, H, W)")
    c, h, wd = ins[0]
    groups = a["groups"]
    if c % groups or w.shape[0] % groups:
        raise ValueError(f"attrs.groups: {groups!r} does not divide channels {c} and {w.shape[0]}")
    if w.shape[1] * groups != c:
        raise ValueError(f"weight: shape {list(w.shape)} does not match {c} input channels "
                         f"with groups={groups}")
    s, p = a["stride"], a["padding"]
    return _per_channel(arrays, (w.shape[0], conv_out(h, w.shape[2], s, p),
                                 conv_out(wd, w.shape[3], s, p)))


def _linear_shape(ins, arrays, a) -> Shape:
    w = arrays["weight"]
    if w.ndim != 2 or len(ins[0]) != 1 or w.shape[1] != ins[0][0]:
        raise ValueError(f"weight: shape {list(w.shape)} does not match input {list(ins[0])}")
    return _per_channel(arrays, (w.shape[0],))


def _per_channel(arrays, out: Shape) -> Shape:
    """Bias and multiplier/shift of a conv/linear node hold one value per output channel."""
    for key in ("bias", "multiplier", "shift"):
        arr = arrays.get(key)
        if arr is not None and arr.shape != (out[0],):
            raise ValueError(f"{key}: shape {list(arr.shape)}, expected [{out[0]}]")
    return out


def _add_shape(ins, arrays, a) -> Shape:
    if tuple(ins[0]) != tuple(ins[1]):
        raise ValueError(f"inputs: shapes {list(ins[0])} and {list(ins[1])} differ")
    return tuple(ins[0])


def _pool_shape(ins, arrays, a) -> Shape:
    if len(ins[0]) != 3:
        raise ValueError(f"inputs: expected a (C, H, W) input, got {list(ins[0])}")
    c, h, wd = ins[0]
    k, s, p = a["kernel"], a["stride"], a["padding"]
    return (c, conv_out(h, k, s, p), conv_out(wd, k, s, p))


def _global_pool_shape(ins, arrays, a) -> Shape:
    if len(ins[0]) != 3:
        raise ValueError(f"inputs: expected a (C, H, W) input, got {list(ins[0])}")
    return (ins[0][0], 1, 1)


def _flatten_shape(ins, arrays, a) -> Shape:
    return (int(np.prod(ins[0])),)


def _concat_shape(ins, arrays, a) -> Shape:
    """Along channels (axis 0 of (C, H, W) or (F,)); the other dimensions must agree."""
    rest = {tuple(i[1:]) for i in ins}
    if len(rest) != 1 or len({len(i) for i in ins}) != 1:
        raise ValueError(f"inputs: shapes {[list(i) for i in ins]} differ outside the channel "
                         f"axis")
    return (sum(i[0] for i in ins), *ins[0][1:])


def _slice_shape(ins, arrays, a) -> Shape:
    """Channels ``[start, stop)`` of the input."""
    c = ins[0][0]
    if not a["start"] < a["stop"] <= c:
        raise ValueError(f"attrs.stop: expected start < stop <= {c} channels, got "
                         f"start={a['start']} stop={a['stop']}")
    return (a["stop"] - a["start"], *ins[0][1:])


def _shuffle_shape(ins, arrays, a) -> Shape:
    c, g = ins[0][0], a["groups"]
    if c % g:
        raise ValueError(f"attrs.groups: {g} does not divide {c} channels")
    return tuple(ins[0])


def _embed_shape(ins, arrays, a) -> Shape:
    lut = arrays["lut"]
    if lut.ndim != 3 or lut.shape[0] != ins[0][0] or lut.shape[1] != 256:
        raise ValueError(f"lut: expected shape ({ins[0][0]}, 256, d), got {list(lut.shape)}")
    return (ins[0][0] * lut.shape[2], *ins[0][1:])


# ----------------------------------------------------------------- requant multipliers

def _gemm_real(program: IntegerProgram, node: Node) -> np.ndarray:
    """``s_x * s_w[o] / s_y`` per output channel (batch norm is already in s_w)."""
    t = program.tensors
    s_x, s_w, s_y = t[node.inputs[0]].scales(), t[f"{node.name}.weight"].scales(), \
        t[node.output].scales()
    o = program.arrays[f"{node.name}.weight"].shape[0]
    return np.broadcast_to((s_x * s_w) / s_y, (o,)).astype(np.float64)


def _gemm_float(program: IntegerProgram, node: Node) -> np.ndarray:
    from npusim.ir.arith import ort_multiplier  # numba: not imported by the table itself

    t = program.tensors
    o = program.arrays[f"{node.name}.weight"].shape[0]
    mf = ort_multiplier(t[node.inputs[0]].scales()[0], t[f"{node.name}.weight"].scales(),
                        t[node.output].scales()[0])
    return np.broadcast_to(mf, (o,)).astype(np.float32)


def _add_real(program: IntegerProgram, node: Node) -> np.ndarray:
    """``s_in / s_y`` for each input."""
    t = program.tensors
    s_y = t[node.output].scales()[0]
    return np.array([t[i].scales()[0] / s_y for i in node.inputs])


def _add_float(program: IntegerProgram, node: Node) -> np.ndarray:
    t = program.tensors
    s_y = np.float32(t[node.output].scales()[0])
    return np.array([np.float32(t[i].scales()[0]) / s_y for i in node.inputs], dtype=np.float32)


def _concat_real(program: IntegerProgram, node: Node) -> np.ndarray:
    """``s_in / s_y`` for each input (1 where the input already has the output's scale)."""
    return _add_real(program, node)


def _concat_float(program: IntegerProgram, node: Node) -> np.ndarray:
    """Recorded for the table's completeness: the float mode of `concat` is ONNX Runtime's
    QLinearConcat, which divides by ``s_y`` (see `npusim.ir.arith.ort_requantize_linear`)."""
    return _add_float(program, node)


def pool_window(program: IntegerProgram, node: Node) -> int:
    """Elements an average/max pooling node reduces per output (a pool without a kernel
    reduces its whole map)."""
    if not OPS[node.op].has_attr("kernel"):
        _, h, w = program.tensors[node.inputs[0]].shape
        return int(h * w)
    return int(OPS[node.op].attr(node, "kernel")) ** 2


def _pool_real(program: IntegerProgram, node: Node) -> np.ndarray:
    """``s_in / (window * s_out)``."""
    t = program.tensors
    return np.array([t[node.inputs[0]].scales()[0]
                     / (pool_window(program, node) * t[node.output].scales()[0])])


def _real_as_float32(program: IntegerProgram, node: Node) -> np.ndarray:
    return OPS[node.op].real_multipliers(program, node).astype(np.float32)


def avgpool_sums_floats(program: IntegerProgram, node: Node) -> bool:
    """Whether a float-mode avgpool2d is ONNX Runtime's QLinearAveragePool arithmetic (float32
    sums of dequantized inputs, `npusim.ir.arith.ort_avgpool_one`): false when its window covers
    the whole unpadded map, which ORT computes as QLinearGlobalAveragePool."""
    op = OPS[node.op]
    _, h, w = program.tensors[node.inputs[0]].shape
    return not (op.attr(node, "kernel") == h == w and op.attr(node, "padding") == 0)


def _avgpool_float(program: IntegerProgram, node: Node) -> np.ndarray:
    """QLinearGlobalAveragePool's multiplier when the window is the whole map; otherwise ORT
    divides twice in float32 (`avgpool_sums_floats`) and the float32 real multiplier is only
    informative."""
    if avgpool_sums_floats(program, node):
        return _real_as_float32(program, node)
    return _global_pool_float(program, node)


def _global_pool_float(program: IntegerProgram, node: Node) -> np.ndarray:
    """QLinearGlobalAveragePool's order: ``f32(s_x / f32(s_y * f32(H*W)))``."""
    t = program.tensors
    h, w = t[node.inputs[0]].shape[1:]
    s_x = np.float32(t[node.inputs[0]].scales()[0])
    s_y = np.float32(t[node.output].scales()[0])
    return np.array([s_x / (s_y * np.float32(h * w))], dtype=np.float32)


# ------------------------------------------------------------------------ work counts

def _numel(program: IntegerProgram, tensor: str) -> int:
    return int(np.prod(program.tensors[tensor].shape, dtype=np.int64))


def _gemm_macs(program: IntegerProgram, node: Node) -> int:
    """K (weights per output) times the outputs."""
    return int(np.prod(program.arrays[f"{node.name}.weight"].shape[1:])) \
        * _numel(program, node.output)


def _conv_gemm(program: IntegerProgram, node: Node) -> tuple[int, int, int, int]:
    groups = int(node.attrs["groups"])
    _, ho, wo = program.tensors[node.output].shape
    o, cg, kh, kw = program.arrays[f"{node.name}.weight"].shape
    return int(ho * wo), int(kh * kw * cg), int(o // groups), groups


def _linear_gemm(program: IntegerProgram, node: Node) -> tuple[int, int, int, int]:
    w = program.arrays[f"{node.name}.weight"]
    return 1, int(w.shape[1]), int(w.shape[0]), 1


def _per_output(program: IntegerProgram, node: Node) -> int:
    return _numel(program, node.output)


def _per_window(program: IntegerProgram, node: Node) -> int:
    return _numel(program, node.output) * pool_window(program, node)


def _per_input(program: IntegerProgram, node: Node) -> int:
    return _numel(program, node.inputs[0])


# ------------------------------------------------------------------------------ table

_REQUANT = Attr("requant", "bool", default=True)
_CLAMP = Attr("clamp", "clamp", default=None)  # required when the node requantizes
_ACC_TARGET = Attr("acc_bits_target", "int", 2, 62, default=None)
_STRIDE = Attr("stride", "int", 1)
_KERNEL = Attr("kernel", "int", 1)
_PADDING = Attr("padding", "int", 0, default=0)

OPS: dict[str, OpDef] = {op.name: op for op in (
    OpDef("conv2d", 1, (_STRIDE, Attr("padding", "int", 0), Attr("groups", "int", 1),
                        Attr("requant", "bool"), _CLAMP, _ACC_TARGET),
          ("weight", "bias"), _conv_shape, "array", macs=_gemm_macs,
          real_multipliers=_gemm_real, float_multipliers=_gemm_float, gemm=_conv_gemm,
          doc=(
              "2-D convolution: `acc = bias + Σ x·w` over the kernel window and the input channels "
              "of its group, accumulated in the NPU's order and width, then requantized per output "
              "channel and clamped.")),
    OpDef("linear", 1, (Attr("requant", "bool"), _CLAMP, _ACC_TARGET), ("weight", "bias"),
          _linear_shape, "array", macs=_gemm_macs, real_multipliers=_gemm_real,
          float_multipliers=_gemm_float, gemm=_linear_gemm,
          doc=(
              "Fully connected layer: `acc = bias + Σ x·w`, then requantized per output channel and "
              "clamped.")),
    OpDef("add", 2, (_REQUANT, _CLAMP), (), _add_shape, "vector",
          real_multipliers=_add_real, float_multipliers=_add_float, vector_ops=_per_output,
          doc=(
              "Residual add of two tensors of equal shape: each input is rescaled to a common grid "
              "with `add_frac_bits` extra fraction bits (TFLite/ONNX Runtime QLinearAdd "
              "arithmetic), summed, requantized and clamped.")),
    OpDef("maxpool2d", 1, (_KERNEL, _STRIDE, _PADDING), (), _pool_shape, "vector",
          vector_ops=_per_window,
          doc=(
              "Max over each `kernel`×`kernel` window (padding never wins); no rescaling.")),
    # count_include_pad=false: a window divides by its in-map inputs only (float mode only)
    OpDef("avgpool2d", 1, (_KERNEL, _STRIDE, _PADDING, _REQUANT, _CLAMP,
                           Attr("count_include_pad", "bool", default=True)), (), _pool_shape,
          "vector", real_multipliers=_pool_real, float_multipliers=_avgpool_float,
          vector_ops=_per_window,
          doc=(
              "Sum over each window, then requantized by `s_in / (count · s_out)`; `count` is the "
              "window size, or its in-map inputs with `count_include_pad` false.")),
    OpDef("global_avgpool", 1, (_REQUANT, _CLAMP), (), _global_pool_shape, "vector",
          real_multipliers=_pool_real, float_multipliers=_global_pool_float,
          vector_ops=_per_input,
          doc=(
              "Sum over each channel's whole map, then requantized by `s_in / (H·W · s_out)`; "
              "output shape (C, 1, 1).")),
    OpDef("flatten", 1, (), (), _flatten_shape, "none", view=True,
          doc=(
              "Reinterprets a (C, H, W) buffer as (C·H·W,) in C order; no data moves.")),
    # along channels; each input requantized to the output's scale and zero point (ORT's
    # QLinearConcat; a copy where they agree): one requantization per output element. With one
    # input it is a requantization to other parameters (DequantizeLinear -> QuantizeLinear)
    OpDef("concat", 1, (_CLAMP,), (), _concat_shape, "vector", real_multipliers=_concat_real,
          float_multipliers=_concat_float, vector_ops=_per_output, variadic=True,
          doc=(
              "Concatenation along channels; each input is requantized to the output's scale and "
              "zero point (ONNX Runtime's QLinearConcat; a copy where they agree).")),
    # channels [start, stop): the consumer reads a window of the producer's buffer
    OpDef("slice", 1, (Attr("start", "int", 0), Attr("stop", "int", 1)), (), _slice_shape,
          "none", view=True,
          doc=(
              "Channels `[start, stop)` of its input: a view, no data moves.")),
    # ShuffleNet's channel shuffle: out[j*g + i] = in[i*(C/g) + j]; the consumer reads the
    # producer's buffer in permuted channel order
    OpDef("channel_shuffle", 1, (Attr("groups", "int", 1),), (), _shuffle_shape, "none",
          view=True,
          doc=(
              "ShuffleNet's channel shuffle `out[j·g + i] = in[i·(C/g) + j]`: a view read in "
              "permuted channel order.")),
    # one table lookup per input element
    OpDef("embed", 1, (), ("lut",), _embed_shape, "vector", vector_ops=_per_input,
          doc=(
              "Pixel embedding: each uint8 input pixel indexes its channel's table `lut` (shape (C, "
              "256, d)), giving `d` output channels per input channel.")),
)}
