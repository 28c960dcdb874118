"""`npusim report`: regenerate the figures, their CSVs and ``reports/README.md`` from a
results store (docs/architecture.md).

Only the files named in `FIGURES` (and ``sweep_results.csv``, ``README.md``) are written;
anything else already in the directory (other benchmarks' tables) is left alone and linked
from the index.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from npusim.io import atomic_write_bytes, markdown_table, write_csv
from npusim.sweep.store import ResultsStore, StoreError

log = logging.getLogger(__name__)

__all__ = ["FIGURES", "accuracy_table", "choose_points", "write_report"]

#: Figure stems this module owns, in index order.
#: One sentence for each report other commands and benchmarks leave in reports/ (the index
#: lists every file there; a stem not named here is listed without a sentence).
OTHER_REPORTS = {
    "BENCHMARKS": "The simulator's speed against fbgemm and a NumPy reference, its targets and "
                  "the machine it was measured on.",
    "a2q_sweep": "Accumulator-aware training (A2Q/A2Q+) for a target width against training "
                 "normally and narrowing the accumulator afterwards (wrap/saturate): top-1 per "
                 "width.",
    "cost_resnet20_edge16": "Energy, latency, power and storage of ResNet-20 programs on edge16 "
                            "per W/A setting, with the FP32 and INT8 baselines.",
    "first_layer": "The first layer's options (8-bit pixels, low-bit input, pixel embedding): "
                   "accuracy against the first layer's energy and storage.",
    "marvin": "MARViN quantized training: accuracy, mean word length and the training cost "
              "against float32 and fixed 8/16-bit training.",
    "marvin_cost_resnet20": "Training energy and time of ResNet-20 under MARViN, its variants "
                            "and fixed 8/16-bit training against float32 (cost model).",
    "marvin_cost_resnet8": "Training energy and time of ResNet-8 under MARViN, its variants "
                            "and fixed 8/16-bit training against float32 (cost model).",
    "marvin_heatmap_resnet20": "Word length of each ResNet-20 layer over MARViN training "
                               "(a heatmap: layers by training iteration).",
    "marvin_heatmap_resnet8": "Word length of each ResNet-8 layer over MARViN training "
                               "(a heatmap: layers by training iteration).",
    "onnx_import": "ONNX Runtime-quantized models imported as IntegerPrograms: the simulator's "
                   "logits against ONNX Runtime's, node by node.",
    "perf_core_after": "Simulator timings after the core refactor (perf_simulator --quick).",
    "perf_core_before": "Simulator timings before the core refactor (perf_simulator --quick).",
    "per_layer_npu": "edge16 with [[layer]] tables keeping the stem and the classifier at 24-bit "
                     "accumulators (the NPU file of the per-layer sweep).",
    "per_layer_suggest": "The NPU file `npusim bounds --suggest --data` wrote: each layer at "
                         "the narrowest widths no running sum overflowed on the data.",
    "per_layer_sweep": "Per-layer accumulator widths (stem/fc at 24 b, body swept) against one "
                       "width for the whole network: top-1 and energy per image, wrap/saturate.",
    "per_layer_widths": "Per conv/linear layer: the L1 bound's and the data's narrowest safe "
                        "accumulator widths (behind per_layer_sweep.md).",
    "qat_accuracy": "QAT top-1 on mnist5k for every method at W8A8 to W2A2: fake-quant, the "
                    "exported integer program, and the same under TFLite double rounding.",
    "risk_bounds": "How many outputs a cheaper overflow-risk bound (one per block of output "
                   "pixels, from a max-pooled input) flags against the exact positive sums, "
                   "and what its convs cost (issue 20).",
    "seed_claims": "The seed papers' claims (LG-LSQ, DSQ, MARViN, pixel embedding, A2Q+) at "
                   "5-32 seeds, each judged by the 95 % Welch interval of the difference.",
    "seed_claims_a2q_body": "A2Q+ trained for body P against plain QAT run at body P with "
                            "wrap/saturate (stem/fc at 24 b): test top-1 with 95 % intervals.",
    "seed_claims_cells": "Test top-1 per seed-claims cell: mean, sd and 95 % t interval over "
                         "seeds (the left panel of seed_claims.png).",
    "seed_claims_discussion": "What the seed-claims statistics say and why: reproduced, not "
                              "reproduced, the causes found and the fixes made.",
    "seed_claims_marvin_cost": "MARViN part of the seed claims: test top-1 beside each operand's "
                               "bits per MAC and the training MAC cost vs float32 (quadratic "
                               "and linear in bits) for MARViN, float32 and fixed 4/6/8/16.",
    "seed_claims_marvin_paired": "The MARViN seed claims judged on per-seed (paired) differences, "
                                 "beside their Welch verdicts.",
    "seed_claims_runs": "Every seed-claims run (part, cell, seed, split, top-1, config, "
                        "trace): the raw data the seed-claims tables are computed from.",
    "simulate_e2e": "End-to-end simulation of trained programs on the presets: top-1, overflow "
                    "events per MAC and accumulator widths per layer.",
    "simulate_e2e_overflows": "Per-layer overflow counts behind simulate_e2e.md.",
    "sweep_cluster": "The same sweep run serially and on a local Dask cluster: equal rows and "
                     "the wall times.",
}

FIGURES = ("acc_vs_width", "energy_vs_accuracy", "savings", "layer_energy", "acc_ranges")
RESULTS_CSV = "sweep_results.csv"
#: Accuracy a "lossless" choice may lose against its setting's best point (fraction).
TOLERANCE = 0.005

_SETTING_EXTRA = ("npu", "dataflow", "rows", "cols", "scale_mode", "multiplier_bits", "rounding",
                  "max_shift", "weight_storage", "clock_mhz", "model", "dataset", "images",
                  "qat_epochs", "float_epochs", "energy_table")


def _with_setting(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``setting``: the quantization label plus any other field that varies in the
    store (so lines never mix, say, two dataflows)."""
    df = df.copy()
    ran = df[df["status"] == "ok"] if "status" in df else df
    vary = [c for c in _SETTING_EXTRA if c in ran and ran[c].nunique(dropna=True) > 1]
    df["setting"] = [
        " ".join([str(r["quant_label"]), *[f"{c}={r[c]}" for c in vary]]) for _, r in df.iterrows()]
    return df


