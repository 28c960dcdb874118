"""ONNX import and export: quantized ONNX models (ONNX Runtime's quantizer) <-> IntegerPrograms."""

from npusim.onnx.exporter import OnnxExportError, export_onnx, to_onnx
from npusim.onnx.importer import OnnxImportError, import_onnx

__all__ = ["OnnxExportError", "OnnxImportError", "export_onnx", "import_onnx", "to_onnx"]
