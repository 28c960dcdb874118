"""`quantize_model`: a fake-quant network whose quantizers sit exactly where the NPU quantizes.

The float model is traced with torch.fx (our building blocks are leaves), and each block is
replaced by its quantized counterpart:
- raw uint8 input; the data set's normalisation is folded into the first conv's weights and
  bias *before* its weight quantizer (its padding is done on raw pixels, as the NPU does);
- conv + BN (+ ReLU/ReLU6) -> integer conv, per-channel requantization, output quantizer;
- residual add -> both inputs already quantized by their producers, output quantizer;
- max pooling exact; average pooling requantized; the classifier stops at its accumulator;
- channel slices and shuffles pass quantized tensors through; a concat requantizes each input
  to its own output quantizer (a copy where the scales agree).

Batch norm during QAT: for the first ``1 - bn_freeze_frac`` of the epochs (all of them by
default, see `QuantConfig.bn_freeze_frac`) BN uses batch statistics (running statistics keep
updating); for the rest they are frozen and the forward
uses the folded form the NPU computes: ``z = g * conv(x, w_hat) + |g| * s_x * s_w * bias_int``
with ``g = gamma / sigma`` and the bias rounded to its integer, so the last epochs train the
function that is exported. Evaluation always uses the folded form. The integer weights are the
quantized *unfolded* conv weights; ``g`` goes into each channel's requant multiplier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from models.layers import Add, ChannelShuffle, ChannelSlice, Concat, ConvBNAct, InputNorm
from npusim.errors import UserError
from quantize.a2q import A2QQuantizer, bias_limit
from quantize.config import EmbeddingConfig, QuantConfig
from quantize.embedding import QEmbed, first_conv_init
from quantize.quantizers import Quantizer, make_quantizer

log = logging.getLogger(__name__)

# The NPU's input: raw uint8 pixels, read at scale 1/255.
INPUT_SCALE = 1.0 / 255.0
_PASSTHROUGH = (nn.Identity, nn.Flatten, nn.MaxPool2d)
_LEAVES = (InputNorm, ConvBNAct, Add, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
           nn.Flatten, nn.Linear, nn.Identity, Concat, ChannelSlice, ChannelShuffle)
#: node kinds whose output is their (first) input's integers, with its scale
_VIEWS = ("maxpool", "flatten", "slice", "shuffle")


class QuantizeError(UserError):
    """A model `quantize_model` cannot map onto the NPU (names the module)."""


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


# The bias is an int32 preload of the accumulator. A channel whose weight scale is tiny (weights
# decayed to ~0) can ask for a bias beyond int32; it is saturated there, in the fake-quant
# forward and at export alike, as a 32-bit bias register would.
BIAS_LIMIT = 2 ** 31 - 1


def _int_bias(x: torch.Tensor, limit: int = BIAS_LIMIT) -> torch.Tensor:
    return _round_ste(x).clamp(-limit, limit)


class QConv(nn.Module):
    """Conv2d + BN (+ activation) with a per-channel weight quantizer and an output quantizer."""

    def __init__(self, block: ConvBNAct, wq: Quantizer, oq: Quantizer,
                 fold: InputNorm | None = None, embedding: EmbeddingConfig | None = None,
                 bias_limit: int = BIAS_LIMIT) -> None:
        super().__init__()
        self.conv = block.conv
        self.bn = block.bn
        self.act = {nn.ReLU: "relu", nn.ReLU6: "relu6"}.get(type(block.act))
        if self.act is None and not isinstance(block.act, nn.Identity):
            raise QuantizeError(f"unsupported activation {type(block.act).__name__}")
        self.wq, self.oq = wq, oq
        self.bias_limit = int(bias_limit)
        self.padding = self.conv.padding[0]
        self.fold = fold is not None and embedding is None
        self.embedded = embedding is not None
        if fold is not None:
            self.padding = fold.padding
        if self.fold:
            self.register_buffer("norm_mean", fold.mean.clone())
            self.register_buffer("norm_std", fold.std.clone())
        if self.embedded:
            # the first conv now reads C*d embedded channels; its float weights and the folded
            # normalisation become the initial weights and a fixed input bias
            c = self.conv
            if c.groups != 1:
                raise QuantizeError("pixel embedding needs a first conv with groups=1")
            w, b = first_conv_init(embedding, c.weight.detach(), fold.mean, fold.std)
            self.conv = nn.Conv2d(w.shape[1], c.out_channels, c.kernel_size, c.stride, 0,
                                  bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(w)
            self.register_buffer("in_bias", b)
        self.bn_frozen = False

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight and bias with the input normalisation folded in.

        The folded conv reads the raw pixels as uint8 integers at scale 1/255 (values in
        [0, 1]), so ``(x/255 - mean)/std`` becomes weights ``w/std`` and bias
        ``-sum(w * mean/std)``. Keeping the 1/255 in the input's scale rather than in the
        weights keeps the weight step sizes O(1), where LSQ's step gradient is well scaled.
        """
        w = self.conv.weight
        if self.embedded:
            return w, self.in_bias
        if not self.fold:
            return w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        std = self.norm_std.view(1, -1, 1, 1)
        mean = self.norm_mean.view(1, -1, 1, 1)
        return w / std, -(w * mean / std).sum(dim=(1, 2, 3))

    def bn_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``g = gamma/sigma`` and ``b = beta - g*mu`` from the running statistics."""
        bn = self.bn
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return g, bn.bias - g * bn.running_mean

    def integer_bias(self, s_x: torch.Tensor) -> torch.Tensor:
        """The int32 bias at scale ``s_x * s_w * |g|`` (rounded with STE, saturated to int32)."""
        w, bias_f = self.folded_weight()
        g, b = self.bn_affine()
        s_w = self.wq._forward_scale(w)
        return _int_bias((g * bias_f + b) / (s_x * s_w * g.abs()), self.bias_limit)

    def _a2q_prepare(self, s_x: torch.Tensor) -> None:
        """A2Q: tell the weight quantizer the biases' magnitudes (its budget); init once."""
        with torch.no_grad():
            self.wq.set_bias_abs(self.integer_bias(s_x).abs())
            if not bool(self.wq.norm_init_done):
                w, _ = self.folded_weight()
                new = self.wq.init_norm(w)
                if new is not None:  # write the projected weights back (unfolded)
                    if self.fold:
                        new = new * self.norm_std.view(1, -1, 1, 1)
                    self.conv.weight.copy_(new)
                self.wq.set_bias_abs(self.integer_bias(s_x).abs())

    def int_weight(self, s_x: torch.Tensor) -> torch.Tensor:
        """The integer weights the forward uses (before the sign flip of negative BN gains)."""
        w, _ = self.folded_weight()
        if isinstance(self.wq, A2QQuantizer):
            self._a2q_prepare(s_x)
        return self.wq.int_repr(w)

    def forward(self, x: torch.Tensor, s_x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.wq, A2QQuantizer):
            self._a2q_prepare(s_x)
        w, bias_f = self.folded_weight()
        w_hat = self.wq(w)
        z = F.conv2d(x, w_hat, None, self.conv.stride, self.padding, 1, self.conv.groups)
        if self.training and not self.bn_frozen:
            z = self.bn(z + bias_f.view(1, -1, 1, 1))
        else:
            g, _ = self.bn_affine()
            s_w = self.wq._forward_scale(w)
            bias_int = self.integer_bias(s_x)
            z = g.view(1, -1, 1, 1) * z + (g.abs() * s_x * s_w * bias_int).view(1, -1, 1, 1)
        if self.act == "relu":
            z = F.relu(z)
        elif self.act == "relu6":
            z = F.relu6(z)
        return self.oq(z)