def _target(sub: pd.DataFrame) -> float:
    """The accuracy a setting should keep: its unbounded (exact) run's, else its best."""
    exact = sub[sub["overflow_mode"] == "exact"]
    return float(exact["top1"].max() if len(exact) else sub["top1"].max())


def choose_points(df: pd.DataFrame, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Per setting, the lowest-energy point whose top-1 is within `tolerance` of the
    setting's unbounded run: typically the narrowest accumulator that loses nothing."""
    ok = df[df["status"] == "ok"]
    rows = []
    for _, sub in ok.groupby("setting", sort=False):
        good = sub[sub["top1"] >= _target(sub) - tolerance - 1e-12]
        if not len(good):
            good = sub[sub["top1"] == sub["top1"].max()]
        rows.append(good.sort_values(["energy_per_image_uj", "acc_bits"]).iloc[0])
    out = pd.DataFrame(rows).reset_index(drop=True)
    if len(out):
        out = out.sort_values(["weight_bits", "act_bits"], ascending=False).reset_index(drop=True)
    return out


def _reference(df: pd.DataFrame, setting: str) -> pd.Series | None:
    """The setting's exact (or else widest) point: its observed bits are not clipped."""
    sub = df[(df["setting"] == setting) & (df["status"] == "ok")]
    if not len(sub):
        return None
    exact = sub[sub["overflow_mode"] == "exact"]
    pick = exact if len(exact) else sub
    return pick.sort_values("acc_bits").iloc[-1]


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Top-1 (%) per accumulator width (rows) and setting x overflow mode (columns);
    "-" where the NPU refuses the width."""
    sub = df[df["overflow_mode"].isin(["wrap", "saturate"])]
    if not len(sub):
        return pd.DataFrame()
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for _, r in sub.iterrows():
        key = (r["setting"], r["overflow_mode"])
        cells.setdefault(key, {})[int(r["acc_bits"])] = (
            f"{100 * r['top1']:.1f}" if r["status"] == "ok" else "-")
    widths = sorted({w for c in cells.values() for w in c})
    table = pd.DataFrame({"acc_bits": widths})
    for (setting, mode), col in cells.items():
        table[f"{setting} {mode}"] = [col.get(w, "") for w in widths]
    return table


def _observed_table(df: pd.DataFrame, store: ResultsStore) -> pd.DataFrame:
    """Per setting: the widest observed accumulator (bits) and the widest bounds."""
    rows = []
    for setting in dict.fromkeys(df["setting"]):
        ref = _reference(df, setting)
        if ref is None:
            continue
        lay = store.layers(ref["point_hash"]).dropna(subset=["observed_bits"])
        widest = lay.loc[lay["observed_bits"].idxmax()]
        interior = lay[~lay["layer"].isin([lay["layer"].iloc[0], lay["layer"].iloc[-1]])]
        rows.append({
            "setting": setting,
            "max observed bits": int(lay["observed_bits"].max()),
            "in layer": widest["layer"],
            "max observed (inner layers)": (int(interior["observed_bits"].max())
                                            if len(interior) else ""),
            "max L1 bound bits": int(lay["bound_l1_bits"].max()),
            "max data-type bound bits": int(lay["bound_dtype_bits"].max()),
            "exact top-1 (%)": f"{100 * ref['top1']:.1f}",
        })
    return pd.DataFrame(rows)


def _context_lines(df: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    def one(col: str) -> str:
        vals = list(dict.fromkeys(str(v) for v in df[col].dropna())) if col in df else []
        return ", ".join(vals) if vals else "-"

    lines = []
    if meta.get("command"):
        lines.append(f"- produced by: `{meta['command']}`")
    lines += [
        f"- model: {one('model')} (width {one('width')}), data: {one('dataset')} "
        f"({one('split')} split, first {one('images')} images simulated)",
        f"- QAT: {one('method')} for {one('qat_epochs')} epoch(s), starting from a float model "
        f"trained for {one('float_epochs')} epoch(s); W/A settings: {one('quant_label')}; first/last layer "
        f"bits: {_ends(df)}",
        f"- NPU: {one('npu')} ({one('rows')}x{one('cols')} {one('dataflow')}, "
        f"{one('clock_mhz')} MHz, requant {one('scale_mode')} {one('multiplier_bits')}-bit "
        f"{one('rounding')}); accumulator widths swept: {_ranges(df['acc_bits'])}; overflow "
        f"modes: {one('overflow_mode')}",
        f"- energy table: {one('energy_table')} v{one('energy_table_version')}; "
        f"cost batch 1 image",
        f"- versions: npusim {one('npusim_version')}, numpy {one('numpy_version')}, numba "
        f"{one('numba_version')}, torch {one('torch_version')}, python {one('python_version')}",
        f"- {len(df)} points ({int((df['status'] == 'ok').sum())} ran, "
        f"{int((df['status'] != 'ok').sum())} refused by the NPU); point hashes, NPU config "
        f"hashes and QAT cache hashes are columns of [{RESULTS_CSV}]({RESULTS_CSV})",
    ]
    if meta.get("timing"):
        lines.append(f"- {meta['timing']}")
    return lines


def _ends(df: pd.DataFrame) -> str:
    if "first_layer_bits" not in df:
        return "-"
    first, last = df["first_layer_bits"], df["last_layer_bits"]
    if first.isna().all() and last.isna().all():
        return "as the W/A setting (every layer quantized alike)"
    fmt = lambda s: ", ".join(dict.fromkeys("W/A" if pd.isna(v) else str(int(v)) for v in s))
    return f"{fmt(first)} / {fmt(last)}"


def _ranges(s: pd.Series) -> str:
    vals = sorted({int(v) for v in s.dropna()})
    if not vals:
        return "-"
    steps = {b - a for a, b in zip(vals, vals[1:])}
    if len(vals) > 2 and len(steps) == 1:
        return f"{vals[0]}..{vals[-1]} (step {steps.pop()})"
    return ", ".join(map(str, vals))


def write_report(store: ResultsStore | str | Path, out_dir: str | Path = "reports",
                 tolerance: float = TOLERANCE) -> list[Path]:
    """Write the figures (PNG + CSV), ``sweep_results.csv`` and the ``README.md`` index.

    Returns the paths written. Figures whose data the store lacks (say, no wrap/saturate
    points) are skipped and the index says so.
    """
    from npusim.report import plots

    own = not isinstance(store, ResultsStore)
    db = ResultsStore(store, readonly=True) if own else store
    try:
        return _write(db, Path(out_dir), tolerance, plots)
    finally:
        if own:
            db.close()


_REQUIRED = ("point_hash", "status", "quant_label", "acc_bits", "overflow_mode", "top1",
             "energy_per_image_uj")


def _write(db: ResultsStore, out: Path, tolerance: float, plots) -> list[Path]:
    df = db.to_frame()
    if not len(df):
        raise StoreError(f"{db.path}: no results stored yet (run npusim sweep or npusim demo)")
    missing = [c for c in _REQUIRED if c not in df]
    if missing:
        raise StoreError(f"{db.path}: stored rows lack the column(s) {', '.join(missing)} "
                         f"(not written by npusim sweep)")
    out.mkdir(parents=True, exist_ok=True)
    df = _with_setting(df)
    meta = {k: db.get_meta(k) for k in ("command", "timing", "title")}
    written: list[Path] = []
    sections: list[str] = []
    write_csv(df.drop(columns=["setting"]), out / RESULTS_CSV)
    written.append(out / RESULTS_CSV)
    ok = df[df["status"] == "ok"]
    chosen = choose_points(df, tolerance)
    tol_txt = f"{100 * tolerance:g} point{'s' if tolerance != 0.01 else ''}"

    # 1. accuracy vs accumulator width
    sweepable = df[df["overflow_mode"].isin(["wrap", "saturate"])]
    if sweepable["acc_bits"].nunique() > 1:
        plots.accuracy_vs_acc_bits(df, hue="setting", out=out / "acc_vs_width.png")
        acc = accuracy_table(df)
        obs = _observed_table(df, db)
        sections.append(_figure_md(
            "acc_vs_width", "Accuracy vs accumulator width, wrap vs saturate",
            "Simulated top-1 per accumulator width (both levels), wrap solid, saturate "
            "dashed, unbounded run dotted; a line starts at the first width the NPU accepts, "
            "and the widths it refuses are x marks on the x axis.",
            extra=("Top-1 (%) per width (`-`: the NPU refuses the width, one product needs more "
                   "bits):\n\n" + markdown_table(acc) + "\n\nWhat the statistics report "
                   "(unbounded run of each setting): the bits the observed accumulator values "
                   "needed, and the static bounds.\n\n" + markdown_table(obs))))
        written += [out / "acc_vs_width.png", out / "acc_vs_width.csv"]

    # 2. energy vs accuracy with the Pareto frontier
    if len(ok):
        plots.energy_vs_accuracy(df, hue="setting", out=out / "energy_vs_accuracy.png")
        front = ok[plots.pareto_front(ok)].sort_values("energy_per_image_uj")
        ftab = pd.DataFrame({
            "configuration": [f"{r['setting']} acc {int(r['acc_bits'])} b {r['overflow_mode']}"
                              for _, r in front.iterrows()],
            "top-1 (%)": (100 * front["top1"]).round(1).to_list(),
            "energy (µJ/image)": front["energy_per_image_uj"].round(3).to_list()})
        sections.append(_figure_md(
            "energy_vs_accuracy", "Energy per image vs accuracy",
            "Every configuration that ran (colour: W/A setting, marker: overflow mode); the "
            "bold black step line is the Pareto frontier (none is both cheaper and more "
            "accurate), its points numbered and listed with W/A, width and mode; the y axis is "
            "zoomed to the data and says where it starts; refused configurations are counted in "
            "the corner.",
            extra="Pareto frontier:\n\n" + markdown_table(ftab)))
        written += [out / "energy_vs_accuracy.png", out / "energy_vs_accuracy.csv"]

    # 3. savings of each setting's chosen point
    if len(chosen):
        sv = chosen.assign(label=[f"{r['setting']}\nacc {int(r['acc_bits'])} b "
                                  f"{r['overflow_mode']}" for _, r in chosen.iterrows()])
        plots.savings(sv, label="label", out=out / "savings.png")
        sections.append(_figure_md(
            "savings", "Savings vs FP32 and INT8",
            f"Each W/A setting at its cheapest width within {tol_txt} of its unbounded top-1, "
            f"vs the same network in FP32 and in INT8 (32-bit accumulators) on the same NPU."))
        written += [out / "savings.png", out / "savings.csv"]

    # 4. per-layer energy of the overall pick
    if len(chosen):
        best = ok["top1"].max()
        pick = ok[ok["top1"] >= best - tolerance - 1e-12].sort_values(
            "energy_per_image_uj").iloc[0]
        lay = db.layers(pick["point_hash"])
        name = f"{pick['setting']}, acc {int(pick['acc_bits'])} b {pick['overflow_mode']}"
        plots.layer_energy(lay, out=out / "layer_energy.png",
                           title=f"Energy per layer by component: {name} "
                                 f"({pick['energy_per_image_uj']:.1f} µJ/image)")
        sections.append(_figure_md(
            "layer_energy", "Per-layer energy breakdown",
            f"Energy per image of each layer by component for the cheapest configuration "
            f"within {tol_txt} of the best top-1: {name} ({100 * pick['top1']:.1f}%, "
            f"{pick['energy_per_image_uj']:.2f} µJ/image, point {pick['point_hash']})."))
        written += [out / "layer_energy.png", out / "layer_energy.csv"]

    # 5. accumulator ranges per layer (overflow debugging)
    refs = [(s, _reference(df, s)) for s in dict.fromkeys(df["setting"])]
    refs = [(s, r) for s, r in refs if r is not None]
    if refs:
        written += _acc_ranges(db, df, refs, out, tolerance)
        sections.append(_figure_md(
            "acc_ranges", "Accumulator range per layer vs available width",
            "Bits each layer's accumulator needed (bars; unbounded run) and its bounds, vs the "
            f"narrowest wrap width within {tol_txt} of unbounded top-1 (dashed; red bars do not "
            "fit it)."))

    from npusim.report.plots.figures import _images_text

    images = _images_text(df)
    if images:  # every caption states how many images each point simulated
        sections = [sec.replace(" Data: [", f" ({images}.) Data: [", 1) for sec in sections]
    _write_index(out, df, meta, sections)
    written.append(out / "README.md")
    return written


def _acc_ranges(db, df, refs, out: Path, tolerance: float) -> list[Path]:
    from matplotlib.figure import Figure

    from npusim.report.plots import accumulator_ranges, save

    n = len(refs)
    first = db.layers(refs[0][1]["point_hash"]).dropna(subset=["observed_bits"])
    fig = Figure(figsize=(max(7.0, 0.3 * len(first) + 2), 3.2 * n + 0.8), dpi=150,
                 layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    tables = []
    for ax, (setting, ref) in zip(axes, refs):
        lay = db.layers(ref["point_hash"])
        avail = _narrowest_lossless(df, setting, "wrap", tolerance)
        sub = accumulator_ranges(lay, ax=ax, acc_bits=avail, available=avail is not None,
                                 title=f"{setting}: observed accumulator bits per layer "
                                       f"(unbounded run, top-1 {100 * ref['top1']:.1f}%)")
        tables.append(sub.npusim_table.assign(setting=setting))
        if ax is not axes[-1]:
            ax.set_xlabel("")
    table = pd.concat(tables, ignore_index=True)
    table = table[["setting", *[c for c in table.columns if c != "setting"]]]
    save(fig, table, out / "acc_ranges.png")
    return [out / "acc_ranges.png", out / "acc_ranges.csv"]


def _narrowest_lossless(df: pd.DataFrame, setting: str, mode: str, tolerance: float
                        ) -> int | None:
    sub = df[(df["setting"] == setting) & (df["status"] == "ok")]
    if not len(sub):
        return None
    good = sub[(sub["overflow_mode"] == mode) & (sub["top1"] >= _target(sub) - tolerance - 1e-12)]
    if not len(good):
        return None
    return int(good["acc_bits"].min())


def _figure_md(stem: str, title: str, caption: str, extra: str = "") -> str:
    parts = [f"### {title}", "", f"![{title}]({stem}.png)", "",
             f"{caption} Data: [{stem}.csv]({stem}.csv).", ""]
    if extra:
        parts += [extra, ""]
    return "\n".join(parts)


def _write_index(out: Path, df: pd.DataFrame, meta: dict[str, Any], sections: list[str]) -> None:
    ours = {f"{s}.{e}" for s in FIGURES for e in ("png", "csv")} | {RESULTS_CSV, "README.md"}
    others = sorted(p for p in out.iterdir()
                    if p.is_file() and p.name not in ours and not p.name.startswith("."))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {meta.get('title') or 'npusim reports'}", "",
             f"Generated by `npusim report` on {now} from the results store "
             f"({len(df)} points). Regenerate with `npusim demo` (the whole story) or "
             f"`npusim report RESULTS.sqlite`.", "", "## Configuration", "",
             *_context_lines(df, meta), "", "## Figures", ""]
    lines += sections or ["(no figure: the store has no points that ran)", ""]
    lines += other_reports_lines(others)
    _atomic_text(out / "README.md", "\n".join(lines).rstrip() + "\n")


def other_reports_lines(others: list[Path]) -> list[str]:
    """The README's "Other reports" section: one bullet per file stem with its
    `OTHER_REPORTS` sentence and links (empty when there are no other files)."""
    if not others:
        return []
    lines = ["## Other reports in this directory", ""]
    groups: dict[str, list[Path]] = {}
    for p in others:
        groups.setdefault(p.stem, []).append(p)
    for stem, ps in groups.items():
        links = ", ".join(f"[{p.name}]({p.name})" for p in ps)
        what = OTHER_REPORTS.get(stem)
        lines.append(f"- {stem}: {what} {links}" if what else f"- {stem}: {links}")
    lines.append("")
    return lines


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
