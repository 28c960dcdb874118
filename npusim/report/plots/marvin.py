"""MARViN figures: the per-layer word-length history as a heatmap, and the training cost of
each variant vs float32. Same conventions as `npusim.report.plots.figures` (an ``ax`` or a new
figure; with ``out``, the PNG plus the plotted table beside it as CSV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from npusim.report.plots.figures import _finish, _new_ax

__all__ = ["precision_heatmap", "training_savings"]


def precision_heatmap(history: pd.DataFrame, ax=None, out: str | Path | None = None,
                      batches: int | None = None, title: str | None = None,
                      value: str = "word_length_bits"):
    """Word length per layer (rows, in the history's order) and training iteration (x), one
    cell per decision interval; colour = word length in bits.

    Args:
        history: the controller's decisions (``iteration, layer`` and `value`).
        batches: the run's total batches (the last interval's end; default: last decision + 1).
        value: the word drawn: the weights' (``word_length_bits``), the activations'
            (``act_word_bits``) or the gradients' (``grad_word_bits``).
    """
    need = {"iteration", "layer", value}
    missing = sorted(need - set(history.columns))
    if missing:
        raise ValueError(f"history: missing column {missing[0]!r}")
    layers = list(dict.fromkeys(history["layer"]))
    its = sorted({int(i) for i in history["iteration"]})
    end = int(batches) if batches is not None else its[-1] + 1
    grid = (history.drop_duplicates(["layer", "iteration"], keep="last")
            .pivot(index="layer", columns="iteration", values=value)
            .reindex(index=layers, columns=its).ffill(axis=1))
    fig, ax = _new_ax(ax, (8.0, max(3.0, 0.22 * len(layers) + 1.4)))
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm

    menu = sorted({int(v) for v in history[value]})
    bounds = [menu[0] - 0.5] + [(a + b) / 2 for a, b in zip(menu, menu[1:])] + [menu[-1] + 0.5]
    cmap = colormaps["viridis"].resampled(max(len(menu), 2))
    norm = BoundaryNorm(bounds, cmap.N)
    edges = np.array(its + [max(end, its[-1] + 1)], dtype=float)
    mesh = ax.pcolormesh(edges, np.arange(len(layers) + 1), grid.to_numpy(dtype=float),
                         cmap=cmap, norm=norm, shading="flat")
    cb = fig.colorbar(mesh, ax=ax, ticks=menu, pad=0.01)
    cb.set_label("word length (bits)")
    ax.set_yticks(np.arange(len(layers)) + 0.5)
    ax.set_yticklabels(layers, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("training iteration (batches)")
    ax.set_ylabel("layer")
    what = {"act_word_bits": "activation", "grad_word_bits": "gradient"}.get(value, "weight")
    ax.set_title(title or f"MARViN {what} word length per layer", fontsize=10)
    table = history[[c for c in ("iteration", "layer", "word_length_bits", "frac_bits",
                                 "kl_nats", "reason", "act_word_bits", "act_sqnr_db",
                                 "act_reason", "grad_word_bits", "grad_sqnr_db", "grad_reason")
                     if c in history.columns]]
    return _finish(fig, table, out)


def training_savings(results: pd.DataFrame, ax=None, out: str | Path | None = None,
                     label: str = "label", title: str | None = None):
    """Estimated training speedup and energy saving vs float32 (x), one bar pair per row.

    `results` needs ``speedup_vs_fp32`` and ``energy_ratio_vs_fp32`` (energy / fp32 energy;
    the bar shows its inverse, the saving).
    """
    df = results.reset_index(drop=True).copy()
    fig, ax = _new_ax(ax, (max(6.0, 1.2 * len(df) + 2), 4.0))
    x = np.arange(len(df))
    speed = df["speedup_vs_fp32"].astype(float).to_numpy()
    saving = 1.0 / df["energy_ratio_vs_fp32"].astype(float).to_numpy()
    for off, vals, name, color in ((-0.2, speed, "speedup vs float32", "#1f77b4"),
                                   (0.2, saving, "energy saving vs float32", "#2ca02c")):
        bars = ax.bar(x + off, vals, width=0.4, label=name, color=color)
        ax.bar_label(bars, labels=[f"{v:.2f}×" for v in vals], fontsize=7, padding=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(df[label], fontsize=8)
    ax.set_ylabel("× vs float32 training (estimated)")
    ax.margins(y=0.12)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Estimated training speedup and energy saving vs float32", fontsize=10)
    table = df.assign(energy_saving_vs_fp32=saving)
    return _finish(fig, table, out)
