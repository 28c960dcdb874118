"""Sweeps: axis parsing, the SQLite results store, cached training reused across NPU axes,
and a sweep killed with SIGKILL that resumes with exactly the expected rows."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from npusim.cli.app import main
from npusim.hw.config import ConfigError
from npusim.sweep import Grid, ResultsStore, parse_npu_axis, parse_quant_axis, parse_values, sweep

ROOT = Path(__file__).resolve().parents[3]
TINY = dict(model="resnet8", dataset="synthetic", width=0.25, epochs=1, float_epochs=1,
            images=32)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One model cache per test process, so the tiny float/QAT models train once."""
    return tmp_path_factory.mktemp("npusim-cache")


@pytest.fixture
def cache(shared_cache, monkeypatch):
    monkeypatch.setenv("NPUSIM_CACHE", str(shared_cache))
    return shared_cache


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text, values", [
    ("8,16", [8, 16]),
    ("10:14", [10, 11, 12, 13, 14]),
    ("8:20:4", [8, 12, 16, 20]),
    ("8,12:13,8", [8, 12, 13]),
    ("wrap,saturate", ["wrap", "saturate"]),
    ("0.5,1", [0.5, 1]),
])
def test_parse_values(text, values):
    assert parse_values(text) == values


@pytest.mark.parametrize("text, needle", [
    ("", "no values"), ("8:4", "empty"), ("8:16:0", "positive step"), ("8,,9", "empty value"),
    ("1:100000", "more than"), ("8:1x", None),
])
def test_parse_values_errors(text, needle):
    if needle is None:  # not a range: kept as a string, rejected later by the config
        assert parse_values(text) == ["8:1x"]
        return
    with pytest.raises(ConfigError) as e:
        parse_values(text, "--set k")
    assert needle in one_line(e)


def test_npu_axis_validates_every_value_against_the_config():
    ax = parse_npu_axis("precision.pe_acc_bits,precision.acc_bits=10:12")
    assert ax.keys == ("precision.pe_acc_bits", "precision.acc_bits")
    assert ax.values == (10, 11, 12)
    assert parse_npu_axis("array.dataflow=os,ws").values == ("os", "ws")
    with pytest.raises(ConfigError) as e:
        parse_npu_axis("precision.acc_bitz=8:16")
    msg = one_line(e)
    assert "precision.acc_bitz" in msg and "unknown key" in msg and "precision.acc_bits" in msg
    with pytest.raises(ConfigError) as e:
        parse_npu_axis("precision.overflow=wrap,clip")
    assert "precision.overflow" in one_line(e) and "clip" in one_line(e)
    with pytest.raises(ConfigError) as e:
        parse_npu_axis("precision.acc_bits")
    assert "KEY=" in one_line(e)


def test_quant_axis_and_grid_points():
    assert parse_quant_axis("bits=8/8,4/4,2").values == ("8/8", "4/4", "2")
    with pytest.raises(ConfigError) as e:
        parse_quant_axis("wbits=4")
    assert "wbits" in one_line(e) and "unknown key" in one_line(e)
    with pytest.raises(ConfigError) as e:
        parse_quant_axis("method=lsq,nope")
    assert "method" in one_line(e)
    g = Grid.parse(["bits=8,4/2", "overrides=none,fc:w8a8"],
                   ["precision.acc_bits=16,20", "precision.overflow=wrap,saturate"])
    pts = g.points()
    assert len(g) == len(pts) == 16
    # quantization-major: the first 4 points share one model
    qs = [p.quant.model_dump_json() for p in pts]
    assert len(set(qs[:4])) == 1 and len(set(qs)) == 4
    assert (pts[5].quant.weight_bits, pts[5].quant.act_bits) == (8, 8)
    assert pts[5].quant.overrides[0].pattern == "fc"
    assert (pts[-1].quant.weight_bits, pts[-1].quant.act_bits) == (4, 2)
    assert pts[1].npu.precision.acc_bits == 16 and pts[1].npu.precision.overflow == "saturate"
    assert "acc_bits=16" in pts[1].label() and "lsq-W8A8" in pts[1].label()
    with pytest.raises(ConfigError) as e:  # a combination the NPU config refuses
        Grid.parse([], ["precision.acc_bits=32,40", "requant.multiplier_bits=32"]).points()
    assert "precision.acc_bits" in one_line(e)
    with pytest.raises(ConfigError) as e:  # one key on two axes
        Grid.parse([], ["precision.acc_bits=8", "precision.acc_bits,array.rows=8"])
    assert "already swept" in one_line(e)


