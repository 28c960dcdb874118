"""Every model of `models/`: torch.onnx.export of the float model, ONNX Runtime's static
quantization (synthetic calibration data, QDQ), `import_onnx`, simulation equal to ORT."""

from __future__ import annotations

import pytest
import torch

from models import create_model, list_models
from npusim.onnx import import_onnx
from tests.npusim.onnx import helpers as H
from tests.npusim.onnx.test_import import images

FAST = {"resnet8", "shufflenetv2_x0_5_cifar"}


def _shape(name: str) -> tuple[int, int, int]:
    # ImageNet stems divide by 4 before the stages: 32x32 keeps every map >= 1x1
    return (3, 16, 16) if name.endswith("_cifar") or name.startswith("resnet") and \
        name not in ("resnet18", "resnet34") else (3, 32, 32)


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_every_model_exports_quantizes_imports_and_simulates_equal_to_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    shape = _shape(name)
    m = create_model(name, num_classes=10, in_channels=3, width=0.25).eval()
    pad = m.input_norm.padding  # the NPU input is the normalised image: pad in the stem conv
    m.input_norm = torch.nn.Identity()
    m.stem.conv.padding = (pad, pad)
    f = H.export_torch(m, shape, tmp_path / "f.onnx")
    q = H.quantize(f, tmp_path / "q.onnx", shape, "qdq", True)
    prog = import_onnx(q)
    assert H.compare_with_ort(prog, q, images(4, seed=5, shape=shape)) == {prog.outputs[0]: 0}
