"""Export a trained `QuantizedModel` as an IntegerProgram (docs/program_format.md).

Integer weights are exactly the trained quantized weights (a channel whose BN gain is negative
has its weights and bias negated, so every requant multiplier is positive, as TFLite, ORT and
FBGEMM require); BN's gain goes into the per-channel weight scale and its shift into the int32
bias; the multipliers and shifts come from the shared decomposition in `npusim.ir.requant`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from npusim.ir.ops import requantizes
from npusim.ir.program import IntegerProgram, Node, TensorSpec, save_program, storage_dtype
from npusim.ir.requant import RequantSpec, node_requant
from quantize.a2q import A2QQuantizer, l1_budget_violations
from quantize.model import BIAS_LIMIT, INPUT_SCALE, QConv, QLinear, QuantizedModel, QuantizeError

log = logging.getLogger(__name__)

PRODUCER = {"name": "npusim.quantize", "version": None}


def _act_spec(q, shape) -> TensorSpec:
    return TensorSpec(tuple(int(s) for s in shape), q.bits, q.signed,
                      float(q.scale().detach().reshape(()).item()), 0)


@torch.no_grad()
def build_program(qmodel: QuantizedModel) -> IntegerProgram:
    """Turn a fake-quant model into a validated IntegerProgram (in memory)."""
    from npusim import __version__

    if not qmodel.input_shape:
        raise QuantizeError("the quantized model does not know its input shape")
    was_training = qmodel.training
    qmodel.eval()
    # shapes of every tensor from one zero image
    shapes = _tensor_shapes(qmodel)
    tensors: dict[str, TensorSpec] = {"input": TensorSpec(qmodel.input_shape, 8, False, INPUT_SCALE, 0)}
    arrays: dict[str, np.ndarray] = {}
    nodes: list[Node] = []
    alias: dict[str, str] = {"input": "input"}
    for n in qmodel.nodes:
        ins = [alias[i] for i in n.inputs]
        mod = qmodel.layers[n.module] if n.module else None
        if n.kind == "embed":
            lut = mod.int_lut()
            spec = _act_spec(mod.oq, shapes[n.name])
            tensors[n.name] = spec
            tensors[f"{n.name}.lut"] = TensorSpec(tuple(lut.shape), spec.bits, spec.signed)
            arrays[f"{n.name}.lut"] = lut.numpy().astype(storage_dtype(spec.bits, spec.signed))
            nodes.append(Node(n.name, "embed", ins, n.name, {}))
        elif n.kind == "conv":
            _export_conv(n.name, mod, ins[0], tensors, arrays, nodes, shapes[n.name])
        elif n.kind == "linear":
            _export_linear(n.name, mod, ins[0], tensors, arrays, nodes)
        elif n.kind in ("add", "concat"):
            spec = _act_spec(mod.oq, shapes[n.name])
            tensors[n.name] = spec
            lo, hi = spec.int_range()
            nodes.append(Node(n.name, n.kind, ins, n.name, {"clamp": [lo, hi]}))
        elif n.kind == "avgpool":
            spec = _act_spec(mod.oq, shapes[n.name])
            tensors[n.name] = spec
            lo, hi = spec.int_range()
            if mod.kernel is None:
                nodes.append(Node(n.name, "global_avgpool", ins, n.name, {"clamp": [lo, hi]}))
            else:
                nodes.append(Node(n.name, "avgpool2d", ins, n.name,
                                  {"kernel": mod.kernel, "stride": mod.kernel, "clamp": [lo, hi]}))
        elif n.kind in ("maxpool", "flatten", "slice", "shuffle"):
            src = tensors[ins[0]]
            tensors[n.name] = TensorSpec(tuple(shapes[n.name]), src.bits, src.signed, src.scale,
                                         src.zero_point)
            op = {"maxpool": "maxpool2d", "shuffle": "channel_shuffle"}.get(n.kind, n.kind)
            nodes.append(Node(n.name, op, ins, n.name, dict(n.attrs)))
        alias[n.name] = n.name
    cfg = qmodel.config
    requant = cfg.requant.to_dict()
    prog = IntegerProgram(nodes=nodes, tensors=tensors, arrays=arrays, input="input",
                          outputs=[alias[qmodel.output]], requant=requant,
                          quant_config=cfg.model_dump(mode="json"),
                          producer={**PRODUCER, "version": __version__},
                          meta={**qmodel.meta, "input_shape": list(qmodel.input_shape)})
    _add_multipliers(prog, cfg.requant)
    qmodel.train(was_training)
    return prog.validate("<export>")


def export_program(qmodel: QuantizedModel, path: str | Path) -> IntegerProgram:
    """Build the IntegerProgram of `qmodel` and write it atomically to `path`."""
    prog = build_program(qmodel)
    save_program(prog, path)
    return prog


def _tensor_shapes(qmodel: QuantizedModel) -> dict[str, tuple[int, ...]]:
    """Every node's output shape (without batch), from one zero image."""
    env = qmodel(torch.zeros(1, *qmodel.input_shape), return_all=True)
    return {k: tuple(v.shape[1:]) for k, v in env.items()}


