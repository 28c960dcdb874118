"""The seed papers' claims at several seeds, judged by the 95 % Welch interval of the difference.

    python benchmarks/seed_claims.py             # tune on validation, then the test runs
    python benchmarks/seed_claims.py --quick     # 2 seeds, 1+1 epochs, ResNet-8 (a smoke run)
    python benchmarks/seed_claims.py --report-only

Parts (``--parts``): qat (LG-LSQ, DSQ, W2A2), qat3 (LG-LSQ vs LSQ at W3A3), marvin (quantized
training from scratch, ResNet-8), pixel (input embedding vs uniform 2/4-bit input on low-contrast digits, ResNet-8), a2q (A2Q+
at P = 10/12 with and without wide stem/classifier accumulators, ResNet-20), a2qbody (A2Q+
trained for body P = 10/12 with stem/classifier at 24 bits against plain LSQ QAT run on edge16
with the body at P = 8..12, wrap and saturate, stem/fc at 24 bits; `--bits 4,3 --seeds 5`).
Budget of the qat part (stated in reports/seed_claims.md): ResNet-20 on `digits` (8x8 grey, 1,438 train
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


def cfg(method: str, narrow: bool = True, bits: int = W, **options) -> str:
    """A W2A2 (or W`bits`A`bits`) QuantConfig as JSON (what a seed job carries)."""
    return QuantConfig(method=method, weight_bits=bits, act_bits=bits, narrow_weights=narrow,
                       options=options).to_json()


def lglsq(min_slope: float, bits: int = W) -> str:
    return cfg("lglsq", bits=bits, min_slope=min_slope, **MDE_FAST)


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


def w3_cells(min_slope: float) -> dict[str, str]:
    """The LG-LSQ claims again at W3A3 (part qat3), with the slope floor tuned at W2A2."""
    return {"lsq": cfg("lsq", bits=3), "lglsq": lglsq(min_slope, bits=3),
            "lglsq_ssg": cfg("lglsq", bits=3, asr=False, mde=False)}


MARVIN_BUDGET = Budget(model="resnet8", float_epochs=3)
PIXEL_BUDGET = Budget(model="resnet8")
PART_SEEDS = tuple(range(200, 208))
# The marvin part is cheap (about 20 s per seed for its 8 cells, one thread) and its seeds
# scatter by ~2-3 pt, so it runs 32 seeds: 8 left every "within 1 pt" claim inconclusive.
MARVIN_SEEDS = tuple(range(200, 232))
A2QBODY_SEEDS = tuple(range(300, 308))


def marvin_cells() -> dict[str, str]:
    from quantize.marvin import MarvinConfig

    return {"float32": "float32",
            "marvin": MarvinConfig().to_json(),
            "marvin_first": MarvinConfig(info_measure="kl", guard_measure="lr_grad").to_json(),
            "marvin_operand": MarvinConfig(activations="own", gradients="own").to_json(),
            **{f"fixed{n}": MarvinConfig(word_bits_menu=(n,)).to_json() for n in FIXED_BITS}}


FIXED_BITS = (4, 6, 8, 16)  # the fixed-word baselines of the marvin part (one-entry menus)
PAPER_SPEEDUP = 1.86  # MARViN's claim: 1.86x average speedup vs float32 (arXiv 2107.13490)
COST_MODELS = ("quadratic", "linear")  # npusim.cost.training.mac_bit_costs


def pixel_cells() -> dict[str, str]:
    def c(first_bits: int, emb: dict | None) -> str:
        return QuantConfig(method="lsq", weight_bits=4, act_bits=4, first_layer_bits=first_bits,
                           embedding=emb).to_json()

    lin = {"d": 1, "init": "linear", "trainable": False}
    return {"first_float": c(16, None), "in4": c(4, {**lin, "bits": 4}),
            "in2": c(4, {**lin, "bits": 2}), "emb4_d8": c(4, {"d": 8, "bits": 4}),
            "emb2_d8": c(4, {"d": 8, "bits": 2})}


def a2q_cells() -> dict[str, str]:
    """A2Q+ with every layer at W/A bits (as reports/a2q_sweep.md), the body at P bits, and
    optionally the stem and classifier at P = 16 (per-layer overrides)."""
    wide = [{"pattern": "stem", "acc_bits": 16}, {"pattern": "fc", "acc_bits": 16}]

    def c(bits: int, p: int | None, stem_fc_wide: bool = False) -> str:
        return QuantConfig(method="lsq", weight_bits=bits, act_bits=bits, first_layer_bits=None,
                           last_layer_bits=None, acc_bits=32 if p is None else p,
                           a2q=None if p is None else {"mode": "a2q+"},
                           overrides=wide if stem_fc_wide else []).to_json()

    return {"lsq_w4": c(4, None), "lsq_w3": c(3, None), "a2qp_w4_p10": c(4, 10),
            "a2qp_w4_p10_wide": c(4, 10, True), "a2qp_w4_p12_wide": c(4, 12, True),
            "a2qp_w3_p10_wide": c(3, 10, True)}


BODY_PS = (10, 12)  # A2Q+ is trained for these body widths
QAT_PS = (8, 9, 10, 11, 12)  # the plain QAT program is run at these body widths
WIDE = [{"pattern": "stem", "acc_bits": 24}, {"pattern": "fc", "acc_bits": 24}]


def a2qbody_cells(bits: int) -> tuple[dict[str, str], tuple[tuple[str, int, str], ...]]:
    """Plain LSQ QAT at W/A `bits` (every layer) and A2Q+ trained for body P (stem and
    classifier at P = 24 by per-layer overrides); with the NPU evaluations: the LSQ program on
    edge16 with the body at P (wrap, saturate) and stem/fc at 24 bits, each A2Q+ program at its P."""
    base = dict(method="lsq", weight_bits=bits, act_bits=bits, first_layer_bits=None,
                last_layer_bits=None)
    cells = {f"lsq_w{bits}": QuantConfig(**base).to_json()}
    evals = [(f"lsq_w{bits}", 32, "exact")]
    evals += [(f"lsq_w{bits}", p, m) for p in QAT_PS for m in ("wrap", "saturate")]
    for p in BODY_PS:
        name = f"a2qp_w{bits}_body{p}"
        cells[name] = QuantConfig(**base, acc_bits=p, a2q={"mode": "a2q+"},
                                  overrides=WIDE).to_json()
        evals.append((name, p, "wrap"))
    return cells, tuple(evals)


# part, claim, ours, baseline, margin (the verdict's threshold on ours - baseline: 0 for "beats",
# -1 for "within 1 point of")
CLAIMS = [
    ("qat", "LG-LSQ (SSG + ASR on weights + balanced MDE) beats LSQ", "lglsq", "lsq", 0.0),
    ("qat", "LG-LSQ SSG part alone beats LSQ", "lglsq_ssg", "lsq", 0.0),
    ("qat", "LG-LSQ first design (ASR on all quantizers, round-MDE, floor 0.6) beats LSQ",
     "lglsq_first", "lsq", 0.0),
    ("qat", "LG-LSQ fixed beats LG-LSQ first design", "lglsq", "lglsq_first", 0.0),
    ("qat", "DSQ (fixed: MSE init, grad scaling, 4 levels) beats STE at equal grid", "dsq",
     "ste_full", 0.0),
    ("qat", "DSQ fixed beats LSQ at equal grid (4 levels)", "dsq", "lsq_full", 0.0),
    ("qat", "DSQ first design beats STE (3 levels)", "dsq_first", "ste", 0.0),
    ("qat", "DSQ fixed beats DSQ first design", "dsq", "dsq_first", 0.0),
    ("qat3", "LG-LSQ (SSG + ASR on weights + balanced MDE) beats LSQ", "lglsq", "lsq", 0.0),
    ("qat3", "LG-LSQ SSG part alone beats LSQ", "lglsq_ssg", "lsq", 0.0),
    ("marvin", "MARViN (real-update guard, SQNR) within 1 pt of float32 training", "marvin",
     "float32", -1.0),
    ("marvin", "MARViN first design (lr*grad guard, KL) within 1 pt of float32 training",
     "marvin_first", "float32", -1.0),
    ("marvin", "MARViN per-operand words (weights, activations, gradients) within 1 pt of "
     "float32 training", "marvin_operand", "float32", -1.0),
    *[("marvin", f"fixed {n}-bit training within 1 pt of float32 training", f"fixed{n}",
       "float32", -1.0) for n in (4, 6, 8, 16)],
    ("marvin", "MARViN per-operand words beat MARViN (weight word for every operand)",
     "marvin_operand", "marvin", 0.0),
    ("pixel", "Pixel embedding 4-bit d=8 beats 4-bit uniform input (low-contrast digits)",
     "emb4_d8", "in4", 0.0),
    ("pixel", "Pixel embedding 2-bit d=8 beats 2-bit uniform input (low-contrast digits)",
     "emb2_d8", "in2", 0.0),
    ("pixel", "Pixel embedding 4-bit d=8 within 1 pt of a float (16-bit) first layer",
     "emb4_d8", "first_float", -1.0),
]
CLAIMS += [
    ("a2q", "A2Q+ W4 P=10: widening only stem and classifier to P=16 rescues it",
     "a2qp_w4_p10_wide", "a2qp_w4_p10", 0.0),
    ("a2q", "A2Q+ W4 P=10 (stem, classifier at P=16) within 1 pt of LSQ W4 (P=32)",
     "a2qp_w4_p10_wide", "lsq_w4", -1.0),
    ("a2q", "A2Q+ W4 P=12 (stem, classifier at P=16) within 1 pt of LSQ W4 (P=32)",
     "a2qp_w4_p12_wide", "lsq_w4", -1.0),
    ("a2q", "A2Q+ W3 P=10 (stem, classifier at P=16) within 1 pt of LSQ W3 (P=32)",
     "a2qp_w3_p10_wide", "lsq_w3", -1.0),
]
CLAIMS += [
    ("a2qbody", f"A2Q+ at body P={p} keeps accuracy where QAT+{mode} loses it (W{b}A{b}, "
     "stem/fc at 24 b)", f"a2qp_w{b}_body{p}@p{p}_wrap", f"lsq_w{b}@p{p}_{mode}", 0.0)
    for b in (4, 3) for p in BODY_PS for mode in ("wrap", "saturate")]
CLAIMS += [
    ("a2qbody", f"A2Q+ at body P={p} (stem/fc at 24 b) within 1 pt of LSQ W{b}A{b} exact",
     f"a2qp_w{b}_body{p}@p{p}_wrap", f"lsq_w{b}@p32_exact", -1.0)
    for b in (4, 3) for p in BODY_PS]
CLAIMS += [
    ("a2qbody", f"QAT+{mode} at body P={p} within 1 pt of exact (W{b}A{b}, stem/fc at 24 b)",
     f"lsq_w{b}@p{p}_{mode}", f"lsq_w{b}@p32_exact", -1.0)
    for b in (4, 3) for p in (8, 9) for mode in ("wrap", "saturate")]
# (claim, ours, baseline, margin, cost model, the smallest speed-up ours must show vs baseline)
COST_CLAIMS = [
    (f"MARViN{' per-operand' if o == 'marvin_operand' else ''} speed-up >= {PAPER_SPEEDUP}x "
     f"(paper) vs float32 at <= 1 pt accuracy loss, MAC cost {m} in bits", o, "float32", -1.0,
     m, PAPER_SPEEDUP) for o in ("marvin", "marvin_operand") for m in COST_MODELS]
SETTINGS = {"a2qbody": "resnet20 digits, every layer at W/A bits, integer on edge16 with body "
            "at P and stem/fc at 24 b, float 10 + QAT 3 epochs",
            "a2q": "resnet20 digits, every layer at W/A bits, float 10 + QAT 3 epochs",
            "qat": "resnet20 digits W2A2, float 10 + QAT 3 epochs",
            "qat3": "resnet20 digits W3A3, float 10 + QAT 3 epochs (slope floor tuned at W2A2)",
            "marvin": "resnet8 digits, trained from scratch 3 epochs",
            "pixel": "resnet8 digits-lowcontrast, W4A4 LSQ body, float 10 + QAT 3 epochs"}


MARVIN_COST_TEXT = (
    "Per cell: each operand's width averaged over the training MACs it enters (forward, "
    "gradient wrt input, gradient wrt weight; float32 = 32 bits) and the MACs' cost relative "
    "to float32 under two models (`npusim.cost.training.mac_bit_costs`): *quadratic* -- a MAC "
    "costs bx*by (multiplier energy/area; Horowitz ISSCC 2014 45 nm: 8-bit multiply 0.2 pJ, "
    "32-bit 3.1 pJ, the fit npusim's horowitz45 table uses; an fp32 MAC is charged as 32x32, "
    "below Horowitz's 3.7 pJ fp32 multiply, which favours float32); *linear* -- a MAC costs "
    "max(bx, by) (bit-serial arithmetic, Stripes, Judd et al. MICRO 2016). Arithmetic only: "
    "no memory traffic, no array mapping (`npusim report --marvin` gives the NPU estimate). "
    "Speed-ups are 1 / relative cost. Means over seeds.")


def run_stage(split: str, cells: dict[str, str], seeds, budget: Budget, runs_csv: Path,
              processes: int, part: str = "qat", kind: str = "qat",
              data_transform: str | None = None,
              npu_evals: tuple[tuple[str, int, str], ...] = ()) -> pd.DataFrame:
    """Run the (seed, cell) pairs of `split` not already in `runs_csv`; return all its rows."""
    done = pd.read_csv(runs_csv) if runs_csv.exists() else pd.DataFrame(
        columns=["part", "cell", "seed", "split", "config"])
    if "part" not in done:
        done["part"] = "qat"
    have = set(zip(done["part"], done["split"], done["seed"], done["cell"]))
    jobs = []
    for seed in seeds:
        todo = tuple((n, c) for n, c in cells.items() if (part, split, seed, n) not in have)
        if todo:
            jobs.append(SeedJob(seed, todo, split, budget, data_transform, kind,
                                tuple(e for e in npu_evals if e[0] in dict(todo))))
    t0 = time.perf_counter()
    for rows in iter_jobs(jobs, processes):  # written as each seed finishes: resumable
        for r in rows:
            r["config"] = cells.get(r["cell"].split("@")[0], "")
            r["budget"] = json.dumps(budget.__dict__)
            r["part"] = part
        new = pd.DataFrame(rows)
        new = new[[(part, split, s, c) not in have for s, c in zip(new["seed"], new["cell"])]]
        done = pd.concat([done, new], ignore_index=True)
        write_csv(done, runs_csv)
        print(f"{split} seed {rows[0]['seed']}: " + ", ".join(
            f"{r['cell']} {r['top1_pct']:.1f}" for r in rows)
            + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return done[(done["split"] == split) & (done["part"] == part)]


def marvin_costs(test: pd.DataFrame) -> pd.DataFrame:
    """Per marvin-part cell: top-1 over seeds, each operand's bits per MAC and the training
    MACs' cost relative to float32 (quadratic and linear in bits; means over seeds) with the
    speed-ups vs float32 and fixed16 they imply (`npusim.cost.training.mac_bit_costs`)."""
    from npusim.cost.training import mac_bit_costs

    t = test[(test["part"] == "marvin")]
    rows = []
    for cell, g in t.groupby("cell", sort=False):
        tr = [json.loads(x) for x in g["trace"].fillna("{}")]
        if not all("usage" in x for x in tr):
            continue
        tr = [mac_bit_costs(pd.DataFrame(**x["geometry"]), pd.DataFrame(**x["usage"]))
              for x in tr]
        rec = {"cell": cell, "n_seeds": len(g), "top1_mean_pct": g["top1_pct"].mean(),
               "top1_sd_pct": g["top1_pct"].std(ddof=1)}
        for k in ("weight_bits_per_mac", "act_bits_per_mac", "grad_bits_per_mac",
                  "quadratic_cost_rel_fp32", "linear_cost_rel_fp32"):
            rec[k] = float(np.mean([x[k] for x in tr]))
        rows.append(rec)
    df = pd.DataFrame(rows)
    if not len(df):
        return df
    for m, ref16 in (("quadratic", (16 / 32) ** 2), ("linear", 16 / 32)):
        df[f"{m}_speedup_vs_fp32_x"] = 1.0 / df[f"{m}_cost_rel_fp32"]
        df[f"{m}_speedup_vs_fixed16_x"] = ref16 / df[f"{m}_cost_rel_fp32"]
    return df.sort_values("quadratic_cost_rel_fp32").reset_index(drop=True)


def paired_marvin(claims: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The marvin part's claims judged on per-seed differences (a paired t interval): every cell
    of a seed starts from the same weights and sees the same batches, so the seed-to-seed
    spread cancels. Same margins and `verdict` as the Welch rows; a supplement to them."""
    from scipy import stats

    t = test[test["part"] == "marvin"].pivot_table(index="seed", columns="cell",
                                                   values="top1_pct")
    rows = []
    for r in claims[claims["setting"] == SETTINGS["marvin"]].itertuples(index=False):
        d = (t[r.ours] - t[r.baseline]).dropna()
        if len(d) < 2:
            continue
        if d.std(ddof=1) == 0:
            lo = hi = float(d.mean())
        else:
            ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
            lo, hi = float(ci.low), float(ci.high)
        v = verdict(lo, hi, r.margin_pct)
        if isinstance(r.cost_model, str) and r.speedup_x < r.min_speedup_x - 1e-12:
            v = "not reproduced"  # NaN minimum (equal-cost rows): no speed-up required
        rows.append({"claim": r.claim, "n_pairs": len(d), "paired_diff_pct": float(d.mean()),
                     "paired_ci95_low_pct": lo, "paired_ci95_high_pct": hi,
                     "margin_pct": r.margin_pct, "paired_verdict": v,
                     "welch_verdict": r.verdict})
    return pd.DataFrame(rows)


