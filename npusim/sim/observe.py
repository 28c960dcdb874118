"""The narrowest accumulator widths a program's data needed (for `npusim bounds --suggest`).

`observed_widths` runs the program exactly (`NPUConfig.ideal`) on the images, then replays
every conv / linear node's order-faithful accumulation (docs/architecture.md: bias preloaded at the acc
level; ``os`` one running sum in k order; ``ws`` / ``is`` chunks of ``rows`` products summed
from 0 at the pe level, each chunk added at the acc level) on its exact inputs and records the
extremes of every running sum at both levels. A layer run at widths at least these, with every
earlier layer exact, sees no overflow event on these images.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from npusim.ir.arith import bits_needed
from npusim.ir.ops import OPS
from npusim.ir.program import IntegerProgram
from npusim.sim import kernels as K

__all__ = ["observed_widths"]


def observed_widths(program: IntegerProgram, images: np.ndarray, dataflow: str = "os",
                    rows: int = 16, batch_size: int = 64) -> pd.DataFrame:
    """Per conv/linear node: the extremes of its running sums on `images` at both levels and
    the bits they need (``observed_pe_bits`` is NA for ``os``, which has no pe level)."""
    from npusim.hw.config import NPUConfig
    from npusim.sim.simulator import Simulator

    if dataflow not in K.ORDER_CODES:
        raise ValueError(f"dataflow: expected os, ws or is, got {dataflow!r}")
    order = K.ORDER_CODES[dataflow]
    gemms = [n for n in program.nodes if OPS[n.op].unit == "array"]
    ext = {n.name: np.zeros(4, np.int64) for n in gemms}
    sim = Simulator(NPUConfig.ideal())
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start:start + batch_size])
        res = sim.run(program, chunk, trace=True)
        vals = {program.input: chunk.astype(np.int64), **res.traces}
        for node in gemms:
            r = _node_ranges(program, node, vals[node.inputs[0]], order, rows)
            acc = ext[node.name]
            acc[0], acc[1] = min(acc[0], r[:, 0].min()), max(acc[1], r[:, 1].max())
            acc[2], acc[3] = min(acc[2], r[:, 2].min()), max(acc[3], r[:, 3].max())
    out = []
    for node in gemms:
        pe_lo, pe_hi, acc_lo, acc_hi = (int(v) for v in ext[node.name])
        out.append({"layer": node.name, "pe_min": pe_lo, "pe_max": pe_hi, "acc_min": acc_lo,
                    "acc_max": acc_hi,
                    "observed_pe_bits": pd.NA if order == K.OS else bits_needed(pe_lo, pe_hi),
                    "observed_acc_bits": bits_needed(acc_lo, acc_hi)})
    df = pd.DataFrame(out)
    if len(df):
        df["observed_pe_bits"] = df["observed_pe_bits"].astype("Int64")
    return df


def _node_ranges(program: IntegerProgram, node, x: np.ndarray, order: int, rows: int
                 ) -> np.ndarray:
    """(N, 4) running-sum extremes of one node on its exact NCHW (or (N, F)) input `x`."""
    a = node.attrs
    stride, pad, groups = a.get("stride", 1), a.get("padding", 0), a.get("groups", 1)
    w = program.arrays[f"{node.name}.weight"].astype(np.int64)
    w = w.reshape(*w.shape, *(1,) * (4 - w.ndim))
    bias = program.arrays[f"{node.name}.bias"].astype(np.int64)
    zp = program.tensors[node.inputs[0]].zero_point
    x = x.astype(np.int64).reshape(len(x), -1, 1, 1) if x.ndim == 2 else x.astype(np.int64)
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zp)
    ho = (x.shape[2] - w.shape[2]) // stride + 1
    wo = (x.shape[3] - w.shape[3]) // stride + 1
    ranges = np.zeros((len(x), 4), np.int64)
    K.running_range_kernel(np.ascontiguousarray(x), w, bias, stride, groups, zp, order,
                           rows, ho, wo, ranges)
    return ranges
