"""QAT accuracy table: FP32 and ste/pact/lsq/lglsq/dsq at several bit widths, fake-quant and
integer-exact top-1, plus the LG-LSQ ablation at W2A2. Every method fine-tunes from the same
float checkpoint with the same epoch budget.

    python benchmarks/qat_accuracy.py            # the full table (about half an hour on 2 cores)
    python benchmarks/qat_accuracy.py --quick    # a smoke run: one method, two widths, 1 epoch

Rows are appended to the CSV as they finish, so an interrupted run resumes; QAT runs are
cached (quantize.cached), so other benchmarks reuse them.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from models.cached import train_float
from models.checkpoint import load_checkpoint
from npusim.data import load_dataset
from npusim.io import markdown_table
from npusim.ir.requant import RequantSpec
from quantize import QuantConfig, build_program, evaluate
from quantize.cached import train_qat
from quantize.integer_eval import run_integer

ABLATION = {  # cumulative LG-LSQ parts at W2A2
    "lsq": ("lsq", {}),
    "lsq+ssg": ("lglsq", {"ssg": True, "asr": False, "mde": False}),
    "lsq+ssg+asr": ("lglsq", {"ssg": True, "asr": True, "mde": False}),
    "lsq+ssg+asr+mde": ("lglsq", {"ssg": True, "asr": True, "mde": True}),
}
# MDE's search every 10th training forward on a strided subsample of 8,192 values: the search
# over 32 k values on every forward and 65,536 values made one LG-LSQ epoch ~10x an LSQ epoch,
# and its result moves little from one batch to the next (see LGLSQQuantizer).
MDE_FAST = {"mde_every": 10, "mde_max_samples": 8192}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--float-epochs", type=int, default=15)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--methods", default="ste,pact,lsq,lglsq,dsq")
    ap.add_argument("--bits", default="8,4,3,2")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="reports/qat_accuracy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true",
                    help="Train nothing; rewrite the markdown table from the CSV.")
    args = ap.parse_args()
    if args.quick:
        args.methods, args.bits, args.qat_epochs, args.no_ablation = "lsq", "8,4", 1, True
        args.out = args.out + "_quick"
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_suffix(".csv")
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    have = set(done["run"]) if len(done) else set()

    ckpt, meta = train_float(args.model, args.data, args.float_epochs)
    train_set = load_dataset(args.data, "train")
    test_set = load_dataset(args.data, "test")

    runs = [("fp32", None, 32, {})]
    for method in args.methods.split(","):
        for b in map(int, args.bits.split(",")):
            runs.append((f"{method}-W{b}A{b}", method, b, MDE_FAST if method == "lglsq" else {}))
    if not args.no_ablation:
        for label, (method, opts) in ABLATION.items():
            runs.append((f"ablation-{label}-W2A2", method, 2,
                         {**opts, **MDE_FAST} if opts.get("mde") else opts))

    for run, method, bits, opts in runs:
        if args.report_only or run in have:
            continue
        model, _ = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        if method is None:
            from models.training import evaluate as float_eval

            acc = float_eval(model, test_set)
            row = {"fake_quant_acc": acc, "integer_acc": float("nan"),
                   "integer_double_acc": float("nan")}
        else:
            cfg = QuantConfig(method=method, weight_bits=bits, act_bits=bits, options=opts)
            try:
                qmodel, _ = train_qat(args.model, args.data, cfg, epochs=args.qat_epochs,
                                      float_epochs=args.float_epochs, lr=args.lr)
                row = evaluate(qmodel, test_set, integer=True)
                # the same integer program under TFLite's default double rounding
                prog = build_program(qmodel)
                rq = RequantSpec.from_dict({**prog.requant, "rounding": "half_away"})
                logits = run_integer(prog, test_set.images, rq)
                row["integer_double_acc"] = float((logits.argmax(1) == test_set.labels).mean())
                row["note"] = ""
            except ValueError as e:  # e.g. a diverged run whose scales cannot be exported
                nan = float("nan")
                row = {"fake_quant_acc": nan, "integer_acc": nan, "integer_double_acc": nan,
                       "note": f"failed: {str(e).splitlines()[0]}"}
                print(f"{run}: {row['note']}", flush=True)
        row = {"run": run, "method": method or "fp32", "w_bits": bits, "a_bits": bits,
               "qat_epochs": 0 if method is None else args.qat_epochs,
               "fake_quant_top1_pct": 100 * row["fake_quant_acc"],
               "integer_top1_pct": 100 * row["integer_acc"],
               "integer_tflite_double_rounding_top1_pct": 100 * row["integer_double_acc"],
               "seconds": time.perf_counter() - t0, "model": args.model, "data": args.data,
               "options": str(opts), "note": row.get("note", ""), "machine": f"{platform.machine()} {torch.get_num_threads()} threads"}
        print(f"{run:28s} fake-quant {row['fake_quant_top1_pct']:6.2f}%  integer "
              f"{row['integer_top1_pct']:6.2f}%  ({row['seconds']:.0f} s)", flush=True)
        done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
        tmp = csv.with_suffix(".tmp")
        done.to_csv(tmp, index=False)
        tmp.replace(csv)
    md = done[["run", "w_bits", "a_bits", "qat_epochs", "fake_quant_top1_pct", "integer_top1_pct",
               "integer_tflite_double_rounding_top1_pct", "options", "note"]].fillna("")
    out.with_suffix(".md").write_text(
        f"# QAT top-1 on {args.data} ({args.model}, {args.qat_epochs} QAT epochs from one float "
        f"checkpoint of {args.float_epochs} epochs)\n\nCommand: `python benchmarks/qat_accuracy.py`"
        f"\n\nColumns: fake-quant forward; the exported integer program (single rounding, the "
        f"default); the same program under TFLite's double rounding. First/last layer 8 bits, "
        f"residual path 8 bits.\n\n" + markdown_table(md) + "\n")
    print(md.to_string(index=False))


if __name__ == "__main__":
    main()
