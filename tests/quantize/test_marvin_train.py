"""MARViN training end to end on a tiny model: layers quantize forward and backward, the run
records history/usage, the model is a plain float model afterwards that QAT and export
accept, and the CLI writes the run's files."""

import json

import pandas as pd
import pytest
import torch
from torch import nn

from models import create_model
from npusim.data import load_dataset
from quantize.marvin import (
    MarvinConfig,
    attach,
    detach,
    frac_bits_for,
    layer_geometry,
    marvin_layers,
    quantize_fixed,
    save_run,
    train_marvin,
)


@pytest.fixture(scope="module")
def data():
    kw = {"n": 96, "num_classes": 4, "shape": (1, 8, 8), "seed": 0}
    return load_dataset("synthetic", "train", **kw), load_dataset("synthetic", "test", **kw)


def tiny(train_set):
    torch.manual_seed(0)
    return create_model("resnet8", num_classes=train_set.num_classes,
                        in_channels=train_set.input_shape[0], width=0.25)


def test_attach_keeps_state_dict_and_quantizes_all_three_gemms():
    torch.manual_seed(0)
    lin = nn.Linear(6, 3, bias=False)
    model = nn.Sequential(lin)
    keys = set(model.state_dict())
    fmt = attach(model, MarvinConfig(word_bits_menu=(4,), gradient_rounding="nearest"))["0"]
    assert set(model.state_dict()) == keys and type(lin).__name__ == "MarvinLinear"
    x = torch.randn(5, 6, requires_grad=True)
    y = model(x)
    wq = quantize_fixed(lin.weight.detach(), 4, fmt.frac_bits)
    xq = quantize_fixed(x.detach(), 4, frac_bits_for(float(x.detach().abs().max()), 4))
    torch.testing.assert_close(y, xq @ wq.T, rtol=0, atol=0)
    g = torch.randn(5, 3)
    y.backward(g)
    gq = quantize_fixed(g, 4, frac_bits_for(float(g.abs().max()), 4))
    torch.testing.assert_close(x.grad, gq @ wq, rtol=1e-6, atol=1e-7)        # grad wrt input
    torch.testing.assert_close(lin.weight.grad, gq.T @ xq, rtol=1e-6, atol=1e-7)  # wrt weight
    detach(model)
    assert type(lin) is nn.Linear and not marvin_layers(model)


@pytest.mark.slow
def test_train_records_history_usage_and_returns_a_float_model(data, tmp_path):
    train_set, test_set = data
    net = tiny(train_set)
    cfg = MarvinConfig(lookback_batches=2)
    res = train_marvin(net, train_set, 2, cfg, test=test_set, batch_size=32, lr=0.05)
    assert not marvin_layers(net)
    n_layers = len(layer_geometry(net, train_set.input_shape))
    h = res.history
    assert list(h.columns[:4]) == ["iteration", "layer", "word_length_bits", "frac_bits"]
    assert set(h["word_length_bits"]) <= set(cfg.word_bits_menu)
    assert h["iteration"].nunique() == 1 + 6 // 2  # init + every 2 of 6 batches
    assert (res.usage.groupby("layer")["batches"].sum() == 6).all()
    assert res.usage["layer"].nunique() == n_layers
    assert 0.0 <= res.test_acc <= 1.0 and res.float_test_acc is not None
    paths = save_run(res, tmp_path)
    assert pd.read_csv(paths["history"]).shape == h.shape
    assert json.loads(paths["config"].read_text())["config"]["lookback_batches"] == 2


def test_fixed_master_weights_stay_on_the_grid(data):
    train_set, _ = data
    net = tiny(train_set)
    cfg = MarvinConfig(word_bits_menu=(8,), master_weights="fixed")
    train_marvin(net, train_set, 1, cfg, batch_size=32, keep_attached=True)
    for m in marvin_layers(net).values():
        w = m.weight.detach()
        assert torch.equal(w, quantize_fixed(w, 8, m.marvin.frac_bits))


@pytest.mark.slow
def test_after_marvin_the_model_goes_through_qat_and_export(data, tmp_path):
    from npusim.ir.program import load_program
    from quantize import QuantConfig, evaluate, export_program, prepare_qat, qat_train

    train_set, test_set = data
    net = tiny(train_set)
    train_marvin(net, train_set, 1, MarvinConfig(), batch_size=32)
    q = prepare_qat(net, QuantConfig.make(method="lsq", weight_bits=8, act_bits=8), train_set)
    qat_train(q, train_set, 1, batch_size=32)
    acc = evaluate(q, test_set)
    assert 0.0 <= acc["integer_acc"] <= 1.0
    prog = export_program(q, tmp_path / "m.safetensors")
    assert len(load_program(tmp_path / "m.safetensors").nodes) == len(prog.nodes)


@pytest.mark.slow
def test_cli_train_marvin_and_report(tmp_path, monkeypatch, capsys):
    from npusim.cli.app import main

    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lookback_batches": 4, "word_bits_menu": [4, 8, 16],
                               "activations": "own", "gradients": "own"}))
    run = tmp_path / "run"
    rc = main(["train", "--marvin", "--marvin-config", str(cfg), "--model", "resnet8",
               "--data", "synthetic", "--width", "0.25", "--epochs", "1", "--batch-size", "64",
               "--marvin-out", str(run), "--out", str(tmp_path / "m.pt")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "speedup" in out and "checkpoint:" in out and "operand bits per MAC" in out
    for f in ("marvin_history.csv", "marvin_heatmap.png", "marvin_heatmap.csv",
              "marvin_heatmap_act.png", "marvin_heatmap_grad.csv", "marvin_cost.csv",
              "marvin_usage.csv"):
        assert (run / f).is_file()
    heat = pd.read_csv(run / "marvin_heatmap_act.csv")
    assert {"act_word_bits", "act_reason", "grad_word_bits"} <= set(heat.columns)
    assert (heat["act_reason"] == "init").any()
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["marvin"]["config"]["lookback_batches"] == 4
    assert main(["report", "--marvin", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "marvin_cost.png").is_file()


def test_cli_rejects_a_bad_marvin_config(tmp_path, capsys):
    from npusim.cli.app import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"kl_eps": 0.01, "bogus": 1}')
    assert main(["train", "--marvin-config", str(bad), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus: unknown key" in err[0]
    bad.write_text('{"activations": "mine"}')
    assert main(["train", "--marvin-config", str(bad), "--data", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "activations" in err[0]
    assert main(["train", "--marvin", "--quant", "lsq", "--data", "synthetic"]) == 2
