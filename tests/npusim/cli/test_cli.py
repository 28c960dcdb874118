"""The command line: help; exit codes (0 ok, 2 a user error in one line, 1 a bug, 130 interrupted);
--debug; the train/export/inspect/simulate/bounds flow."""

import subprocess
import sys

import pytest

import npusim.hw.config
from npusim.cli.app import main
from npusim.hw.config import ConfigError


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "npusim.cli", *args], capture_output=True,
                          text=True, env=env)


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "demo", "--debug"):
        assert cmd in out


@pytest.mark.parametrize("args, field", [
    (["train", "--model", "nope"], "--model"),
    (["train", "--data", "nope"], "--data"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--bogus"], "--bogus"),
])
def test_bad_arguments_exit_2_with_one_line(args, field, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and field in err[0]


@pytest.mark.slow
def test_train_command_writes_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m.pt"
    rc = main(["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
               "--width", "0.25", "--out", str(out)])
    assert rc == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "test top-1" in capsys.readouterr().out


@pytest.mark.slow
def test_qat_export_inspect_simulate_bounds_flow(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    f, q, p = tmp_path / "f.pt", tmp_path / "q.pt", tmp_path / "p.safetensors"
    common = ["--model", "resnet8", "--data", "digits", "--width", "0.25", "--epochs", "1"]
    assert main(["train", *common, "--out", str(f)]) == 0
    assert main(["train", *common, "--quant", "lsq", "--wbits", "4", "--abits", "4",
                 "--from", str(f), "--out", str(q), "--export", str(p)]) == 0
    assert "integer-exact top-1" in capsys.readouterr().out
    p2 = tmp_path / "p2.safetensors"
    assert main(["export", str(q), "--out", str(p2)]) == 0
    assert p2.read_bytes() == p.read_bytes()  # the checkpoint reproduces the same program
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "conv2d" in out
    csv = tmp_path / "s.csv"
    assert main(["simulate", str(p), "--limit", "20", "--csv", str(csv),
                 "--set", "precision.acc_bits=20"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and csv.is_file()
    import pandas as pd

    stats = pd.read_csv(csv)
    assert {"layer", "acc_overflows", "observed_bits", "bound_l1_bits"} <= set(stats.columns)
    assert (stats.dropna(subset=["acc_bits"])["acc_bits"] == 20).all()
    assert main(["simulate", str(p), "--limit", "5", "--engine", "reference"]) == 0
    assert "(reference engine)" in capsys.readouterr().out
    assert main(["simulate", str(p), "--limit", "5", "--engine", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "engine must be one of auto, reference, float, int8" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["bounds", str(p), "--data", "digits", "--limit", "10"]) == 0
    assert "bound_l1_bits" in capsys.readouterr().out
    assert main(["presets"]) == 0
    assert "edge16" in capsys.readouterr().out


@pytest.mark.slow
def test_entry_point_reports_a_missing_file_in_one_line(tmp_path):
    """`python -m npusim.cli`, as a user runs it: exit 2, one line, no traceback."""
    res = run("simulate", str(tmp_path / "missing.safetensors"))
    assert res.returncode == 2 and "file not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_qat_with_a2q_quant_config_and_bounds(tmp_path, monkeypatch, capsys):
    """--quant-config adds A2Q (the CLI's --wbits/--abits fill the keys the file leaves out);
    `npusim bounds` then shows the width each layer was trained for, and that it fits."""
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    f, p, cfg = tmp_path / "f.pt", tmp_path / "p.safetensors", tmp_path / "a2q.json"
    cfg.write_text('{"acc_bits": 13, "first_layer_bits": 3, "a2q": {"mode": "a2q+"}}')
    common = ["--model", "resnet8", "--data", "digits", "--width", "0.25", "--epochs", "1"]
    assert main(["train", *common, "--out", str(f)]) == 0
    assert main(["train", *common, "--quant", "lsq", "--wbits", "3", "--abits", "3",
                 "--quant-config", str(cfg), "--from", str(f), "--export", str(p)]) == 0
    assert "lsq-W3A3-a2q+-P13" in capsys.readouterr().out
    assert main(["bounds", str(p)]) == 0
    out = capsys.readouterr().out
    assert "trained_acc_bits" in out and "fits_trained_width" in out and "False" not in out


def _presets_raising(monkeypatch, exc: BaseException) -> None:
    def boom():
        raise exc
    monkeypatch.setattr(npusim.hw.config, "list_presets", boom)


def test_an_internal_error_is_a_bug_in_one_line_exit_1(monkeypatch, capsys):
    monkeypatch.delenv("NPUSIM_DEBUG", raising=False)
    _presets_raising(monkeypatch, KeyError("macs"))
    assert main(["presets"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: internal error (bug): KeyError: 'macs'") and "--debug" in err[0]


@pytest.mark.parametrize("how", ["option", "env"])
def test_debug_prints_the_traceback_of_a_bug(how, monkeypatch, capsys):
    _presets_raising(monkeypatch, KeyError("macs"))
    if how == "env":
        monkeypatch.setenv("NPUSIM_DEBUG", "1")
    assert main(["--debug", "presets"] if how == "option" else ["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in boom" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error (bug): KeyError")
    monkeypatch.delenv("NPUSIM_DEBUG", raising=False)
    assert main(["presets"]) == 1  # --debug does not stick to the next call
    assert "Traceback" not in capsys.readouterr().err


def test_a_user_error_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("NPUSIM_DEBUG", raising=False)
    _presets_raising(monkeypatch, ConfigError("edge16.toml: array.rows:\n  expected an integer >= 1"))
    assert main(["presets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: edge16.toml: array.rows: expected an integer >= 1"]
    missing = tmp_path / "missing.safetensors"
    assert main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(missing) in err[0]


def test_interrupt_exits_130(monkeypatch, capsys):
    _presets_raising(monkeypatch, KeyboardInterrupt())
    assert main(["presets"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_inspect_and_bounds_write_tidy_csv_and_fit_a_screen(tmp_path, capsys):
    import pandas as pd

    from npusim.ir.program import save_program
    from tests.npusim.cost.test_mapping import residual_program

    p = save_program(residual_program(), tmp_path / "p.safetensors")
    nodes, lay = tmp_path / "nodes.csv", tmp_path / "bounds.csv"
    assert main(["inspect", str(p), "--csv", str(nodes)]) == 0
    assert main(["bounds", str(p), "--csv", str(lay)]) == 0
    out = capsys.readouterr().out.replace(str(tmp_path), "runs")  # a short path, as a user's
    assert max(len(line) for line in out.splitlines()) < 110
    df = pd.read_csv(nodes)
    assert {"node", "op", "in_bits", "w_bits", "out_bits", "out_scale", "w_scale_min",
            "shift_min_bits", "macs_per_image", "attrs"} <= set(df.columns)
    assert list(df["node"]) == ["c1", "c2", "add"]
    b = pd.read_csv(lay)
    assert {"layer", "k", "product_bits", "bound_l1_bits", "bound_dtype_bits"} <= set(b.columns)


@pytest.mark.slow
def test_train_quant_says_what_it_trains_and_caches_the_qat_run(tmp_path, monkeypatch, capsys):
    import npusim.cli.train as train_cmd

    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_cmd, "_IMPLICIT_FLOAT_EPOCHS", 1)
    args = ["train", "--model", "resnet8", "--data", "digits", "--width", "0.25", "--epochs", "1",
            "--quant", "lsq", "--wbits", "4", "--abits", "4"]
    assert main([*args, "--export", str(tmp_path / "a.safetensors")]) == 0
    first = capsys.readouterr().out
    assert "no --from: training a float resnet8 on digits first (1 epochs" in first
    assert "fine-tuning" in first and "cached" not in first.split("fine-tuning")[1]
    assert main([*args, "--export", str(tmp_path / "b.safetensors")]) == 0
    second = capsys.readouterr().out
    assert "using the cached float resnet8" in second and "from the cache" not in first
    assert ": cached" in second and "fine-tuning" not in second
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
