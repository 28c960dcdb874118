"""Tests of the float model zoo: construction, shapes, published sizes, fx-traceability, names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx as fx
from torch import nn

from models import create_model, list_models, summary
from models.layers import Add, ChannelShuffle, ChannelSlice, Concat, ConvBNAct, InputNorm
from models.mobilenetv2 import make_divisible
from models.resnet_cifar import resnet20

CIFAR_MODELS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "mobilenetv2_cifar",
                "shufflenetv2_x0_5_cifar", "shufflenetv2_x1_0_cifar"]
IMAGENET_MODELS = ["resnet18", "resnet34", "mobilenetv2", "shufflenetv2_x0_5", "shufflenetv2_x1_0"]
ALL_MODELS = CIFAR_MODELS + IMAGENET_MODELS
ALLOWED_MODULES = (
    InputNorm, ConvBNAct, Add, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.Sequential,
    Concat, ChannelSlice, ChannelShuffle,
)
# Padding of each model's first convolution (done by InputNorm in raw-pixel space).
STEM_PADDING = {name: 1 for name in CIFAR_MODELS} | {"resnet18": 3, "resnet34": 3,
                                                     "mobilenetv2": 1, "shufflenetv2_x0_5": 1,
                                                     "shufflenetv2_x1_0": 1}


@pytest.fixture(scope="module")
def models_cache() -> dict[str, nn.Module]:
    return {name: create_model(name, num_classes=10).eval() for name in ALL_MODELS}


# --------------------------------------------------------------------------- closed forms


def cifar_resnet_figures(depth: int, in_ch: int, classes: int, hw: int) -> tuple[int, int]:
    """(params incl. BN, MACs) of a CIFAR ResNet with projection shortcuts, by hand."""
    n = (depth - 2) // 6
    params = 9 * in_ch * 16 + 2 * 16
    macs = hw * hw * 16 * 9 * in_ch
    cin, size = 16, hw
    for c, stride in ((16, 1), (32, 2), (64, 2)):
        out = math.ceil(size / stride)
        for i in range(n):
            s = stride if i == 0 else 1
            params += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
            macs += out * out * c * 9 * (cin + c)
            if s != 1 or cin != c:
                params += cin * c + 2 * c
                macs += out * out * c * cin
            cin = c
        size = out
    params += 64 * classes + classes
    macs += 64 * classes
    return params, macs


# --------------------------------------------------------------------------- registry


def test_list_models() -> None:
    assert sorted(list_models()) == sorted(ALL_MODELS)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_cifar_shapes(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 32, 32) * 255)
    assert y.shape == (1, 7) and torch.isfinite(y).all()
    model1 = create_model(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        y1 = model1(torch.rand(1, 1, 28, 28) * 255)
    assert y1.shape == (1, 10) and torch.isfinite(y1).all()


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_forward_imagenet_shapes(name: str) -> None:
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 64, 64) * 255)
    assert y.shape == (1, 5) and torch.isfinite(y).all()


def test_train_mode_forward_backward() -> None:
    model = create_model("resnet8", num_classes=4).train()
    y = model(torch.rand(2, 3, 32, 32) * 255)
    y.sum().backward()
    assert model.stem.conv.weight.grad is not None


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError) as exc:
        create_model("resnet9000")
    msg = str(exc.value)
    assert "\n" not in msg and "resnet9000" in msg
    for name in ALL_MODELS:
        assert name in msg


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": -3}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"width": 0.0}, "width"),
        ({"width": -0.5}, "width"),
        ({"width": float("nan")}, "width"),
    ],
)
@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenetv2"])
def test_bad_arguments(name: str, kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=arg):
        create_model(name, **kwargs)


def test_bad_arguments_direct_constructor() -> None:
    with pytest.raises(ValueError, match="width"):
        resnet20(width=0)


# --------------------------------------------------------------------------- published sizes


def test_resnet20_figures() -> None:
    df = summary(create_model("resnet20", num_classes=10), (3, 32, 32))
    params, macs = cifar_resnet_figures(20, 3, 10, 32)
    assert (params, macs) == (272_474, 40_813_184)
    assert df.attrs["total_params"] == params
    assert df.attrs["total_macs"] == macs
    assert abs(params - 0.27e6) / 0.27e6 < 0.03
    assert abs(macs - 40.8e6) / 40.8e6 < 0.03


def test_resnet20_mnist_figures() -> None:
    df = summary(create_model("resnet20", num_classes=10, in_channels=1), (1, 28, 28))
    params, macs = cifar_resnet_figures(20, 1, 10, 28)
    assert (params, macs) == (272_186, 31_021_952)
    assert df.attrs["total_params"] == params
    assert df.attrs["total_macs"] == macs


@pytest.mark.parametrize("depth", [8, 14, 32, 56])
def test_cifar_resnet_figures(depth: int) -> None:
    df = summary(create_model(f"resnet{depth}"), (3, 32, 32))
    assert (df.attrs["total_params"], df.attrs["total_macs"]) == cifar_resnet_figures(
        depth, 3, 10, 32
    )


def test_resnet56_params() -> None:
    n = sum(p.numel() for p in create_model("resnet56").parameters())
    assert n == 855_770
    assert abs(n - 0.85e6) / 0.85e6 < 0.03


def test_resnet18_figures() -> None:
    df = summary(create_model("resnet18", num_classes=1000), (3, 224, 224))
    # torchvision resnet18: 11,689,512 parameters, 1.814 GMACs.
    assert df.attrs["total_params"] == 11_689_512
    assert df.attrs["total_macs"] == 1_814_073_344
    assert abs(df.attrs["total_params"] - 11.69e6) / 11.69e6 < 0.01
    assert abs(df.attrs["total_macs"] - 1.82e9) / 1.82e9 < 0.02
    stem = df.set_index("layer").loc["stem.conv"]
    assert stem["output_shape"] == "64x112x112" and stem["kernel"] == "7x7"


def test_resnet34_params() -> None:
    n = sum(p.numel() for p in create_model("resnet34", num_classes=1000).parameters())
    assert n == 21_797_672  # torchvision resnet34


def test_mobilenetv2_figures() -> None:
    df = summary(create_model("mobilenetv2", num_classes=1000), (3, 224, 224))
    # torchvision mobilenet_v2: 3,504,872 parameters, ~300.8 M MACs.
    assert df.attrs["total_params"] == 3_504_872
    assert df.attrs["total_macs"] == 300_774_272
    assert abs(df.attrs["total_params"] - 3.5e6) / 3.5e6 < 0.03
    assert abs(df.attrs["total_macs"] - 300e6) / 300e6 < 0.05
    last = df.iloc[-2]
    assert last["layer"] == "head.conv" and last["output_shape"] == "1280x7x7"


@pytest.mark.parametrize("name, params", [("shufflenetv2_x0_5", 1_366_792),
                                           ("shufflenetv2_x1_0", 2_278_604)])
def test_shufflenetv2_params(name: str, params: int) -> None:
    # torchvision shufflenet_v2_x0_5 / _x1_0 (Ma et al. 2018, Table 5 channels)
    model = create_model(name, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == params
    df = summary(model, (3, 224, 224))
    assert df.set_index("layer").loc["head.conv", "output_shape"] == "1024x7x7"


def test_channel_shuffle_interleaves_the_halves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


# --------------------------------------------------------------------------- summary


def test_summary_table() -> None:
    model = create_model("mobilenetv2_cifar").train()
    df = summary(model, (3, 32, 32))
    assert model.training  # mode restored
    assert list(df.columns) == ["layer", "op", "in_channels", "out_channels", "kernel", "stride",
                                "groups", "output_shape", "params", "macs"]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(df["layer"]) == convs + ["fc"]
    rows = df.set_index("layer")
    dw = rows.loc["features.1.dw.conv"]
    assert (dw["op"], dw["groups"], dw["in_channels"], dw["kernel"]) == ("conv2d", 96, 96, "3x3")
    assert dw["macs"] == 96 * 32 * 32 * 9 and dw["params"] == 96 * 9
    fc = rows.loc["fc"]
    assert (fc["op"], fc["in_channels"], fc["out_channels"]) == ("linear", 1280, 10)
    assert fc["params"] == 1280 * 10 + 10 and fc["macs"] == 12800
    bn_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                    for p in m.parameters())
    assert df.attrs["total_params"] == int(df["params"].sum()) + bn_params
    assert df.attrs["total_macs"] == int(df["macs"].sum())
    # no hooks left behind
    assert all(not m._forward_hooks for m in model.modules())


def test_summary_bad_shape() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        summary(create_model("resnet8"), (32, 32))


# --------------------------------------------------------------------------- fx / structure


class _LeafTracer(fx.Tracer):
    """Treat InputNorm and Add (custom modules with arithmetic inside) as graph leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (InputNorm, Add, Concat, ChannelSlice, ChannelShuffle)) \
            or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fx_graph_is_module_calls_only(name: str, models_cache: dict[str, nn.Module]) -> None:
    model = models_cache[name]
    for m in model.modules():
        assert isinstance(m, ALLOWED_MODULES + (type(model),)) or type(m).__name__ in (
            "BasicBlock", "InvertedResidual", "ShuffleBlock"), type(m)
    # With InputNorm/Add as leaves, the graph is call_module nodes only.
    graph = _LeafTracer().trace(model)
    ops = {node.op for node in graph.nodes}
    assert ops == {"placeholder", "call_module", "output"}, ops
    targets = [node.target for node in graph.nodes if node.op == "call_module"]
    assert targets[0] == "input_norm" and targets[-1] == "fc"
    # With the plain tracer, the only non-module nodes are the arithmetic inside InputNorm and
    # Add (layers.py); the models' own forwards add none.
    gm = fx.symbolic_trace(model)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "call_module"):
            continue
        owner = list(node.meta.get("nn_module_stack", {}).values())[-1][1]
        assert owner in (InputNorm, Add, Concat, ChannelSlice, ChannelShuffle), \
            (node.op, node.target, owner)
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_input_norm_padding_convention(name: str, models_cache: dict[str, nn.Module]) -> None:
    model = models_cache[name]
    first_name, first = next(iter(model.named_children()))
    assert first_name == "input_norm" and isinstance(first, InputNorm)
    assert first.padding == STEM_PADDING[name]
    assert isinstance(model.stem, ConvBNAct)
    assert model.stem.conv.padding == (0, 0)
    k = model.stem.conv.kernel_size[0]
    assert first.padding == k // 2


