"""Tables that describe an IntegerProgram: its nodes, and the accumulator bits it needs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from npusim.ir.bounds import layer_bounds
from npusim.ir.ops import OPS
from npusim.ir.program import IntegerProgram


def _fmt_range(lo: float, hi: float, n: int) -> str:
    return f"{lo:.4g}" if n == 1 else f"{lo:.3g}..{hi:.3g} ({n} ch)"


def program_table(prog: IntegerProgram) -> pd.DataFrame:
    """One tidy row per node: op, input names, output shape, bits and sign of input, weights
    and output, scale ranges, shift range, MACs per image and the other attributes."""
    from npusim.ir.ops import OPS as _OPS  # noqa: N811

    rows = []
    for n in prog.nodes:
        out, x = prog.tensors[n.output], prog.tensors[n.inputs[0]]
        w = prog.tensors.get(f"{n.name}.weight")
        ws = w.scales() if w is not None else np.array([np.nan])
        sh = prog.arrays.get(f"{n.name}.shift")
        has_sh = sh is not None and sh.size > 0
        rows.append({
            "node": n.name, "op": n.op, "inputs": ",".join(n.inputs),
            "output_shape": "x".join(map(str, out.shape)),
            "in_bits": x.bits, "in_signed": x.signed,
            "w_bits": w.bits if w is not None else pd.NA,
            "out_bits": out.bits, "out_signed": out.signed,
            "out_scale": float(out.scales()[0]),
            "w_scale_min": float(ws.min()), "w_scale_max": float(ws.max()),
            "w_channels": len(ws) if w is not None else pd.NA,
            "shift_min_bits": int(sh.min()) if has_sh else pd.NA,
            "shift_max_bits": int(sh.max()) if has_sh else pd.NA,
            "macs_per_image": int(_OPS[n.op].macs(prog, n)),
            "attrs": " ".join(f"{k}={v}" for k, v in n.attrs.items() if k != "requant")})
    df = pd.DataFrame(rows)
    for col in ("w_bits", "w_channels", "shift_min_bits", "shift_max_bits"):
        df[col] = df[col].astype("Int64")
    return df


def program_screen(table: pd.DataFrame) -> pd.DataFrame:
    """`program_table` narrowed for a terminal (under 110 characters a row for typical names):
    bits as ``in/w/out`` with u/s for the sign, scale and shift ranges as text."""
    def bits_of(r) -> str:
        w = "-" if r.w_bits is pd.NA else str(r.w_bits)
        return (f"{'s' if r.in_signed else 'u'}{r.in_bits}/{w}/"
                f"{'s' if r.out_signed else 'u'}{r.out_bits}")

    bits = [bits_of(r) for r in table.itertuples(index=False)]
    w_scale = [_fmt_range(lo, hi, int(c)) if c is not pd.NA else "" for lo, hi, c in
               zip(table["w_scale_min"], table["w_scale_max"], table["w_channels"])]
    shift = [f"{lo}..{hi}" if lo is not pd.NA else "" for lo, hi in
             zip(table["shift_min_bits"], table["shift_max_bits"])]
    return pd.DataFrame({"node": table["node"], "op": table["op"],
                         "output_shape": table["output_shape"], "bits_in_w_out": bits,
                         "w_scale": w_scale, "out_scale": table["out_scale"].map("{:.4g}".format),
                         "shift": shift})


def bounds_table(prog: IntegerProgram, images: np.ndarray | None = None) -> pd.DataFrame:
    """Per conv/linear layer: K, bits of one product, the data-type and exact weight bounds,
    and (with `images`) the bits the observed running sums needed in an exact simulation."""
    rows = []
    for n in prog.nodes:
        if OPS[n.op].unit != "array":
            continue
        b = layer_bounds(prog, n)
        rows.append({"layer": n.name, "op": n.op, "k": b.k, "x_bits": b.x_bits,
                     "w_bits": b.w_bits, "product_bits": b.product_bits,
                     "bound_l1_bits": b.bound_l1_bits, "bound_dtype_bits": b.bound_dtype_bits,
                     "trained_acc_bits": n.attrs.get("acc_bits_target")})
    df = pd.DataFrame(rows)
    if len(df) and df["trained_acc_bits"].notna().any():
        # A2Q-trained layers: the exact bound must fit the width they were trained for
        df["trained_acc_bits"] = df["trained_acc_bits"].astype("Int64")
        df["fits_trained_width"] = df["bound_l1_bits"] <= df["trained_acc_bits"]
    else:
        df = df.drop(columns="trained_acc_bits", errors="ignore")
    if images is not None and len(df):
        from npusim.hw.config import NPUConfig
        from npusim.sim.simulator import Simulator

        cfg = NPUConfig.ideal({**prog.requant, "scale_mode": "float"})
        stats = Simulator(cfg).run(prog, images).stats.set_index("layer")
        df["observed_bits"] = df["layer"].map(stats["observed_bits"]).astype("Int64")
    return df


def _glob_literal(name: str) -> str:
    """An fnmatch pattern matching exactly `name` (its ``*``, ``?`` and ``[`` escaped)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def suggest_widths(prog: IntegerProgram, images: np.ndarray | None = None,
                   dataflow: str = "os", rows: int = 16) -> pd.DataFrame:
    """Per conv/linear layer, the narrowest accumulator widths that are safe by the exact
    weight (L1) bound (``bound_*``) and, with `images`, that saw no overflow on them in an
    exact simulation (``observed_*``, running sums at both levels, `npusim.sim.observe`).

    Widths are never below one product's bits (the simulator refuses that); with a pe level
    (``ws`` / ``is``) the acc width is at least the pe width. For ``os`` there is no pe level
    and ``pe_acc_bits`` is set equal to ``acc_bits``.
    """
    rows_out = []
    for n in prog.nodes:
        if OPS[n.op].unit != "array":
            continue
        b = layer_bounds(prog, n)
        acc = max(b.bound_l1_bits, b.product_bits)
        pe = acc if dataflow == "os" else max(b.bound_l1_nobias_bits, b.product_bits)
        rows_out.append({"layer": n.name, "match": _glob_literal(n.name), "op": n.op, "k": b.k,
                         "product_bits": b.product_bits, "bound_pe_acc_bits": pe,
                         "bound_acc_bits": max(acc, pe)})
    df = pd.DataFrame(rows_out)
    if images is not None and len(df):
        from npusim.sim.observe import observed_widths

        obs = observed_widths(prog, images, dataflow, rows).set_index("layer")
        acc = np.maximum(df["layer"].map(obs["observed_acc_bits"]).astype(int),
                         df["product_bits"])
        if dataflow == "os":
            pe = acc
        else:
            pe = np.maximum(df["layer"].map(obs["observed_pe_bits"]).astype(int),
                            df["product_bits"])
        df["observed_pe_acc_bits"] = pe.astype(int)
        df["observed_acc_bits"] = np.maximum(acc, pe).astype(int)
        for c in ("acc_min", "acc_max", "pe_min", "pe_max"):
            df[f"observed_{c}"] = df["layer"].map(obs[c])
    return df
