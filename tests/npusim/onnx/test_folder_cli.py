"""An imported ONNX model runs on an image folder: `npusim simulate PROGRAM --data folder
--root DIR` predicts what ONNX Runtime predicts on the same pre-processed images; bounds and
cost read folders too; bad folders and specs are one-line errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from npusim.cli.app import main
from npusim.data import load_dataset
from npusim.ir.program import load_program
from npusim.sim.simulator import Simulator
from tests.npusim.data.test_folder import pattern, put, write
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.nets import AllOps

F32 = np.float32
SHAPE = (3, 16, 16)
MEAN, STD = 0.45, 0.22
SPEC = "folder:resize=16,crop=16"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(quantized ONNX model, imported program with a --pixels embed, image tree)."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("folder")
    net = AllOps(classes=4)
    with torch.no_grad():  # features, not the bias, decide: the predictions vary by image
        net.fc.weight.mul_(20.0)
        net.fc.bias.zero_()
    f = H.export_torch(net, SHAPE, d / "f.onnx")
    q = H.quantize(f, d / "q.onnx", SHAPE, "qop", True)
    prog_path = d / "p.safetensors"
    assert main(["import", str(q), "--out", str(prog_path), "--pixels", f"{MEAN},{STD}"]) == 0
    # a tree of mixed sizes and formats, brought to 16x16 by resize + centre crop
    root = d / "images"
    for ci, name in enumerate(("bird", "car", "cat")):
        for i in range(4):
            h, w = (20 + 3 * i, 17 + 5 * ci)
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            img = pattern(h, w, 10 * ci + i) // 2
            img[..., ci] += 127  # a dominant colour per class
            write(root / name / f"{i}.{ext}", img, fmt)
    return q, prog_path, root


def test_simulate_an_imported_model_on_a_folder_equals_onnxruntime(setup, tmp_path, capsys):
    q, prog_path, root = setup
    preds = tmp_path / "pred.csv"
    assert main(["simulate", str(prog_path), "--data", SPEC, "--root", str(root),
                 "--predictions", str(preds)]) == 0
    assert f"12 {SPEC}/test images" in capsys.readouterr().out
    table = pd.read_csv(preds)
    # ONNX Runtime on the same pre-processed images, normalised as the program's embed does
    ds = load_dataset(SPEC, "test", root=root)
    x = ((ds.images.astype(F32) / F32(255.0) - F32(MEAN)) / F32(STD)).astype(F32)
    logits = H.session(q).run(None, {"x": x})[0]
    np.testing.assert_array_equal(table["predicted"], logits.argmax(axis=1))
    assert table["predicted"].nunique() > 1
    np.testing.assert_array_equal(table["label"], ds.labels)
    assert table["label_name"].tolist() == [ds.classes[i] for i in ds.labels]
    # and the logits themselves, not only their argmax
    prog = load_program(prog_path)
    out = prog.tensors[prog.outputs[0]]
    res = Simulator(H.float_config()).run(prog, ds.images)
    ours = (res.outputs[prog.outputs[0]] - out.zero_point).astype(F32) * F32(out.scale)
    np.testing.assert_array_equal(ours.reshape(logits.shape), logits)


def test_bounds_and_cost_read_a_folder(setup, capsys):
    _, prog_path, root = setup
    assert main(["bounds", str(prog_path), "--data", SPEC, "--root", str(root)]) == 0
    assert "observed" in capsys.readouterr().out
    assert main(["cost", str(prog_path), "--data", SPEC, "--root", str(root)]) == 0
    assert f"(12 {SPEC}/test images)" in capsys.readouterr().out


@pytest.mark.parametrize("args, needles", [
    (["--data", "folder"], ["--root"]),
    (["--data", "folder:resize=x", "--root", "{root}"], ["--data", "bad option"]),
    (["--data", "folder", "--root", "{root}"], ["folder:", "crop="]),  # mixed sizes
    (["--data", SPEC, "--root", "{root}", "--split", "train"], ["no train/ folder"]),
    (["--data", SPEC, "--root", "{bad}"], ["broken.png", "not a readable"]),
])
def test_folder_errors_are_one_line_exit_2(setup, tmp_path, capsys, args, needles):
    _, prog_path, root = setup
    bad = tmp_path / "bad"
    write(bad / "a" / "0.png", pattern(16, 16, 0))
    put(bad / "b" / "broken.png", b"\x89PNG\r\n\x1a\n broken")
    args = [a.format(root=root, bad=bad) for a in args]
    assert main(["simulate", str(prog_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for n in needles:
        assert n in err[0], (n, err[0])


def test_train_and_sweep_check_the_spec_first(capsys):
    for cmd in (["train"], ["sweep"]):
        assert main([*cmd, "--data", "folder:crop=0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--data" in err[0] and "crop" in err[0], err