def test_stem_output_size_matches_same_padding() -> None:
    df = summary(create_model("resnet20"), (3, 32, 32)).set_index("layer")
    assert df.loc["stem.conv", "output_shape"] == "16x32x32"
    df = summary(create_model("mobilenetv2_cifar"), (3, 32, 32)).set_index("layer")
    assert df.loc["stem.conv", "output_shape"] == "32x32x32"
    assert df.loc["head.conv", "output_shape"] == "1280x4x4"


def test_resnet_cifar_names(models_cache: dict[str, nn.Module]) -> None:
    model = models_cache["resnet20"]
    mods = dict(model.named_modules())
    for name in ["input_norm", "stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.shortcut",
                 "layer1.0.add", "layer2.0.shortcut", "layer3.2.add", "pool", "flatten", "fc"]:
        assert name in mods, name
    assert isinstance(mods["layer1.0.shortcut"], nn.Identity)
    assert isinstance(mods["layer2.0.shortcut"], ConvBNAct)
    assert mods["layer2.0.shortcut"].conv.kernel_size == (1, 1)
    assert mods["layer2.0.shortcut"].conv.stride == (2, 2)
    assert isinstance(mods["layer2.0.shortcut"].act, nn.Identity)
    assert isinstance(mods["layer2.1.shortcut"], nn.Identity)
    assert isinstance(mods["layer1.0.add"], Add) and isinstance(mods["layer1.0.add"].act, nn.ReLU)
    assert isinstance(mods["layer1.0.conv1"].act, nn.ReLU)
    assert isinstance(mods["layer1.0.conv2"].act, nn.Identity)
    assert isinstance(mods["pool"], nn.AdaptiveAvgPool2d)
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    # init: BN gamma 1 everywhere (no zero-init of the last BN in a branch), beta 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_resnet_imagenet_names(models_cache: dict[str, nn.Module]) -> None:
    model = models_cache["resnet34"]
    mods = dict(model.named_modules())
    assert isinstance(mods["maxpool"], nn.MaxPool2d)
    assert model.stem.conv.kernel_size == (7, 7) and model.stem.conv.stride == (2, 2)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert isinstance(mods["layer1.0.shortcut"], nn.Identity)
    for i in (2, 3, 4):
        assert isinstance(mods[f"layer{i}.0.shortcut"], ConvBNAct)
    assert model.fc.in_features == 512
    assert [len(getattr(models_cache["resnet18"], f"layer{i}")) for i in range(1, 5)] == [2] * 4