def equal_cost_claims(costs: pd.DataFrame) -> list[tuple]:
    """Per cost model, each MARViN variant against the fixed-N word nearest to it in cost
    (smallest |log cost ratio|; the row's ``speedup_x`` shows how near): does MARViN beat it?"""
    out = []
    if not len(costs):
        return out
    c = costs.set_index("cell")
    fixed = [f"fixed{n}" for n in FIXED_BITS if f"fixed{n}" in c.index]
    for ours in ("marvin", "marvin_operand"):
        if ours not in c.index or not fixed:
            continue
        for m in COST_MODELS:
            col = f"{m}_cost_rel_fp32"
            base = min(fixed, key=lambda f: abs(np.log(c.loc[f, col] / c.loc[ours, col])))
            name = "MARViN per-operand" if ours == "marvin_operand" else "MARViN"
            out.append((f"{name} beats the fixed-N word nearest in cost (MAC cost {m} in bits)",
                        ours, base, 0.0, m, None))
    return out


def summarise(test: pd.DataFrame, costs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim with test runs of both cells (Welch interval, verdict). Cost claims
    (marvin part) also need ours' speed-up (baseline MAC cost / ours') to reach their minimum:
    else the verdict is "not reproduced" whatever the accuracy."""
    rows = []
    cost = costs.set_index("cell") if costs is not None and len(costs) else None
    claims = [(*c, None, None) for c in CLAIMS]
    if cost is not None:
        claims += [("marvin", *c) for c in COST_CLAIMS + equal_cost_claims(costs)]
    for part, claim, ours, base, margin, model, min_speedup in claims:
        t = test[test["part"] == part]
        a = t[t["cell"] == ours].sort_values("seed")["top1_pct"].to_numpy()
        b = t[t["cell"] == base].sort_values("seed")["top1_pct"].to_numpy()
        if len(a) < 2 or len(b) < 2:
            continue
        d = welch_diff(a, b)
        v = verdict(d["low"], d["high"], margin)
        extra: dict = {}
        if model is not None:
            if ours not in cost.index or base not in cost.index:
                continue
            oc, bc = cost.loc[ours, f"{model}_cost_rel_fp32"], cost.loc[base, f"{model}_cost_rel_fp32"]
            extra = {"cost_model": model, "ours_cost_rel_fp32": oc, "baseline_cost_rel_fp32": bc,
                     "speedup_x": bc / oc,
                     "min_speedup_x": np.nan if min_speedup is None else min_speedup}
            if min_speedup is not None and bc / oc < min_speedup - 1e-12:
                v = "not reproduced"
        rows.append({"claim": claim, "setting": SETTINGS[part],
                     "n_seeds": min(len(a), len(b)), "ours": ours,
                     "ours_mean_pct": a.mean(), "ours_sd_pct": a.std(ddof=1), "baseline": base,
                     "baseline_mean_pct": b.mean(), "baseline_sd_pct": b.std(ddof=1),
                     "diff_pct": d["diff"], "diff_ci95_low_pct": d["low"],
                     "diff_ci95_high_pct": d["high"],
                     "verdict": v, "margin_pct": margin, **extra})
    cols = ["claim", "setting", "n_seeds", "ours_mean_pct", "ours_sd_pct", "baseline",
            "baseline_mean_pct", "baseline_sd_pct", "diff_pct", "diff_ci95_low_pct",
            "diff_ci95_high_pct", "verdict", "ours", "margin_pct", "cost_model",
            "ours_cost_rel_fp32", "baseline_cost_rel_fp32", "speedup_x", "min_speedup_x"]
    return pd.DataFrame(rows, columns=cols)


def trajectories(runs: pd.DataFrame) -> pd.DataFrame:
    """From the per-epoch traces: DSQ's alpha and mean u (first and last), LG-LSQ's k range
    over layers at the end, MARViN's last-epoch mean word and guard switches; per cell."""
    rows = []
    for (split, part, cell), g in runs.groupby(["split", "part", "cell"]):
        rec: dict = {"split": split, "part": part, "cell": cell, "n_runs": len(g)}
        tr = [json.loads(t) for t in g["trace"].fillna("{}")]
        if tr and isinstance(tr[0], list) and tr[0] and "dsq_alpha_mean" in tr[0][0]:
            rec["alpha_first"] = np.mean([t[0]["dsq_alpha_mean"] for t in tr])
            rec["alpha_last"] = np.mean([t[-1]["dsq_alpha_mean"] for t in tr])
            rec["u_rel_change_pct"] = np.mean([100 * (t[-1]["dsq_upper_mean"] /
                                                      t[0]["dsq_upper_mean"] - 1) for t in tr])
        elif tr and isinstance(tr[0], list) and tr[0] and any(k.startswith("k[") for k in tr[0][-1]):
            ks = [v for t in tr for k, v in t[-1].items() if k.startswith("k[")]
            rec["k_min_last"], rec["k_max_last"] = min(ks), max(ks)
            rec["k_distinct_last"] = len({round(k, 6) for k in ks})
        elif tr and isinstance(tr[0], dict) and "mean_word_bits" in tr[0]:
            rec["mean_word_bits"] = np.mean([t["mean_word_bits"] for t in tr])
            rec["guard_switches"] = np.mean([t["guard_switches"] for t in tr])
        else:
            continue
        rows.append(rec)
    return pd.DataFrame(rows)


