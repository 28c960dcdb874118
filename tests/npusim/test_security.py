"""Security and reliability: no code execution from --where, no temp-file clobbering, output paths
checked before work, files checked before allocation."""

import pandas as pd
import pytest

from npusim.cli.app import main


def _results_csv(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({
        "acc_bits": [8, 12, 16, 8, 12, 16],
        "top1": [0.5, 0.8, 0.9, 0.6, 0.85, 0.9],
        "overflow_mode": ["wrap"] * 3 + ["saturate"] * 3,
        "status": ["ok"] * 6,
        "quant_label": ["lsq-W8A8"] * 6,
    }).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("payload", [
    "@pd.io.common.os.system('touch {m}')",
    "acc_bits == @__builtins__.__import__('os').system('touch {m}')",
    "__import__('os').system('touch {m}')",
    "overflow_mode.__class__.__init__.__globals__['os'].system('touch {m}') == 0",
    "acc_bits > 8 and `top1`.__class__ == 1",
    "acc_bits == 8 or (open('{m}', 'w'))",
])
def test_where_payloads_are_refused_and_nothing_runs(tmp_path, capsys, payload):
    marker = tmp_path / "PWNED"
    res = _results_csv(tmp_path)
    rc = main(["plot", str(res), "--x", "acc_bits", "--where", payload.format(m=marker),
               "--out", str(tmp_path / "p.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --where:")
    assert not marker.exists()
    assert not (tmp_path / "p.png").exists()


def test_where_filters_rows(tmp_path, capsys):
    res = _results_csv(tmp_path)
    out = tmp_path / "p.png"
    assert main(["plot", str(res), "--x", "acc_bits", "--hue", "overflow_mode", "--where",
                 "overflow_mode == wrap and acc_bits >= 12", "--out", str(out)]) == 0
    data = pd.read_csv(out.with_suffix(".csv"))
    assert set(data["overflow_mode"]) == {"wrap"} and sorted(data["acc_bits"]) == [12, 16]
    capsys.readouterr()
    assert main(["plot", str(res), "--x", "acc_bits", "--where", "nope == 1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "acc_bits" in err[0]
    assert main(["plot", str(res), "--x", "acc_bits", "--where", "acc_bits > 99",
                 "--out", str(out)]) == 2


# ------------------------------------------------------------------ atomic writes, output paths

def _plant(tmp_path, name):
    """A symlink at `name` (an old predictable temp name) pointing at a victim file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / name).symlink_to(victim)
    return victim


def _figure():
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


@pytest.mark.parametrize("target, planted, write", [
    ("t.csv", ".t.csv.tmp",
     lambda p: __import__("npusim.io", fromlist=["x"]).write_csv(pd.DataFrame({"a": [1]}), p)),
    ("f.png", ".f.tmp.png",
     lambda p: __import__("npusim.report.plots.figures", fromlist=["x"]).save(_figure(), None, p)),
    ("README.md", ".README.md.tmp",
     lambda p: __import__("npusim.report.sweep_report", fromlist=["x"])._atomic_text(p, "hi\n")),
])
def test_planted_symlink_at_old_temp_name_is_not_followed(tmp_path, target, planted, write):
    victim = _plant(tmp_path, planted)
    write(tmp_path / target)
    assert victim.read_text() == "precious\n"
    assert (tmp_path / target).is_file() and (tmp_path / target).stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target, planted, "victim.txt"])


def test_write_replaces_a_symlinked_target_without_writing_through_it(tmp_path):
    from npusim.io import write_csv

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "t.csv").symlink_to(victim)
    write_csv(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "t.csv").is_symlink()
    assert pd.read_csv(tmp_path / "t.csv")["a"].tolist() == [1, 2]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failing_writer_leaves_no_temp_file_and_target_intact(tmp_path, exc):
    from npusim.io import atomic_write

    target = tmp_path / "out.csv"
    target.write_text("old\n")

    def writer(f):
        f.write(b"partial")
        raise exc("boom")

    with pytest.raises(exc):
        atomic_write(target, writer)
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    assert target.read_text() == "old\n"


def test_check_output_path(tmp_path):
    from npusim.io import OutputPathError, check_output_path

    (tmp_path / "f").write_text("x")
    assert check_output_path(tmp_path / "new" / "deeper" / "a.csv", "--csv")
    assert check_output_path(tmp_path / "new", "--out", directory=True)
    for path, directory, words in [
        (tmp_path, False, ["--x", "is a directory"]),
        (tmp_path / "f" / "a.csv", False, ["--x", "not a directory"]),
        (tmp_path / "f", True, ["--x", "not a directory"]),
        (tmp_path / "f" / "sub", True, ["--x", "not a directory"]),
    ]:
        with pytest.raises(OutputPathError) as e:
            check_output_path(path, "--x", directory=directory)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _never(*a, **k):
    raise AssertionError("the work started before the output path was checked")


@pytest.mark.parametrize("args, patch", [
    (["sweep", "--model", "resnet8", "--data", "synthetic", "--csv", "{d}"], "npusim.sweep.sweep"),
    (["sweep", "--model", "resnet8", "--data", "synthetic", "--csv", "{f}/x.csv"],
     "npusim.sweep.sweep"),
    (["simulate", "p.safetensors", "--csv", "{d}"], "npusim.ir.program.load_program"),
    (["cost", "p.safetensors", "--csv", "{d}"], "npusim.ir.program.load_program"),
    (["cost", "p.safetensors", "--csv", "{d}/sub.csv"], "npusim.ir.program.load_program"),
    (["plot", "r.csv", "--x", "acc_bits", "--out", "{d}"], "npusim.report.plots.custom"),
    (["report", "r.sqlite", "--out", "{f}"], "npusim.report.sweep_report.write_report"),
])
def test_unwritable_output_exits_2_before_the_work(tmp_path, monkeypatch, capsys, args, patch):
    d = tmp_path / "dir"
    (d / "sub_baselines.csv").mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.chdir(tmp_path)
    _results_csv(tmp_path)
    mod, name = patch.rsplit(".", 1)
    monkeypatch.setattr(__import__(mod, fromlist=[name]), name, _never)
    assert main([a.format(d=d, f=f) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("--csv" in err[0] or "--out" in err[0]), err
