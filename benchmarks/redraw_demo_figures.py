"""Redraw the demo's sweep figures in reports/ from the committed results CSV (no store, no
training, no simulation): ``python benchmarks/redraw_demo_figures.py [reports]``.

For figure changes that do not need new numbers; `npusim demo` / `npusim report` redraw them
from the results store as well."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from npusim.report import plots
from npusim.report.sweep_report import RESULTS_CSV, _with_setting


def main(folder: str = "reports") -> None:
    out = Path(folder)
    df = _with_setting(pd.read_csv(out / RESULTS_CSV))
    plots.accuracy_vs_acc_bits(df, hue="setting", out=out / "acc_vs_width.png")
    plots.energy_vs_accuracy(df, hue="setting", out=out / "energy_vs_accuracy.png")
    print(f"redrew {out / 'acc_vs_width.png'} and {out / 'energy_vs_accuracy.png'}")  # noqa: T201


if __name__ == "__main__":
    main(*sys.argv[1:])