def test_mobilenetv2_names(models_cache: dict[str, nn.Module]) -> None:
    model = models_cache["mobilenetv2"]
    mods = dict(model.named_modules())
    assert len(model.features) == 17
    assert "features.0.expand" not in mods  # t = 1
    assert "features.0.add" not in mods  # 32 -> 16
    for part in ("expand", "dw", "project"):
        assert f"features.1.{part}" in mods
    dw = mods["features.1.dw"].conv
    assert dw.groups == dw.in_channels == dw.out_channels == 96
    assert isinstance(mods["features.1.dw"].act, nn.ReLU6)
    assert isinstance(mods["features.1.expand"].act, nn.ReLU6)
    assert isinstance(mods["features.1.project"].act, nn.Identity)
    assert "features.1.add" not in mods  # stride 2
    assert isinstance(mods["features.2.add"], Add)  # 24 -> 24, stride 1
    assert isinstance(mods["features.2.add"].act, nn.Identity)
    with_add = [i for i in range(17) if f"features.{i}.add" in mods]
    assert with_add == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    assert model.head.conv.out_channels == 1280 and model.head.conv.kernel_size == (1, 1)
    strides = [b.dw.conv.stride[0] for b in model.features]
    assert strides == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert model.stem.conv.stride == (2, 2)
    cifar = models_cache["mobilenetv2_cifar"]
    assert cifar.stem.conv.stride == (1, 1)
    assert [b.dw.conv.stride[0] for b in cifar.features][:4] == [1, 1, 1, 2]


def test_width_half() -> None:
    full, half = create_model("resnet20"), create_model("resnet20", width=0.5)
    for (n, a), (_, b) in zip(full.named_modules(), half.named_modules()):
        if isinstance(a, nn.Conv2d):
            assert b.out_channels * 2 == a.out_channels, n
            if n != "stem.conv":
                assert b.in_channels * 2 == a.in_channels, n
    assert half.fc.in_features == 32
    r18 = create_model("resnet18", width=0.5)
    assert r18.stem.conv.out_channels == 32 and r18.fc.in_features == 256
    mb = create_model("mobilenetv2", width=0.5)
    assert mb.stem.conv.out_channels == 16
    assert mb.features[-1].project.conv.out_channels == 160
    assert mb.head.conv.out_channels == 640
    with torch.no_grad():
        assert half.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    tiny = create_model("resnet8", width=0.01)
    assert tiny.stem.conv.out_channels == 1


def test_make_divisible() -> None:
    assert make_divisible(32 * 1.0) == 32
    assert make_divisible(16 * 0.5) == 8
    assert make_divisible(24 * 0.5) == 16  # 8 would be < 90 % of 12
    assert make_divisible(1280 * 0.75) == 960
