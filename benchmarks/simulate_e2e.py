"""End to end on mnist5k: ResNet-20 QAT at W8A8 and W4A4, exported, simulated on the edge16
NPU. Checks that every integer logit of the simulator (32-bit exact accumulators) equals the
training library's integer-exact evaluation, then narrows the accumulator until the stats
show overflows and compares wrap with saturate; times 1,000 images in each mode.

    python benchmarks/simulate_e2e.py [--limit 1000]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from npusim.data import load_dataset
from npusim.hw.config import NPUConfig
from npusim.io import markdown_table, write_csv
from npusim.report.inspect import bounds_table
from npusim.sim.simulator import Simulator, overflow_rate
from quantize import QuantConfig, build_program
from quantize.cached import train_qat
from quantize.integer_eval import run_integer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--out", default="reports/simulate_e2e")
    args = ap.parse_args()
    test = load_dataset("mnist5k", "test").subset(args.limit)
    base = NPUConfig.preset("edge16")
    rows, overflow_tables = [], []
    for bits in (8, 4):
        qcfg = QuantConfig(method="lsq", weight_bits=bits, act_bits=bits)
        qmodel, meta = train_qat("resnet20", "mnist5k", qcfg, epochs=args.qat_epochs)
        prog = build_program(qmodel)
        ref = run_integer(prog, test.images)
        ref_acc = float(np.mean(ref.argmax(1) == test.labels))
        exact = Simulator(base).run(prog, test.images[:1])  # warm the kernels
        t0 = time.perf_counter()
        exact = Simulator(base).run(prog, test.images)
        t_exact = time.perf_counter() - t0
        same = bool(np.array_equal(exact.logits, ref))
        rows.append({"config": f"W{bits}A{bits}", "npu": "edge16 exact 32/32", "acc_bits": 32,
                     "mode": "exact", "dataflow": "os", "top1_pct": 100 * exact.accuracy(test.labels),
                     "quantize_integer_top1_pct": 100 * ref_acc, "logits_identical": same,
                     "overflow_events": 0, "seconds": t_exact})
        observed = int(exact.stats["observed_bits"].max())
        # narrow enough that the stats show overflows, but every single product still fits
        narrow = max(observed - 3, int(bounds_table(prog)["product_bits"].max()))
        for dataflow in ("os", "ws"):
            for mode in ("wrap", "saturate"):
                cfg = base.with_overrides({"precision.acc_bits": narrow,
                                           "precision.pe_acc_bits": narrow,
                                           "precision.overflow": mode, "array.dataflow": dataflow})
                t0 = time.perf_counter()
                res = Simulator(cfg).run(prog, test.images)
                secs = time.perf_counter() - t0
                ev = int(res.stats[["pe_overflows", "acc_overflows"]].fillna(0).to_numpy().sum())
                rows.append({"config": f"W{bits}A{bits}", "npu": f"edge16 {narrow}/{narrow} {mode}",
                             "acc_bits": narrow, "mode": mode, "dataflow": dataflow,
                             "top1_pct": 100 * res.accuracy(test.labels),
                             "quantize_integer_top1_pct": float("nan"),
                             "logits_identical": bool(np.array_equal(res.logits, ref)),
                             "overflow_events": ev, "overflow_rate": overflow_rate(res.stats),
                             "seconds": secs})
                if dataflow == "os":
                    t = res.stats.dropna(subset=["acc_overflows"])[
                        ["layer", "observed_bits", "bound_l1_bits", "acc_overflows",
                         "sequential_outputs"]].copy()
                    t.insert(0, "config", f"W{bits}A{bits} {mode} acc={narrow}")
                    overflow_tables.append(t)
        print(pd.DataFrame(rows).tail(5).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    ovf = pd.concat(overflow_tables)
    out = Path(args.out)
    write_csv(df, out.with_suffix(".csv"))
    write_csv(ovf, out.parent / (out.name + "_overflows.csv"))
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, 2-core CI-class machine"
    out.with_suffix(".md").write_text(
        f"# End-to-end simulation, ResNet-20 on mnist5k ({args.limit} test images)\n\n"
        f"Command: `python benchmarks/simulate_e2e.py --limit {args.limit}`; machine: {machine}.\n\n"
        + markdown_table(df, ".3g") + "\n\n## Overflow events per layer at the narrow width (os)\n\n"
        + markdown_table(ovf, ".3g") + "\n")
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
