"""Figures drawn from sweep results (docs/architecture.md), each saved as a PNG with the CSV behind it.

Every function takes the tidy table it draws (`sweep` rows, or one point's per-layer table),
an optional matplotlib ``ax`` (a new figure otherwise) and an optional ``out`` path; it
returns the figure and, with ``out``, writes ``out`` (PNG) and the plotted table beside it
(same name, ``.csv``). Figures are built on `matplotlib.figure.Figure` (Agg), never pyplot,
so nothing global is touched and nothing needs a display. matplotlib is imported when a
figure is first drawn, not when this module is imported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["accumulator_ranges", "accuracy_vs_acc_bits", "axis_label", "custom",
           "energy_vs_accuracy", "layer_energy", "pareto_front", "save", "savings"]

COMPONENTS = ("mac", "operand", "accumulator", "requant", "vector", "sram", "lookup", "dram",
              "leakage")
_MODE_STYLE = {"exact": (":", "o"), "wrap": ("-", "o"), "saturate": ("--", "s")}
_DPI = 150

_LABELS = {
    "top1": "top-1 accuracy (%)",
    "fake_quant_top1": "fake-quant top-1 (%)",
    "integer_top1": "integer-exact top-1 (%)",
    "acc_bits": "accumulator width (bits)",
    "pe_acc_bits": "PE partial-sum width (bits)",
    "energy_per_image_uj": "energy per image (µJ)",
    "overflow_rate": "overflow events per MAC",
    "energy_saving_vs_fp32": "energy saving vs FP32 (×)",
    "energy_saving_vs_int8": "energy saving vs INT8 (×)",
    "storage_saving_vs_fp32": "weight-storage saving vs FP32 (×)",
    "storage_saving_vs_int8": "weight-storage saving vs INT8 (×)",
    "weight_bits": "weight bits", "act_bits": "activation bits",
    "multiplier_bits": "requant multiplier width (bits)",
    "rows": "array rows (PEs)", "cols": "array columns (PEs)",
}
_UNITS = {"_uj": "µJ", "_pj": "pJ", "_nj": "nJ", "_mw": "mW", "_us": "µs", "_kib": "KiB",
          "_bits": "bits", "_mhz": "MHz", "_seconds": "s", "_nm": "nm", "_v": "V"}
_PERCENT = {"top1", "fake_quant_top1", "integer_top1"}


def axis_label(col: str) -> str:
    """A readable axis label with the unit a column's name carries (``latency_us`` -> µs)."""
    if col in _LABELS:
        return _LABELS[col]
    for suffix, unit in _UNITS.items():
        if col.endswith(suffix):
            return f"{col[: -len(suffix)].replace('_', ' ')} ({unit})"
    return col.replace("_", " ")


# ------------------------------------------------------------------------------ helpers