def plot_claims(claims: pd.DataFrame, ax) -> plt.Figure:
    """Each claim's difference (ours - baseline) with its 95 % Welch interval."""
    y = np.arange(len(claims))
    err = np.vstack([claims["diff_pct"] - claims["diff_ci95_low_pct"],
                     claims["diff_ci95_high_pct"] - claims["diff_pct"]])
    ax.errorbar(claims["diff_pct"], y, xerr=err, fmt="o", capsize=3)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(y, [f"{o} vs {b}" for o, b in zip(claims["ours"], claims["baseline"])])
    ax.set_xlabel("top-1 difference (pp), 95 % Welch interval")
    return ax.figure


def plot_cells(test: pd.DataFrame, ax) -> tuple[plt.Figure, pd.DataFrame]:
    """Mean test top-1 per cell with 95 % t intervals over seeds (error bars)."""
    test = test.assign(cell=test["part"] + ":" + test["cell"])
    g = test.groupby("cell")["top1_pct"]
    tab = pd.DataFrame({"mean_pct": g.mean(), "sd_pct": g.std(ddof=1), "n_seeds": g.count()})
    from scipy import stats

    tab["ci95_half_pct"] = tab["sd_pct"] * stats.t.ppf(0.975, tab["n_seeds"] - 1) / np.sqrt(
        tab["n_seeds"])
    tab = tab.sort_values("mean_pct", kind="stable").reset_index()
    ax.errorbar(tab["mean_pct"], np.arange(len(tab)), xerr=tab["ci95_half_pct"], fmt="o",
                capsize=3)
    for cell, grp in test.groupby("cell"):
        y = int(np.flatnonzero(tab["cell"] == cell)[0])
        ax.scatter(grp["top1_pct"], np.full(len(grp), y + 0.15), s=6, alpha=0.5, color="gray")
    ax.set_yticks(np.arange(len(tab)), tab["cell"])
    ax.set_xlabel("test top-1 (%), mean and 95 % t interval over seeds; dots: single seeds")
    return ax.figure, tab


