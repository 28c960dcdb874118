"""What must stay wide in the first layer? ResNet-20 with a W4A4 body (LSQ) and different first
layers, on mnist5k and digits, same training budget: ~float (16-bit weights on raw 8-bit
pixels), 8-bit (8-bit weights, raw pixels), the input quantized to 4/2 bits (a frozen linear
lookup, d=1), and pixel embedding at 4/2 bits with a few d. Top-1 is simulated on the NPU
(edge16, 32-bit exact accumulators); energy and storage from the cost model (simulator stats).

    python benchmarks/first_layer.py [--data mnist5k,digits] [--qat-epochs 3]

Writes reports/first_layer.{csv,md,png}; resumable (finished rows are kept).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from npusim.cost import estimate_cost  # noqa: E402
from npusim.data import load_dataset  # noqa: E402
from npusim.hw.config import NPUConfig  # noqa: E402
from npusim.io import markdown_table, write_csv  # noqa: E402
from npusim.sim.simulator import Simulator  # noqa: E402
from quantize import QuantConfig, build_program  # noqa: E402
from quantize.cached import train_qat  # noqa: E402

# (label, first-layer weight bits, embedding config or None)
VARIANTS = [
    ("float first layer (16-bit w, 8-bit pixels)", 16, None),
    ("8-bit first layer (8-bit w, 8-bit pixels)", 8, None),
    ("4-bit input (d=1 linear, frozen)", 4, {"d": 1, "init": "linear", "trainable": False, "bits": 4}),
    ("2-bit input (d=1 linear, frozen)", 4, {"d": 1, "init": "linear", "trainable": False, "bits": 2}),
    ("embedding 4-bit d=4", 4, {"d": 4, "bits": 4}),
    ("embedding 4-bit d=8", 4, {"d": 8, "bits": 4}),
    ("embedding 2-bit d=4", 4, {"d": 4, "bits": 2}),
    ("embedding 2-bit d=8", 4, {"d": 8, "bits": 2}),
    ("embedding 2-bit d=16", 4, {"d": 16, "bits": 2}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist5k,digits")
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--float-epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=None,
                    help="Comma-separated indices into VARIANTS (default: all).")
    ap.add_argument("--out", default="reports/first_layer")
    ap.add_argument("--report-only", action="store_true",
                    help="Only redraw the table and figure from the CSV.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    csv = out.with_suffix(".csv")
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    if args.report_only:
        return write_report(done, out, args)
    npu = NPUConfig.preset("edge16")
    for data in args.data.split(","):
        test = load_dataset(data, "test")
        chosen = VARIANTS if args.variants is None else \
            [VARIANTS[int(i)] for i in args.variants.split(",")]
        for label, wbits, emb in chosen:
            if len(done) and ((done["data"] == data) & (done["first_layer"] == label)).any():
                continue
            cfg = QuantConfig(weight_bits=4, act_bits=4, first_layer_bits=wbits, embedding=emb)
            t0 = time.perf_counter()
            qmodel, meta = train_qat("resnet20", data, cfg, epochs=args.qat_epochs,
                                     float_epochs=args.float_epochs)
            prog = build_program(qmodel)
            # the ~float row needs a 16-bit weight datapath (edge16 takes 8)
            row_npu = npu.with_overrides({"array.max_weight_bits": 16}) if wbits > 8 else npu
            res = Simulator(row_npu).run(prog, test.images)
            cost = estimate_cost(prog, row_npu, stats=res.stats)
            layers = cost.layers
            first = [n.name for n in prog.nodes if n.op in ("embed", "conv2d")][:2]
            if prog.nodes[0].op != "embed":
                first = first[:1]
            fl = layers[layers["layer"].isin(first)]
            row = {"data": data, "first_layer": label, "first_w_bits": wbits,
                   "input_bits": emb["bits"] if emb else 8, "d": emb["d"] if emb else 0,
                   "simulated_top1_pct": 100 * res.accuracy(test.labels),
                   "fake_quant_top1_pct": 100 * meta["fake_quant_acc"],
                   "first_layer_energy_nj": fl["energy_pj"].sum() / 1e3,
                   "first_layer_macs": int(fl["macs"].sum()),
                   "first_layer_storage_bytes": fl["weight_bytes"].sum(),
                   "total_energy_uj": cost.totals.iloc[0]["energy_per_image_uj"],
                   "total_weight_bytes": cost.totals.iloc[0]["weight_storage_bytes"],
                   "qat_epochs": args.qat_epochs, "seconds": time.perf_counter() - t0}
            print(f"{data:8s} {label:45s} top-1 {row['simulated_top1_pct']:5.1f}%  first layer "
                  f"{row['first_layer_energy_nj']:7.1f} nJ  total {row['total_energy_uj']:6.2f} uJ",
                  flush=True)
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            write_csv(done, csv)
    write_report(done, out, args)


def write_report(df: pd.DataFrame, out: Path, args) -> None:
    """The markdown table and the figure (top-1 vs first-layer energy, one panel per data)."""
    datas = list(dict.fromkeys(df["data"]))
    fig, axes = plt.subplots(1, len(datas), figsize=(6 * len(datas), 4.2), squeeze=False)
    for ax, data in zip(axes[0], datas):
        sub = df[df["data"] == data]
        for _, r in sub.iterrows():
            kind = "o" if r["d"] == 0 else ("s" if "input" in r["first_layer"] else "^")
            ax.scatter(r["first_layer_energy_nj"], r["simulated_top1_pct"], marker=kind, s=50)
            ax.annotate(r["first_layer"].split(" (")[0], (r["first_layer_energy_nj"],
                        r["simulated_top1_pct"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("first-layer energy per image (nJ, log)")
        ax.set_ylabel("simulated top-1 (%)")
        ax.set_title(f"ResNet-20 W4A4 body, {data}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    cols = ["data", "first_layer", "simulated_top1_pct", "fake_quant_top1_pct",
            "first_layer_energy_nj", "first_layer_macs", "first_layer_storage_bytes",
            "total_energy_uj", "total_weight_bytes"]
    out.with_suffix(".md").write_text(
        "# First layer: float vs 8-bit vs low-bit input vs pixel embedding\n\n"
        f"Command: `python benchmarks/first_layer.py --qat-epochs {args.qat_epochs}`. ResNet-20, "
        f"body W4A4 LSQ ({args.qat_epochs} QAT epochs from one float checkpoint of "
        f"{args.float_epochs} epochs, the same budget for every row), classifier 8 bits; "
        "first-layer weights 4 bits unless named. Top-1 simulated on edge16 (32-bit exact "
        "accumulators) over the whole test split; energy from the cost model (horowitz45, "
        "batch 1, zero-operand multiplies gated); the first layer's energy and storage include "
        "the embed op (its table and lookups) where there is one. 'float first layer' is "
        "emulated by 16-bit weights on the raw pixels (the pixels are integers already), on edge16 with a 16-bit weight datapath (array.max_weight_bits=16).\n\n"
        + markdown_table(df[cols], ".4g") + "\n\n![first layer](first_layer.png)\n")


if __name__ == "__main__":
    main()