class QLinear(nn.Module):
    """The classifier: per-tensor weight quantizer, integer bias, output = the accumulator."""

    def __init__(self, linear: nn.Linear, wq: Quantizer, bias_limit: int = BIAS_LIMIT) -> None:
        super().__init__()
        self.linear, self.wq = linear, wq
        self.bias_limit = int(bias_limit)

    def integer_bias(self, s_x: torch.Tensor) -> torch.Tensor:
        b = self.linear.bias
        if b is None:
            return torch.zeros(self.linear.out_features)
        return _int_bias(b / (s_x * self.wq._forward_scale(self.linear.weight)), self.bias_limit)

    def _a2q_prepare(self, s_x: torch.Tensor) -> None:
        with torch.no_grad():
            self.wq.set_bias_abs(self.integer_bias(s_x).abs())
            if not bool(self.wq.norm_init_done):
                new = self.wq.init_norm(self.linear.weight)
                if new is not None:
                    self.linear.weight.copy_(new)
                self.wq.set_bias_abs(self.integer_bias(s_x).abs())

    def int_weight(self, s_x: torch.Tensor) -> torch.Tensor:
        """The integer weights the forward uses."""
        if isinstance(self.wq, A2QQuantizer):
            self._a2q_prepare(s_x)
        return self.wq.int_repr(self.linear.weight)

    def forward(self, x: torch.Tensor, s_x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.wq, A2QQuantizer):
            self._a2q_prepare(s_x)
        w_hat = self.wq(self.linear.weight)
        s_w = self.wq._forward_scale(self.linear.weight)
        return F.linear(x, w_hat) + self.integer_bias(s_x) * s_x * s_w