def plot_marvin_cost(costs: pd.DataFrame, axes) -> plt.Figure:
    """Test top-1 (mean and 95 % t interval over seeds) against the training MACs' cost
    relative to float32, one panel per cost model (quadratic, linear in bits); log x."""
    from scipy import stats

    half = costs["top1_sd_pct"] * stats.t.ppf(0.975, costs["n_seeds"] - 1) / np.sqrt(
        costs["n_seeds"])
    for ax, m in zip(axes, COST_MODELS):
        x = costs[f"{m}_cost_rel_fp32"]
        ax.errorbar(x, costs["top1_mean_pct"], yerr=half, fmt="o", capsize=3)
        labels: dict[tuple[float, float], list[str]] = {}
        for xi, yi, cell in zip(x, costs["top1_mean_pct"], costs["cell"]):
            labels.setdefault((round(xi, 9), round(yi, 9)), []).append(cell)
        for (xi, yi), cells in labels.items():  # identical runs (marvin = fixed6) share a label
            ax.annotate(" = ".join(cells), (xi, yi), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"training MAC cost / float32 ({m} in operand bits)")
        ax.set_ylabel("test top-1 (%), mean and 95 % t interval")
        ax.set_title(f"MARViN part, resnet8 digits: cost {m} in bits", fontsize=10)
        ax.grid(alpha=0.3)
    return axes[0].figure


