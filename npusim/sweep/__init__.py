"""Sweeps (docs/architecture.md): grids of quantization x NPU configurations, run into a results store
that survives interruption, read back as one tidy DataFrame. Importing this package does not
import torch (training is imported when a sweep first needs a model)."""

from npusim.sweep.grid import Axis, Grid, Point, parse_npu_axis, parse_quant_axis, parse_values
from npusim.sweep.run import point_hash, sweep
from npusim.sweep.store import ResultsStore, StoreError

__all__ = ["Axis", "Grid", "Point", "ResultsStore", "StoreError", "parse_npu_axis",
           "parse_quant_axis", "parse_values", "point_hash", "sweep"]