class QAdd(nn.Module):
    """Residual add of two quantized tensors, optional ReLU, output quantizer."""

    def __init__(self, add: Add, oq: Quantizer) -> None:
        super().__init__()
        self.relu = isinstance(add.act, nn.ReLU)
        if not self.relu and not isinstance(add.act, nn.Identity):
            raise QuantizeError(f"unsupported activation after add: {type(add.act).__name__}")
        self.oq = oq

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = a + b
        return self.oq(F.relu(z) if self.relu else z)


class QConcat(nn.Module):
    """Concatenation along channels of quantized tensors, requantized by an output quantizer."""

    def __init__(self, oq: Quantizer) -> None:
        super().__init__()
        self.oq = oq

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.oq(torch.cat(xs, dim=1))


class QAvgPool(nn.Module):
    """Average pooling (global, or kernel == stride without padding) with an output quantizer."""

    def __init__(self, kernel: int | None, oq: Quantizer) -> None:
        super().__init__()
        self.kernel, self.oq = kernel, oq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3), keepdim=True) if self.kernel is None else \
            F.avg_pool2d(x, self.kernel, self.kernel)
        return self.oq(z)


@dataclass
class QNode:
    """One step of the quantized graph: `inputs` and `name` are tensor names."""

    name: str
    kind: str  # conv | linear | add | avgpool | maxpool | flatten | embed | concat | slice | shuffle
    inputs: list[str]
    module: str | None  # key in QuantizedModel.layers (None for flatten)
    attrs: dict[str, Any]


