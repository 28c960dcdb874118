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


# ------------------------------------------------------------------ files checked before allocation

def _small_program():
    import numpy as np

    from tests.npusim.programs import conv_program

    rng = np.random.default_rng(0)
    return conv_program(rng.integers(-127, 128, size=(2, 3, 3, 3)), [1, -1], (3, 6, 6), padding=1)


def _write_raw(path, manifest, entries, data_size=None):
    """A safetensors file written by hand: entries {name: (dtype, shape, offsets)}; the data area
    is `data_size` bytes (sparse: nothing is written), default the largest end offset."""
    import json
    import struct

    header = {"__metadata__": {"npusim": json.dumps(manifest)},
              **{k: {"dtype": d, "shape": s, "data_offsets": o} for k, (d, s, o) in entries.items()}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    end = max((o[1] for _, _, o in entries.values()), default=0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + (end if data_size is None else data_size))
    return path


def _entries(prog):
    """The header entries of `prog`'s arrays, laid out back to back."""
    entries, pos = {}, 0
    for k, a in prog.arrays.items():
        code = f"{'I' if a.dtype.kind == 'i' else 'U'}{8 * a.dtype.itemsize}"
        entries[k] = (code, list(a.shape), [pos, pos + a.nbytes])
        pos += a.nbytes
    return entries


def test_sparse_file_claiming_2gib_fails_fast_under_a_memory_limit(tmp_path):
    import subprocess
    import sys

    prog = _small_program()
    manifest = prog.manifest()
    n = 2**31
    manifest["tensors"]["l.weight"]["shape"] = [n]
    entries = _entries(prog)
    entries["l.weight"] = ("I8", [n], [0, n])
    path = _write_raw(tmp_path / "bomb.safetensors", manifest, entries)
    assert path.stat().st_size > n and path.stat().st_blocks * 512 < 1 << 20  # sparse
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from npusim.ir.program import ProgramError, load_program\n"
        "try:\n"
        f"    load_program({str(path)!r})\n"
        "except ProgramError as e:\n"
        "    print(e); sys.exit(3)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1"})
    assert res.returncode == 3, res.stderr[-2000:]
    assert "'l.weight'" in res.stdout and "elements" in res.stdout


def test_huge_padding_refused_with_one_line(tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import save

    from npusim.ir.program import ProgramError, load_program

    prog = _small_program()
    prog.node("l").attrs["padding"] = 50_000
    h = (6 + 2 * 50_000 - 3) + 1
    prog.tensors["y"].shape = (2, h, h)
    with pytest.raises(ProgramError) as e:
        prog.validate("<t>")
    assert "node 'l'" in str(e.value) and "padding" in str(e.value)
    path = tmp_path / "pad.safetensors"
    path.write_bytes(save({k: np.ascontiguousarray(v) for k, v in prog.arrays.items()},
                          metadata={"npusim": __import__("json").dumps(prog.manifest())}))
    with pytest.raises(ProgramError, match="padding"):
        load_program(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "padding" in err[0] and "node 'l'" in err[0]


def _bad_header(prog, case):
    manifest, entries, size = prog.manifest(), _entries(prog), None
    d, s, o = entries["l.bias"]
    if case == "float":
        entries["l.bias"] = ("F32", s, o)
    elif case == "shape_vs_manifest":
        entries["l.bias"] = (d, [1, 2], o)
    elif case == "span":
        entries["l.bias"] = (d, s, [o[0], o[1] + 4])
    elif case == "outside":
        size = o[1] - 1
    elif case == "overlap":
        entries["l.bias"] = (d, s, [0, o[1] - o[0]])
    elif case == "undeclared":
        entries["extra"] = ("I8", [4], [10_000, 10_004])
    elif case == "dims":
        manifest["tensors"]["l.bias"]["shape"] = [1, 1, 1, 1, 1, 2]
        entries["l.bias"] = (d, [1, 1, 1, 1, 1, 2], o)
    return manifest, entries, size


@pytest.mark.parametrize("case, words", [
    ("float", ["'l.bias'", "F32", "integer"]),
    ("shape_vs_manifest", ["'l.bias'", "declared"]),
    ("span", ["'l.bias'", "bytes"]),
    ("outside", ["data_offsets"]),
    ("overlap", ["overlaps"]),
    ("undeclared", ["'extra'", "tensor table"]),
    ("dims", ["'l.bias'", "dimensions"]),
])
def test_bad_headers_refused_before_reading(tmp_path, case, words):
    from npusim.ir.program import ProgramError, load_program

    manifest, entries, size = _bad_header(_small_program(), case)
    path = _write_raw(tmp_path / "bad.safetensors", manifest, entries, size)
    with pytest.raises(ProgramError) as e:
        load_program(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("blob, words", [
    (b"\x01\x02", ["shorter"]),
    ((2**40).to_bytes(8, "little") + b"{}", ["header length"]),
    ((200 * 2**20).to_bytes(8, "little") + b" " * 16, ["header length"]),
    ((4).to_bytes(8, "little") + b"[1] ", ["JSON object"]),
])
def test_bad_header_length_or_json(tmp_path, blob, words):
    from npusim.ir.program import ProgramError, load_program

    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(ProgramError) as e:
        load_program(path)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_valid_program_round_trips(tmp_path):
    import numpy as np

    from npusim.ir.program import load_program, save_program

    prog = _small_program()
    back = load_program(save_program(prog, tmp_path / "p.safetensors"))
    assert back.manifest() == prog.manifest()
    for k, a in prog.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], a)
        assert back.arrays[k].dtype == a.dtype


@pytest.mark.parametrize("meta, words", [
    ({"model_kwargs": {"width": 1e6}}, ["model_kwargs.width"]),
    ({"model_kwargs": {"width": float("nan")}}, ["model_kwargs.width"]),
    ({"model_kwargs": {"in_channels": 10**9}}, ["model_kwargs.in_channels"]),
    ({"model_kwargs": {"num_classes": 10**12}}, ["model_kwargs.num_classes"]),
    ({"model_kwargs": {"depth": 10**6}}, ["model_kwargs", "'depth'"]),
    ({"model_kwargs": {}, "input_shape": [3, 10**6, 10**6]}, ["input_shape"]),
    ({"model_kwargs": {}, "input_shape": [3, 32]}, ["input_shape"]),
])
def test_checkpoint_sidecar_bounds_checked_before_building(tmp_path, monkeypatch, meta, words):
    import json

    import models
    from models.checkpoint import CheckpointError, load_checkpoint

    monkeypatch.setattr(models, "create_model", _never)
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.json").write_text(json.dumps({"model": "resnet8", **meta}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "m.pt")
    assert "\n" not in str(e.value) and "m.json" in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)


