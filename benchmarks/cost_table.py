"""Cost of ResNet-20 (mnist5k, QAT with LSQ) on the edge16 NPU: FP32, INT8-INT32, W4A4 with 32-
and 16-bit accumulators, W2A2 with a 12-bit accumulator; energy split, latency, power, storage
and savings vs FP32 and INT8. Uses the cached QAT models (benchmarks/qat_accuracy.py trains
them) and simulator statistics on test images (zero-operand multiplies are gated).

    python benchmarks/cost_table.py [--images 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from npusim.cost import estimate_cost
from npusim.data import load_dataset
from npusim.hw.config import NPUConfig
from npusim.io import markdown_table, write_csv
from npusim.sim.simulator import SimulationError, Simulator
from quantize import QuantConfig, build_program
from quantize.cached import train_qat

COLS = ["energy_per_image_uj", "mac_pj", "operand_pj", "accumulator_pj", "requant_pj",
        "sram_pj", "dram_pj", "leakage_pj", "latency_us", "avg_power_mw", "weight_storage_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--out", default="reports/cost_resnet20_edge16")
    args = ap.parse_args()
    test = load_dataset("mnist5k", "test").subset(args.images)
    base = NPUConfig.preset("edge16")
    rows = []
    for bits, acc_bits in ((4, 32), (4, 16), (2, 16), (2, 12)):
        qmodel, _ = train_qat("resnet20", "mnist5k", QuantConfig(weight_bits=bits, act_bits=bits))
        prog = build_program(qmodel)
        npu = base.with_overrides({"precision.acc_bits": acc_bits,
                                   "precision.pe_acc_bits": acc_bits,
                                   "precision.overflow": "saturate"})
        try:
            res = Simulator(npu).run(prog, test.images)
            stats, top1, note = res.stats, 100 * res.accuracy(test.labels), "simulated"
        except SimulationError as e:  # e.g. the 8-bit first layer's products need > acc_bits
            stats, top1, note = None, float("nan"), f"not simulable: {e}"
        rep = estimate_cost(prog, npu, stats=stats)
        t = rep.totals.iloc[0]
        if not rows:  # the baselines of the same network on the same array and memories
            for _, b in rep.baselines.iterrows():
                if b["variant"] in ("fp32", "int8"):
                    rows.append({"config": {"fp32": "FP32", "int8": "INT8 (acc 32)"}[b["variant"]],
                                 "top1_pct": float("nan"), **{c: b[c] for c in COLS},
                                 "note": "baseline, same counts"})
        rows.append({"config": f"W{bits}A{bits} (acc {acc_bits}, saturate)", "top1_pct": top1,
                     **{c: t[c] for c in COLS}, "note": note})
    df = pd.DataFrame(rows)
    fp32 = df.loc[df.config == "FP32"].iloc[0]
    int8 = df.loc[df.config == "INT8 (acc 32)"].iloc[0]
    for ref, name in ((fp32, "fp32"), (int8, "int8")):
        df[f"energy_saving_vs_{name}"] = ref["energy_per_image_uj"] / df["energy_per_image_uj"]
        df[f"storage_saving_vs_{name}"] = ref["weight_storage_bytes"] / df["weight_storage_bytes"]
    out = Path(args.out)
    write_csv(df, out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(
        f"# ResNet-20 (mnist5k) on edge16: energy, latency, power, storage\n\n"
        f"Command: `python benchmarks/cost_table.py --images {args.images}`. Energy table "
        f"horowitz45 (Horowitz ISSCC 2014 45 nm with QKeras QTools bit-width fits), batch 1, "
        f"simulator statistics on {args.images} test images (zero-operand multiplies gated); "
        f"top-1 on those images. Energies in pJ per image except the first column.\n\n"
        + markdown_table(df, ".3g") + "\n")
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