def plot_a2qbody(test: pd.DataFrame, axes) -> tuple[plt.Figure, pd.DataFrame]:
    """Test top-1 against the body's accumulator width P (stem and classifier at 24 b): plain
    LSQ QAT run with wrap and saturate, A2Q+ trained for P; mean and 95 % t interval over seeds."""
    from scipy import stats

    t = test[(test["part"] == "a2qbody") & test["cell"].str.contains("@")]
    parts = t["cell"].str.extract(r"^(?P<method>lsq|a2qp)_w(?P<bits>\d)(?:_body\d+)?"
                                  r"@p(?P<p>\d+)_(?P<mode>\w+)$")
    t = pd.concat([t, parts], axis=1).astype({"bits": int, "p": int})
    t["strategy"] = np.where(t["method"] == "lsq", "QAT+" + t["mode"], "A2Q+ (trained for P)")
    g = t.groupby(["bits", "strategy", "p"])["top1_pct"]
    tab = pd.DataFrame({"mean_pct": g.mean(), "sd_pct": g.std(ddof=1), "n_seeds": g.count()})
    tab["ci95_half_pct"] = tab["sd_pct"] * stats.t.ppf(0.975, tab["n_seeds"] - 1) / np.sqrt(
        tab["n_seeds"])
    tab = tab.reset_index()
    for ax, bits in zip(axes, sorted(tab["bits"].unique(), reverse=True)):
        sub = tab[tab["bits"] == bits]
        exact = sub[sub["strategy"] == "QAT+exact"]
        for strategy, s in sub[sub["strategy"] != "QAT+exact"].groupby("strategy"):
            ax.errorbar(s["p"], s["mean_pct"], yerr=s["ci95_half_pct"], marker="o", capsize=3,
                        label=strategy)
        if len(exact):
            e = exact.iloc[0]
            ax.axhspan(e["mean_pct"] - e["ci95_half_pct"], e["mean_pct"] + e["ci95_half_pct"],
                       color="gray", alpha=0.25, label="QAT, exact accumulator")
        ax.set_title(f"W{bits}A{bits} ResNet-20, digits test, stem/fc at 24 b")
        ax.set_xlabel("body accumulator width P (bits)")
        ax.set_ylabel("top-1 (%), mean and 95 % t interval over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return axes[0].figure, tab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default="reports/seed_claims")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--parts", default="qat,qat3,marvin,pixel,a2q,a2qbody")
    ap.add_argument("--seeds", type=int, default=len(PART_SEEDS),
                    help="seeds of the a2qbody part (the first N of its seed list)")
    ap.add_argument("--bits", default="4,3", help="a2qbody part: W/A bits, in run order")
    args = ap.parse_args()
    budget = Budget()
    tune_seeds, test_seeds = TUNE_SEEDS, TEST_SEEDS
    if args.quick:
        budget = Budget(model="resnet8", float_epochs=1, qat_epochs=1)
        tune_seeds, test_seeds, args.out = (0, 1), (2, 3), args.out + "_quick"
    out = Path(args.out)
    runs_csv = out.parent / (out.name + "_runs.csv")
    parts = args.parts.split(",")
    if args.report_only:
        runs = pd.read_csv(runs_csv)
        if "part" not in runs:
            runs["part"] = "qat"
        tune = runs[(runs["split"] == "val") & (runs["part"] == "qat")]
    else:
        tune = run_stage("val", tune_cells(), tune_seeds, budget, runs_csv, args.processes)
    val_means = tune.groupby("cell")["top1_pct"].agg(["mean", "std", "count"])
    best_slope = max(MIN_SLOPES, key=lambda m: val_means.loc[f"lglsq_minslope{m}", "mean"])
    best_mult = max(ALPHA_MULTS, key=lambda m: val_means.loc[f"dsq_alphamult{m:g}", "mean"])
    print(val_means.round(2).to_string(), f"\nchosen: min_slope={best_slope} "
          f"alpha_grad_mult={best_mult:g}", flush=True)
    if not args.report_only and "qat" in parts:
        run_stage("test", test_cells(best_slope, best_mult), test_seeds, budget, runs_csv,
                  args.processes)
    if not args.report_only and "qat3" in parts:
        run_stage("test", w3_cells(best_slope), test_seeds, budget, runs_csv, args.processes,
                  part="qat3")
    part_seeds = test_seeds if args.quick else PART_SEEDS
    quick = Budget(model="resnet8", float_epochs=1, qat_epochs=1)
    if not args.report_only and "marvin" in parts:
        run_stage("test", marvin_cells(), part_seeds if args.quick else MARVIN_SEEDS,
                  quick if args.quick else MARVIN_BUDGET,
                  runs_csv, args.processes, part="marvin", kind="marvin")
    if not args.report_only and "pixel" in parts:
        run_stage("test", pixel_cells(), part_seeds, quick if args.quick else PIXEL_BUDGET,
                  runs_csv, args.processes, part="pixel", data_transform="lowcontrast")
    if not args.report_only and "a2q" in parts:
        run_stage("test", a2q_cells(), part_seeds, quick if args.quick else Budget(), runs_csv,
                  args.processes, part="a2q")
    if not args.report_only and "a2qbody" in parts:
        for bits in map(int, args.bits.split(",")):
            cells, evals = a2qbody_cells(bits)
            run_stage("test", cells, A2QBODY_SEEDS[:args.seeds], quick if args.quick else Budget(),
                      runs_csv, args.processes, part="a2qbody", npu_evals=evals)
    runs = pd.read_csv(runs_csv)
    if "part" not in runs:
        runs["part"] = "qat"
    test = runs[runs["split"] == "test"]
    costs = marvin_costs(test)
    claims = summarise(test, costs)
    traj = trajectories(runs)
    write_csv(claims, out.with_suffix(".csv"))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 7))
    fig, tab = plot_cells(test, ax)
    plot_claims(claims, ax2)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    write_csv(tab, out.parent / (out.name + "_cells.csv"))
    lines = ["# Seed claims at several seeds (generated by benchmarks/seed_claims.py)",
             "", f"Budget (qat part): {json.dumps(budget.__dict__)}; machine "
             f"{platform.machine()}, {args.processes} processes x 1 torch thread.",
             "", "## Tuning on the validation split", "",
             markdown_table(val_means.reset_index().round(2)), "",
             f"Chosen: LG-LSQ min_slope = {best_slope}, DSQ alpha_grad_mult = {best_mult:g}.",
             "", "## Test split, per cell", "", markdown_table(tab.round(2)), "",
             "## Claims", "", markdown_table(claims.round(2)), "",
             "## Quantizer trajectories (means over runs)", "", markdown_table(traj.round(3))]
    if len(costs):
        fig3, axes3 = plt.subplots(1, 2, figsize=(12, 4.5))
        plot_marvin_cost(costs, axes3)
        fig3.tight_layout()
        png = out.parent / (out.name + "_marvin_cost.png")
        fig3.savefig(png, dpi=120)
        write_csv(costs, png.with_suffix(".csv"))
        paired = paired_marvin(claims, test)
        write_csv(paired, out.parent / (out.name + "_marvin_paired.csv"))
        lines += ["", "## MARViN part: accuracy beside estimated training cost (data: "
                  f"{png.with_suffix('.csv').name})", "", MARVIN_COST_TEXT, "",
                  f"![marvin cost]({png.name})", "", markdown_table(costs, ".4g"), "",
                  "### MARViN claims on paired seeds (supplement to the Welch verdicts above)",
                  "", paired_marvin.__doc__.split("\n\n")[0].replace("\n    ", " "), "",
                  markdown_table(paired)]
    if (test["part"] == "a2qbody").any():
        fig2, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        fig2, body = plot_a2qbody(test, axes)
        fig2.tight_layout()
        png = out.parent / (out.name + "_a2q_body.png")
        fig2.savefig(png, dpi=120)
        write_csv(body, png.with_suffix(".csv"))
        lines += ["", "## A2Q+ at body P vs plain QAT with wrap/saturate (data: "
                  f"{png.with_suffix('.csv').name})", "", f"![a2q body]({png.name})", "",
                  markdown_table(body.round(2))]
    atomic_write_bytes(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print(claims.round(2).to_string(), flush=True)


if __name__ == "__main__":
    main()
