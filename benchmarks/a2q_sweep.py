"""Train for the accumulator, or narrow it afterwards? ResNet-20 on mnist5k, every layer at W/A
bits (first and last included), accuracy vs accumulator width P for (a) normal LSQ QAT then a
P-bit accumulator that wraps, (b) the same saturating, (c) A2Q trained for P, (d) A2Q+ trained
for P; with the energy of each point (edge16, both accumulator levels at P).

    python benchmarks/a2q_sweep.py [--bits 4,3] [--widths 10,11,12,13,14,16] [--images 1000]

Writes reports/a2q_sweep.{csv,md,png}; resumable (finished rows are kept). For (c)/(d) the
overflow counters of exact, wrap and saturate runs at P are recorded (they must all be 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from npusim.cost import estimate_cost  # noqa: E402
from npusim.data import load_dataset  # noqa: E402
from npusim.hw.config import NPUConfig  # noqa: E402
from npusim.io import markdown_table, write_csv  # noqa: E402
from npusim.sim.simulator import SimulationError, Simulator  # noqa: E402
from quantize import QuantConfig, build_program  # noqa: E402
from quantize.cached import train_qat  # noqa: E402

STRATEGIES = ("qat+wrap", "qat+saturate", "a2q", "a2q+", "a2q+ 4b-in")
# The raw 8-bit pixels make the first layer the tightest A2Q budget (T = (2^(P-1)-1-|b|)/255
# per channel: 6 at P = 12): the last strategy also quantizes the input to 4 bits (the embed
# op as a frozen linear lookup, d = 1), so every layer sees at most 4-bit inputs.
LOW_BIT_INPUT = {"d": 1, "init": "linear", "trainable": False, "bits": 4}


def _npu(p: int, mode: str) -> NPUConfig:
    return NPUConfig.preset("edge16").with_overrides({
        "precision.acc_bits": p, "precision.pe_acc_bits": p, "precision.overflow": mode})


def _cfg(bits: int, p: int | None, strategy: str | None) -> QuantConfig:
    kw = dict(weight_bits=bits, act_bits=bits, first_layer_bits=bits, last_layer_bits=bits)
    if strategy is None:
        return QuantConfig(**kw)
    if strategy.endswith("4b-in"):
        kw["embedding"] = LOW_BIT_INPUT
    return QuantConfig(**kw, acc_bits=p, a2q={"mode": strategy.split()[0]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--widths", default="10,11,12,13,14,16")
    ap.add_argument("--train-widths", default=None,
                    help="Widths to train A2Q/A2Q+ for (default: every width).")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="reports/a2q_sweep")
    ap.add_argument("--report-only", action="store_true",
                    help="Only redraw the table and figure from the CSV.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    csv = out.with_suffix(".csv")
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    if args.report_only:
        return write_report(done, out, args)
    test = load_dataset("mnist5k", "test").subset(args.images)
    widths = [int(w) for w in args.widths.split(",")]
    train_widths = widths if args.train_widths is None else \
        [int(w) for w in args.train_widths.split(",")]

    def have(bits, p, strategy) -> bool:
        return bool(len(done)) and bool(((done["w_bits"] == bits) & (done["acc_bits"] == p)
                                         & (done["strategy"] == strategy)).any())

    for bits in map(int, args.bits.split(",")):
        base = None
        for p in widths:
            for strategy in STRATEGIES:
                if have(bits, p, strategy) or (strategy.startswith("a2q")
                                               and p not in train_widths):
                    continue
                t0 = time.perf_counter()
                row = {"w_bits": bits, "a_bits": bits, "acc_bits": p, "strategy": strategy}
                if strategy.startswith("qat"):
                    if base is None:
                        qm, _ = train_qat("resnet20", "mnist5k", _cfg(bits, None, None),
                                          epochs=args.qat_epochs)
                        base = build_program(qm)
                    prog, modes = base, [strategy.split("+")[1]]
                else:
                    qm, _ = train_qat("resnet20", "mnist5k", _cfg(bits, p, strategy),
                                      epochs=args.qat_epochs)
                    prog, modes = build_program(qm), ["wrap", "saturate", "exact"]
                try:
                    results = {m: Simulator(_npu(p, m)).run(prog, test.images) for m in modes}
                except SimulationError as e:
                    row.update(top1_pct=np.nan, note=f"refused: {e}")
                    print(f"W{bits}A{bits} P={p} {strategy}: refused", flush=True)
                    done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                    write_csv(done, csv)
                    continue
                res = results[modes[0]]
                ovf = {m: int(r.stats[["pe_overflows", "acc_overflows"]].fillna(0).sum().sum())
                       for m, r in results.items()}
                exact_logits = results.get("exact")
                cost = estimate_cost(prog, _npu(p, modes[0]), stats=res.stats)
                row.update(
                    top1_pct=100 * res.accuracy(test.labels),
                    overflow_events=ovf[modes[0]],
                    overflow_events_all_modes=sum(ovf.values()),
                    same_logits_as_exact=(None if exact_logits is None else bool(all(
                        np.array_equal(r.logits, exact_logits.logits) for r in results.values()))),
                    energy_uj=cost.totals.iloc[0]["energy_per_image_uj"],
                    max_bound_l1_bits=int(res.stats["bound_l1_bits"].dropna().max()),
                    seconds=time.perf_counter() - t0, note="")
                print(f"W{bits}A{bits} P={p:2d} {strategy:12s} top-1 {row['top1_pct']:5.1f}%  "
                      f"overflows {row['overflow_events_all_modes']}  {row['energy_uj']:.2f} uJ",
                      flush=True)
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                write_csv(done, csv)
    write_report(done, out, args)


def write_report(df: pd.DataFrame, out: Path, args) -> None:
    """Markdown table (top-1 per width and strategy) and the accuracy-vs-width figure."""
    bits_list = sorted(df["w_bits"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(bits_list), figsize=(6 * len(bits_list), 4.2), squeeze=False)
    style = {"qat+wrap": ("C0", "-"), "qat+saturate": ("C0", "--"), "a2q": ("C2", "-"),
             "a2q+": ("C3", "-"), "a2q+ 4b-in": ("C4", ":")}
    for ax, bits in zip(axes[0], bits_list):
        sub = df[df["w_bits"] == bits]
        for strategy in STRATEGIES:
            s = sub[sub["strategy"] == strategy].sort_values("acc_bits")
            c, ls = style[strategy]
            ax.plot(s["acc_bits"], s["top1_pct"], ls, color=c, marker="o", label=strategy)
        ax.set_xlabel("accumulator width P (bits, both levels)")
        ax.set_ylabel("simulated top-1 (%)")
        ax.set_title(f"ResNet-20 W{bits}A{bits} on mnist5k")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    top = df.pivot_table(index=["w_bits", "acc_bits"], columns="strategy", values="top1_pct")
    energy = df.pivot_table(index=["w_bits", "acc_bits"], columns="strategy", values="energy_uj")
    top = top.reindex(columns=[s for s in STRATEGIES if s in top.columns])
    energy = energy.reindex(columns=top.columns)
    table = top.round(1).astype(str) + " % / " + energy.round(2).astype(str) + " uJ"
    refused = df[df["note"].fillna("").str.startswith("refused")]
    for _, r in refused.iterrows():  # pivot_table drops the NaN cells of refused points
        table.loc[(r["w_bits"], r["acc_bits"]), r["strategy"]] = "refused"
    table = table.fillna("").replace("nan % / nan uJ", "refused").reset_index()
    a2q_rows = df[df["strategy"].str.startswith("a2q")]
    out.with_suffix(".md").write_text(
        "# Accumulator-aware training vs narrowing the accumulator afterwards\n\n"
        f"Command: `python benchmarks/a2q_sweep.py --images {args.images}`. ResNet-20, mnist5k "
        f"(first {args.images} test images), LSQ, every layer (first and classifier included) at "
        f"W/A bits, {args.qat_epochs} QAT epochs from the same float checkpoint for every model; "
        "edge16 with both accumulator levels at P. 'refused': one product of the normally "
        "trained model needs more than P bits, so the NPU cannot run it. `a2q+ 4b-in`: A2Q+ "
        "with the input quantized to 4 bits (the embed op as a frozen linear lookup), since the "
        "raw 8-bit pixels give the first layer the tightest budget. Cells: simulated "
        "top-1 / energy per image.\n\n" + markdown_table(table) + "\n\n"
        "Overflow events of the A2Q/A2Q+ models at P, summed over exact, wrap and saturate runs "
        f"(must be 0): {int(a2q_rows['overflow_events_all_modes'].fillna(0).sum())} over "
        f"{len(a2q_rows)} points; points whose static bound (`npusim bounds`, the largest "
        "`bound_l1_bits` of any layer: every running sum, any order, any input) fits P: "
        f"{int((a2q_rows['max_bound_l1_bits'] <= a2q_rows['acc_bits']).sum())} of "
        f"{len(a2q_rows)}.\n\n![a2q sweep]({out.name}.png)\n")


if __name__ == "__main__":
    main()
