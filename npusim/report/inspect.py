"""Tables that describe an IntegerProgram: its nodes, and the accumulator bits it needs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from npusim.ir.bounds import layer_bounds
from npusim.ir.ops import OPS
from npusim.ir.program import IntegerProgram


def _fmt_scale(scale) -> str:
    s = np.atleast_1d(np.asarray(scale, dtype=float))
    return f"{s[0]:.4g}" if len(s) == 1 else f"{s.min():.3g}..{s.max():.3g} ({len(s)} ch)"


def program_table(prog: IntegerProgram) -> pd.DataFrame:
    """One row per node: op, inputs, output shape, weight/input/output bits, scales, shifts."""
    rows = []
    for n in prog.nodes:
        out = prog.tensors[n.output]
        row = {"node": n.name, "op": n.op, "inputs": ",".join(n.inputs),
               "output_shape": "x".join(map(str, out.shape)),
               "out_bits": f"{'s' if out.signed else 'u'}{out.bits}",
               "out_scale": _fmt_scale(out.scale)}
        w = prog.tensors.get(f"{n.name}.weight")
        x = prog.tensors[n.inputs[0]]
        row["in_bits"] = f"{'s' if x.signed else 'u'}{x.bits}"
        row["w_bits"] = w.bits if w is not None else ""
        row["w_scale"] = _fmt_scale(w.scale) if w is not None else ""
        sh = prog.arrays.get(f"{n.name}.shift")
        row["shift"] = f"{int(sh.min())}..{int(sh.max())}" if sh is not None and sh.size else ""
        attrs = {k: v for k, v in n.attrs.items() if k not in ("requant",)}
        row["attrs"] = " ".join(f"{k}={v}" for k, v in attrs.items())
        rows.append(row)
    return pd.DataFrame(rows)


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