def _export_conv(name: str, mod: QConv, src: str, tensors, arrays, nodes, out_shape) -> None:
    s_x = torch.tensor(tensors[src].scales()[0], dtype=torch.float32)
    w, _ = mod.folded_weight()
    q = mod.int_weight(s_x)
    s_w = mod.wq._forward_scale(w).expand(q.shape[0]).double()
    g, _ = mod.bn_affine()
    bias_int = mod.integer_bias(s_x).round().to(torch.int64)
    sign = torch.where(g < 0, -1, 1).to(torch.int64)
    q = q * sign.view(-1, 1, 1, 1)
    s_eff = (s_w * g.double().abs()).tolist()
    if any(not math.isfinite(s) or s <= 0 for s in s_eff):
        raise QuantizeError(f"{name}: a channel has a zero or non-finite BN gain; cannot export")
    if int(bias_int.abs().max()) >= BIAS_LIMIT:
        log.warning("%s: %d channel bias(es) saturated to int32", name,
                    int((bias_int.abs() >= BIAS_LIMIT).sum()))
    wq = mod.wq
    tensors[f"{name}.weight"] = TensorSpec(tuple(q.shape), wq.bits, True, s_eff, 0)
    arrays[f"{name}.weight"] = q.numpy().astype(storage_dtype(wq.bits, True))
    tensors[f"{name}.bias"] = TensorSpec((q.shape[0],), 32, True)
    arrays[f"{name}.bias"] = bias_int.numpy().astype(np.int32)
    spec = _act_spec(mod.oq, out_shape)
    tensors[name] = spec
    lo, hi = spec.int_range()
    if mod.act == "relu6":
        hi = min(hi, int(np.rint(6.0 / spec.scales()[0])))
    attrs = {"stride": int(mod.conv.stride[0]), "padding": int(mod.padding),
             "groups": int(mod.conv.groups), "requant": True, "clamp": [lo, hi]}
    _check_a2q(name, mod, q, bias_int, tensors[src], attrs)
    nodes.append(Node(name, "conv2d", [src], name, attrs))


def _export_linear(name: str, mod: QLinear, src: str, tensors, arrays, nodes) -> None:
    s_x = torch.tensor(tensors[src].scales()[0], dtype=torch.float32)
    q = mod.int_weight(s_x)
    s_w = float(mod.wq._forward_scale(mod.linear.weight).reshape(-1)[0])
    bias_int = mod.integer_bias(s_x).round().to(torch.int64)
    attrs = {"requant": False}
    _check_a2q(name, mod, q, bias_int, tensors[src], attrs)
    tensors[f"{name}.weight"] = TensorSpec(tuple(q.shape), mod.wq.bits, True, s_w, 0)
    arrays[f"{name}.weight"] = q.numpy().astype(storage_dtype(mod.wq.bits, True))
    tensors[f"{name}.bias"] = TensorSpec((q.shape[0],), 32, True)
    arrays[f"{name}.bias"] = bias_int.numpy().astype(np.int32)
    # the classifier stops at its accumulator: logits = acc * s_x * s_w (one scale for all)
    tensors[name] = TensorSpec((q.shape[0],), 32, True, float(s_x) * s_w, 0)
    nodes.append(Node(name, "linear", [src], name, attrs))


def _check_a2q(name: str, mod, q: torch.Tensor, bias_int: torch.Tensor, x_spec: TensorSpec,
               attrs: dict) -> None:
    """A layer trained for an accumulator width P: record P and refuse a broken budget."""
    if not isinstance(mod.wq, A2QQuantizer):
        return
    p = mod.wq.acc_bits
    xlo, xhi = x_spec.int_range()
    bad = l1_budget_violations(q, bias_int, xlo - x_spec.zero_point, xhi - x_spec.zero_point, p)
    if bad:
        raise QuantizeError(f"{name}: A2Q budget broken: {len(bad)} channel(s) (first: "
                            f"{bad[0]}) can leave a {p}-bit accumulator; refusing to export")
    attrs["acc_bits_target"] = p


def _add_multipliers(prog: IntegerProgram, settings: RequantSpec) -> None:
    """Store each requantizing node's (m0, n) from the shared decomposition."""
    for node in prog.nodes:
        if requantizes(node):
            rq = node_requant(prog, node, settings)
            k = len(rq.m0)
            float_mode = settings.scale_mode == "float"
            prog.tensors[f"{node.name}.multiplier"] = TensorSpec((k,), 32, True)
            prog.tensors[f"{node.name}.shift"] = TensorSpec((k,), 8, True)
            prog.arrays[f"{node.name}.multiplier"] = (np.zeros(k) if float_mode else rq.m0).astype(np.int32)
            prog.arrays[f"{node.name}.shift"] = (np.zeros(k) if float_mode else rq.n).astype(np.int8)