@pytest.mark.parametrize("args, needle", [
    (["--set", "precision.acc_bitz=8:16"], "precision.acc_bitz"),
    (["--set", "precision.acc_bits=8:"], "precision.acc_bits"),
    (["--set", "nokey"], "KEY=V1"),
    (["--acc-bits", "1:4"], "greater than or equal to 2"),
    (["--quant", "wbits=4"], "wbits"),
])
def test_cli_sweep_rejects_bad_axes_with_one_line(args, needle, capsys, tmp_path):
    rc = main(["sweep", *args, "--db", str(tmp_path / "r.sqlite"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (tmp_path / "r.sqlite").exists()  # nothing ran, nothing was created


@pytest.mark.slow
def test_cli_sweep_unknown_set_key_in_a_subprocess():
    res = subprocess.run([sys.executable, "-m", "npusim.cli", "sweep", "--set",
                          "precision.acc_bitz=8,16"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "precision.acc_bitz" in res.stderr
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- store

def test_store_commits_each_point_once_and_reads_back(tmp_path):
    path = tmp_path / "r.sqlite"
    lay = pd.DataFrame({"layer": ["a", "b"], "observed_bits": [7, pd.NA]})
    with ResultsStore(path) as st:
        assert st.put("h1", {"top1": 0.5, "x": float("nan")}, lay)
        assert not st.put("h1", {"top1": 0.9})  # never duplicated, first result kept
        assert st.put("h2", {"top1": 0.25, "extra": "y"})
        st.set_meta("command", "npusim sweep ...")
    with ResultsStore(path) as st:  # reopened: everything persisted
        assert len(st) == 2 and st.done() == {"h1", "h2"} and "h1" in st
        df = st.to_frame()
        assert list(df["point_hash"]) == ["h1", "h2"]
        assert df.loc[0, "top1"] == 0.5 and pd.isna(df.loc[0, "x"])
        assert list(st.to_frame(["h2", "h1", "zz"])["point_hash"]) == ["h2", "h1"]
        assert st.layers("h1")["layer"].tolist() == ["a", "b"]
        assert st.layers("h2").empty
        assert st.get_meta("command") == "npusim sweep ..."
        st.export_csv(tmp_path / "r.csv")
    assert len(pd.read_csv(tmp_path / "r.csv")) == 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_store_refuses_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_text("not sqlite " * 100)
    with pytest.raises(ValueError) as e:
        ResultsStore(bad)
    assert "x.sqlite" in one_line(e)


# ---------------------------------------------------------------------------- sweeps

@pytest.mark.slow
def test_sweep_trains_once_per_quant_setting(cache, tmp_path, monkeypatch):
    import quantize.cached

    calls = []
    real = quantize.cached.qat_train
    monkeypatch.setattr(quantize.cached, "qat_train",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    before = set((cache / "qat").glob("*.pt")) if (cache / "qat").exists() else set()
    grid = Grid.parse(["bits=3"], ["precision.pe_acc_bits,precision.acc_bits=12,16,24",
                                   "precision.overflow=wrap,saturate"])
    db = tmp_path / "r.sqlite"
    df = sweep(grid, store=db, **TINY)
    assert len(df) == 6 and df["point_hash"].is_unique
    assert len(calls) <= 1  # trained at most once (zero if an earlier test cached it)
    new = set((cache / "qat").glob("*.pt")) - before
    assert len(new) <= 1 and len(set((cache / "qat").glob("*lsq-W3A3*.pt"))) == 1
    # NPU-only axes added later: no retraining, no new cache file, old points not rerun
    n_calls, first = len(calls), df.set_index("point_hash")["finished_at"]
    grid2 = Grid.parse(["bits=3"], ["precision.pe_acc_bits,precision.acc_bits=12,16,24,32",
                                    "precision.overflow=wrap,saturate"])
    df2 = sweep(grid2, store=db, **TINY)
    assert len(calls) == n_calls and len(df2) == 8
    assert set((cache / "qat").glob("*.pt")) - before == new
    again = df2.set_index("point_hash")["finished_at"]
    assert (again[first.index] == first).all()
    # the tidy frame: one row per point with results, config columns and versions
    ok = df2[df2["status"] == "ok"]
    assert len(ok) >= 2
    for col in ("top1", "overflow_rate", "energy_per_image_uj", "latency_us", "avg_power_mw",
                "weight_storage_kib", "energy_saving_vs_fp32", "energy_saving_vs_int8",
                "storage_saving_vs_fp32", "npu_hash", "quant_hash", "npusim_version",
                "torch_version", "acc_bits", "overflow_mode", "wa"):
        assert col in df2 and ok[col].notna().all(), col
    assert ((ok["top1"] >= 0) & (ok["top1"] <= 1)).all()
    refused = df2[df2["status"] == "rejected"]
    assert (refused["error"].str.contains("product")).all() and refused["top1"].isna().all()
    with ResultsStore(db) as st:
        lay = st.layers(ok["point_hash"].iloc[0])
    assert {"observed_bits", "bound_l1_bits", "energy_pj", "mac_pj", "dram_pj"} <= set(lay)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import npusim.sweep.run as run
    from npusim.sweep import Grid, sweep

    real = run._run_point
    def slow(*a, **k):  # keep each point long enough to be killed between and during points
        out = real(*a, **k)
        time.sleep(0.4)
        return out
    run._run_point = slow
    grid = Grid.parse(["bits=3"], ["precision.pe_acc_bits,precision.acc_bits=14:21",
                                   "precision.overflow=wrap"])
    sweep(grid, store=sys.argv[1], **{tiny})
""")


def _rows(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM points").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


@pytest.mark.slow
def test_sweep_resumes_after_sigkill(cache, tmp_path):
    db = tmp_path / "kill.sqlite"
    script = tmp_path / "run_sweep.py"
    script.write_text(_KILL_SCRIPT.replace("{tiny}", repr(TINY)))
    env = {**os.environ, "NPUSIM_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(db)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while _rows(db) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep never stored a point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with ResultsStore(db) as st:
        before = st.to_frame()
    assert 2 <= len(before) < 8  # killed mid-sweep
    grid = Grid.parse(["bits=3"], ["precision.pe_acc_bits,precision.acc_bits=14:21",
                                   "precision.overflow=wrap"])
    df = sweep(grid, store=db, **TINY)
    assert len(df) == 8 and df["point_hash"].is_unique
    assert df["acc_bits"].tolist() == list(range(14, 22))
    with ResultsStore(db) as st:
        after = st.to_frame()
    assert len(after) == 8 and after["point_hash"].is_unique  # nothing lost or duplicated
    kept = after.set_index("point_hash").loc[before["point_hash"], "finished_at"]
    assert kept.tolist() == before["finished_at"].tolist()  # stored points were not rerun


@pytest.mark.slow
def test_cli_sweep_runs_and_exports_csv(cache, tmp_path, capsys):
    db, csv = tmp_path / "r.sqlite", tmp_path / "r.csv"
    args = ["sweep", "--model", "resnet8", "--data", "synthetic", "--width", "0.25",
            "--epochs", "1", "--float-epochs", "1", "--images", "32", "--bits", "3",
            "--acc-bits", "16,24", "--overflow", "wrap", "--set", "array.dataflow=os,ws",
            "--set", "requant.rounding=half_even",
            "--db", str(db), "--csv", str(csv), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 points" in out and "top1_%" in out
    # the pinned key differs from the exported program's: said once, recorded in every row
    assert [ln for ln in out.splitlines() if ln.startswith("requant:")] == [
        "requant: the NPU's [requant] differs from the program's: rounding half_up -> half_even"]
    df = pd.read_csv(csv)
    assert len(df) == 4 and set(df["dataflow"]) == {"os", "ws"}
    assert set(df["rounding"]) == {"half_even"} and set(df["add_frac_bits"]) == {20}
    assert json.loads(df["quant_config"].iloc[0])["weight_bits"] == 3
