"""ONNX import and export: quantized ONNX models (ONNX Runtime's quantizer) <-> IntegerPrograms."""

from npusim.onnx.importer import OnnxImportError, import_onnx

__all__ = ["OnnxImportError", "import_onnx"]
