"""The seed papers' claims at several seeds, judged by the 95 % Welch interval of the difference.

    python benchmarks/seed_claims.py             # tune on validation, then the test runs
    python benchmarks/seed_claims.py --quick     # 2 seeds, 1+1 epochs, ResNet-8 (a smoke run)
    python benchmarks/seed_claims.py --report-only

Budget (stated in reports/seed_claims.md): ResNet-20 on `digits` (8x8 grey, 1,438 train
images, of which 20 % of every class are carved out as the validation split), float 10 epochs
per seed, QAT 3 epochs at W2A2, one torch thread per process, 2 processes. Tuning choices
(LG-LSQ's slope floor, DSQ's alpha learning-rate multiplier) are made on the validation split
with their own seeds; the test split only gives the final numbers. Every run is appended to
reports/seed_claims_runs.csv as it finishes, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from npusim.io import atomic_write_bytes, markdown_table, write_csv  # noqa: E402
from quantize.config import QuantConfig  # noqa: E402
from quantize.experiments import Budget, SeedJob, iter_jobs, verdict, welch_diff  # noqa: E402

W = A = 2
MDE_FAST = {"mde_every": 10, "mde_max_samples": 8192}
TUNE_SEEDS = (1000, 1001, 1002, 1003)
TEST_SEEDS = tuple(range(100, 108))
MIN_SLOPES = (0.05, 0.1, 0.35)
ALPHA_MULTS = (1.0, 10.0, 100.0)


def cfg(method: str, narrow: bool = True, **options) -> str:
    """A W2A2 QuantConfig as JSON (what a seed job carries)."""
    return QuantConfig(method=method, weight_bits=W, act_bits=A, narrow_weights=narrow,
                       options=options).to_json()


def lglsq(min_slope: float) -> str:
    return cfg("lglsq", min_slope=min_slope, **MDE_FAST)


def dsq(mult: float) -> str:
    return cfg("dsq", narrow=False, alpha_grad_mult=mult)


def tune_cells() -> dict[str, str]:
    cells = {"lsq": cfg("lsq")}
    cells |= {f"lglsq_minslope{m}": lglsq(m) for m in MIN_SLOPES}
    cells |= {f"dsq_alphamult{m:g}": dsq(m) for m in ALPHA_MULTS}
    return cells


def test_cells(min_slope: float, mult: float) -> dict[str, str]:
    return {
        "lsq": cfg("lsq"),
        "lsq_full": cfg("lsq", narrow=False),
        "ste": cfg("ste"),
        "ste_full": cfg("ste", narrow=False),
        "lglsq": lglsq(min_slope),
        "lglsq_ssg": cfg("lglsq", asr=False, mde=False),
        # the first design: ASR on every quantizer, the degenerate MDE objective, floor 0.6
        "lglsq_first": cfg("lglsq", asr_roles=["weight", "activation"], asr_unit_rms=False,
                           mde_objective="round", min_slope=0.6, **MDE_FAST),
        "dsq": dsq(mult),
        # the first design: max|w| init, no gradient scaling, narrow 2-bit weights (3 levels)
        "dsq_first": cfg("dsq", init="range", grad_scale=False),
    }


# claim, setting, ours, baseline
CLAIMS = [
    ("LG-LSQ (SSG + ASR on weights + balanced MDE) beats LSQ", "lglsq", "lsq"),
    ("LG-LSQ SSG part alone beats LSQ", "lglsq_ssg", "lsq"),
    ("LG-LSQ first design (ASR on all quantizers, round-MDE, floor 0.6) beats LSQ",
     "lglsq_first", "lsq"),
    ("LG-LSQ fixed beats LG-LSQ first design", "lglsq", "lglsq_first"),
    ("DSQ (fixed: MSE init, grad scaling, 4 levels) beats STE at equal grid", "dsq", "ste_full"),
    ("DSQ fixed vs LSQ at equal grid (4 levels)", "dsq", "lsq_full"),
    ("DSQ first design beats STE (3 levels)", "dsq_first", "ste"),
    ("DSQ fixed beats DSQ first design", "dsq", "dsq_first"),
]


def run_stage(split: str, cells: dict[str, str], seeds, budget: Budget, runs_csv: Path,
              processes: int) -> pd.DataFrame:
    """Run the (seed, cell) pairs of `split` not already in `runs_csv`; return all its rows."""
    done = pd.read_csv(runs_csv) if runs_csv.exists() else pd.DataFrame(
        columns=["cell", "seed", "split", "config"])
    have = set(zip(done["split"], done["seed"], done["cell"]))
    jobs = []
    for seed in seeds:
        todo = tuple((n, c) for n, c in cells.items() if (split, seed, n) not in have)
        if todo:
            jobs.append(SeedJob(seed, todo, split, budget))
    t0 = time.perf_counter()
    for rows in iter_jobs(jobs, processes):  # written as each seed finishes: resumable
        for r in rows:
            r["config"] = cells.get(r["cell"], "")
            r["budget"] = json.dumps(budget.__dict__)
        new = pd.DataFrame(rows)
        new = new[[(split, s, c) not in have for s, c in zip(new["seed"], new["cell"])]]
        done = pd.concat([done, new], ignore_index=True)
        write_csv(done, runs_csv)
        print(f"{split} seed {rows[0]['seed']}: " + ", ".join(
            f"{r['cell']} {r['top1_pct']:.1f}" for r in rows)
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return done[done["split"] == split]


def summarise(test: pd.DataFrame, budget: Budget) -> pd.DataFrame:
    rows = []
    for claim, ours, base in CLAIMS:
        a = test[test["cell"] == ours].sort_values("seed")["top1_pct"].to_numpy()
        b = test[test["cell"] == base].sort_values("seed")["top1_pct"].to_numpy()
        if len(a) < 2 or len(b) < 2:
            continue
        d = welch_diff(a, b)
        rows.append({"claim": claim, "setting": f"{budget.model} {budget.data} W{W}A{A} {budget.qat_epochs} QAT epochs",
                     "n_seeds": min(len(a), len(b)), "ours": ours,
                     "ours_mean_pct": a.mean(), "ours_sd_pct": a.std(ddof=1), "baseline": base,
                     "baseline_mean_pct": b.mean(), "baseline_sd_pct": b.std(ddof=1),
                     "diff_pct": d["diff"], "diff_ci95_low_pct": d["low"],
                     "diff_ci95_high_pct": d["high"], "verdict": verdict(d["low"], d["high"])})
    return pd.DataFrame(rows)


def plot_cells(test: pd.DataFrame, ax) -> tuple[plt.Figure, pd.DataFrame]:
    """Mean test top-1 per cell with 95 % t intervals over seeds (error bars)."""
    g = test.groupby("cell")["top1_pct"]
    tab = pd.DataFrame({"mean_pct": g.mean(), "sd_pct": g.std(ddof=1), "n_seeds": g.count()})
    from scipy import stats

    tab["ci95_half_pct"] = tab["sd_pct"] * stats.t.ppf(0.975, tab["n_seeds"] - 1) / np.sqrt(
        tab["n_seeds"])
    tab = tab.sort_values("mean_pct").reset_index()
    ax.errorbar(tab["mean_pct"], np.arange(len(tab)), xerr=tab["ci95_half_pct"], fmt="o",
                capsize=3)
    for cell, grp in test.groupby("cell"):
        y = int(np.flatnonzero(tab["cell"] == cell)[0])
        ax.scatter(grp["top1_pct"], np.full(len(grp), y + 0.15), s=6, alpha=0.5, color="gray")
    ax.set_yticks(np.arange(len(tab)), tab["cell"])
    ax.set_xlabel("test top-1 (%), mean and 95 % t interval over seeds; dots: single seeds")
    return ax.figure, tab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default="reports/seed_claims")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    budget = Budget()
    tune_seeds, test_seeds = TUNE_SEEDS, TEST_SEEDS
    if args.quick:
        budget = Budget(model="resnet8", float_epochs=1, qat_epochs=1)
        tune_seeds, test_seeds, args.out = (0, 1), (2, 3), args.out + "_quick"
    out = Path(args.out)
    runs_csv = out.parent / (out.name + "_runs.csv")
    if args.report_only:
        runs = pd.read_csv(runs_csv)
        tune, test = runs[runs["split"] == "val"], runs[runs["split"] == "test"]
    else:
        tune = run_stage("val", tune_cells(), tune_seeds, budget, runs_csv, args.processes)
    val_means = tune.groupby("cell")["top1_pct"].agg(["mean", "std", "count"])
    best_slope = max(MIN_SLOPES, key=lambda m: val_means.loc[f"lglsq_minslope{m}", "mean"])
    best_mult = max(ALPHA_MULTS, key=lambda m: val_means.loc[f"dsq_alphamult{m:g}", "mean"])
    print(val_means.round(2).to_string(), f"\nchosen: min_slope={best_slope} "
          f"alpha_grad_mult={best_mult:g}", flush=True)
    if not args.report_only:
        test = run_stage("test", test_cells(best_slope, best_mult), test_seeds, budget, runs_csv,
                         args.processes)
    claims = summarise(test, budget)
    write_csv(claims, out.with_suffix(".csv"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig, tab = plot_cells(test, ax)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    write_csv(tab, out.parent / (out.name + "_cells.csv"))
    lines = [f"# Seed claims at {len(test_seeds)} seeds (generated by benchmarks/seed_claims.py)",
             "", f"Budget: {json.dumps(budget.__dict__)}; machine {platform.machine()}, "
             f"{args.processes} processes x 1 torch thread.",
             "", "## Tuning on the validation split", "",
             markdown_table(val_means.reset_index().round(2)), "",
             f"Chosen: LG-LSQ min_slope = {best_slope}, DSQ alpha_grad_mult = {best_mult:g}.",
             "", "## Test split, per cell", "", markdown_table(tab.round(2)), "",
             "## Claims", "", markdown_table(claims.round(2))]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print(claims.round(2).to_string(), flush=True)


if __name__ == "__main__":
    main()