def _new_ax(ax, figsize: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    return fig, fig.add_subplot()


def save(fig, table: pd.DataFrame | None, out: str | Path) -> tuple[Path, Path | None]:
    """Write `fig` to `out` (PNG) and `table` beside it as CSV, both atomically."""
    from npusim.io import atomic_write, write_csv

    out = Path(out)
    fmt = out.suffix[1:].lower() or "png"
    atomic_write(out, lambda f: fig.savefig(f, dpi=_DPI, format=fmt))
    csv = None
    if table is not None:
        csv = out.with_suffix(".csv")
        write_csv(table, csv)
    return out, csv


def _finish(fig, table, out):
    if out is not None:
        save(fig, table, out)
    fig.npusim_table = table  # the data behind the figure, for callers composing reports
    return fig


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    if "status" in results:
        return results[results["status"] == "ok"]
    return results


def _hue_order(df: pd.DataFrame, hue: str) -> list[Any]:
    """Hue values, widest weights first when the hue is a quantization label."""
    vals = list(dict.fromkeys(df[hue].tolist()))
    if {"weight_bits", "act_bits"} <= set(df.columns):
        key = df.groupby(hue, sort=False)[["weight_bits", "act_bits"]].first()
        vals.sort(key=lambda v: (-key.loc[v, "weight_bits"], -key.loc[v, "act_bits"], str(v)))
    return vals


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _images_text(results: pd.DataFrame) -> str:
    """``"200 test images per point"`` from a results table's ``images``/``split`` columns."""
    if "images" not in results or not results["images"].notna().any():
        return ""
    n = sorted({int(v) for v in results["images"].dropna()})
    split = results["split"].dropna().iloc[0] if "split" in results and \
        results["split"].notna().any() else ""
    count = str(n[0]) if len(n) == 1 else f"{n[0]}-{n[-1]}"
    return f"{count} {split} images per point".replace("  ", " ")


def _title(ax, text: str, results: pd.DataFrame | None = None) -> None:
    extra = _images_text(results) if results is not None else ""
    ax.set_title(f"{text}\n({extra})" if extra else text, fontsize=10)


def _zoom_y(ax, values: pd.Series, label: str, top: float | None = None) -> None:
    """Zoom the y axis to the data (percent values), stating where it starts in the label."""
    lo = float(values.min()) if len(values) else 0.0
    hi = float(values.max()) if len(values) else 100.0
    bottom = max(0.0, math.floor(lo / 5) * 5 - 2)
    ax.set_ylim(bottom, top if top is not None else min(100.5, math.ceil(hi) + 1.5))
    ax.set_ylabel(f"{label}; axis from {bottom:g}" if bottom > 0 else label)


def _refused_marks(ax, xs: Sequence[float], color: Any = "0.35") -> None:
    """Refused configurations as x marks on the bottom axis (drawn over the spine)."""
    if len(xs):
        from matplotlib.transforms import blended_transform_factory

        lo, hi = ax.get_xlim()
        pad = 0.04 * (max(hi, max(xs)) - min(lo, min(xs)) or 1.0)
        ax.set_xlim(min(lo, min(xs) - pad), max(hi, max(xs) + pad))  # refused widths show
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(list(xs), [0.0] * len(xs), marker="x", s=30, color=color, lw=1.2,
                   transform=tr, clip_on=False, zorder=5)


def _short(row: pd.Series) -> str:
    """``W4A4 12b wrap`` for a sweep row."""
    wa = row.get("wa") or row.get("quant_label", "")
    mode = row.get("overflow_mode", "")
    mode = {"saturate": "sat", "exact": "exact", "wrap": "wrap"}.get(mode, mode)
    return f"{wa} {int(row['acc_bits'])}b {mode}".strip()


# -------------------------------------------------------------- accuracy vs width

def accuracy_vs_acc_bits(results: pd.DataFrame, ax=None, out: str | Path | None = None,
                         hue: str = "quant_label", modes: Sequence[str] = ("wrap", "saturate"),
                         title: str | None = None):
    """Top-1 vs accumulator width, one colour per `hue` value, one line style per overflow
    mode; the exact (unbounded) accuracy of each setting is the dotted reference line.

    Widths the NPU refuses (one product needs more bits than the accumulator) have no point;
    the legend says from which width each setting runs.
    """
    fig, ax = _new_ax(ax, (8.4, 4.4))
    res = results.copy()
    cols = [hue, "overflow_mode", "acc_bits", "pe_acc_bits", "status", "top1",
            "overflow_rate", "overflowing_layers", "max_observed_bits", "error"]
    table = res[res["overflow_mode"].isin(modes)][[c for c in cols if c in res]].copy()
    table = table.sort_values([hue, "overflow_mode", "acc_bits"], kind="stable")
    table.insert(table.columns.get_loc("top1") + 1, "top1_pct", 100 * table["top1"])
    exact = _ok(res[res["overflow_mode"] == "exact"])
    hues = _hue_order(res, hue)
    colors = dict(zip(hues, _colors(len(hues))))
    shown = 100 * pd.concat([table.loc[table["status"] == "ok", "top1"], exact["top1"]])
    lo = float(shown.min()) if len(shown) else 0.0
    high = shown[shown >= 80]
    # A zoomed inset of the accurate band when collapsed points stretch the axis, so that a
    # loss of a point or two (and lines lying on top of each other) stays visible.
    inset = None
    if lo < 50 and len(high):
        inset = ax.inset_axes([0.36, 0.1, 0.56, 0.44])
    from matplotlib.lines import Line2D

    handles = []
    for h in hues:
        sub = table[(table[hue] == h)]
        ok = sub[sub["status"] == "ok"]
        if not len(ok):
            continue
        e = exact[exact[hue] == h]
        for a in (ax, inset):
            if a is None:
                continue
            for mode in modes:
                m = ok[ok["overflow_mode"] == mode].sort_values("acc_bits")
                ls, mk = _MODE_STYLE.get(mode, ("-", "o"))
                a.plot(m["acc_bits"], 100 * m["top1"], ls=ls, marker=mk, ms=4, lw=1.6,
                       color=colors[h])
            if len(e):
                a.axhline(100 * e["top1"].iloc[0], color=colors[h], ls=":", lw=1, alpha=0.8)
        first = int(ok["acc_bits"].min())
        rejected = sub[sub["status"] != "ok"]
        note = f" (runs from {first} b)" if len(rejected) else ""
        handles.append(Line2D([], [], color=colors[h], lw=2.5, label=f"{h}{note}"))
    style_handles = [Line2D([], [], color="0.3", ls=_MODE_STYLE[m][0], marker=_MODE_STYLE[m][1],
                            ms=4, label=m) for m in modes if m in _MODE_STYLE]
    if len(exact):
        style_handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="exact (no limit)"))
    refused = table.loc[table["status"] != "ok", "acc_bits"].dropna().unique()
    if len(refused):
        style_handles.append(Line2D([], [], color="0.35", marker="x", ls="",
                                    label="width refused by the NPU\n(a product does not fit)"))
    sep = Line2D([], [], ls="", label=" ")
    head = Line2D([], [], ls="", label="overflow mode:")
    ax.legend(handles=[*handles, sep, head, *style_handles], title="W/A setting:",
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8,
              alignment="left")
    ax.set_xlabel("accumulator width (bits, both levels)")
    # zoom in when every setting is accurate, so a loss of a point or two is visible
    if lo >= 50:
        _zoom_y(ax, shown, axis_label("top1"), top=100.5)
    else:
        ax.set_ylim(0, 102)
        ax.set_ylabel(axis_label("top1"))
    _refused_marks(ax, refused)
    xs = table["acc_bits"].dropna()
    ticks = sorted(xs.unique().astype(int)) if len(xs) else []
    ax.set_xticks(ticks)
    ax.grid(alpha=0.3)
    if inset is not None:
        inset.set_ylim(max(0.0, math.floor(float(high.min())) - 1), min(100.5, high.max() + 1))
        inset.set_xlim(ax.get_xlim())
        inset.set_xticks(ticks)
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
        inset.set_title("zoom: top-1 >= 80%", fontsize=7)
        inset.set_ylabel("top-1 (%)", fontsize=7)
    _title(ax, title or "Accuracy vs accumulator width: wrap vs saturate", results)
    return _finish(fig, table, out)


