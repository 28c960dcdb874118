"""quantize_model, folding, export, integer-exact evaluation and the IntegerProgram file."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import create_model
from models.training import set_input_stats
from npusim.data import load_dataset
from npusim.hw.config import NPUConfig
from npusim.ir.program import ProgramError, load_program, save_program
from npusim.sim.simulator import Simulator
from quantize import QuantConfig, build_program, calibrate, evaluate, export_program, quantize_model
from quantize.integer_eval import run_integer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test").subset(40)


def make_q(name, data, cfg=None, width=0.25, seed=0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, in_channels=data.input_shape[0], width=width)
    set_input_stats(model, data)
    # give BN non-trivial statistics, as a trained model has
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(data.images[:128]).float())
    model.eval()
    q = quantize_model(model, cfg or QuantConfig(weight_bits=4, act_bits=4),
                       input_shape=data.input_shape)
    calibrate(q, torch.from_numpy(data.images[:64]).float())
    return model, q


def test_folding_preserves_the_float_function(digits):
    train, _ = digits
    model, q = make_q("resnet8", train)
    stem = q.layers["stem"]
    x = torch.from_numpy(train.images[:8]).float()
    w, b = stem.folded_weight()
    folded = F.conv2d(x / 255.0, w, b, stem.conv.stride, stem.padding)
    ref = model.stem.conv(model.input_norm(x))
    torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-5)  # borders included


@pytest.mark.parametrize("name, shape", [
    ("resnet8", None),
    pytest.param("mobilenetv2_cifar", (3, 16, 16), marks=pytest.mark.slow),
    pytest.param("resnet18", (3, 32, 32), marks=pytest.mark.slow),
    pytest.param("shufflenetv2_x0_5_cifar", (3, 16, 16), marks=pytest.mark.slow),
])
def test_every_model_quantizes_exports_and_simulates_bit_exactly(name, shape, digits):
    train, test = digits
    if shape is not None:  # a synthetic RGB set with the right shape
        kw = dict(n=64, num_classes=10, shape=shape, seed=1)
        train, test = load_dataset("synthetic", "train", **kw), load_dataset("synthetic", "test", **kw)
    _, q = make_q(name, train, QuantConfig(weight_bits=4, act_bits=4))
    prog = build_program(q)
    ops = {n.op for n in prog.nodes}
    assert {"conv2d", "linear", "global_avgpool"} <= ops
    if name == "mobilenetv2_cifar":
        assert any(n.attrs.get("groups", 1) > 1 for n in prog.nodes)
    if name.startswith("shufflenetv2"):
        assert {"concat", "slice", "channel_shuffle"} <= ops
    images = test.images[:6]
    ref = run_integer(prog, images)
    sim = Simulator(NPUConfig.preset("edge16")).run(prog, images)
    np.testing.assert_array_equal(sim.logits, ref)
    # the fake-quant forward computes nearly the same logits (float rounding differs slightly)
    q.eval()
    fq = q(torch.from_numpy(images).float()).detach().numpy()
    scale = prog.tensors[prog.outputs[0]].scales()[0]
    # (per-layer rounding differences of +-1 LSB compound with depth at 4 bits)
    assert np.corrcoef(fq.ravel(), ref.ravel() * scale)[0, 1] > 0.9


def test_shufflenetv2_concat_requantizes_its_inputs_as_the_fake_quant_model_does():
    kw = dict(n=16, num_classes=10, shape=(3, 16, 16), seed=2)
    train = load_dataset("synthetic", "train", **kw)
    cfg = QuantConfig(weight_bits=8, act_bits=8)
    _, q = make_q("shufflenetv2_x0_5_cifar", train, cfg, width=1.0)
    prog = build_program(q)
    cats = [n for n in prog.nodes if n.op == "concat"]
    assert len(cats) == 16 and all(len(n.inputs) == 2 for n in cats)
    images = train.images[:2]
    res = Simulator(NPUConfig.ideal(prog.requant)).run(prog, images, trace=True)
    q.eval()
    env = q(torch.from_numpy(images).float(), return_all=True)
    for n in cats[:3]:  # early layers: the integer and fake-quant tensors agree to 1 LSB
        s_y = prog.tensors[n.output].scales()[0]
        fq = env[n.output].detach().numpy() / s_y
        assert np.abs(res.traces[n.output] - fq).max() <= 1


@pytest.mark.parametrize("requant", [
    {"scale_mode": "fixed", "rounding": "half_away"},
    {"scale_mode": "fixed", "rounding": "half_even", "multiplier_bits": 16},
    {"scale_mode": "pow2", "rounding": "half_up"},
    {"scale_mode": "float", "rounding": "half_even"},
])
def test_integer_eval_equals_simulator_in_every_requant_mode(requant, digits):
    train, test = digits
    cfg = QuantConfig(weight_bits=8, act_bits=8, requant=requant)
    _, q = make_q("resnet8", train, cfg)
    prog = build_program(q)
    sim = Simulator(NPUConfig.preset("edge16")).run(prog, test.images)  # the program's spec
    np.testing.assert_array_equal(sim.logits, run_integer(prog, test.images))


def test_evaluate_reports_both_accuracies(digits):
    train, test = digits
    _, q = make_q("resnet8", train)
    res = evaluate(q, test)
    assert set(res) == {"fake_quant_acc", "integer_acc"}
    logits = run_integer(build_program(q), test.images)
    assert res["integer_acc"] == pytest.approx(np.mean(logits.argmax(1) == test.labels))


def test_integer_weights_are_the_trained_ones(digits):
    train, _ = digits
    _, q = make_q("resnet8", train)
    prog = build_program(q)
    conv = q.layers["layer1__0__conv1"]
    w = conv.wq.int_repr(conv.folded_weight()[0]).numpy()
    g, _ = conv.bn_affine()
    sign = np.where(g.detach().numpy() < 0, -1, 1).reshape(-1, 1, 1, 1)
    np.testing.assert_array_equal(prog.arrays["layer1.0.conv1.weight"], w * sign)
    assert prog.tensors["layer1.0.conv1.weight"].bits == 4
    assert np.abs(prog.arrays["layer1.0.conv1.weight"]).max() <= 7  # narrow 4-bit range
    # first and last layers default to 8 bits
    assert prog.tensors["stem.weight"].bits == 8 and prog.tensors["fc.weight"].bits == 8


def test_round_trip_through_the_file(tmp_path, digits):
    train, test = digits
    _, q = make_q("resnet8", train)
    path = tmp_path / "p.safetensors"
    prog = export_program(q, path)
    back = load_program(path)
    assert back.manifest() == json.loads(json.dumps(prog.manifest()))
    for k, v in prog.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
        assert back.arrays[k].dtype == v.dtype
    np.testing.assert_array_equal(run_integer(back, test.images), run_integer(prog, test.images))
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------- the bad-file corpus
@pytest.fixture(scope="module")
def good(tmp_path_factory, digits):
    _, q = make_q("resnet8", digits[0])
    return build_program(q)


def _rewrite(prog, tmp_path, mutate_manifest=None, mutate_arrays=None):
    from safetensors.numpy import save

    man = json.loads(json.dumps(prog.manifest()))
    arrays = {k: v.copy() for k, v in prog.arrays.items()}
    if mutate_manifest:
        mutate_manifest(man)
    if mutate_arrays:
        mutate_arrays(arrays)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save(arrays, metadata={"npusim": json.dumps(man)}))
    return path


def _node(man, name):
    return next(n for n in man["nodes"] if n["name"] == name)


@pytest.mark.parametrize("case, expect", [
    ("truncated", "not a readable safetensors file"),
    ("version", "version: expected 1"),
    ("unknown_op", "node 'layer1.0.conv1': op: unknown op 'conv3d'"),
    ("out_of_range", "array 'layer1.0.conv1.weight': values"),
    ("shape", "array 'layer1.0.conv2.bias': shape"),
    ("dangling", "node 'layer1.0.conv2': inputs: 'ghost' is not produced"),
    ("unknown_key", "unknown manifest key 'extra'"),
    ("missing_array", "node 'fc': missing array"),
])
def test_bad_files_fail_with_one_line_naming_node_and_field(case, expect, good, tmp_path):
    if case == "truncated":
        path = tmp_path / "t.safetensors"
        save_program(good, path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "version":
        path = _rewrite(good, tmp_path, lambda m: m.update(version=99))
    elif case == "unknown_op":
        path = _rewrite(good, tmp_path, lambda m: _node(m, "layer1.0.conv1").update(op="conv3d"))
    elif case == "out_of_range":
        def bump(a):
            a["layer1.0.conv1.weight"].flat[0] = 100  # a 4-bit weight of 100
        path = _rewrite(good, tmp_path, mutate_arrays=bump)
    elif case == "shape":
        def cut(a):
            a["layer1.0.conv2.bias"] = a["layer1.0.conv2.bias"][:-1].copy()
        path = _rewrite(good, tmp_path, mutate_arrays=cut)
    elif case == "dangling":
        path = _rewrite(good, tmp_path, lambda m: _node(m, "layer1.0.conv2").update(inputs=["ghost"]))
    elif case == "unknown_key":
        path = _rewrite(good, tmp_path, lambda m: m.update(extra=1))
    else:
        def drop(a):
            del a["fc.weight"]
        path = _rewrite(good, tmp_path, mutate_arrays=drop)
    with pytest.raises(ProgramError) as e:
        load_program(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and expect in msg, msg


def test_bit_width_policy(digits):
    _, q = make_q("resnet8", digits[0], QuantConfig(weight_bits=4, act_bits=3, residual_bits=6))
    prog = build_program(q)
    for n in prog.nodes:
        x = prog.tensors[n.inputs[0]]
        if n.op == "conv2d" and n.name != "stem":
            assert x.bits == 3, n.name  # every conv input is an A-bit activation
        if n.op == "linear":
            assert x.bits == 8  # the classifier's input follows last_layer_bits
    # a tensor that only feeds an add (the second conv of a block) uses the residual width
    assert prog.tensors["layer1.0.conv2"].bits == 6 and prog.tensors["layer1.0.conv2"].signed
    assert prog.tensors["input"].bits == 8 and not prog.tensors["input"].signed
