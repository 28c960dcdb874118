"""Per-layer accumulator widths against one width for the whole network: a hardware-only
sweep of one trained W4A4 ResNet-20 program (no training in the sweep).

    npusim sweep --program P --npu reports/per_layer_npu.toml --acc-bits 8:16:2 \
        --overflow wrap,saturate --images 200 --csv per_layer.csv
    npusim sweep --program P --npu edge16 --acc-bits 8:16:2 --overflow wrap,saturate \
        --images 200 --csv single.csv
    npusim bounds P --suggest --data mnist5k --limit 200 --out reports/per_layer_suggest.toml
    python benchmarks/per_layer_sweep.py --program P --per-layer per_layer.csv \
        --single single.csv --suggest reports/per_layer_suggest.toml

Writes reports/per_layer_sweep.{png,csv,md} (the figure's data beside it) and
reports/per_layer_widths.csv (per layer: the bound's and the data's narrowest widths).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from npusim.hw.config import NPUConfig  # noqa: E402
from npusim.io import atomic_write_bytes, markdown_table, write_csv  # noqa: E402
from npusim.ir.program import load_program  # noqa: E402
from npusim.report.inspect import suggest_widths  # noqa: E402

COLUMNS = ["npu_kind", "overflow_mode", "body_acc_bits", "status", "error", "top1",
           "overflow_rate", "energy_per_image_uj", "accumulator_uj", "latency_us",
           "layer_tables"]


def tidy(per_layer: pd.DataFrame, single: pd.DataFrame,
         suggested: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Both sweeps (and the --suggest configs) in one table, one row per (kind, overflow mode,
    body width)."""
    parts = []
    for kind, df in (("stem+fc at 24 b, body swept", per_layer), ("one width everywhere", single),
                     *((f"--suggest {k} widths per layer", v) for k, v in suggested.items())):
        d = df.assign(npu_kind=kind, body_acc_bits=df["acc_bits"].astype("Int64"))
        if kind.startswith("--suggest"):  # every conv/linear has a table: no body width
            d["body_acc_bits"] = pd.NA
        parts.append(d)
    out = pd.concat(parts, ignore_index=True)
    out["layer_tables"] = out["layer_tables"].fillna("")
    out["error"] = out["error"].fillna("")
    return out[COLUMNS].sort_values(["npu_kind", "overflow_mode", "body_acc_bits"],
                                    ignore_index=True)


def plot(table: pd.DataFrame, axes=None):
    """Top-1 and energy per image against the body's accumulator width; refused points are
    marked with an x on the axis. Returns the figure."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    fig = axes[0].figure
    styles = {"wrap": "-", "saturate": "--"}
    colors = {"stem+fc at 24 b, body swept": "tab:blue", "one width everywhere": "tab:orange"}
    extra = table[table["npu_kind"].str.startswith("--suggest")]
    for (kind, mode), g in table.drop(extra.index).groupby(["npu_kind", "overflow_mode"]):
        ok = g[g["status"] == "ok"]
        bad = g[g["status"] != "ok"]
        label = f"{kind}, {mode}"
        for ax, col, scale in ((axes[0], "top1", 100.0), (axes[1], "energy_per_image_uj", 1.0)):
            ax.plot(ok["body_acc_bits"], ok[col] * scale, styles[mode], marker="o",
                    color=colors[kind], label=label)
            if len(bad):  # refused: an x on the bottom edge
                ax.plot(bad["body_acc_bits"], [0.03] * len(bad), "x", color=colors[kind],
                        markersize=9, transform=ax.get_xaxis_transform(),
                        label=f"{label}: refused" if ax is axes[0] else None)
    for r, marker in zip(extra.itertuples(), "*Ds^"):
        if r.status == "ok":  # a whole-network config: drawn as a level
            for ax, col, scale in ((axes[0], "top1", 100.0),
                                   (axes[1], "energy_per_image_uj", 1.0)):
                ax.axhline(getattr(r, col) * scale, color="gray", lw=0.8,
                           ls=":" if marker == "*" else "-.",
                           label=f"{r.npu_kind}, {r.overflow_mode}" if ax is axes[0] else None)
    axes[0].set_ylabel("top-1 (%)")
    axes[1].set_ylabel("energy per image (uJ)")
    for ax in axes:
        ax.set_xlabel("body accumulator width (bits, both levels)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("W4A4 ResNet-20 (mnist5k) on edge16: per-layer widths vs one width")
    fig.tight_layout()
    return fig


def widths_table(program, suggest: NPUConfig) -> pd.DataFrame:
    """Per conv/linear layer: one product's bits, the L1 bound's narrowest safe widths and the
    data's narrowest widths (from the `bounds --suggest --data` config)."""
    df = suggest_widths(program, None, suggest.array.dataflow, suggest.array.rows)
    df["observed_acc_bits"] = [suggest.precision_for(n).acc_bits for n in df["layer"]]
    df["observed_pe_acc_bits"] = [suggest.precision_for(n).pe_acc_bits for n in df["layer"]]
    return df.drop(columns=["match"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", required=True)
    ap.add_argument("--per-layer", required=True)
    ap.add_argument("--single", required=True)
    ap.add_argument("--suggest", required=True)
    ap.add_argument("--suggested-sweep", action="append", default=[],
                    help="BASIS=CSV: a sweep of a --suggest config (bound or observed)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    out = Path(a.out)
    suggested = {k: pd.read_csv(v) for k, v in (x.split("=", 1) for x in a.suggested_sweep)}
    table = tidy(pd.read_csv(a.per_layer), pd.read_csv(a.single), suggested)
    fig = plot(table)
    png = out / "per_layer_sweep.png"
    atomic_write_bytes(png, _png(fig))
    write_csv(table, png.with_suffix(".csv"))
    prog = load_program(a.program)
    widths = widths_table(prog, NPUConfig.from_toml(a.suggest))
    write_csv(widths, out / "per_layer_widths.csv")
    view = table.assign(top1=(100 * table["top1"]).round(2),
                        energy_per_image_uj=table["energy_per_image_uj"].round(4),
                        accumulator_uj=table["accumulator_uj"].round(4),
                        overflow_rate=table["overflow_rate"].map(
                            lambda v: "" if v != v else f"{v:.1e}"))
    md = [f"# Per-layer accumulator widths: W4A4 ResNet-20 on mnist5k, edge16\n\n{a.note}\n",
          "![per-layer sweep](per_layer_sweep.png)\n",
          "## Sweep points (data: per_layer_sweep.csv)\n",
          markdown_table(view.drop(columns=["layer_tables"])), "",
          "## Narrowest widths per layer (data: per_layer_widths.csv)\n",
          "`bound_*`: safe for any input by the exact weight (L1) bound; `observed_*`: no "
          "running sum (both levels) overflowed on the data (`npusim bounds --suggest "
          "--data`). `os` has no pe level: pe_acc_bits = acc_bits.\n",
          markdown_table(widths), ""]
    atomic_write_bytes(out / "per_layer_sweep.md", "\n".join(md).encode("utf-8"))
    print(f"wrote {png}, {png.with_suffix('.csv')}, {out / 'per_layer_sweep.md'}, "
          f"{out / 'per_layer_widths.csv'}")


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    return buf.getvalue()


if __name__ == "__main__":
    main()