# --------------------------------------------------------------- energy vs accuracy

def pareto_front(df: pd.DataFrame, x: str = "energy_per_image_uj", y: str = "top1") -> pd.Series:
    """True for rows no other row beats (lower or equal `x` and strictly higher `y`)."""
    order = df.sort_values([x, y], ascending=[True, False], kind="stable")
    best = -math.inf
    keep = pd.Series(False, index=df.index)
    for idx, v in order[y].items():
        if v > best:
            keep[idx] = True
            best = v
    return keep


def _label_points(ax, pts: pd.DataFrame) -> list[str]:
    """Number the frontier points from the cheapest (a small number beside each, no leader
    lines to cross) and list the numbers with their labels in a box in the axes' upper right.
    Returns the listed lines."""
    from matplotlib.offsetbox import AnchoredText

    lines = []
    for i, (_, r) in enumerate(pts.sort_values("energy_per_image_uj").iterrows(), start=1):
        ax.annotate(str(i), (r["energy_per_image_uj"], 100 * r["top1"]), xytext=(-5, 5),
                    textcoords="offset points", fontsize=7, fontweight="bold", ha="right",
                    va="bottom", zorder=6)
        lines.append(f"{i}: {r['label']} ({100 * r['top1']:.1f}%, "
                     f"{r['energy_per_image_uj']:.3g} µJ)")
    if lines:
        box = AnchoredText("Pareto frontier:\n" + "\n".join(lines), loc="center right",
                           prop={"size": 7}, frameon=True)
        box.patch.set(alpha=0.85, edgecolor="0.6")
        ax.add_artist(box)
    return lines


