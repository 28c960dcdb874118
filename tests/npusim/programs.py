"""Hand-built IntegerPrograms for simulator tests (no training involved)."""

from __future__ import annotations

import numpy as np

from npusim.ir.ops import requantizes
from npusim.ir.program import IntegerProgram, Node, TensorSpec, storage_dtype
from npusim.ir.requant import RequantSpec, node_requant

DEFAULT_RQ = RequantSpec().to_dict()


def _arr(values, bits, signed):
    return np.asarray(values).astype(storage_dtype(bits, signed))


def finish(nodes, tensors, arrays, input_name, outputs, requant=None):
    """Add the stored multiplier/shift arrays the shared decomposition gives, then validate."""
    requant = dict(requant or DEFAULT_RQ)
    prog = IntegerProgram(nodes=nodes, tensors=tensors, arrays=arrays, input=input_name,
                          outputs=outputs, requant=requant)
    settings = RequantSpec.from_dict(requant)
    for node in nodes:
        if requantizes(node):
            rq = node_requant(prog, node, settings)
            k = len(rq.m0)
            m0 = rq.m0 if settings.scale_mode != "float" else np.zeros(k, np.int64)
            n = rq.n if settings.scale_mode != "float" else np.zeros(k, np.int64)
            tensors[f"{node.name}.multiplier"] = TensorSpec((k,), 32, True)
            tensors[f"{node.name}.shift"] = TensorSpec((k,), 8, True)
            arrays[f"{node.name}.multiplier"] = m0.astype(np.int32)
            arrays[f"{node.name}.shift"] = n.astype(np.int8)
    return prog.validate("<test>")


def conv_program(w, bias, in_shape, x_bits=8, x_signed=False, zp_x=0, w_bits=8, stride=1,
                 padding=0, groups=1, s_x=0.02, s_w=None, s_y=0.05, y_bits=8, y_signed=False,
                 zp_y=0, clamp=None, requant=True, rq_settings=None, op="conv2d"):
    """A one-node program: conv2d (or linear) with per-channel weight scales."""
    w = np.asarray(w)
    o = w.shape[0]
    if s_w is None:
        s_w = list(np.linspace(0.01, 0.03, o))
    c, h, wd = in_shape if op == "conv2d" else (None, None, None)
    if op == "conv2d":
        ho = (h + 2 * padding - w.shape[2]) // stride + 1
        wo = (wd + 2 * padding - w.shape[3]) // stride + 1
        out_shape = (o, ho, wo)
        attrs = {"stride": stride, "padding": padding, "groups": groups, "requant": requant}
    else:
        out_shape = (o,)
        attrs = {"requant": requant}
    tensors = {
        "x": TensorSpec(tuple(in_shape), x_bits, x_signed, s_x, zp_x),
        "l.weight": TensorSpec(tuple(w.shape), w_bits, True, [float(v) for v in s_w]),
        "l.bias": TensorSpec((o,), 32, True),
    }
    if requant:
        tensors["y"] = TensorSpec(out_shape, y_bits, y_signed, s_y, zp_y)
        lo, hi = tensors["y"].int_range()
        attrs["clamp"] = list(clamp) if clamp else [lo, hi]
    else:
        tensors["y"] = TensorSpec(out_shape, 32, True, 1.0, 0)
    arrays = {"l.weight": _arr(w, w_bits, True), "l.bias": _arr(bias, 32, True)}
    nodes = [Node("l", op, ["x"], "y", attrs)]
    return finish(nodes, tensors, arrays, "x", ["y"],
                  rq_settings.to_dict() if rq_settings else None)


def stem_fc_program(seed=0, c_out=4, x_bits=5, w_bits=4, h=8, classes=10, s_y=0.05,
                    stem_bias=200, fc_bias=2000):
    """A three-node program on digits-shaped input (1, 8, 8): conv2d ``stem`` (3x3, pad 1,
    requantized to 8 unsigned bits) -> ``flatten`` -> raw-accumulator ``fc`` (linear)."""
    rng = np.random.default_rng(seed)
    wq = (1 << (w_bits - 1)) - 1
    w1 = rng.integers(-wq, wq + 1, size=(c_out, 1, 3, 3))
    b1 = rng.integers(-stem_bias, stem_bias + 1, size=c_out)
    feat = c_out * h * h
    w2 = rng.integers(-wq, wq + 1, size=(classes, feat))
    b2 = rng.integers(-fc_bias, fc_bias + 1, size=classes)
    tensors = {
        "x": TensorSpec((1, h, h), x_bits, False, 0.02, 0),
        "stem.weight": TensorSpec(w1.shape, w_bits, True,
                                  [float(v) for v in np.linspace(0.01, 0.03, c_out)]),
        "stem.bias": TensorSpec((c_out,), 32, True),
        "s": TensorSpec((c_out, h, h), 8, False, s_y, 0),
        "f": TensorSpec((feat,), 8, False, s_y, 0),
        "fc.weight": TensorSpec(w2.shape, w_bits, True, [0.02] * classes),
        "fc.bias": TensorSpec((classes,), 32, True),
        "y": TensorSpec((classes,), 32, True, 1.0, 0),
    }
    arrays = {"stem.weight": _arr(w1, w_bits, True), "stem.bias": _arr(b1, 32, True),
              "fc.weight": _arr(w2, w_bits, True), "fc.bias": _arr(b2, 32, True)}
    nodes = [Node("stem", "conv2d", ["x"], "s", {"stride": 1, "padding": 1, "groups": 1,
                                                 "requant": True, "clamp": [0, 255]}),
             Node("flatten", "flatten", ["s"], "f", {}),
             Node("fc", "linear", ["f"], "y", {"requant": False})]
    prog = finish(nodes, tensors, arrays, "x", ["y"])
    prog.meta["dataset"] = "digits"
    return prog