class QuantizedModel(nn.Module):
    """A fake-quant network executing `QNode`s in order; remembers the config that made it."""

    def __init__(self, nodes: list[QNode], layers: nn.ModuleDict, output: str,
                 config: QuantConfig, input_shape: tuple[int, int, int], meta: dict[str, Any]):
        super().__init__()
        self.nodes = nodes
        self.layers = layers
        self.output = output
        self.config = config
        self.input_shape = tuple(input_shape)
        self.meta = meta
        self.aliases: dict[str, str] = {}

    def quantizers(self) -> dict[str, Quantizer]:
        return {n: m for n, m in self.named_modules() if isinstance(m, Quantizer)}

    def quant_parameters(self) -> list[nn.Parameter]:
        params = []
        for q in self.quantizers().values():
            params.extend(q.quant_parameters())
        return params

    def set_bn_frozen(self, frozen: bool) -> None:
        """Freeze BN statistics: the training forward becomes the folded integer form."""
        for m in self.modules():
            if isinstance(m, QConv):
                m.bn_frozen = frozen
                m.bn.eval() if frozen else m.bn.train(self.training)

    def train(self, mode: bool = True) -> "QuantizedModel":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, QConv) and m.bn_frozen:
                m.bn.eval()
        return self

    def set_progress(self, frac: float) -> None:
        for q in self.quantizers().values():
            q.set_progress(frac)

    def tensor_scale(self, name: str) -> torch.Tensor:
        """The (detached) scale of a tensor: 1/255 for the raw input, else its producer's."""
        producer = self._producers()[name]
        if producer is None:
            return torch.tensor(INPUT_SCALE)
        return producer.oq.scale().detach()

    def _producers(self) -> dict[str, Any]:
        prod: dict[str, Any] = {"input": None}
        for n in self.nodes:
            if n.kind in ("conv", "add", "avgpool", "embed", "concat"):
                prod[n.name] = self.layers[n.module]
            elif n.kind in _VIEWS:
                prod[n.name] = prod[n.inputs[0]]
        return prod

    def forward(self, x: torch.Tensor, return_all: bool = False):
        """Logits (float, = integer accumulator x scale) from raw pixel values (0..255);
        `return_all` gives every tensor."""
        env = {"input": x * INPUT_SCALE}
        scales = {"input": torch.tensor(INPUT_SCALE)}
        for n in self.nodes:
            ins = [env[i] for i in n.inputs]
            if n.kind == "conv":
                mod = self.layers[n.module]
                y = mod(ins[0], scales[n.inputs[0]])
                scales[n.name] = mod.oq.scale().detach()
            elif n.kind == "linear":
                y = self.layers[n.module](ins[0], scales[n.inputs[0]])
                scales[n.name] = torch.tensor(float("nan"))
            elif n.kind in ("add", "concat"):
                mod = self.layers[n.module]
                y = mod(*ins)
                scales[n.name] = mod.oq.scale().detach()
            elif n.kind == "embed":
                mod = self.layers[n.module]
                y = mod(ins[0])
                scales[n.name] = mod.oq.scale().detach()
            elif n.kind == "avgpool":
                mod = self.layers[n.module]
                y = mod(ins[0])
                scales[n.name] = mod.oq.scale().detach()
            elif n.kind == "maxpool":
                a = n.attrs
                y = F.max_pool2d(ins[0], a["kernel"], a["stride"], a["padding"])
                scales[n.name] = scales[n.inputs[0]]
            elif n.kind == "flatten":
                y = ins[0].flatten(1)
                scales[n.name] = scales[n.inputs[0]]
            elif n.kind == "slice":
                y = ins[0][:, n.attrs["start"]:n.attrs["stop"]]
                scales[n.name] = scales[n.inputs[0]]
            elif n.kind == "shuffle":
                y = ChannelShuffle(n.attrs["groups"])(ins[0])
                scales[n.name] = scales[n.inputs[0]]
            else:  # pragma: no cover
                raise QuantizeError(f"unknown node kind {n.kind}")
            env[n.name] = y
        return env if return_all else env[self.output]


