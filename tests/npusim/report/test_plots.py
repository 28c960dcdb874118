"""Figures and reports: every plot writes a PNG and the CSV behind it with the expected
columns; the Pareto frontier; `npusim report` and `npusim plot` from a results store."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from npusim.cli.app import main
from npusim.report import plots
from npusim.report.sweep_report import FIGURES, write_report
from npusim.sweep import ResultsStore

COMPONENTS = ("mac", "operand", "accumulator", "requant", "vector", "sram", "lookup", "dram",
              "leakage")


def fake_results() -> pd.DataFrame:
    """A sweep-shaped table: 2 W/A settings x widths 8..16 x wrap/saturate, plus exact."""
    rows = []
    for wb, need in ((8, 14), (4, 11)):
        for bits, mode in [(w, m) for w in range(8, 18, 2) for m in ("wrap", "saturate")] + [
                (32, "exact")]:
            refused = bits < wb + 4
            acc = np.clip(0.98 - (0.45 if mode == "wrap" else 0.2) * max(need - bits, 0), 0.1, 1)
            e = 10 + wb * 2 + 0.1 * bits
            rows.append({
                "point_hash": f"{wb}-{bits}-{mode}", "quant_label": f"lsq-W{wb}A{wb}",
                "wa": f"W{wb}A{wb}", "weight_bits": wb, "act_bits": wb, "method": "lsq",
                "acc_bits": bits, "pe_acc_bits": bits, "overflow_mode": mode,
                "status": "rejected" if refused else "ok",
                "error": "node 'stem': a single product needs more bits" if refused else "",
                "top1": None if refused else float(acc),
                "overflow_rate": None if refused else 1e-3 * max(need - bits, 0),
                "overflowing_layers": 0, "max_observed_bits": need,
                "energy_per_image_uj": None if refused else e,
                "latency_us": 300.0, "avg_power_mw": 200.0, "weight_storage_kib": 30.0 * wb,
                "energy_saving_vs_fp32": 600 / e, "energy_saving_vs_int8": 80 / e,
                "storage_saving_vs_fp32": 32 / wb, "storage_saving_vs_int8": 8 / wb,
                "fp32_energy_per_image_uj": 600.0, "int8_energy_per_image_uj": 80.0,
                "model": "resnet8", "dataset": "synthetic", "images": 32, "npu": "edge16",
                "dataflow": "os", "rows": 16, "cols": 16,
            })
    return pd.DataFrame(rows)


def fake_layers(acc_bits=12) -> pd.DataFrame:
    names = ["stem", "layer1.0.conv1", "layer1.0.add", "fc"]
    ops = ["conv2d", "conv2d", "add", "linear"]
    df = pd.DataFrame({"layer": names, "op": ops,
                       "observed_bits": [14, 9, None, 11], "bound_l1_bits": [15, 12, None, 13],
                       "bound_dtype_bits": [20, 16, None, 17], "acc_min": [-9000, -200, None, -900],
                       "acc_max": [8000, 250, None, 1000], "acc_bits": [acc_bits] * 4})
    for i, c in enumerate(COMPONENTS):
        df[f"{c}_pj"] = [100.0 * (i + 1), 50.0, 5.0 if c == "vector" else 0.0, 20.0]
    df["lookup_pj"] = 0.0  # no embedding layer
    df["energy_pj"] = df[[f"{c}_pj" for c in COMPONENTS]].sum(axis=1)
    return df


def check_pair(path, columns):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = path.with_suffix(".csv")
    assert csv.is_file()
    df = pd.read_csv(csv)
    assert set(columns) <= set(df.columns), set(columns) - set(df.columns)
    return df


def test_accuracy_vs_acc_bits(tmp_path):
    out = tmp_path / "acc.png"
    fig = plots.accuracy_vs_acc_bits(fake_results(), out=out)
    df = check_pair(out, ["quant_label", "overflow_mode", "acc_bits", "status", "top1_pct"])
    assert set(df["overflow_mode"]) == {"wrap", "saturate"} and len(df) == 20
    ax = fig.axes[0]
    assert "bits" in ax.get_xlabel() and "%" in ax.get_ylabel()
    texts = [t.get_text() for leg in ax.findobj(lambda a: hasattr(a, "get_texts"))
             for t in leg.get_texts()]
    assert any("W4A4" in t for t in texts) and "saturate" in texts


def test_energy_vs_accuracy_marks_the_pareto_front(tmp_path):
    res = fake_results()
    out = tmp_path / "e.png"
    plots.energy_vs_accuracy(res[res["status"] == "ok"], out=out)
    df = check_pair(out, ["label", "top1", "energy_per_image_uj", "pareto"])
    front = df[df["pareto"]].sort_values("energy_per_image_uj")
    assert front["top1"].is_monotonic_increasing and len(front) >= 2
    ok = df.copy()
    for _, r in ok.iterrows():  # nothing beats a frontier point
        if r["pareto"]:
            assert not ((ok["energy_per_image_uj"] <= r["energy_per_image_uj"])
                        & (ok["top1"] > r["top1"])).any()


def test_pareto_front_small_case():
    df = pd.DataFrame({"energy_per_image_uj": [1, 2, 3, 2, 4], "top1": [0.5, 0.9, 0.8, 0.9, 0.95]})
    assert plots.pareto_front(df).tolist() == [True, True, False, False, True]


def test_layer_energy_and_accumulator_ranges_use_a_given_ax(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    assert plots.layer_energy(fake_layers(), ax=ax1) is fig
    out = tmp_path / "ranges.png"
    assert plots.accumulator_ranges(fake_layers(12), ax=ax2, out=out) is fig
    df = check_pair(out, ["layer", "observed_bits", "bound_l1_bits", "bound_dtype_bits",
                          "available_bits", "exceeds_available"])
    assert df["layer"].tolist() == ["stem", "layer1.0.conv1", "fc"]  # the add has no accumulator
    assert df["exceeds_available"].tolist() == [True, False, False]
    out2 = tmp_path / "layers.png"
    plots.layer_energy(fake_layers(), out=out2)
    df2 = check_pair(out2, ["layer", "mac_nj", "dram_nj", "total_nj"])
    assert "lookup_nj" not in df2  # all-zero components are left out
    assert np.allclose(df2.filter(like="_nj").drop(columns="total_nj").sum(axis=1),
                       df2["total_nj"])


def test_savings_and_custom(tmp_path):
    res = fake_results()
    pick = res[(res["overflow_mode"] == "exact")]
    out = tmp_path / "s.png"
    plots.savings(pick, out=out)
    check_pair(out, ["label", "energy_saving_vs_fp32", "energy_saving_vs_int8",
                     "storage_saving_vs_fp32", "storage_saving_vs_int8"])
    out2 = tmp_path / "c.png"
    fig = plots.custom(res, "acc_bits", "energy_per_image_uj", hue="quant_label",
                       style="overflow_mode", out=out2)
    check_pair(out2, ["quant_label", "overflow_mode", "acc_bits", "energy_per_image_uj"])
    assert fig.axes[0].get_ylabel() == "energy per image (µJ)"
    with pytest.raises(KeyError):
        plots.custom(res, "nope", "top1")


def _titles_and_texts(ax) -> str:
    return " ".join([ax.get_title(), ax.get_ylabel(), *[t.get_text() for t in ax.texts]])


def test_accuracy_vs_width_marks_refused_widths_and_states_images(tmp_path):
    res = fake_results()
    fig = plots.accuracy_vs_acc_bits(res)
    ax = fig.axes[0]
    assert "32 images per point" in ax.get_title()
    # the refused widths are x marks on the x axis (axes-fraction y = 0)
    marks = [c for c in ax.collections if c.get_offsets().shape[0]
             and np.allclose(c.get_offsets()[:, 1], 0.0)]
    refused = sorted(res.loc[res["status"] != "ok", "acc_bits"].unique())
    assert marks and sorted(marks[0].get_offsets()[:, 0]) == refused
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "refused" in legend


def test_energy_vs_accuracy_zooms_numbers_the_frontier_and_counts_refused():
    res = fake_results()
    fig = plots.energy_vs_accuracy(res)
    ax = fig.axes[0]
    text = _titles_and_texts(ax)
    ok = res[res["status"] == "ok"]
    assert f"{(res['status'] != 'ok').sum()} configuration(s) refused" in text
    assert "32 images per point" in text
    lo = ax.get_ylim()[0]
    assert 0 < lo <= 100 * ok["top1"].min() and f"axis from {lo:g}" in ax.get_ylabel()
    front = ok[plots.pareto_front(ok)]
    assert len(fig.npusim_frontier_labels) == len(front)
    step = [ln for ln in ax.lines if ln.get_linewidth() >= 2.5]
    assert step, "the frontier is drawn bold"


def test_custom_is_a_scatter_unless_x_is_an_ordered_axis():
    res = fake_results()
    ordered = plots.custom(res, "acc_bits", "top1", hue="quant_label", style="overflow_mode")
    assert len(ordered.axes[0].lines) > 0  # one point per group and width: lines
    free = plots.custom(res, "energy_per_image_uj", "top1", hue="quant_label")
    assert not free.axes[0].lines and free.axes[0].collections  # a scatter
    forced = plots.custom(res, "energy_per_image_uj", "top1", kind="line")
    assert forced.axes[0].lines


def test_custom_draws_error_bars_over_seeds(tmp_path):
    res = fake_results()
    seeds = pd.concat([res.assign(seed=0), res.assign(seed=1, top1=res["top1"] - 0.02)],
                      ignore_index=True)
    out = tmp_path / "s.png"
    fig = plots.custom(seeds, "acc_bits", "top1", hue="quant_label", style="overflow_mode",
                       out=out)
    table = pd.read_csv(out.with_suffix(".csv"))
    assert {"top1_mean", "top1_min", "top1_max", "seeds"} <= set(table.columns)
    assert (table["seeds"] == 2).all()
    assert np.allclose(table["top1_max"] - table["top1_min"], 0.02)
    assert "seeds" in fig.axes[0].get_ylabel()
    assert fig.axes[0].lines  # acc_bits stays an ordered axis across seeds


def _store(tmp_path) -> ResultsStore:
    st = ResultsStore(tmp_path / "r.sqlite")
    for _, r in fake_results().iterrows():
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()
               if k != "point_hash"}
        st.put(r["point_hash"], row, fake_layers(int(r["acc_bits"])) if r["status"] == "ok"
               else None)
    return st


@pytest.mark.slow
def test_report_writes_figures_and_an_index_and_keeps_other_files(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "qat_accuracy.csv").write_text("a,b\n1,2\n")
    (out / "qat_accuracy.md").write_text("# table\n")
    with _store(tmp_path) as st:
        st.set_meta("command", "npusim demo --test")
        written = write_report(st, out)
    for stem in FIGURES:
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.csv").is_file(), stem
    assert (out / "sweep_results.csv").is_file() and out / "README.md" in written
    assert (out / "qat_accuracy.csv").read_text() == "a,b\n1,2\n"  # left alone
    index = (out / "README.md").read_text()
    for stem in FIGURES:
        assert f"]({stem}.png)" in index and f"]({stem}.csv)" in index
    assert "(qat_accuracy.csv)" in index and "(qat_accuracy.md)" in index
    assert "npusim demo --test" in index and "| acc_bits |" in index


@pytest.mark.slow
def test_cli_report_and_plot(tmp_path, capsys):
    with _store(tmp_path):
        pass
    db = tmp_path / "r.sqlite"
    assert main(["report", str(db), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "README.md").is_file()
    out = tmp_path / "p.png"
    assert main(["plot", str(db), "--x", "acc_bits", "--y", "top1", "--hue", "quant_label",
                 "--style", "overflow_mode", "--where", "overflow_mode != 'exact'",
                 "--out", str(out)]) == 0
    check_pair(out, ["acc_bits", "top1", "quant_label", "overflow_mode"])
    capsys.readouterr()
    assert main(["plot", str(db), "--x", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--x" in err[0] and "nope" in err[0]
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2


@pytest.mark.slow
def test_importing_plots_and_sweep_stays_lean():
    code = ("import sys, npusim, npusim.report.plots, npusim.sweep, npusim.report.sweep_report; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