def energy_vs_accuracy(results: pd.DataFrame, ax=None, out: str | Path | None = None,
                       hue: str = "quant_label", title: str | None = None,
                       min_label_top1: float = 0.0):
    """Energy per image vs top-1 for every configuration that ran, with the Pareto frontier
    (least energy for the accuracy) drawn and its points labelled."""
    fig, ax = _new_ax(ax, (7.0, 4.6))
    ok = _ok(results).copy()
    n_refused = len(results) - len(ok)
    ok["pareto"] = pareto_front(ok)
    ok["label"] = [_short(r) for _, r in ok.iterrows()]
    cols = ["label", hue, "overflow_mode", "acc_bits", "top1", "energy_per_image_uj",
            "latency_us", "avg_power_mw", "weight_storage_kib", "pareto"]
    table = ok[[c for c in cols if c in ok]].sort_values("energy_per_image_uj")
    hues = _hue_order(ok, hue)
    colors = dict(zip(hues, _colors(len(hues))))
    markers = {"exact": "o", "wrap": "^", "saturate": "s"}
    from matplotlib.lines import Line2D

    for h in hues:
        for mode, mk in markers.items():
            sub = ok[(ok[hue] == h) & (ok["overflow_mode"] == mode)]
            if len(sub):
                ax.scatter(sub["energy_per_image_uj"], 100 * sub["top1"], color=colors[h],
                           marker=mk, s=22, alpha=0.75, edgecolor="none")
    front = ok[ok["pareto"]].sort_values("energy_per_image_uj")
    if len(front):
        ax.step(front["energy_per_image_uj"], 100 * front["top1"], where="post", color="k",
                lw=2.6, zorder=4)
        ax.scatter(front["energy_per_image_uj"], 100 * front["top1"], facecolor="none",
                   edgecolor="k", s=70, lw=1.6, zorder=5)
    e = ok["energy_per_image_uj"]
    if len(e) and e.min() > 0 and e.max() / e.min() > 8:
        ax.set_xscale("log")
    _zoom_y(ax, 100 * ok["top1"], axis_label("top1"), top=101)
    fig.npusim_frontier_labels = (_label_points(ax, front[front["top1"] >= min_label_top1])
                          if len(front) else [])
    handles = [Line2D([], [], color=colors[h], marker="o", ls="", label=str(h)) for h in hues]
    handles += [Line2D([], [], color="0.3", marker=m, ls="", label=k) for k, m in markers.items()
                if (ok["overflow_mode"] == k).any()]
    handles.append(Line2D([], [], color="k", lw=2.6, marker="o", mfc="none",
                          label="Pareto frontier"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_xlabel(axis_label("energy_per_image_uj"))
    ax.grid(alpha=0.3)
    if n_refused:
        ax.text(0.01, 0.01, f"{n_refused} configuration(s) refused by the NPU: no point",
                transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")
    _title(ax, title or "Energy per image vs accuracy (all configurations)", results)
    return _finish(fig, table, out)


# ------------------------------------------------------------- per-layer energy

def layer_energy(layers: pd.DataFrame, ax=None, out: str | Path | None = None,
                 title: str | None = None):
    """Per-layer energy per image, stacked by component (a per-layer cost table with
    ``<component>_pj`` columns, as `estimate_cost().layers` or the sweep's layer tables)."""
    lay = layers[layers["energy_pj"].fillna(0) > 0].reset_index(drop=True)
    fig, ax = _new_ax(ax, (max(7.0, 0.28 * len(lay) + 2), 4.4))
    comps = [c for c in COMPONENTS if f"{c}_pj" in lay and lay[f"{c}_pj"].fillna(0).sum() > 0]
    table = pd.DataFrame({"layer": lay["layer"], "op": lay["op"]})
    for c in comps:
        table[f"{c}_nj"] = lay[f"{c}_pj"].fillna(0) / 1e3
    table["total_nj"] = lay["energy_pj"] / 1e3
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    colors = _colors(len(COMPONENTS))
    for c in comps:
        vals = table[f"{c}_nj"].to_numpy()
        ax.bar(x, vals, bottom=bottom, width=0.8, label=c, color=colors[COMPONENTS.index(c)])
        bottom += vals
    ax.set_xticks(x)
    ax.set_xticklabels(table["layer"], rotation=90, fontsize=7)
    ax.set_ylabel("energy per image (nJ)")
    ax.set_xlabel("layer")
    ax.legend(title="component", fontsize=8, title_fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_title(title or "Energy per layer by component", fontsize=10)
    return _finish(fig, table, out)


# ---------------------------------------------------------------------- savings

_SAVINGS = [("energy_saving_vs_fp32", "energy vs FP32"), ("energy_saving_vs_int8", "energy vs INT8"),
            ("storage_saving_vs_fp32", "storage vs FP32"),
            ("storage_saving_vs_int8", "storage vs INT8")]


def savings(results: pd.DataFrame, ax=None, out: str | Path | None = None,
            label: str = "label", title: str | None = None):
    """Energy and weight-storage savings vs the FP32 and INT8 baselines (x times smaller),
    one group of bars per row of `results` (pick one configuration per setting first)."""
    df = results.reset_index(drop=True).copy()
    if label not in df:
        df[label] = [_short(r) for _, r in df.iterrows()]
    fig, ax = _new_ax(ax, (max(6.0, 1.6 * len(df) + 2), 4.2))
    table = df[[label, *[c for c, _ in _SAVINGS],
                *[c for c in ("energy_per_image_uj", "fp32_energy_per_image_uj",
                              "int8_energy_per_image_uj", "weight_storage_kib", "top1")
                  if c in df]]]
    n = len(_SAVINGS)
    wbar = 0.8 / n
    x = np.arange(len(df))
    colors = ["#1f77b4", "#aec7e8", "#d62728", "#ff9896"]
    for i, (col, name) in enumerate(_SAVINGS):
        vals = df[col].astype(float).to_numpy()
        bars = ax.bar(x - 0.4 + wbar * (i + 0.5), vals, width=wbar, label=name, color=colors[i])
        ax.bar_label(bars, labels=[f"{v:.1f}×" if np.isfinite(v) else "" for v in vals],
                     fontsize=7, padding=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(df[label], fontsize=8)
    ax.set_ylabel("saving (× less than the baseline)")
    ax.margins(y=0.12)
    ax.legend(fontsize=8, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Energy and weight-storage savings vs FP32 and INT8", fontsize=10)
    return _finish(fig, table, out)


# ----------------------------------------------------------- accumulator ranges

def accumulator_ranges(layers: pd.DataFrame, ax=None, out: str | Path | None = None,
                       acc_bits: int | None = None, title: str | None = None,
                       available: bool = True):
    """The overflow-debugging view: per conv/linear layer, the bits its observed accumulator
    values needed, the exact weight (L1) bound and the data-type bound, against the width
    available (`acc_bits`, default the table's own; no line with ``available=False``). Bars
    above the line do not fit it."""
    lay = layers.dropna(subset=["observed_bits"]).reset_index(drop=True)
    fig, ax = _new_ax(ax, (max(7.0, 0.3 * len(lay) + 2), 4.2))
    if not available:
        acc_bits = None
    elif acc_bits is None and "acc_bits" in lay and len(lay):
        acc_bits = int(lay["acc_bits"].max())
    table = pd.DataFrame({
        "layer": lay["layer"], "op": lay["op"],
        "observed_bits": lay["observed_bits"].astype(int),
        "bound_l1_bits": lay["bound_l1_bits"].astype(int),
        "bound_dtype_bits": lay["bound_dtype_bits"].astype(int),
        "acc_min": lay["acc_min"], "acc_max": lay["acc_max"], "available_bits": acc_bits})
    table["exceeds_available"] = table["observed_bits"] > (acc_bits or math.inf)
    x = np.arange(len(table))
    blue, red = "#1f77b4", "#d62728"
    col = np.where(table["exceeds_available"], red, blue)
    ax.bar(x, table["observed_bits"], width=0.7, color=col)
    ax.scatter(x, table["bound_l1_bits"], marker="_", s=120, lw=2, color="k", zorder=3)
    ax.scatter(x, table["bound_dtype_bits"], marker="^", s=18, color="0.5", zorder=3)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=blue, label="observed (bits the data needed)")]
    if table["exceeds_available"].any():
        handles.append(Patch(color=red, label="observed, wider than available"))
    handles += [Line2D([], [], marker="_", ms=10, mew=2, ls="", color="k",
                       label="worst case (weight L1 bound)"),
                Line2D([], [], marker="^", ls="", color="0.5", label="data-type bound")]
    if acc_bits is not None:
        ax.axhline(acc_bits, color=red, ls="--", lw=1.2)
        handles.append(Line2D([], [], color=red, ls="--", label=f"available: {acc_bits} bits"))
    ax.set_xticks(x)
    ax.set_xticklabels(table["layer"], rotation=90, fontsize=7)
    ax.set_ylabel("accumulator bits")
    ax.set_xlabel("layer")
    top = max([table[c].max() for c in ("bound_dtype_bits", "observed_bits")]
              + [acc_bits or 0], default=8)
    ax.set_ylim(0, top + 6)
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.legend(handles=handles, fontsize=7, loc="upper left", ncols=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Accumulator range per layer vs available width", fontsize=10)
    return _finish(fig, table, out)


# ----------------------------------------------------------------------- custom

def _x_is_ordered(df: pd.DataFrame, x: str, keys: list[str]) -> bool:
    """Whether `x` is a swept, ordered axis: numeric, with one value per group and x (seeds
    aside), so a line between neighbours means something."""
    if not pd.api.types.is_numeric_dtype(df[x]) or not len(df):
        return False
    per = [*keys, x] + ([c for c in ("seed",) if c in df and c not in keys and c != x])
    return not df.duplicated(per).any()


def custom(results: pd.DataFrame, x: str, y: str, hue: str | None = None,
           style: str | None = None, ax=None, out: str | Path | None = None,
           kind: str = "auto", title: str | None = None):
    """Any two columns of a results table: a scatter by default, lines (one per `hue` x
    `style` group, sorted by x) when `x` is an ordered sweep axis (numeric, one point per group
    and value). Several seeds at one point become their mean with a min-max error bar.
    Colour encodes `hue`, the marker `style`; accuracy columns are drawn in percent."""
    for c in (x, y, hue, style):
        if c is not None and c not in results:
            raise KeyError(f"no column {c!r} in the results (have: {', '.join(results.columns)})")
    df = _ok(results).copy()
    fig, ax = _new_ax(ax, (7.0, 4.4))
    scale = 100.0 if y in _PERCENT else 1.0
    keys = [k for k in dict.fromkeys((hue, style)) if k]
    if kind == "auto":
        kind = "line" if _x_is_ordered(df, x, keys) else "scatter"
    seeds = "seed" in df and df["seed"].nunique() > 1 and x != "seed" and "seed" not in keys
    hues = list(dict.fromkeys(df[hue])) if hue else [None]
    styles = list(dict.fromkeys(df[style])) if style else [None]
    colors = dict(zip(hues, _colors(len(hues))))
    mks = dict(zip(styles, ["o", "s", "^", "D", "v", "P"] * 3))
    rows = []
    groups = list(df.groupby(keys, sort=False)) if keys else [((), df)]
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        kv = dict(zip(keys, key))
        h, st = kv.get(hue) if hue else None, kv.get(style) if style else None
        label = " ".join(str(v) for v in key) or None
        if seeds and pd.api.types.is_numeric_dtype(df[y]):
            agg = (sub.groupby(x, sort=True)[y].agg(["mean", "min", "max", "count"])
                   .reset_index())
            xs, ys = agg[x], scale * agg["mean"]
            err = [scale * (agg["mean"] - agg["min"]), scale * (agg["max"] - agg["mean"])]
            ax.errorbar(xs, ys, yerr=err, ls="-" if kind == "line" else "", marker=mks[st],
                        ms=4, color=colors[h], label=label, capsize=2, lw=1.2)
            rows.append(agg.rename(columns={"mean": f"{y}_mean", "min": f"{y}_min",
                                            "max": f"{y}_max", "count": "seeds"})
                        .assign(**kv))
            continue
        if kind == "line":
            sub = sub.sort_values(x)
            ax.plot(sub[x], scale * sub[y], ls="-", marker=mks[st], ms=4, color=colors[h],
                    label=label)
        else:
            ax.scatter(sub[x], scale * sub[y], marker=mks[st], color=colors[h], label=label,
                       s=20)
    ax.set_xlabel(axis_label(x))
    ylabel = axis_label(y) + (" (mean, bars: min-max over seeds)" if seeds else "")
    if scale == 100.0 and len(df):
        _zoom_y(ax, scale * df[y].astype(float), ylabel)
    else:
        ax.set_ylabel(ylabel)
    if pd.api.types.is_integer_dtype(df[x]) or (
            pd.api.types.is_numeric_dtype(df[x]) and len(df) and (df[x] % 1 == 0).all()):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    refused = results[results["status"] != "ok"] if "status" in results else results.iloc[:0]
    if len(refused) and pd.api.types.is_numeric_dtype(refused[x]) and refused[x].notna().any():
        _refused_marks(ax, sorted(refused[x].dropna().unique()))
        from matplotlib.lines import Line2D

        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=[*handles, Line2D([], [], color="0.35", marker="x", ls="",
                                            label=f"refused by the NPU ({len(refused)})")],
                  title=" / ".join(keys) or None, fontsize=8, title_fontsize=8)
    elif keys:
        ax.legend(title=" / ".join(keys), fontsize=8, title_fontsize=8)
    ax.grid(alpha=0.3)
    _title(ax, title or f"{axis_label(y)} vs {axis_label(x)}", results)
    if rows:
        table = pd.concat(rows, ignore_index=True)
        table = table[[*keys, *[c for c in table.columns if c not in keys]]]
    else:
        table = df[[c for c in dict.fromkeys([*keys, x, y, "point_hash"]) if c in df]]
    return _finish(fig, table, out)
