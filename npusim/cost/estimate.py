"""Energy, latency, power and storage of a program on an NPU, with FP32 / INT8 baselines.

Energy is *counts x energy per action*, kept apart as Accelergy does: `action_counts` builds a
long table of (layer, component, energy-table entry, operand widths, buffer size, count) per
image from the mapping model (`npusim.cost.mapping`) and, when given, the simulator's
statistics; `price` multiplies it by an `EnergyTable`. `estimate_cost` does both for the
program and for its INT8 and FP32 versions on the same array, memories and counts.

What is charged (per image; `charging_rules()` lists it as a table):

- ``mac``: one multiply per MAC at ``w_bits x a_bits`` (fp32: an fp32 multiply). Zero-operand
  multiplies are gated (not charged) when simulator statistics give ``nonzero_macs``: operand
  gating is cheap and standard in NPUs, and it is the only place the data changes the energy.
  Without statistics every MAC is charged. ``mac_ungated_pj`` shows the ungated figure.
- ``operand``: the systolic forwarding of operands between PEs, register writes per MAC of the
  streamed operands (os: activation + weight; ws: activation, plus each weight once at
  preload; is: weight, plus each input once at preload).
- ``accumulator``: one add and one register write per MAC at the width the sum travels at
  (os: ``acc_bits``; ws / is: ``pe_acc_bits`` down the column), plus for ws / is one add at
  ``acc_bits`` per row-fold partial sum into the accumulator. Charged for every MAC (the
  partial sum moves every cycle whether or not the product was zero).
- ``requant``: per requantized output, one multiply at ``acc_bits x multiplier_bits`` and one
  add and one shift at the product width (``fixed``); an add and a shift at ``acc_bits``
  (``pow2``); an fp32 multiply and add (``float``). The clamp is not charged. Residual adds
  rescale each input (multiply at ``(in_bits + add_frac_bits) x multiplier_bits``) and round
  the sum once (add + shift).
- ``vector``: the residual sum (one add), pooling sums (adds at ``acc_bits``) and max-pooling
  comparisons (``window - 1`` per output at the input width).
- ``sram``: bits read and written in each buffer (activation / weight / accumulator SRAM, as
  counted by the mapping model) x the per-bit energy of a buffer of that size.
- ``lookup``: embedding lookups, an SRAM read of the LUT entry in the weight SRAM.
- ``dram``: DRAM bits (mapping model) x the DRAM energy per bit.
- ``leakage``: (PEs x mW/PE + SRAM KiB x mW/KiB) x the layer's latency.

Every width above is the node's own: an NPU's ``[[layer]]`` table that matches a node prices
that node at its widths (`Precision.acc_for` / `pe_acc_for`). Nothing here imports torch or
numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from npusim.cost.energy_table import EnergyTable, table_for_npu
from npusim.cost.mapping import Precision, liveness, network_mapping, param_bits, program_precision
from npusim.errors import UserError
from npusim.ir.ops import OPS, pool_window
from npusim.ir.program import IntegerProgram

if TYPE_CHECKING:
    from npusim.hw.config import NPUConfig

__all__ = ["COMPONENTS", "CostReport", "action_counts", "charging_rules", "estimate_cost",
           "price"]

#: Energy components, in report order.
COMPONENTS = ("mac", "operand", "accumulator", "requant", "vector", "sram", "lookup", "dram",
              "leakage")
VARIANTS = ("npu", "int8", "fp32")

_COUNT_COLUMNS = ["layer", "op", "component", "entry", "bw", "ba", "size_kib", "count",
                  "count_unit", "what"]


@dataclass
class CostReport:
    """What `estimate_cost` returns; every table is tidy and records the energy table used."""

    layers: pd.DataFrame
    components: pd.DataFrame
    totals: pd.DataFrame
    baselines: pd.DataFrame
    counts: pd.DataFrame = field(repr=False)
    table: EnergyTable = field(repr=False)

    @property
    def total(self) -> dict[str, Any]:
        """The one totals row as a dict."""
        return self.totals.iloc[0].to_dict()


# ------------------------------------------------------------------------------ counts

def _nonzero_per_image(stats: pd.DataFrame | None, program: IntegerProgram
                       ) -> tuple[dict[str, float], int | None]:
    if stats is None:
        return {}, None
    need = {"layer", "images", "nonzero_macs"}
    missing = sorted(need - set(stats.columns))
    if missing:
        raise ValueError(f"stats: missing column {missing[0]!r} (pass SimResult.stats)")
    known = {n.name for n in program.nodes}
    images = {int(v) for v in stats["images"].dropna()}
    if len(images) != 1 or min(images) < 1:
        raise ValueError(f"stats: expected one positive images count, got {sorted(images)}")
    n_img = images.pop()
    out = {}
    for row in stats.itertuples(index=False):
        if row.layer not in known:
            raise ValueError(f"stats: layer {row.layer!r} is not a node of the program")
        if not pd.isna(row.nonzero_macs):
            out[row.layer] = float(row.nonzero_macs) / n_img
    for node in program.nodes:
        if OPS[node.op].unit == "array" and node.name not in out:
            raise ValueError(f"stats: no nonzero_macs for layer {node.name!r}")
    return out, n_img


def action_counts(program: IntegerProgram, npu: "NPUConfig", stats: pd.DataFrame | None = None,
                  images: int | None = None, variant: str = "npu") -> pd.DataFrame:
    """Per-image counts of every charged action (long table; see the module docstring).

    Args:
        stats: the simulator's per-layer table; its ``nonzero_macs`` gate the multiplies.
        images: the batch run layer by layer, over which parameters that fit the weight
            SRAM are reused (default 1; independent of the images `stats` were taken on).
        variant: ``npu`` (the program as it is), ``int8`` or ``fp32`` (baselines).
    """
    return _action_counts(program, npu, stats, images, variant)[0]


@dataclass
class _Counted:
    mapping: pd.DataFrame
    prec: Precision
    images: int
    counts_source: str
    simulated_images: int


def _action_counts(program, npu, stats, images, variant) -> tuple[pd.DataFrame, _Counted]:
    nonzero, n_img = _nonzero_per_image(stats, program)
    batch = 1 if images is None else int(images)
    prec = program_precision(program, npu, variant)  # type: ignore[arg-type]
    mapping = network_mapping(program, npu, prec, batch)
    rows = _counts(program, npu, prec, mapping, nonzero)
    df = pd.DataFrame(rows, columns=_COUNT_COLUMNS)
    df.insert(0, "variant", variant)
    df["batch"] = batch
    source = "simulated" if stats is not None else "static"
    df["counts_source"] = source
    df["simulated_images"] = n_img or 0
    return df, _Counted(mapping, prec, batch, source, n_img or 0)


def _counts(program: IntegerProgram, npu: "NPUConfig", prec: Precision, mapping: pd.DataFrame,
            nonzero: dict[str, float]) -> list[tuple]:
    mem, arr = npu.memory, npu.array
    fp = prec.arithmetic == "fp32"
    rows: list[tuple] = []
    nan = math.nan

    def add(layer, op, comp, entry, count, unit="op", bw=nan, ba=nan, size=nan, what=""):
        if count:
            rows.append((layer, op, comp, entry, bw, ba, size, float(count), unit, what))

    def adder(layer, op, comp, bits, count, what):
        if fp:
            add(layer, op, comp, "fp32_adder.add", count, what=what + " (fp32)")
        else:
            add(layer, op, comp, "int_adder.add", count, bw=bits, what=f"{what} ({bits} b)")

    def requant(layer, op, count, acc_bits, what="requantize"):
        mb = prec.multiplier_bits
        if prec.scale_mode == "fixed":
            add(layer, op, "requant", "int_multiplier.multiply", count, bw=acc_bits, ba=mb,
                what=f"{what}: multiply {acc_bits} x {mb} b")
            add(layer, op, "requant", "int_adder.add", count, bw=acc_bits + mb,
                what=f"{what}: rounding add ({acc_bits + mb} b)")
            add(layer, op, "requant", "shifter.shift", count, bw=acc_bits + mb,
                what=f"{what}: shift ({acc_bits + mb} b)")
        elif prec.scale_mode == "pow2":
            add(layer, op, "requant", "int_adder.add", count, bw=acc_bits,
                what=f"{what}: rounding add ({acc_bits} b)")
            add(layer, op, "requant", "shifter.shift", count, bw=acc_bits,
                what=f"{what}: shift ({acc_bits} b)")
        elif prec.scale_mode == "float":
            add(layer, op, "requant", "fp32_multiplier.multiply", count,
                what=f"{what}: fp32 multiply")
            add(layer, op, "requant", "fp32_adder.add", count, what=f"{what}: fp32 rounding add")

    for node, r in zip(program.nodes, mapping.itertuples(index=False)):
        name, op = node.name, node.op
        if OPS[op].unit == "array":
            a = prec.bits(node.inputs[0])
            w = prec.bits(f"{name}.weight")
            macs = int(r.macs)
            nz = nonzero.get(name, macs)
            if fp:
                add(name, op, "mac", "fp32_multiplier.multiply", nz, what="fp32 multiply")
            else:
                add(name, op, "mac", "int_multiplier.multiply", nz, bw=w, ba=a,
                    what=f"multiply w{w} x a{a}")
            # operand forwarding registers inside the array
            ws = prec.stored(f"{name}.weight")
            if arr.dataflow == "os":
                add(name, op, "operand", "register.write", macs * (a + ws), "bit",
                    what=f"forward activation + weight ({a}+{ws} b per MAC)")
            elif arr.dataflow == "ws":
                add(name, op, "operand", "register.write", macs * a + int(r.filter_sram_reads) * ws,
                    "bit", what=f"forward activation ({a} b per MAC) + weight preload")
            else:
                add(name, op, "operand", "register.write", macs * ws + int(r.ifmap_sram_reads) * a,
                    "bit", what=f"forward weight ({ws} b per MAC) + input preload")
            acc_bits = prec.acc_for(name)
            psum = acc_bits if arr.dataflow == "os" else prec.pe_acc_for(name)
            level = "accumulate" if arr.dataflow == "os" else "partial sum down the column"
            adder(name, op, "accumulator", psum, macs, level)
            add(name, op, "accumulator", "register.write", macs * psum, "bit",
                what=f"{level} register ({psum} b per MAC)")
            if arr.dataflow != "os":
                adder(name, op, "accumulator", acc_bits, int(r.ofmap_sram_writes),
                      "add row-fold partial sum into the accumulator")
            if r.requant_outputs and prec.scale_mode != "none":
                requant(name, op, int(r.requant_outputs), prec.acc_for(name))
        elif op == "add":
            n = int(r.outputs)
            in_bits = max(prec.bits(i) for i in node.inputs)
            if fp:
                adder(name, op, "vector", 32, n, "residual sum")
            else:
                wide = in_bits + prec.add_frac_bits
                mb = prec.multiplier_bits if prec.scale_mode == "fixed" else 1
                sum_bits = wide + mb
                if prec.scale_mode == "fixed":
                    add(name, op, "requant", "int_multiplier.multiply", 2 * n, bw=wide, ba=mb,
                        what=f"rescale each input: multiply {wide} x {mb} b")
                elif prec.scale_mode == "pow2":
                    add(name, op, "requant", "shifter.shift", 2 * n, bw=wide,
                        what=f"rescale each input: shift ({wide} b)")
                elif prec.scale_mode == "float":
                    add(name, op, "requant", "fp32_multiplier.multiply", 2 * n,
                        what="rescale each input: fp32 multiply")
                if prec.scale_mode == "float":
                    add(name, op, "vector", "fp32_adder.add", n, what="residual sum (fp32)")
                    add(name, op, "requant", "fp32_adder.add", n, what="fp32 rounding add")
                else:
                    adder(name, op, "vector", sum_bits, n, "residual sum")
                    add(name, op, "requant", "int_adder.add", n, bw=sum_bits,
                        what=f"rounding add ({sum_bits} b)")
                    add(name, op, "requant", "shifter.shift", n, bw=sum_bits,
                        what=f"shift ({sum_bits} b)")
        elif op == "concat":  # each input requantized to the output's scale (a copy at m = 1)
            if r.requant_outputs and prec.scale_mode != "none":
                bits = max(prec.bits(i) for i in node.inputs) + 1  # the input less its zero point
                requant(name, op, int(r.requant_outputs), bits)
        elif op == "maxpool2d":
            window = pool_window(program, node)
            bits = prec.bits(node.inputs[0])
            add(name, op, "vector", "comparator.compare", int(r.outputs) * (window - 1),
                bw=bits, what=f"max of {window} ({bits} b compares)")
        elif op in ("avgpool2d", "global_avgpool"):
            window = pool_window(program, node)
            adder(name, op, "vector", prec.acc_for(name), int(r.outputs) * (window - 1),
                  f"sum of {window}")
            if fp:
                add(name, op, "vector", "fp32_multiplier.multiply", int(r.outputs),
                    what="scale by 1/window (fp32)")
            elif r.requant_outputs:
                requant(name, op, int(r.requant_outputs), prec.acc_for(name))
        elif op == "embed":
            add(name, op, "lookup", "sram.access", int(r.lut_read_bits), "bit",
                size=mem.weight_sram_kib, what="LUT entry reads (weight SRAM)")
        # buffers, DRAM and leakage for every node
        for bits_col, size, what in (
                ("act_sram_read_bits", mem.activation_sram_kib, "activation SRAM reads"),
                ("act_sram_write_bits", mem.activation_sram_kib, "activation SRAM writes"),
                ("weight_sram_read_bits", mem.weight_sram_kib, "weight SRAM reads"),
                ("acc_sram_read_bits", mem.accumulator_sram_kib, "accumulator SRAM reads"),
                ("acc_sram_write_bits", mem.accumulator_sram_kib, "accumulator SRAM writes")):
            add(name, op, "sram", "sram.access", getattr(r, bits_col), "bit", size=size,
                what=what)
        add(name, op, "dram", "dram.access", r.dram_weight_bits, "bit",
            what="parameters from DRAM")
        add(name, op, "dram", "dram.access", r.dram_activation_bits, "bit",
            what="activations to/from DRAM")
        ns = r.latency_us * 1000.0
        add(name, op, "leakage", "leakage.pe", arr.rows * arr.cols * ns, "PE*ns",
            what=f"{arr.rows * arr.cols} PEs leaking")
        kib = mem.weight_sram_kib + mem.activation_sram_kib + mem.accumulator_sram_kib
        add(name, op, "leakage", "leakage.sram", kib * ns, "KiB*ns",
            what=f"{kib:g} KiB of SRAM leaking")
    return rows


def price(counts: pd.DataFrame, table: EnergyTable) -> pd.DataFrame:
    """`counts` with ``energy_per_action`` and ``energy_pj`` columns (mW x ns = pJ)."""
    df = counts.copy()
    cache: dict[tuple, float] = {}
    unit_e = []
    for r in df.itertuples(index=False):
        key = (r.entry, r.bw, r.ba, r.size_kib)
        if key not in cache:
            cache[key] = table.energy(r.entry, bw=None if math.isnan(r.bw) else r.bw,
                                      ba=None if math.isnan(r.ba) else r.ba,
                                      size_kib=None if math.isnan(r.size_kib) else r.size_kib)
        unit_e.append(cache[key])
    df["energy_per_action"] = unit_e
    df["energy_pj"] = df["count"] * df["energy_per_action"]
    _stamp(df, table, None)
    return df


def _stamp(df: pd.DataFrame, table: EnergyTable, npu: "NPUConfig | None") -> pd.DataFrame:
    df["table_name"] = table.name
    df["table_version"] = table.version
    df["table_overrides"] = table.overrides_label
    if npu is not None:
        df["npu"] = npu.name
        df["config_hash"] = npu.config_hash()
    return df


# ---------------------------------------------------------------------------- estimate

def _variant(program, npu, table, stats, images, variant):
    counts, info = _action_counts(program, npu, stats, images, variant)
    priced = price(counts, table)
    mapping, prec = info.mapping, info.prec
    per = (priced.pivot_table(index="layer", columns="component", values="energy_pj",
                              aggfunc="sum", fill_value=0.0)
           .reindex(index=[n.name for n in program.nodes], columns=list(COMPONENTS),
                    fill_value=0.0))
    return priced, mapping, prec, per, info


def estimate_cost(program: IntegerProgram, npu_config: "NPUConfig",
                  stats: pd.DataFrame | None = None, images: int | None = None,
                  table: EnergyTable | None = None) -> CostReport:
    """Energy per image, latency, power and storage of `program` on `npu_config`.

    Args:
        stats: `SimResult.stats`; its ``nonzero_macs`` (divided by its ``images``) gate the
            multiplies.
        images: the batch, run layer by layer (default 1): parameters that fit the weight SRAM
            are read from DRAM once per batch, and the batch's activations share the
            activation SRAM. Energy, latency and counts are reported per image.
        table: an energy table (default: the one the NPU config names, with its overrides,
            at its node and supply voltage).
    """
    from npusim.sim.simulator import check_runnable

    npu = npu_config
    check_runnable(npu, program)  # cost refuses exactly what simulate refuses
    table = table or table_for_npu(npu)
    results = {v: _variant(program, npu, table, stats, images, v) for v in VARIANTS}
    priced, mapping, prec, per, info = results["npu"]
    nodes = program.nodes

    layers = pd.DataFrame({"layer": [n.name for n in nodes], "op": [n.op for n in nodes]})
    layers["macs"] = mapping["macs"].to_numpy()
    nonzero, _ = _nonzero_per_image(stats, program)
    layers["nonzero_macs"] = [nonzero.get(n.name, float(m)) if OPS[n.op].unit == "array" else 0.0
                              for n, m in zip(nodes, mapping["macs"])]
    layers["w_bits"] = [prec.bits(f"{n.name}.weight") if OPS[n.op].unit == "array" else pd.NA
                        for n in nodes]
    layers["a_bits"] = [prec.bits(n.inputs[0]) for n in nodes]
    layers["out_bits"] = [prec.bits(n.output) for n in nodes]
    layers["w_bits"] = layers["w_bits"].astype("Int64")
    layers["pe_acc_bits"] = [prec.pe_acc_for(n.name) for n in nodes]
    layers["acc_bits"] = [prec.acc_for(n.name) for n in nodes]
    for col in ("M", "K", "N", "groups", "folds", "compute_cycles", "scalesim_cycles",
                "stall_cycles", "cycles",
                "latency_us", "utilization"):
        layers[col] = mapping[col].to_numpy()
    layers["energy_pj"] = per.sum(axis=1).to_numpy()
    for comp in COMPONENTS:
        layers[f"{comp}_pj"] = per[comp].to_numpy()
    layers["mac_ungated_pj"] = [
        m * table.energy("int_mul", bw=prec.bits(f"{n.name}.weight"), ba=prec.bits(n.inputs[0]))
        if OPS[n.op].unit == "array" else 0.0 for n, m in zip(nodes, mapping["macs"])]
    layers["weight_bits"] = mapping["param_bits"].to_numpy()
    layers["weight_bytes"] = layers["weight_bits"] / 8
    layers["sram_bits"] = mapping[["act_sram_read_bits", "act_sram_write_bits",
                                   "weight_sram_read_bits", "acc_sram_read_bits",
                                   "acc_sram_write_bits"]].sum(axis=1).to_numpy()
    layers["dram_bits"] = mapping["dram_bits"].to_numpy()
    # DRAM energy is per bit moved, so it splits exactly by the bits of each kind
    layers["dram_weight_bits"] = mapping["dram_weight_bits"].to_numpy()
    layers["dram_activation_bits"] = mapping["dram_activation_bits"].to_numpy()
    share = (layers["dram_weight_bits"] / layers["dram_bits"].where(layers["dram_bits"] > 0)
             ).fillna(0.0)
    layers["dram_weight_pj"] = layers["dram_pj"] * share
    layers["dram_activation_pj"] = layers["dram_pj"] - layers["dram_weight_pj"]
    layers["weights_fit_sram"] = mapping["weights_fit_sram"].to_numpy()
    layers["weights_resident"] = mapping["weights_resident"].to_numpy()
    layers["activation_spill"] = mapping["activation_spill"].to_numpy()
    layers["batch"] = info.images
    layers["counts_source"] = info.counts_source
    layers["simulated_images"] = info.simulated_images
    _stamp(layers, table, npu)

    components = (priced.groupby(["layer", "component"], sort=False, as_index=False)["energy_pj"]
                  .sum())
    _stamp(components, table, npu)

    summaries = {v: _summary(program, npu, *results[v][1:4]) for v in VARIANTS}
    base = pd.DataFrame([{"variant": v, **summaries[v]} for v in VARIANTS])
    e0, s0 = summaries["npu"]["energy_per_image_pj"], summaries["npu"]["weight_storage_bytes"]
    base["energy_saving"] = base["energy_per_image_pj"] / e0 if e0 else math.nan
    base["storage_saving"] = base["weight_storage_bytes"] / s0 if s0 else math.nan
    _stamp(base, table, npu)

    tot = dict(summaries["npu"])
    for v in ("fp32", "int8"):
        tot[f"energy_saving_vs_{v}"] = summaries[v]["energy_per_image_pj"] / e0 if e0 else math.nan
        tot[f"storage_saving_vs_{v}"] = (summaries[v]["weight_storage_bytes"] / s0
                                         if s0 else math.nan)
    tot["fp32_energy_per_image_pj"] = summaries["fp32"]["energy_per_image_pj"]
    tot["int8_energy_per_image_pj"] = summaries["int8"]["energy_per_image_pj"]
    for kind in ("weight", "activation"):
        tot[f"dram_{kind}_pj"] = float(layers[f"dram_{kind}_pj"].sum())
        tot[f"dram_{kind}_bytes"] = float(layers[f"dram_{kind}_bits"].sum()) / 8
    tot["weights_fit_sram"] = bool(layers["weights_fit_sram"].all())
    tot["activation_spill_layers"] = int(layers["activation_spill"].sum())
    tot["batch"] = info.images
    tot["counts_source"] = info.counts_source
    tot["simulated_images"] = info.simulated_images
    totals = _stamp(pd.DataFrame([tot]), table, npu)
    counts = _stamp(pd.concat([results[v][0] for v in VARIANTS], ignore_index=True), table, npu)
    for what, frame in (("per-layer", layers), ("total", totals), ("baseline", base),
                        ("component", components)):
        _check_finite(frame, what, npu)
    return CostReport(layers=layers, components=components, totals=totals, baselines=base,
                      counts=counts, table=table)


class CostError(UserError):
    """The cost model cannot give finite numbers for this NPU (an absurd energy or size)."""


#: columns that are NaN by definition when the NPU's own figure is 0 (a ratio to it)
_RATIOS = ("energy_saving", "storage_saving", "utilization")


def _check_finite(frame: pd.DataFrame, what: str, npu: "NPUConfig") -> None:
    """Refuse a report with an infinite number, or a NaN outside the ratio columns."""
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce") if frame[col].dtype == object \
            else frame[col]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        arr = values.to_numpy(dtype=float, na_value=math.nan)
        bad = ~pd.isna(arr) & ~(abs(arr) < math.inf)
        if not col.startswith(_RATIOS):
            bad |= pd.isna(arr) & frame[col].notna().to_numpy()
        if bad.any():
            raise CostError(
                f"NPU {npu.name!r}: the {what} cost column {col!r} is not finite "
                f"({arr[bad][0]!r}); check the NPU's sizes and technology.energy_overrides")


def _summary(program: IntegerProgram, npu: "NPUConfig", mapping: pd.DataFrame, prec: Precision,
             per: pd.DataFrame) -> dict[str, Any]:
    energy = float(per.to_numpy().sum())
    latency = float(mapping["latency_us"].sum())
    leak = float(per["leakage"].sum())
    storage_bits = sum(sum(param_bits(program, n, prec).values()) for n in program.nodes)
    peak = max(liveness(program, prec).values(), default=0)
    out = {
        "energy_per_image_pj": energy,
        "energy_per_image_uj": energy * 1e-6,
        **{f"{c}_pj": float(per[c].sum()) for c in COMPONENTS},
        "macs": int(mapping["macs"].sum()),
        "compute_cycles": int(mapping["compute_cycles"].sum()),
        "stall_cycles": int(mapping["stall_cycles"].sum()),
        "cycles": int(mapping["cycles"].sum()),
        "latency_us": latency,
        # pJ / us = uW; / 1000 -> mW
        "dynamic_power_mw": (energy - leak) / latency / 1000 if latency else math.nan,
        "leakage_power_mw": leak / latency / 1000 if latency else math.nan,
        "avg_power_mw": energy / latency / 1000 if latency else math.nan,
        "weight_storage_bits": int(storage_bits),
        "weight_storage_bytes": storage_bits / 8,
        "peak_activation_bytes": peak / 8,
        "weights_resident": bool(mapping["weights_resident"].all()) if len(mapping) else True,
    }
    return out


def charging_rules() -> pd.DataFrame:
    """How each composite action is charged from the table's entries (for ``--sources``)."""
    rules = [
        ("mac", "int_multiplier.multiply(bw=w_bits, ba=a_bits) per non-zero MAC (all MACs "
                "without simulator stats); fp32 baseline: fp32_multiplier.multiply"),
        ("operand", "register.write x operand bits forwarded per MAC (os: a+w; ws: a, weights "
                    "once at preload; is: w, inputs once at preload)"),
        ("accumulator", "int_adder.add + register.write per MAC at acc_bits (os) or pe_acc_bits "
                        "(ws/is), + int_adder.add(acc_bits) per row-fold partial sum (ws/is)"),
        ("requant", "fixed: int_multiplier.multiply(acc_bits x multiplier_bits) + int_adder.add "
                    "+ shifter.shift at acc_bits+multiplier_bits; pow2: add + shift at "
                    "acc_bits; float: fp32 multiply + fp32 add; per requantized output"),
        ("residual add", "2 x multiply((in_bits+add_frac_bits) x multiplier_bits) + sum add + "
                         "rounding add + shift per output"),
        ("pooling", "max: comparator.compare(in_bits) x (window-1); avg: int_adder.add(acc_bits)"
                    " x (window-1) + requant, per output"),
        ("concat", "requant at (input bits + 1) per output (each input rescaled to the output's "
                   "scale); slice / channel_shuffle are views: buffers only"),
        ("lookup", "sram.access at the weight SRAM size x LUT entry bits, per lookup"),
        ("sram", "sram.access(size_kib of the buffer) x bits read or written (activation, "
                 "weight, accumulator buffers as counted by the SCALE-Sim mapping)"),
        ("dram", "dram.access x bits (parameters once per batch if they fit the weight SRAM, "
                 "else per image; activations when the live set overflows the activation SRAM)"),
        ("leakage", "(rows*cols x leakage.pe + SRAM KiB x leakage.sram) x latency; mW x ns = pJ"),
        ("node / supply", "on-chip entries x node_scaling factor x (V/V_table)^2 (leakage: "
                          "x V/V_table); DRAM not scaled"),
    ]
    return pd.DataFrame(rules, columns=["action", "charged_as"])