def _int(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def quantize_model(model: nn.Module, config: QuantConfig,
                   input_shape: tuple[int, int, int] | None = None) -> QuantizedModel:
    """Build the fake-quant version of a `models/` network under `config`.

    The float weights are copied (the float model is left untouched). Weight quantizers are
    initialised from the weights at once; activation quantizers on their first batch (see
    `calibrate`).
    """
    import copy

    model = copy.deepcopy(model).eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise QuantizeError(f"cannot trace model: {str(e).splitlines()[0]}") from None
    modules = dict(model.named_modules())
    alias: dict[str, str] = {}
    norm_for: dict[str, InputNorm] = {}
    raw: list[tuple[str, str, nn.Module | None, list[str]]] = []  # (name, kind, module, inputs)
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            alias[node.name] = "input"
            continue
        if node.op == "output":
            output = alias[node.args[0].name]
            continue
        if node.op != "call_module":
            raise QuantizeError(f"{node.name}: only module calls can be quantized, found "
                                f"{node.op} {node.target} (build models from models.layers)")
        mod = modules[node.target]
        ins = [alias[a.name] for a in node.args if isinstance(a, torch.fx.Node)]
        name = node.target
        if isinstance(mod, nn.Identity):
            alias[node.name] = ins[0]
            continue
        if isinstance(mod, InputNorm):
            if ins != ["input"]:
                raise QuantizeError(f"{name}: InputNorm must read the raw input")
            alias[node.name] = f"norm:{name}"
            norm_for[f"norm:{name}"] = mod
            continue
        alias[node.name] = name
        raw.append((name, _kind(mod, name), mod, ins))
    if output is None:
        raise QuantizeError("model has no output")

    # consumers of each tensor, looking through passthrough ops
    consumers: dict[str, list[tuple[str, str]]] = {}
    for name, kind, _, ins in raw:
        for i in ins:
            consumers.setdefault(i, []).append((name, kind))
    last_linear = [n for n, k, _, _ in raw if k == "linear"]
    if not last_linear or last_linear[-1] != _through(output, raw):
        raise QuantizeError("the model must end in a Linear classifier (optionally flattened)")
    classifier = last_linear[-1]
    first_conv = next((n for n, k, _, ins in raw if k == "conv"), None)

    def consumer_bits(tensor: str) -> int:
        """Width of a tensor from its consumers: a tensor read by any conv/linear takes the
        activation width of those layers (the last layer's for the classifier); a tensor that
        only feeds residual adds (or the output) takes `residual_bits`."""
        conv_bits = 0
        stack = [tensor]
        while stack:
            t = stack.pop()
            for cname, ckind in consumers.get(t, []):
                if ckind in _VIEWS:
                    stack.append(cname)
                elif ckind == "linear" and cname == classifier:
                    conv_bits = max(conv_bits, config.last_layer_bits or config.act_bits)
                elif ckind in ("conv", "linear"):
                    conv_bits = max(conv_bits, config.layer_bits(cname, "act", config.act_bits))
                elif ckind in ("avgpool", "concat"):
                    conv_bits = max(conv_bits, consumer_bits(cname))
        return conv_bits or config.residual_bits

    def act_quantizer(tensor: str, signed: bool) -> Quantizer:
        bits = consumer_bits(tensor)
        return make_quantizer(config.method, bits, signed, narrow=False, per_channel=False,
                              role="activation", **config.options)

    def signed_of(tensor: str) -> bool:
        for name, kind, mod, ins in raw:
            if name == tensor:
                if kind == "conv":
                    return isinstance(mod.act, nn.Identity)
                if kind == "add":
                    return isinstance(mod.act, nn.Identity)
                if kind in _VIEWS or kind == "avgpool":
                    return signed_of(ins[0])
                if kind == "concat":
                    return any(signed_of(i) for i in ins)
        return False  # the raw input is unsigned

    layers = nn.ModuleDict()
    qnodes: list[QNode] = []
    emb = config.embedding
    if emb is not None and not norm_for:
        raise QuantizeError("embedding: the model has no InputNorm feeding its first conv")

    def input_range(tensor: str) -> tuple[int, int]:
        """Integer range of a conv/linear input, from its producer's output quantizer."""
        by_name = {n.name: n for n in qnodes}
        while tensor in by_name and by_name[tensor].kind in _VIEWS:
            tensor = by_name[tensor].inputs[0]
        if tensor == "input":
            return 0, 255
        return layers[by_name[tensor].module].oq._qrange()

    def weight_quantizer(name: str, wbits: int, per_channel: bool, channels: int,
                         x_range: tuple[int, int]) -> Quantizer:
        if config.a2q is None:
            return make_quantizer(config.method, wbits, True, narrow=config.narrow_weights,
                                  per_channel=per_channel, channels=channels, role="weight",
                                  **config.options)
        if config.method not in ("lsq", "lglsq"):
            raise QuantizeError(f"a2q: needs an LSQ-style method (lsq, lglsq), got "
                                f"{config.method!r}")
        p = config.layer_bits(name, "acc", config.acc_bits)
        return A2QQuantizer(wbits, True, narrow=config.narrow_weights, per_channel=per_channel,
                            channels=channels, role="weight", acc_bits=p, mode=config.a2q.mode,
                            x_range=tuple(int(v) for v in x_range), init=config.a2q.init)

    def bias_cap(name: str) -> int:
        if config.a2q is None:
            return BIAS_LIMIT
        return bias_limit(config.layer_bits(name, "acc", config.acc_bits), config.a2q.bias_frac)

    for name, kind, mod, ins in raw:
        key = name.replace(".", "__")
        if kind == "conv":
            fold = norm_for.get(ins[0])
            if fold is not None:
                ins = ["input"]
                if emb is not None:
                    c_in = mod.conv.in_channels
                    bits = emb.bits or config.layer_bits(name, "act", config.act_bits)
                    eq = make_quantizer(config.method, bits, emb.signed, narrow=False,
                                        per_channel=False, role="activation", **config.options)
                    layers["embed"] = QEmbed(emb, c_in, eq)
                    qnodes.append(QNode("embed", "embed", ["input"], "embed", {}))
                    ins = ["embed"]
            elif ins[0].startswith("norm:"):
                raise QuantizeError(f"{name}: InputNorm must feed the first conv only")
            wbits = config.layer_bits(
                name, "weight",
                (config.first_layer_bits or config.weight_bits) if name == first_conv
                else config.weight_bits)
            wq = weight_quantizer(name, wbits, config.per_channel_weights,
                                  mod.conv.out_channels, input_range(ins[0]))
            signed = isinstance(mod.act, nn.Identity)
            q = QConv(mod, wq, act_quantizer(name, signed), fold,
                      emb if fold is not None else None, bias_cap(name))
            with torch.no_grad():
                wq.init_from(q.folded_weight()[0])
            layers[key] = q
            attrs = {}
        elif kind == "linear":
            if name != classifier:
                raise QuantizeError(f"{name}: only the final Linear classifier is supported")
            wbits = config.layer_bits(name, "weight", config.last_layer_bits or config.weight_bits)
            wq = weight_quantizer(name, wbits, False, mod.out_features, input_range(ins[0]))
            with torch.no_grad():
                wq.init_from(mod.weight)
            layers[key] = QLinear(mod, wq, bias_cap(name))
            attrs = {}
        elif kind == "add":
            layers[key] = QAdd(mod, act_quantizer(name, isinstance(mod.act, nn.Identity)))
            attrs = {}
        elif kind == "avgpool":
            kernel = None
            if isinstance(mod, nn.AvgPool2d):
                kernel = _int(mod.kernel_size)
                if _int(mod.stride) != kernel or _int(mod.padding) != 0:
                    raise QuantizeError(f"{name}: only non-overlapping average pooling is supported")
            elif _int(mod.output_size) != 1:
                raise QuantizeError(f"{name}: only global adaptive average pooling is supported")
            layers[key] = QAvgPool(kernel, act_quantizer(name, signed_of(ins[0])))
            attrs = {"kernel": kernel}
        elif kind == "maxpool":
            attrs = {"kernel": _int(mod.kernel_size), "stride": _int(mod.stride),
                     "padding": _int(mod.padding)}
            if mod.dilation not in (1, (1, 1)) or mod.ceil_mode:
                raise QuantizeError(f"{name}: dilated or ceil-mode max pooling is not supported")
            key = None
        elif kind == "concat":
            layers[key] = QConcat(act_quantizer(name, any(signed_of(i) for i in ins)))
            attrs = {}
        elif kind == "slice":
            key, attrs = None, {"start": mod.start, "stop": mod.stop}
        elif kind == "shuffle":
            key, attrs = None, {"groups": mod.groups}
        else:  # flatten
            key = None
            attrs = {}
        qnodes.append(QNode(name, kind, ins, key, attrs))
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    meta = {"model_class": type(model).__name__}
    return QuantizedModel(qnodes, layers, output, config, tuple(input_shape or ()), meta)


def _kind(mod: nn.Module, name: str) -> str:
    if isinstance(mod, ConvBNAct):
        return "conv"
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, Add):
        return "add"
    if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "avgpool"
    if isinstance(mod, nn.MaxPool2d):
        return "maxpool"
    if isinstance(mod, nn.Flatten):
        return "flatten"
    if isinstance(mod, Concat):
        return "concat"
    if isinstance(mod, ChannelSlice):
        return "slice"
    if isinstance(mod, ChannelShuffle):
        return "shuffle"
    raise QuantizeError(f"{name}: module {type(mod).__name__} has no integer counterpart")


def _through(output: str, raw) -> str:
    """The producer behind passthrough ops (flatten) of a tensor."""
    by_name = {n: (k, ins) for n, k, _, ins in raw}
    while output in by_name and by_name[output][0] == "flatten":
        output = by_name[output][1][0]
    return output


@torch.no_grad()
def calibrate(qmodel: QuantizedModel, images: torch.Tensor) -> None:
    """Initialise the activation quantizers from one batch (eval mode, running BN stats)."""
    was = qmodel.training
    qmodel.eval()
    qmodel(images)
    qmodel.train(was)
