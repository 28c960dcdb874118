"""The CLI of per-layer precision and hardware-only sweeps, in process: simulate --acc-bits,
sweep --program (no training), bounds --suggest (its output loads as an NPU config)."""

import pandas as pd
import pytest

from npusim.cli.app import main
from npusim.hw.config import NPUConfig
from npusim.ir.program import save_program
from tests.npusim.programs import stem_fc_program

LAYERED = """name = "layered"
[precision]
acc_bits = 16
pe_acc_bits = 16
[[layer]]
match = "stem"
precision = { acc_bits = 24, pe_acc_bits = 24 }
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    prog = tmp_path / "p.safetensors"
    save_program(stem_fc_program(seed=1, x_bits=8), prog)
    npu = tmp_path / "layered.toml"
    npu.write_text(LAYERED)
    return prog, npu, tmp_path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    return err[0]


def test_simulate_acc_bits_varies_the_body_and_tables_keep_theirs(files, capsys):
    prog, npu, tmp = files
    csv = tmp / "s.csv"
    assert main(["simulate", str(prog), "--npu", str(npu), "--limit", "20", "--acc-bits", "13",
                 "--overflow", "saturate", "--csv", str(csv)]) == 0
    assert "top-1" in capsys.readouterr().out
    st = pd.read_csv(csv).set_index("layer")
    assert (st.loc["stem", "acc_bits"], st.loc["stem", "pe_acc_bits"]) == (24, 24)
    assert (st.loc["fc", "acc_bits"], st.loc["fc", "pe_acc_bits"]) == (13, 13)
    assert st.loc["stem", "overflow"] == st.loc["fc", "overflow"] == "saturate"


@pytest.mark.parametrize("args, want", [
    (["--set", "layer[0].match=conv*"], "layer[0].match 'conv*' matches no node"),
    (["--set", "layer[0].precision.bits=3"], "layer[0].precision.bits: unknown key"),
    (["--acc-bits", "16", "--set", "precision.acc_bits=12"], "given more than once"),
    (["--overflow", "clip"], "precision.overflow: Input should be"),
])
def test_simulate_refuses_in_one_line(files, capsys, args, want):
    prog, npu, _ = files
    assert main(["simulate", str(prog), "--npu", str(npu), "--limit", "5", *args]) == 2
    assert want in _error_line(capsys)


def test_hardware_only_sweep_stores_rows_and_shows_refusal_reasons(files, capsys):
    prog, npu, tmp = files
    db, csv = tmp / "s.sqlite", tmp / "s.csv"
    args = ["sweep", "--program", str(prog), "--npu", str(npu), "--acc-bits", "11:13",
            "--overflow", "wrap,saturate", "--images", "30", "--db", str(db), "--csv", str(csv),
            "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # fc's products need 12 bits: the 11-bit body is refused, with its reason on screen
    assert out.count("refused pe_acc_bits,acc_bits=11 overflow=") == 2
    assert "node 'fc': a single product needs 12 bits" in out
    df = pd.read_csv(csv)
    assert len(df) == 6 and set(df["dataset"]) == {"digits"} and set(df["images"]) == {30}
    assert (df["status"] == "rejected").sum() == 2
    assert df.loc[df["status"] == "rejected", "error"].str.contains("a single product").all()
    assert set(df["layer_tables"]) == {"stem:pe_acc_bits=24,acc_bits=24"}
    ok = df[df["status"] == "ok"]
    assert ok["energy_per_image_uj"].gt(0).all() and ok["top1"].between(0, 1).all()
    assert len(set(df["quant_hash"])) == 1  # the program's hash keys every row
    from npusim.sweep import ResultsStore

    with ResultsStore(db) as store:  # the stored per-layer table: each layer's own widths
        h = ok.loc[ok["acc_bits"] == 13, "point_hash"].iloc[0]
        lay = store.layers(h).set_index("layer")
    assert (lay.loc["stem", "acc_bits"], lay.loc["fc", "acc_bits"]) == (24, 13)
    assert lay.loc["stem", "overflow"] in ("wrap", "saturate")
    # resumable: a second run reruns nothing and gives the same rows
    assert main(args) == 0
    capsys.readouterr()
    again = pd.read_csv(csv)
    assert again["point_hash"].tolist() == df["point_hash"].tolist()


def test_hardware_only_sweep_refuses_quant_axes(files, capsys):
    prog, npu, _ = files
    assert main(["sweep", "--program", str(prog), "--bits", "4/4"]) == 2
    assert "--program: a hardware-only sweep has no quantization axes" in _error_line(capsys)


def test_bounds_suggest_writes_an_npu_config_that_sees_no_overflow(files, capsys):
    from npusim.data import load_dataset
    from npusim.ir.program import load_program
    from npusim.sim.simulator import Simulator

    prog, _, tmp = files
    out = tmp / "suggest.toml"
    assert main(["bounds", str(prog), "--suggest", "--data", "digits", "--limit", "40",
                 "--npu", "edge16", "--set", "array.dataflow=ws", "--set", "array.rows=4",
                 "--set", "precision.overflow=wrap", "--out", str(out)]) == 0
    cfg = NPUConfig.from_toml(out)
    assert [t.match for t in cfg.layer] == ["stem", "fc"]
    text = out.read_text()
    assert "observed (digits/test, 40 images)" in text and "L1 bound acc" in text
    p = load_program(prog)
    images = load_dataset("digits", "test").subset(40).images
    st = Simulator(cfg).run(p, images).stats.set_index("layer")
    assert st.loc[["stem", "fc"], ["pe_overflows", "acc_overflows"]].to_numpy().sum() == 0
    # the bound's widths on stdout, a config too; never narrower than the observed ones
    capsys.readouterr()
    assert main(["bounds", str(prog), "--suggest", "--npu", "edge16", "--set",
                 "array.dataflow=ws", "--set", "array.rows=4"]) == 0
    bound = NPUConfig.from_toml_str(capsys.readouterr().out)
    for name in ("stem", "fc"):
        assert bound.precision_for(name).acc_bits >= cfg.precision_for(name).acc_bits
        assert bound.precision_for(name).pe_acc_bits >= cfg.precision_for(name).pe_acc_bits


def test_bounds_suggest_options_need_suggest(files, capsys):
    prog, _, _ = files
    assert main(["bounds", str(prog), "--basis", "bound"]) == 2
    assert "only with --suggest" in _error_line(capsys)
    assert main(["bounds", str(prog), "--suggest", "--basis", "observed"]) == 2
    assert "needs --data" in _error_line(capsys)


def test_simulate_without_event_counts_same_predictions(files, capsys):
    """--no-count-events on a wrapping 12-bit body with a 24-bit [[layer]] table: the same
    predictions as counting; the wrapping layer's events are missing, not zero."""
    prog, npu, tmp = files
    got = {}
    for flag in ("--count-events", "--no-count-events"):
        csv, pred = tmp / f"s{flag}.csv", tmp / f"p{flag}.csv"
        assert main(["simulate", str(prog), "--npu", str(npu), "--limit", "20", "--acc-bits",
                     "12", "--overflow", "wrap", "--csv", str(csv), "--predictions", str(pred),
                     flag]) == 0
        got[flag] = (pd.read_csv(csv).set_index("layer"), pd.read_csv(pred),
                     capsys.readouterr().out)
    on, off = got["--count-events"], got["--no-count-events"]
    pd.testing.assert_frame_equal(on[1], off[1])
    assert on[0].loc["fc", "acc_overflows"] > 0 and pd.isna(off[0].loc["fc", "acc_overflows"])
    assert (off[0].loc["stem", "acc_bits"], off[0].loc["fc", "acc_bits"]) == (24, 12)
    cols = ["acc_min", "acc_max"]
    pd.testing.assert_frame_equal(on[0][cols], off[0][cols])
    assert "not counted" in off[2] and "events per MAC" in on[2]
