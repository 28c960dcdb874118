"""Training energy and time on the NPU array: a MARViN run's per-layer word lengths vs float32
and fixed-point training of the same network on the same array (docs/methods.md, MARViN).

Input: the network's GEMM geometry (one row per conv / linear layer, as
`quantize.marvin.layer_geometry` writes it: ``layer, M, K, N, groups, weights, input_grad``)
and a *usage* table: how many batches of each size every layer trained at each operand format
(``layer, weight_bits, act_bits, grad_bits, weight_float, act_float, grad_float, batch_size,
batches``; the MARViN controller records it, `usage_from_history` rebuilds it from a decision
history). Nothing here imports torch.

What one batch of ``B`` images costs, per layer (per group of a grouped conv, x groups):

- forward: ``B`` GEMMs ``(M, K, N)``, operands activation x weight;
- gradient wrt the input (not for the first layer run): ``B`` GEMMs ``(M, N, K)``, operands
  output-gradient x weight (``col2im`` formulation: as many MACs as the forward);
- gradient wrt the weight: one GEMM ``(N, M*B, K)``, operands output-gradient x activation,
  accumulated over the batch in the array;
- update: one multiply (``lr * grad``) and one add per weight, on the ``cols``-lane vector unit
  (the mapping model's assumption for element-wise work), at float32 for float32 master
  weights (MARViN's default) or at the layer's word for fixed master weights.

Each GEMM is mapped with SCALE-Sim's model (`systolic_gemm`) and charged as `estimate_cost`
charges a MAC: a multiply at ``x_bits x y_bits`` (``int_multiplier.multiply``) or an fp32
multiply; one accumulate add and one accumulator register write per MAC at the accumulator
width; operand forwarding register writes; SRAM traffic of the mapping's ifmap / filter /
partial-sum accesses at the operands' and accumulator's widths, plus the output written once.
The accumulator of a fixed-point GEMM is ``x_bits + y_bits + ceil(log2 K)`` bits, the
narrowest that cannot overflow (so no format is favoured by a clipped sum); fp32 GEMMs add in
fp32. Not charged, for every variant alike: DRAM, leakage, batch norm, ReLU, pooling, residual
adds and the loss (they do not depend on the conv/linear word lengths studied here).

Time (throughput model ``subword_simd``, an assumption): every PE has a 32-bit datapath that
does one fp32 MAC per cycle, or ``floor(32 / max(x_bits, y_bits))`` fixed-point MACs per cycle
on packed sub-words (two 16-bit, four 8-bit, eight 4-bit lanes) summed into its one
accumulator, the way 32-bit SIMD dot products pack int8 (Arm SDOT / x86 VNNI: four 8-bit
products summed into a 32-bit lane per instruction). The reduction dimension ``K`` of every
GEMM is then ``ceil(K / lanes)`` long in SCALE-Sim's cycle model (buffer traffic still counts
every element at its bits). That an fp32 MAC sustains the same one per cycle
per PE as a 32-bit integer MAC is a guess (pipelined FMA at the same clock); ``one_mac`` (one
MAC per PE per cycle at any format: no speedup from narrow words) is the other bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

import pandas as pd

from npusim.cost.energy_table import EnergyTable, table_for_npu
from npusim.cost.mapping import systolic_gemm
from npusim.errors import UserError

if TYPE_CHECKING:
    from npusim.hw.config import NPUConfig

__all__ = ["GEOMETRY_COLUMNS", "USAGE_COLUMNS", "TrainingCostModel", "compare_training",
           "constant_usage", "mac_bit_costs", "training_cost", "usage_from_history"]

class TrainingTableError(UserError):
    """A MARViN geometry / usage / history table that does not fit together (one line)."""


GEOMETRY_COLUMNS = ["layer", "M", "K", "N", "groups", "weights", "input_grad"]
USAGE_COLUMNS = ["layer", "weight_bits", "act_bits", "grad_bits", "weight_float", "act_float",
                 "grad_float", "batch_size", "batches"]
FP32_BITS = 32  # an IEEE float32 operand occupies 32 bits in buffers and registers


@dataclass(frozen=True)
class TrainingCostModel:
    """The assumptions of the training estimate (see the module docstring)."""

    throughput: Literal["subword_simd", "one_mac"] = "subword_simd"
    # width of a PE's datapath in the subword_simd model: one fp32 MAC or 32/WL packed ones
    datapath_bits: int = 32
    master_weights: Literal["float32", "fixed"] = "float32"

    def lanes(self, x_bits: int, y_bits: int, is_float: bool) -> int:
        """MACs one PE completes per cycle at these operand widths."""
        if is_float or self.throughput == "one_mac":
            return 1
        return max(1, self.datapath_bits // max(int(x_bits), int(y_bits)))


def _gemm(m: int, k: int, n: int, x_bits: int, y_bits: int, is_float: bool, npu: "NPUConfig",
          table: EnergyTable, model: TrainingCostModel) -> dict[str, float]:
    """Cycles and energy (pJ, by component) of one ``M x K x N`` GEMM, x = the streamed
    ("ifmap") operand, y = the stationary ("filter") one."""
    arr, mem = npu.array, npu.memory
    if is_float:
        x_bits = y_bits = FP32_BITS
    lanes = model.lanes(x_bits, y_bits, is_float)
    s = systolic_gemm(m, k, n, arr.rows, arr.cols, arr.dataflow)  # accesses: every element
    # time: each PE reduces `lanes` products of the K dimension per cycle (packed dot product)
    t = s if lanes == 1 else systolic_gemm(m, -(-k // lanes), n, arr.rows, arr.cols,
                                           arr.dataflow)
    macs = float(m) * k * n
    reg = table.energy("register.write")
    if is_float:
        acc_bits = FP32_BITS
        mul = table.energy("fp32_multiplier.multiply")
        add = table.energy("fp32_adder.add")
    else:
        acc_bits = int(x_bits) + int(y_bits) + max(0, math.ceil(math.log2(max(k, 1))))
        mul = table.energy("int_multiplier.multiply", bw=x_bits, ba=y_bits)
        add = table.energy("int_adder.add", bits=acc_bits)
    if arr.dataflow == "os":
        operand_bits = macs * (x_bits + y_bits)
    elif arr.dataflow == "ws":
        operand_bits = macs * x_bits + s["filter_sram_reads"] * y_bits
    else:
        operand_bits = macs * y_bits + s["ifmap_sram_reads"] * x_bits
    sram = (s["ifmap_sram_reads"] * x_bits * table.sram_pj_per_bit(mem.activation_sram_kib)
            + s["filter_sram_reads"] * y_bits * table.sram_pj_per_bit(mem.weight_sram_kib)
            + 2 * s["ofmap_sram_writes"] * acc_bits
            * table.sram_pj_per_bit(mem.accumulator_sram_kib)
            + float(m) * n * x_bits * table.sram_pj_per_bit(mem.activation_sram_kib))
    return {"cycles": float(t["compute_cycles"]), "macs": macs,
            "mac_pj": macs * mul, "accumulator_pj": macs * (add + acc_bits * reg),
            "operand_pj": operand_bits * reg, "sram_pj": sram}


def _update(weights: int, w_bits: int, g_bits: int, w_float: bool, g_float: bool,
            npu: "NPUConfig", table: EnergyTable, model: TrainingCostModel) -> dict[str, float]:
    """One SGD update of `weights` weights: lr * grad (multiply) + add, read and write back."""
    arr, mem = npu.array, npu.memory
    if model.master_weights == "float32" or w_float or g_float:
        op = table.energy("fp32_multiplier.multiply") + table.energy("fp32_adder.add")
        bits = FP32_BITS
    else:
        op = (table.energy("int_multiplier.multiply", bw=g_bits, ba=w_bits)
              + table.energy("int_adder.add", bits=w_bits))
        bits = w_bits
    sram = 2 * float(weights) * bits * table.sram_pj_per_bit(mem.weight_sram_kib)
    return {"cycles": float(math.ceil(weights / arr.cols)), "macs": 0.0,
            "mac_pj": float(weights) * op, "accumulator_pj": 0.0, "operand_pj": 0.0,
            "sram_pj": sram}


_PARTS = ("cycles", "macs", "mac_pj", "accumulator_pj", "operand_pj", "sram_pj")


def _batch_cost(g: pd.Series, u: pd.Series, npu, table, model) -> list[dict]:
    """Per phase, the cost of one batch of `u.batch_size` images of layer `g`."""
    b = int(u.batch_size)
    m, k, n, groups = int(g.M), int(g.K), int(g.N), int(g.groups)
    wb, ab, gb = int(u.weight_bits), int(u.act_bits), int(u.grad_bits)
    wf, af, gf = bool(u.weight_float), bool(u.act_float), bool(u.grad_float)
    phases = [("forward", b * groups, _gemm(m, k, n, ab, wb, af or wf, npu, table, model))]
    if bool(g.input_grad):
        phases.append(("grad_input", b * groups,
                       _gemm(m, n, k, gb, wb, gf or wf, npu, table, model)))
    phases.append(("grad_weight", groups,
                   _gemm(n, m * b, k, gb, ab, gf or af, npu, table, model)))
    phases.append(("update", 1, _update(int(g.weights), wb, gb, wf, gf, npu, table, model)))
    return [{"phase": ph, **{p: reps * c[p] for p in _PARTS}} for ph, reps, c in phases]


def training_cost(geometry: pd.DataFrame, usage: pd.DataFrame, npu: "NPUConfig",
                  table: EnergyTable | None = None,
                  model: TrainingCostModel = TrainingCostModel()) -> pd.DataFrame:
    """Energy (pJ) and compute cycles per (layer, phase) of all the batches in `usage`.

    Rows are summed over formats and batch sizes: the cost of each distinct (format, batch
    size) batch is computed once and multiplied by its integer batch count, so a run whose
    every batch had one format costs exactly what the fixed-format baseline does.
    """
    table = table or table_for_npu(npu)
    geo = _geometry_for(geometry, usage)
    keys = ["layer", "weight_bits", "act_bits", "grad_bits", "weight_float", "act_float",
            "grad_float", "batch_size"]
    grouped = usage.groupby(keys, as_index=False, sort=False)["batches"].sum()
    rows = []
    for u in grouped.itertuples(index=False):
        for r in _batch_cost(geo.loc[u.layer], u, npu, table, model):
            rows.append({"layer": u.layer, "phase": r["phase"],
                         **{p: r[p] * int(u.batches) for p in _PARTS}})
    parts = pd.DataFrame(rows, columns=["layer", "phase", *_PARTS])
    out = parts.groupby(["layer", "phase"], as_index=False, sort=False)[list(_PARTS)].sum()
    out["energy_pj"] = out[["mac_pj", "accumulator_pj", "operand_pj", "sram_pj"]].sum(axis=1)
    out["time_us"] = out["cycles"] / npu.array.clock_mhz
    out["table"] = table.label
    out["npu"] = npu.name
    out["throughput_model"] = model.throughput
    return out


def constant_usage(geometry: pd.DataFrame, batch_sizes: Iterable[int], bits: int | None
                   ) -> pd.DataFrame:
    """Usage of a run whose every layer trains at one format for the given batches:
    ``bits`` fixed-point words everywhere, or float32 everywhere (``bits=None``)."""
    counts = Counter(int(b) for b in batch_sizes)
    is_float = bits is None
    wl = FP32_BITS if is_float else int(bits)
    rows = [(layer, wl, wl, wl, is_float, is_float, is_float, b, c)
            for layer in geometry["layer"] for b, c in sorted(counts.items())]
    return pd.DataFrame(rows, columns=USAGE_COLUMNS)


def usage_from_history(history: pd.DataFrame, batch_sizes: list[int], activations: bool = True,
                       gradients: bool = True) -> pd.DataFrame:
    """Usage rebuilt from a decision history: the decision taken at iteration ``i`` (batches
    done) holds for batches ``i, i+1, ...`` up to the layer's next decision.

    Args:
        batch_sizes: the size of every batch trained, in order.
        activations, gradients: whether they ran at the layer's word (else float32).
    """
    _check(history, ["iteration", "layer", "word_length_bits"], "history")
    total = len(batch_sizes)
    counts: Counter = Counter()
    for layer, h in history.groupby("layer", sort=False):
        h = h.sort_values("iteration", kind="stable").drop_duplicates("iteration", keep="last")
        its = [int(i) for i in h["iteration"]] + [total]
        if its[0] != 0:
            raise TrainingTableError(f"history: layer {layer!r} has no decision at iteration 0")
        for (start, end), wl in zip(zip(its, its[1:]), h["word_length_bits"]):
            for b in batch_sizes[start:end]:
                counts[(layer, int(wl), int(b))] += 1
    rows = [(layer, wl, wl if activations else FP32_BITS, wl if gradients else FP32_BITS,
             False, not activations, not gradients, b, c)
            for (layer, wl, b), c in counts.items()]
    return pd.DataFrame(rows, columns=USAGE_COLUMNS)


def mac_bit_costs(geometry: pd.DataFrame, usage: pd.DataFrame) -> dict[str, float]:
    """Average operand widths per MAC and the training MACs' cost relative to float32 under
    two bit-scaling models (no array, no memory: the arithmetic alone).

    Every batch of ``B`` images of a layer does ``B * groups * M * K * N`` MACs in each of its
    GEMMs: forward (activation x weight), gradient wrt the input (gradient x weight; not for
    the first layer) and gradient wrt the weight (gradient x activation). A float32 operand
    counts 32 bits. Returned:

    - ``weight_bits_per_mac``, ``act_bits_per_mac``, ``grad_bits_per_mac``: each operand's
      width averaged over the MACs it enters;
    - ``quadratic_cost_rel_fp32`` = sum(bx * by) / sum(32 * 32) over all MACs: multiplier
      energy / area quadratic in bits (Horowitz, ISSCC 2014, 45 nm: 8-bit multiply 0.2 pJ,
      32-bit 3.1 pJ, a 15.5x ratio for 4x the bits; the QKeras QTools fit npusim's
      ``horowitz45`` table uses). An fp32 MAC is charged as 32 x 32 bits (Horowitz's fp32
      multiply, 3.7 pJ, costs more: the ratio favours float32);
    - ``linear_cost_rel_fp32`` = sum(max(bx, by)) / sum(32): bit-serial arithmetic, whose time
      is linear in the bits it serialises (Stripes, Judd et al., MICRO 2016: 16/p speedup at
      p-bit activations), here serialising the wider operand of each MAC (equivalently the
      sub-word lanes ``32 / max(bx, by)`` of `TrainingCostModel`); at equal widths N it is N/32.
    """
    geo = _geometry_for(geometry, usage)
    tot = Counter()
    for u in usage.itertuples(index=False):
        g = geo.loc[u.layer]
        macs = float(u.batches) * int(u.batch_size) * int(g.groups) * int(g.M) * int(g.K) \
            * int(g.N)
        w = FP32_BITS if u.weight_float else int(u.weight_bits)
        a = FP32_BITS if u.act_float else int(u.act_bits)
        gr = FP32_BITS if u.grad_float else int(u.grad_bits)
        gemms = [(a, w, "act", "weight"), (gr, a, "grad", "act")]
        if bool(g.input_grad):
            gemms.append((gr, w, "grad", "weight"))
        for x, y, nx, ny in gemms:
            tot["macs"] += macs
            tot["quad"] += macs * x * y
            tot["lin"] += macs * max(x, y)
            for name, bits in ((nx, x), (ny, y)):
                tot[f"{name}_macs"] += macs
                tot[f"{name}_bits"] += macs * bits
    if not tot["macs"]:
        raise TrainingTableError("usage: no batches")
    return {"macs": tot["macs"],
            **{f"{o}_bits_per_mac": tot[f"{o}_bits"] / tot[f"{o}_macs"]
               for o in ("weight", "act", "grad")},
            "quadratic_cost_rel_fp32": tot["quad"] / (tot["macs"] * FP32_BITS ** 2),
            "linear_cost_rel_fp32": tot["lin"] / (tot["macs"] * FP32_BITS)}


def compare_training(geometry: pd.DataFrame, usage: pd.DataFrame, npu: "NPUConfig",
                     table: EnergyTable | None = None,
                     model: TrainingCostModel = TrainingCostModel(),
                     fixed_bits: tuple[int, ...] = (8, 16)) -> pd.DataFrame:
    """Totals of the run in `usage` and of float32 and fixed-point training with the same
    batches on the same array: one row per variant with ``speedup_vs_fp32`` (fp32 time /
    time) and ``energy_ratio_vs_fp32`` (energy / fp32 energy)."""
    table = table or table_for_npu(npu)
    per_layer = usage.groupby("layer", sort=False)
    first = next(iter(per_layer))[1]
    batch_sizes = [b for b, c in zip(first["batch_size"], first["batches"])
                   for _ in range(int(c))]
    variants = {"run": usage, "float32": constant_usage(geometry, batch_sizes, None)}
    for b in fixed_bits:
        variants[f"fixed{b}"] = constant_usage(geometry, batch_sizes, b)
    rows = []
    for name, u in variants.items():
        c = training_cost(geometry, u, npu, table, model)
        rows.append({"variant": name, "energy_pj": float(c["energy_pj"].sum()),
                     "cycles": float(c["cycles"].sum()),
                     "time_us": float(c["time_us"].sum()), "macs": float(c["macs"].sum()),
                     **{p: float(c[p].sum()) for p in ("mac_pj", "accumulator_pj",
                                                       "operand_pj", "sram_pj")}})
    df = pd.DataFrame(rows)
    fp = df.set_index("variant").loc["float32"]
    df["speedup_vs_fp32"] = fp["time_us"] / df["time_us"]
    df["energy_ratio_vs_fp32"] = df["energy_pj"] / fp["energy_pj"]
    df["energy_j"] = df["energy_pj"] * 1e-12
    df["time_s"] = df["time_us"] * 1e-6
    df["table"] = table.label
    df["npu"] = npu.name
    df["throughput_model"] = model.throughput
    return df


def _geometry_for(geometry: pd.DataFrame, usage: pd.DataFrame) -> pd.DataFrame:
    """`geometry` indexed by layer, after checking both tables' columns and that every layer
    of `usage` is in it."""
    _check(geometry, GEOMETRY_COLUMNS, "geometry")
    _check(usage, USAGE_COLUMNS, "usage")
    geo = geometry.set_index("layer")
    unknown = sorted(set(usage["layer"]) - set(geo.index))
    if unknown:
        raise TrainingTableError(f"usage: layer {unknown[0]!r} is not in the geometry table")
    return geo


def _check(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TrainingTableError(f"{what}: missing column {missing[0]!r}")
