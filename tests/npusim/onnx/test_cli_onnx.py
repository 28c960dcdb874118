"""`npusim import` and `npusim export-onnx`: files written, one-line errors."""

import numpy as np
import pytest
import torch

from npusim.cli.app import main
from npusim.ir.program import load_program
from npusim.onnx import import_onnx
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.nets import NoAvgPool

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("cli")
    f = H.export_torch(NoAvgPool(), SHAPE, d / "f.onnx")
    return H.quantize(f, d / "q.onnx", SHAPE, "qop", True)


def test_import_then_export(qmodel, tmp_path, capsys):
    prog_path = tmp_path / "p.safetensors"
    assert main(["import", str(qmodel), "--out", str(prog_path)]) == 0
    prog = load_program(prog_path)
    assert prog.requant["scale_mode"] == "float" and "nodes" in capsys.readouterr().out
    onnx_path = tmp_path / "back.onnx"
    assert main(["export-onnx", str(prog_path), "--out", str(onnx_path)]) == 0
    back = import_onnx(onnx_path)
    assert [n.to_json() for n in back.nodes] == [n.to_json() for n in prog.nodes]


@pytest.mark.parametrize("pixels, channels", [(["0.5,0.25"], 1), (["0.4,0.2", "0.5,0.25,255",
                                                                     "0.6,0.3"], 3)])
def test_import_with_pixels(qmodel, tmp_path, pixels, channels):
    out = tmp_path / "p.safetensors"
    args = ["import", str(qmodel), "--out", str(out)]
    for p in pixels:
        args += ["--pixels", p]
    assert main(args) == 0
    prog = load_program(out)
    assert prog.nodes[0].op == "embed"
    mean = prog.meta["pixels"]["mean"]
    assert len(set(mean)) == channels
    np.testing.assert_allclose(mean, [float(p.split(",")[0]) for p in pixels] * (3 // len(pixels)),
                               rtol=1e-6)


@pytest.mark.parametrize("args, msg", [
    (["import", "{model}", "--out", "{tmp}/p.safetensors", "--pixels", "0.5"], "--pixels"),
    (["import", "{model}", "--out", "{tmp}/p.safetensors", "--pixels", "0.5,0.2",
      "--pixels", "0.5,0.2"], "pixels: expected (mean, std, scale)"),
    (["import", "{tmp}/missing.onnx", "--out", "{tmp}/p.safetensors"], "file not found"),
    (["export-onnx", "{tmp}/missing.safetensors", "--out", "{tmp}/m.onnx"], "file not found"),
])
def test_errors_are_one_line(qmodel, tmp_path, capsys, args, msg):
    args = [a.format(model=qmodel, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], err