# ------------------------------------------------------------------ programs that cannot be bit-accurate

@pytest.mark.parametrize("change, words", [
    (lambda p: setattr(p.tensors["y"], "bits", 16), ["node 'l'", "output", "32"]),
    (lambda p: setattr(p.tensors["y"], "signed", False), ["node 'l'", "output", "signed"]),
])
def test_raw_accumulator_output_must_be_wide_and_signed(change, words):
    import numpy as np

    from npusim.ir.program import ProgramError
    from tests.npusim.programs import conv_program

    rng = np.random.default_rng(1)
    prog = conv_program(rng.integers(-7, 8, size=(2, 3)), [0, 0], (3,), op="linear",
                        requant=False)
    prog.validate("<ok>")
    change(prog)
    with pytest.raises(ProgramError) as e:
        prog.validate("<t>")
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("clamp, words", [
    ([0, 300], ["attrs.clamp", "range [0, 255]"]),
    ([-1, 255], ["attrs.clamp", "range"]),
    ([0.0, 255.0], ["attrs.clamp", "two integers"]),
    ([0, 1.5], ["attrs.clamp", "two integers"]),
    ([True, 5], ["attrs.clamp", "two integers"]),
])
def test_clamp_must_be_integers_inside_the_output_range(clamp, words):
    from npusim.ir.program import ProgramError

    prog = _small_program()  # y: 8-bit unsigned
    prog.node("l").attrs["clamp"] = clamp
    with pytest.raises(ProgramError) as e:
        prog.validate("<t>")
    msg = str(e.value)
    assert "node 'l'" in msg and all(w in msg for w in words), msg


def test_numpy_integer_clamp_is_accepted():
    import numpy as np

    prog = _small_program()
    prog.node("l").attrs["clamp"] = [np.int64(0), np.int64(200)]
    prog.validate("<t>")


# ------------------------------------------------------------------ every writer: planted symlinks

def _tiny_onnx():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                               "g", [x], [y]))


def _write_onnx(path, monkeypatch):
    import npusim.onnx.exporter as ex

    monkeypatch.setattr(ex, "to_onnx", lambda program: _tiny_onnx())
    ex.export_onnx(_small_program(), path)


def _write_program(path, monkeypatch):
    from npusim.ir.program import save_program

    save_program(_small_program(), path)


def _write_checkpoint(path, monkeypatch):
    from torch import nn

    from models.checkpoint import save_checkpoint

    save_checkpoint(nn.Linear(2, 2), path, {"model": "x", "model_kwargs": {}})


@pytest.mark.parametrize("write, target, planted", [
    (_write_onnx, "m.onnx", ".m.onnx.tmp"),  # the exporter's old fixed temporary name
    (_write_program, "p.safetensors", ".p.safetensors.tmp"),
    (_write_checkpoint, "m.pt", ".m.pt.tmp"),
])
@pytest.mark.parametrize("at", ["temp", "target"])
def test_writers_never_write_through_a_planted_symlink(tmp_path, monkeypatch, write, target,
                                                        planted, at):
    """A symlink planted at the old predictable temporary name, or at the target itself, is
    never followed: the victim keeps its contents and the target becomes a plain file."""
    victim = _plant(tmp_path, planted) if at == "temp" else tmp_path / "victim.txt"
    if at == "target":
        victim.write_text("precious\n")
        (tmp_path / target).symlink_to(victim)
    write(tmp_path / target, monkeypatch)
    assert victim.read_text() == "precious\n"
    assert (tmp_path / target).is_file() and not (tmp_path / target).is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


@pytest.mark.parametrize("payload", [
    "os.system('touch {m}') == 0",
    "acc_bits == `touch {m}`",
    "acc_bits == $(touch {m})",
    "acc_bits == 8; __import__('os').system('touch {m}')",
    "eval(\"__import__('os').system('touch {m}')\") == 0",
])
def test_where_on_a_results_store_runs_nothing(tmp_path, capsys, payload):
    """--where on a SQLite store (not only a CSV) is parsed, never evaluated."""
    from npusim.sweep.store import ResultsStore

    marker = tmp_path / "PWNED"
    with ResultsStore(tmp_path / "s.sqlite") as store:
        for i, bits in enumerate([8, 12]):
            store.put(f"h{i}", {"acc_bits": bits, "top1": 0.5, "status": "ok"})
    rc = main(["plot", str(tmp_path / "s.sqlite"), "--x", "acc_bits", "--where",
               payload.format(m=marker), "--out", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --where:"), err
    assert not marker.exists() and not (tmp_path / "p.png").exists()
