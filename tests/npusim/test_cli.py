"""The command line: help, a bad argument's exit code and one-line message."""

import subprocess
import sys

import pytest

from npusim.cli import main


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
