"""Quantization-aware training that exports IntegerPrograms for the NPU simulator."""

from quantize.config import LayerOverride, QuantConfig, QuantConfigError, RequantSpec
from quantize.export import build_program, export_program
from quantize.model import QuantizedModel, QuantizeError, calibrate, quantize_model
from quantize.qat import evaluate, prepare_qat, qat_train

__all__ = ["QuantConfig", "QuantConfigError", "LayerOverride", "RequantSpec", "QuantizedModel",
           "QuantizeError", "quantize_model", "calibrate", "build_program", "export_program",
           "evaluate", "prepare_qat", "qat_train"]
