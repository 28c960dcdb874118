"""Cycles, buffer traffic and DRAM stalls of each layer on a systolic array (docs/npu_file.md).

The array model is SCALE-Sim's (v2/v3 ``compute/systolic_compute_{os,ws,is}.py``, checked in
REFERENCES §3). A conv becomes a GEMM per image (no batching into M):

- ``M = Ho*Wo`` output pixels, ``K = kh*kw*C_in/groups`` window, ``N = C_out/groups`` filters;
  a grouped / depthwise conv is ``groups`` such GEMMs run back to back on the whole array
  (cycles and accesses x groups; no packing of several groups side by side).
- ``linear`` is a 1x1 conv on a 1x1 map: ``M = 1``, ``K = in``, ``N = out``.
- Per dataflow (R x C array, R = rows): os ``Sr, Sc, T = M, N, K``; ws ``K, N, M``;
  is ``K, M, N``. ``folds = ceil(Sr/R) * ceil(Sc/C)``, run back to back with a full drain:
  os ``R + C + T - 2`` cycles per fold, ws / is ``2R + C + T - 2`` (R cycles of preload).
- Buffer accesses (elements) per SCALE-Sim's demand matrices:

  ====  ===================  ===================  =====================
  DF    ifmap reads          filter reads         ofmap (psum) writes
  ====  ===================  ===================  =====================
  os    M*K*ceil(N/C)        K*N*ceil(M/R)        M*N
  ws    M*K*ceil(N/C)        K*N                  M*N*ceil(K/R)
  is    K*M                  K*N*ceil(M/C)        M*N*ceil(K/R)
  ====  ===================  ===================  =====================

  (SCALE-Sim's os ofmap count carries a per-fold R+C bookkeeping artefact; it is left out:
  SCALE-Sim 3.0.0 reports ``M*N + folds*(R+C)`` there.)

- Cycles: ``compute_cycles`` counts the cycles the array is busy, one per line of SCALE-Sim's
  demand matrices (cycles 0 .. L-1 are L cycles). SCALE-Sim 3.0.0 reports the *index* of the
  last ofmap line serviced (``max(ofmap_serviced_cycles)`` in
  ``memory/double_buffered_scratchpad_mem.py``; ``ofmap_serviced_cycles[-1][0]`` in earlier
  versions), which without stalls is L - 1 per layer, not per fold. Ours is kept (it is the
  count; a one-cycle GEMM is one cycle, not zero) and ``scalesim_cycles`` gives SCALE-Sim's
  number, ``compute_cycles - groups`` for an array layer (each group's GEMM a SCALE-Sim layer).
  Both, and every SRAM count above, are pinned row by row to SCALE-Sim 3.0.0's own reports of
  the ResNet-20 layers on 8/16/32 arrays x os/ws/is (tests/npusim/cost/golden/, written by
  tests/npusim/cost/make_golden_scalesim.py). SCALE-Sim's output size is
  ``ceil((H - R + s) / s)`` (a partial last window when ``s > 1``); ours is the conv's.

Three buffers, each sized by `NPUConfig.memory`: ifmap reads and the requantized output
writes go to the activation SRAM at the activations' bits; filter reads to the weight SRAM at
the weights' stored width (``packed`` = exact bits, ``pad4`` / ``pad8`` = rounded up to a
multiple of 4 / 8), plus each output channel's bias / multiplier / shift once per image;
ofmap writes go to the accumulator SRAM at the node's ``acc_bits`` (its ``[[layer]]`` table's
where one matches, `Precision.acc_for`), and every one is read back once
(ws / is: the read-modify-write of the next row-fold's partial sum, and the final read for
requantization; os: the final read). Partial sums inside the array travel at ``pe_acc_bits``
(charged as registers by the estimator, not as SRAM). Buffer traffic is counted in bits, as
QKeras QTools charges it, so ``memory.sram_word_bits`` does not change it; activations are held
at their exact bits. Requantization is pipelined with the array's drain and adds no cycles.

Element-wise ops (residual add, pooling, embedding lookups) run on a vector unit with
``array.cols`` lanes, one element operation per lane per cycle (an assumption, not SCALE-Sim);
``flatten`` is a view and costs nothing.

DRAM, first-order (SCALE-Sim v2 does not model DRAM; this is npusim's own simple model):

- a batch of `images` (default 1) runs layer by layer;
- parameters (weights at stored width + bias / multiplier / shift + LUTs): when those of the
  whole network fit the weight SRAM together they stay resident and cost no DRAM traffic in
  steady state (``weights_resident``); otherwise a layer's parameters are read once per batch
  when they fit the weight SRAM (reused by every image of the batch), else once per image;
- activations: when the tensors live at a layer (its inputs, its output and every tensor still
  needed later, e.g. a residual branch), for every image of the batch, do not fit the
  activation SRAM, the layer reads its inputs from and writes its output to DRAM; the
  network's input image is always read from DRAM once and its outputs written once;
- partial sums are assumed tiled to fit the accumulator SRAM (never spilled);
- ``stall = max(0, ceil(dram_bytes / bandwidth) - compute_cycles)``: DRAM transfers overlap
  compute (double buffering) and stall only when they take longer;
- ``latency = (compute + stall) / clock``; layers run one after another.

Nothing here imports torch or numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np
import pandas as pd

from npusim.ir.ops import OPS, requantizes
from npusim.ir.program import IntegerProgram, Node
from npusim.ir.requant import RequantSpec

if TYPE_CHECKING:
    from npusim.hw.config import NPUConfig

__all__ = [
    "Precision",
    "gemm_dims",
    "layer_mapping",
    "liveness",
    "network_mapping",
    "param_bits",
    "program_precision",
    "stored_bits",
    "systolic_gemm",
]

Variant = Literal["npu", "int8", "fp32"]
KIB_BITS = 8 * 1024


def stored_bits(bits: int, weight_storage: str) -> int:
    """Bits a parameter of `bits` bits occupies: packed as is, or padded to a multiple of 4 / 8."""
    if weight_storage == "packed":
        return int(bits)
    step = {"pad4": 4, "pad8": 8}[weight_storage]
    return -(-int(bits) // step) * step


@dataclass(frozen=True)
class Precision:
    """The widths every count is charged at: the program on the NPU, or a baseline.

    `tensor_bits` holds the logical bits of every tensor of the program (activations and
    arrays); `scale_mode` is ``fixed`` / ``pow2`` / ``float`` (integer variants) or ``none``
    (FP32: no requantization).
    """

    variant: str
    arithmetic: Literal["int", "fp32"]
    tensor_bits: Mapping[str, int] = field(repr=False)
    pe_acc_bits: int
    acc_bits: int
    scale_mode: str
    multiplier_bits: int
    add_frac_bits: int
    weight_storage: str
    #: node -> (pe_acc_bits, acc_bits) where a node runs at other widths than the body's
    #: (the NPU's ``[[layer]]`` tables); the baselines have none
    layer_acc: Mapping[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def acc_for(self, node: str) -> int:
        """Accumulator width of node `node` (its ``[[layer]]`` table's, else the body's)."""
        return int(self.layer_acc.get(node, (self.pe_acc_bits, self.acc_bits))[1])

    def pe_acc_for(self, node: str) -> int:
        """Partial-sum width inside the array of node `node`."""
        return int(self.layer_acc.get(node, (self.pe_acc_bits, self.acc_bits))[0])

    def bits(self, tensor: str) -> int:
        return int(self.tensor_bits[tensor])

    def stored(self, tensor: str) -> int:
        """Stored width of a parameter array (the weight-storage rule applied)."""
        return stored_bits(self.bits(tensor), self.weight_storage)


def program_precision(program: IntegerProgram, npu: "NPUConfig",
                      variant: Variant = "npu") -> Precision:
    """The widths of `program` on `npu` (``npu``), or of its INT8 / FP32 baseline.

    ``int8``: every weight and activation at 8 bits (raw accumulator outputs of layers without
    requantization at 32), 32-bit accumulators at both levels, the requantization the program
    runs with on `npu` (its own spec under the NPU's pinned [requant] keys).
    ``fp32``: every tensor at 32 bits, fp32 arithmetic, no requantization.
    """
    rq, prec = npu.requant.over(RequantSpec.from_dict(program.requant)), npu.precision
    bits = {k: int(v.bits) for k, v in program.tensors.items()}
    if variant == "npu":
        layer_acc = {}
        for node in program.nodes:
            p = npu.precision_for(node.name)
            if (p.pe_acc_bits, p.acc_bits) != (prec.pe_acc_bits, prec.acc_bits):
                layer_acc[node.name] = (p.pe_acc_bits, p.acc_bits)
        return Precision("npu", "int", bits, prec.pe_acc_bits, prec.acc_bits, rq.scale_mode,
                         rq.multiplier_bits, rq.add_frac_bits, npu.memory.weight_storage,
                         layer_acc)
    if variant == "fp32":
        return Precision("fp32", "fp32", {k: 32 for k in bits}, 32, 32, "none", 0, 0,
                         npu.memory.weight_storage)
    if variant != "int8":
        raise ValueError(f"variant: expected npu, int8 or fp32, got {variant!r}")
    raw_acc = {n.output for n in program.nodes
               if OPS[n.op].unit == "array" and not requantizes(n)}
    out = dict(bits)
    for node in program.nodes:
        for key in ("weight", "lut"):
            if f"{node.name}.{key}" in out:
                out[f"{node.name}.{key}"] = 8
    for name in bits:
        if name in program.arrays:
            continue
        out[name] = 32 if name in raw_acc else 8
    return Precision("int8", "int", out, 32, 32, rq.scale_mode, rq.multiplier_bits,
                     rq.add_frac_bits, npu.memory.weight_storage)


# ---------------------------------------------------------------------------- geometry

def gemm_dims(program: IntegerProgram, node: Node) -> tuple[int, int, int, int]:
    """``(M, K, N, groups)`` of a conv2d / linear node, per group and per image."""
    gemm = OPS[node.op].gemm
    if gemm is None:
        raise ValueError(f"node {node.name!r}: {node.op} is not a GEMM")
    return gemm(program, node)


def systolic_gemm(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> dict[str, Any]:
    """SCALE-Sim's cycles and buffer accesses of one ``M x K x N`` GEMM on an R x C array."""
    r, c = int(rows), int(cols)
    if dataflow == "os":
        sr, sc, t = m, n, k
        ifmap, filt, ofmap = m * k * _cdiv(n, c), k * n * _cdiv(m, r), m * n
        per_fold = r + c + t - 2
    elif dataflow == "ws":
        sr, sc, t = k, n, m
        ifmap, filt, ofmap = m * k * _cdiv(n, c), k * n, m * n * _cdiv(k, r)
        per_fold = 2 * r + c + t - 2
    elif dataflow == "is":
        sr, sc, t = k, m, n
        ifmap, filt, ofmap = k * m, k * n * _cdiv(m, c), m * n * _cdiv(k, r)
        per_fold = 2 * r + c + t - 2
    else:
        raise ValueError(f"dataflow: expected os, ws or is, got {dataflow!r}")
    row_folds, col_folds = _cdiv(sr, r), _cdiv(sc, c)
    folds = row_folds * col_folds
    empty = m * k * n == 0
    return {
        "Sr": sr, "Sc": sc, "T": t, "row_folds": row_folds, "col_folds": col_folds,
        "folds": folds, "cycles_per_fold": 0 if empty else per_fold,
        "compute_cycles": 0 if empty else folds * per_fold,
        "ifmap_sram_reads": ifmap, "filter_sram_reads": filt, "ofmap_sram_writes": ofmap,
        # SCALE-Sim's mapping efficiency: used PEs / (R*C), averaged over the folds
        "mapping_efficiency": (sr * sc) / (folds * r * c) if folds else math.nan,
    }


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _numel(program: IntegerProgram, tensor: str) -> int:
    return int(np.prod(program.tensors[tensor].shape, dtype=np.int64))


def param_bits(program: IntegerProgram, node: Node, prec: Precision) -> dict[str, int]:
    """Bits of a node's parameters as stored: weights / LUTs at stored width, biases at their
    bits, multipliers at the NPU's multiplier width (``fixed``), 32 (``float``) or none
    (``pow2``: M0 = 1; FP32), shifts at their bits (``fixed`` / ``pow2``)."""
    out = {"weight": 0, "bias": 0, "multiplier": 0, "shift": 0, "lut": 0}
    for key in ("weight", "lut"):
        arr = program.arrays.get(f"{node.name}.{key}")
        if arr is not None:
            out[key] = int(arr.size) * prec.stored(f"{node.name}.{key}")
    bias = program.arrays.get(f"{node.name}.bias")
    if bias is not None:
        out["bias"] = int(bias.size) * prec.bits(f"{node.name}.bias")
    if requantizes(node) and prec.scale_mode != "none":
        mult = program.arrays.get(f"{node.name}.multiplier")
        count = int(mult.size) if mult is not None else \
            len(OPS[node.op].real_multipliers(program, node))
        if prec.scale_mode == "fixed":
            out["multiplier"] = count * prec.multiplier_bits
        elif prec.scale_mode == "float":
            out["multiplier"] = count * 32
        if prec.scale_mode in ("fixed", "pow2"):
            shift = f"{node.name}.shift"
            out["shift"] = count * (prec.bits(shift) if shift in prec.tensor_bits else 8)
    return out


# --------------------------------------------------------------------------- liveness

def _buffers(program: IntegerProgram) -> dict[str, str]:
    """Tensor -> the buffer holding it (a `view` op such as ``flatten`` reuses its input's)."""
    buf = {program.input: program.input}
    for node in program.nodes:
        buf[node.output] = buf[node.inputs[0]] if OPS[node.op].view else node.output
    return buf


def liveness(program: IntegerProgram, prec: Precision) -> dict[str, int]:
    """Bits of the activation buffers live while each node runs: its inputs, its output and
    every tensor produced earlier and still needed by a later node (or a program output)."""
    buf = _buffers(program)
    born = {program.input: -1}
    last = {program.input: -1}
    for i, node in enumerate(program.nodes):
        born.setdefault(buf[node.output], i)
        last[buf[node.output]] = max(last.get(buf[node.output], i), i)
        for src in node.inputs:
            last[buf[src]] = max(last.get(buf[src], -1), i)
    for out in program.outputs:
        last[buf[out]] = len(program.nodes)
    size = {b: _numel(program, b) * prec.bits(b) for b in born}
    live = {}
    for i, node in enumerate(program.nodes):
        live[node.name] = sum(size[b] for b in born if born[b] <= i <= last[b])
    return live


# ---------------------------------------------------------------------------- mapping

def layer_mapping(program: IntegerProgram, node: Node | str, npu: "NPUConfig",
                  prec: Precision | None = None, images: int = 1) -> dict[str, Any]:
    """Cycles, buffer traffic (elements and bits), DRAM bits and stalls of one node, per image.

    Args:
        prec: the widths to charge (default: the program's own on `npu`).
        images: the batch over which parameters that fit the weight SRAM are reused.
    """
    if isinstance(node, str):
        node = program.node(node)
    prec = prec or program_precision(program, npu, "npu")
    return _network(program, npu, prec, images, only=node.name)[0]


def network_mapping(program: IntegerProgram, npu: "NPUConfig", prec: Precision | None = None,
                    images: int = 1) -> pd.DataFrame:
    """`layer_mapping` of every node, one row per node, in execution order."""
    prec = prec or program_precision(program, npu, "npu")
    return pd.DataFrame(_network(program, npu, prec, images))


def _network(program: IntegerProgram, npu: "NPUConfig", prec: Precision, images: int,
             only: str | None = None) -> list[dict[str, Any]]:
    if int(images) < 1:
        raise ValueError(f"images: expected a positive count, got {images!r}")
    live = liveness(program, prec)
    buf = _buffers(program)
    total_params = sum(sum(param_bits(program, n, prec).values()) for n in program.nodes)
    resident = total_params <= npu.memory.weight_sram_kib * KIB_BITS
    first_reader = next((n.name for n in program.nodes if program.input in n.inputs), None)
    outputs = {buf[o] for o in program.outputs}
    rows = []
    for node in program.nodes:
        if only is not None and node.name != only:
            continue
        row = _node_mapping(program, node, npu, prec)
        row.update(_dram(program, node, npu, prec, int(images), resident, live[node.name], row,
                         node.name == first_reader, buf[node.output] in outputs
                         and not OPS[node.op].view))
        rows.append(row)
    return rows


def _node_mapping(program: IntegerProgram, node: Node, npu: "NPUConfig",
                  prec: Precision) -> dict[str, Any]:
    arr = npu.array
    out_n = _numel(program, node.output)
    out_bits = prec.bits(node.output)
    row: dict[str, Any] = {
        "layer": node.name, "op": node.op, "variant": prec.variant, "unit": "none",
        "dataflow": arr.dataflow, "rows": arr.rows, "cols": arr.cols,
        "M": 0, "K": 0, "N": 0, "groups": 0, "folds": 0, "cycles_per_fold": 0,
        "compute_cycles": 0, "scalesim_cycles": 0, "macs": 0, "mapping_efficiency": math.nan,
        "ifmap_sram_reads": 0, "filter_sram_reads": 0, "ofmap_sram_writes": 0,
        "outputs": out_n, "requant_outputs": out_n if requantizes(node) else 0,
        "act_sram_read_bits": 0, "act_sram_write_bits": 0, "weight_sram_read_bits": 0,
        "acc_sram_read_bits": 0, "acc_sram_write_bits": 0, "lut_read_bits": 0,
    }
    params = param_bits(program, node, prec)
    meta = params["bias"] + params["multiplier"] + params["shift"]
    row["param_bits"] = sum(params.values())
    op = OPS[node.op]
    if op.unit == "array":
        m, k, n, g = gemm_dims(program, node)
        s = systolic_gemm(m, k, n, arr.rows, arr.cols, arr.dataflow)
        a_bits = prec.bits(node.inputs[0])
        w_bits = prec.stored(f"{node.name}.weight")
        row.update({
            "unit": "array", "M": m, "K": k, "N": n, "groups": g,
            "Sr": s["Sr"], "Sc": s["Sc"], "T": s["T"],
            "row_folds": s["row_folds"] * g, "folds": s["folds"] * g,
            "cycles_per_fold": s["cycles_per_fold"], "compute_cycles": s["compute_cycles"] * g,
            "scalesim_cycles": max(s["compute_cycles"] - 1, 0) * g,
            "macs": m * k * n * g, "mapping_efficiency": s["mapping_efficiency"],
            "ifmap_sram_reads": s["ifmap_sram_reads"] * g,
            "filter_sram_reads": s["filter_sram_reads"] * g,
            "ofmap_sram_writes": s["ofmap_sram_writes"] * g,
        })
        row["act_sram_read_bits"] = row["ifmap_sram_reads"] * a_bits
        row["weight_sram_read_bits"] = row["filter_sram_reads"] * w_bits + meta
        row["acc_sram_write_bits"] = row["ofmap_sram_writes"] * prec.acc_for(node.name)
        row["acc_sram_read_bits"] = row["ofmap_sram_writes"] * prec.acc_for(node.name)
        row["act_sram_write_bits"] = out_n * out_bits
    elif op.unit == "vector":
        ops = op.vector_ops(program, node)
        row.update({"unit": "vector", "compute_cycles": _cdiv(ops, arr.cols),
                    "vector_ops": ops})
        row["act_sram_read_bits"] = sum(_numel(program, i) * prec.bits(i) for i in node.inputs)
        row["act_sram_write_bits"] = out_n * out_bits
        row["weight_sram_read_bits"] = meta
        if "lut" in op.arrays:  # one table entry read per output element
            row["lut_read_bits"] = out_n * prec.stored(f"{node.name}.lut")
    row["utilization"] = (row["macs"] / (row["compute_cycles"] * arr.rows * arr.cols)
                          if row["macs"] and row["compute_cycles"] else math.nan)
    return row


def _dram(program: IntegerProgram, node: Node, npu: "NPUConfig", prec: Precision, images: int,
          resident: bool, live_bits: int, row: dict[str, Any], reads_input: bool,
          writes_output: bool) -> dict[str, Any]:
    mem = npu.memory
    pbits = row["param_bits"]
    fits = pbits <= mem.weight_sram_kib * KIB_BITS
    dram_w = 0.0 if resident else pbits / images if fits else float(pbits)
    spill = not OPS[node.op].view and live_bits * images > mem.activation_sram_kib * KIB_BITS
    in_bits = sum(_numel(program, i) * prec.bits(i) for i in node.inputs)
    out_bits = _numel(program, node.output) * prec.bits(node.output)
    dram_a = 0
    if spill:
        dram_a = in_bits + out_bits
    else:
        if reads_input:
            dram_a += _numel(program, program.input) * prec.bits(program.input)
        if writes_output:
            dram_a += out_bits
    dram_bits = dram_w + dram_a
    dram_cycles = math.ceil(dram_bits / 8 / mem.dram_bandwidth_bytes_per_cycle)
    stall = max(0, dram_cycles - row["compute_cycles"])
    total = row["compute_cycles"] + stall
    return {
        "weights_resident": resident, "weights_fit_sram": fits,
        "live_activation_bits": live_bits, "activation_spill": spill,
        "dram_weight_bits": dram_w, "dram_activation_bits": dram_a, "dram_bits": dram_bits,
        "dram_cycles": dram_cycles, "stall_cycles": stall, "cycles": total,
        "latency_us": total / npu.array.clock_mhz,
    }
