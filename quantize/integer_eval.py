"""Integer-exact evaluation: what the NPU computes, through the shared arithmetic.

`run_integer(program, images)` executes an IntegerProgram with ideal (exact, unbounded)
accumulators: convolutions run as float64 on integer values (exact while every partial sum is
below 2^53, which is checked), and every requantization, rounding and clamp goes through
`npusim.ir.arith` with the multipliers of `npusim.ir.requant`, the very code the simulator's kernels
compile. The simulator in `exact` mode must produce the same integers, bit for bit. (The conv
is `npusim.sim.exact_conv`: a float GEMM that a bound proves exact.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from npusim.ir import arith
from npusim.sim.engines import exact_conv as exact_conv2d
from npusim.ir.program import IntegerProgram
from npusim.ir.requant import RequantSettings, node_requant



def _requant(acc: np.ndarray, rq, settings: RequantSettings, zp: int, lo: int, hi: int) -> np.ndarray:
    return arith.requantize(acc, rq.m0, rq.n, rq.mf, settings.scale_mode == "float", settings.code,
                            settings.multiplier_bits, zp, lo, hi)


def run_integer(program: IntegerProgram, images: np.ndarray,
                settings: RequantSettings | None = None, batch_size: int = 500) -> np.ndarray:
    """Integer logits of `program` on uint8 `images` (N, C, H, W), exact accumulators."""
    settings = settings or RequantSettings.from_dict(program.requant)
    outs = []
    for start in range(0, len(images), batch_size):
        env = _run_batch(program, images[start:start + batch_size].astype(np.int64), settings)
        outs.append(env[program.outputs[0]])
    return np.concatenate(outs)


def _run_batch(program: IntegerProgram, x0: np.ndarray, settings: RequantSettings):
    t = program.tensors
    env = {program.input: x0}
    for node in program.nodes:
        x = env[node.inputs[0]]
        out = t[node.output]
        lo, hi = node.attrs.get("clamp", out.int_range())
        rq = None
        if node.op in ("conv2d", "linear", "add", "avgpool2d", "global_avgpool") and \
                node.attrs.get("requant", True):
            rq = node_requant(program, node, settings)
        if node.op in ("conv2d", "linear"):
            xt = t[node.inputs[0]]
            w = program.arrays[f"{node.name}.weight"].astype(np.int64)
            bias = program.arrays[f"{node.name}.bias"].astype(np.int64)
            xs = x - xt.zero_point
            if node.op == "conv2d":
                a = node.attrs
                acc = exact_conv2d(xs, w, a["stride"], a["padding"], a["groups"])
                shape = (1, -1, 1, 1)
            else:
                acc = exact_conv2d(xs.reshape(len(xs), -1, 1, 1), w.reshape(*w.shape, 1, 1))
                acc = acc.reshape(len(xs), -1)
                shape = (1, -1)
            acc = acc + bias.reshape(shape)
            y = acc if rq is None else _requant(acc, rq, settings, out.zero_point, lo, hi)
        elif node.op == "add":
            a_, b_ = env[node.inputs[0]], env[node.inputs[1]]
            za, zb = t[node.inputs[0]].zero_point, t[node.inputs[1]].zero_point
            y = arith.residual_add(a_, b_, za, zb, rq.m0, rq.n, rq.mf, settings.add_frac_bits,
                                   settings.scale_mode == "float", settings.code,
                                   settings.shift_code, settings.multiplier_bits,
                                   out.zero_point, lo, hi)
        elif node.op in ("avgpool2d", "global_avgpool"):
            xt = t[node.inputs[0]]
            xs = x - xt.zero_point
            if node.op == "global_avgpool":
                acc = xs.sum(axis=(2, 3), keepdims=True)
            else:
                k = node.attrs["kernel"]
                n_, c, h, w_ = xs.shape
                ho, wo = (h - k) // node.attrs["stride"] + 1, (w_ - k) // node.attrs["stride"] + 1
                acc = torch.from_numpy(xs.astype(np.float64))
                acc = (F.avg_pool2d(acc, k, node.attrs["stride"]) * (k * k)).round().numpy().astype(np.int64)
                assert acc.shape[2:] == (ho, wo)
            y = _requant(acc, rq, settings, out.zero_point, lo, hi)
        elif node.op == "maxpool2d":
            a = node.attrs
            xf = torch.from_numpy(x.astype(np.float64))
            y = F.max_pool2d(xf, a["kernel"], a["stride"], a.get("padding", 0)).numpy().astype(np.int64)
        elif node.op == "flatten":
            y = x.reshape(len(x), -1)
        elif node.op == "embed":
            lut = program.arrays[f"{node.name}.lut"].astype(np.int64)
            c = x.shape[1]
            parts = [np.moveaxis(lut[ci][x[:, ci]], -1, 1) for ci in range(c)]
            y = np.concatenate(parts, axis=1)
        else:  # pragma: no cover - the loader rejects unknown ops
            raise ValueError(f"node {node.name!r}: unsupported op {node.op!r}")
        env[node.output] = y
    return env
