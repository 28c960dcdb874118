"""Pixel embedding: tables, initialisation, gradients, export as the NPU's embed op."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npusim.cost import estimate_cost
from npusim.cost.estimate import action_counts
from npusim.data import load_dataset
from npusim.hw.config import NPUConfig
from npusim.ir.program import load_program, save_program
from npusim.sim.simulator import Simulator
from quantize import QuantConfig, QuantConfigError, QuantizeError, build_program, quantize_model
from quantize.config import EmbeddingConfig
from quantize.embedding import QEmbed, first_conv_init, init_table
from quantize.integer_eval import run_integer
from quantize.quantizers import make_quantizer
from tests.quantize.test_export import make_q


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test").subset(24)


def test_thermometer_table_follows_its_definition():
    t = init_table(EmbeddingConfig(d=4), channels=3)
    assert t.shape == (3, 256, 4)
    for p in (0, 50, 51, 52, 102, 153, 204, 205, 255):
        expect = [1.0 if p >= (j + 1) * 256 / 5 else 0.0 for j in range(4)]
        assert t[1, p].tolist() == expect
    assert init_table(EmbeddingConfig(d=4, shared=True), channels=3).shape == (1, 256, 4)
    lin = init_table(EmbeddingConfig(d=1, init="linear"), channels=1)
    torch.testing.assert_close(lin[0, :, 0], torch.arange(256.0) / 255)


@pytest.mark.parametrize("cfg, tol", [(EmbeddingConfig(d=1, init="linear"), 1e-5),
                                      (EmbeddingConfig(d=16), 0.08)])
def test_first_conv_init_reproduces_the_normalised_float_conv(cfg, tol):
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    x = torch.randint(0, 256, (2, 3, 8, 8))
    ref = F.conv2d((x / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), w)
    new_w, b = first_conv_init(cfg, w, mean, std)
    t = init_table(cfg, 3)
    emb = torch.cat([t[c][x[:, c]].permute(0, 3, 1, 2) for c in range(3)], dim=1)
    got = F.conv2d(emb, new_w) + b.view(1, -1, 1, 1)
    # linear: exact; thermometer with d=16: within the code's 256/17-pixel resolution
    assert (got - ref).abs().max() / ref.abs().max() < tol


def test_gradient_reaches_exactly_the_rows_used():
    oq = make_quantizer("lsq", 4, False, role="activation")
    emb = QEmbed(EmbeddingConfig(d=3, init="random"), channels=2, oq=oq)
    used = {0: {3, 200}, 1: {17}}
    x = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    x[0, 0] = torch.tensor([[3, 200], [3, 3]])
    x[0, 1] = 17
    out = emb(x.float() / 255.0)
    (out * torch.randn(out.shape)).sum().backward()
    g = emb.table.grad
    for c in range(2):
        nonzero = {int(i) for i in torch.nonzero(g[c].abs().sum(dim=1)).reshape(-1)}
        assert nonzero == used[c]
    frozen = QEmbed(EmbeddingConfig(d=1, init="linear", trainable=False), 1,
                    make_quantizer("lsq", 2, False, role="activation"))
    assert not frozen.table.requires_grad


def test_config_validates_the_embedding():
    with pytest.raises(QuantConfigError, match="embedding.bits"):
        QuantConfig.from_json('{"embedding": {"bits": 17}}')
    with pytest.raises(QuantConfigError, match="embedding.size: unknown key"):
        QuantConfig.from_json('{"embedding": {"size": 4}}')
    with pytest.raises(QuantConfigError, match="embedding.init"):
        QuantConfig.from_json('{"embedding": {"init": "onehot"}}')


@pytest.mark.parametrize("emb", [{"d": 4}, {"d": 2, "shared": True, "bits": 3},
                                 {"d": 1, "init": "linear", "trainable": False, "bits": 2}])
def test_lookup_table_round_trips_through_export_and_simulation(emb, digits, tmp_path):
    train, test = digits
    cfg = QuantConfig(weight_bits=4, act_bits=4, first_layer_bits=4, embedding=emb)
    _, q = make_q("resnet8", train, cfg)
    prog = build_program(q)
    node = prog.nodes[0]
    assert node.op == "embed" and prog.nodes[1].inputs == [node.output]
    lut = prog.arrays["embed.lut"]
    d = emb["d"]
    assert lut.shape == (1, 256, d)
    np.testing.assert_array_equal(lut, q.layers["embed"].int_lut().numpy())
    # through the file
    save_program(prog, tmp_path / "p.npuprog")
    back = load_program(tmp_path / "p.npuprog")
    np.testing.assert_array_equal(back.arrays["embed.lut"], lut)
    # the simulator's embed output is the fake-quant embedding's integers, bit for bit
    images = test.images
    res = Simulator(NPUConfig.preset("edge16")).run(back, images, trace=True)
    emod = q.layers["embed"]
    q.eval()
    fq = emod(torch.from_numpy(images).float() / 255.0) / emod.oq.scale()
    np.testing.assert_array_equal(res.traces["embed"], torch.round(fq).to(torch.int64).numpy())
    np.testing.assert_array_equal(res.logits, run_integer(back, images))


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("mobilenetv2_cifar", (3, 16, 16)), ("resnet18", (3, 32, 32))])
def test_every_models_first_layer_takes_an_embedding(name, shape):
    kw = dict(n=32, num_classes=10, shape=shape, seed=1)
    train = load_dataset("synthetic", "train", **kw)
    _, q = make_q(name, train, QuantConfig(weight_bits=4, act_bits=4, embedding={"d": 2}))
    prog = build_program(q)
    assert prog.arrays["embed.lut"].shape == (3, 256, 2)
    first = prog.nodes[1]
    assert prog.arrays[f"{first.name}.weight"].shape[1] == 6
    images = train.images[:4]
    np.testing.assert_array_equal(Simulator(NPUConfig.preset("edge16")).run(prog, images).logits,
                                  run_integer(prog, images))


def test_embedding_needs_an_input_norm():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(QuantizeError, match="embedding: the model has no InputNorm"):
        quantize_model(model, QuantConfig(embedding={}), input_shape=(1, 8, 8))


def test_cost_model_charges_the_table_and_one_lookup_per_pixel_and_channel(digits):
    train, _ = digits
    d, bits = 4, 4
    _, q = make_q("resnet8", train, QuantConfig(weight_bits=4, act_bits=4, first_layer_bits=4,
                                                embedding={"d": d, "bits": bits}))
    prog = build_program(q)
    npu = NPUConfig.preset("edge16")
    layers = estimate_cost(prog, npu).layers.set_index("layer")
    c, h, w = train.input_shape
    assert layers.loc["embed", "weight_bits"] == c * 256 * d * bits  # the table is stored
    counts = action_counts(prog, npu)
    lookups = counts.query("layer == 'embed' and component == 'lookup'")
    assert lookups["count"].sum() == c * h * w * d * bits  # bits read: one entry per pixel
    assert layers.loc["embed", "lookup_pj"] > 0
    # the first conv now reads 4-bit inputs: its multiplies are 4x4, not 4x8
    first = prog.nodes[1].name
    assert layers.loc[first, "a_bits"] == 4
    mul = counts.query("layer == @first and component == 'mac'")
    assert mul["ba"].tolist() == [4.0]
