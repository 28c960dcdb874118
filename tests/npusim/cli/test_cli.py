"""The command line: help, a bad argument's exit code and one-line message."""

import subprocess
import sys

import pytest

from npusim.cli.app import main


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "npusim.cli", *args], capture_output=True,
                          text=True, env=env)


def test_help_lists_commands():
    res = run("--help")
    assert res.returncode == 0
    for cmd in ("train", "demo"):
        assert cmd in res.stdout


@pytest.mark.parametrize("args, field", [
    (["train", "--model", "nope"], "--model"),
    (["train", "--data", "nope"], "--data"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--bogus"], "--bogus"),
])
def test_bad_arguments_exit_2_with_one_line(args, field):
    res = run(*args)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and field in err[0]
    assert "Traceback" not in res.stderr


def test_train_command_writes_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m.pt"
    rc = main(["train", "--model", "resnet8", "--data", "digits", "--epochs", "1",
               "--width", "0.25", "--out", str(out)])
    assert rc == 0
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert "test top-1" in capsys.readouterr().out


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


def test_simulate_bad_set_key_is_one_line(tmp_path):
    res = run("simulate", str(tmp_path / "missing.safetensors"))
    assert res.returncode == 2 and "file not found" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


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
