"""MARViN figures and cost table from a saved run directory (`quantize.marvin.save_run`):
the word-length heatmap and the estimated training speedup / energy vs float32 and fixed
8/16-bit training on an NPU. Used by ``npusim report --marvin RUN_DIR`` and the MARViN
benchmark. Nothing here imports torch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from npusim.cost.training import (
    GEOMETRY_COLUMNS,
    USAGE_COLUMNS,
    TrainingCostModel,
    compare_training,
)
from npusim.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["load_run", "marvin_costs", "write_marvin_report"]

_FILES = ("marvin_history.csv", "marvin_usage.csv", "marvin_geometry.csv")


def load_run(run_dir: str | Path) -> dict:
    """The tables and metadata of a saved MARViN run (ValueError naming a missing file)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"{d}: not a directory (expected a MARViN run written by save_run)")
    for f in _FILES:
        if not (d / f).is_file():
            raise UserError(f"{d}: {f} not found (expected a MARViN run written by save_run)")
    usage = _read_csv(d / "marvin_usage.csv", [c for c in USAGE_COLUMNS if c != "weight_float"],
                      ["weight_bits", "act_bits", "grad_bits", "batch_size", "batches"])
    if "weight_float" not in usage:  # runs saved before the column existed: weights are fixed
        usage.insert(4, "weight_float", False)
    meta: dict = {}
    if (d / "marvin_config.json").is_file():
        try:
            meta = json.loads((d / "marvin_config.json").read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            meta = None
        if not isinstance(meta, dict):
            raise UserError(f"{d / 'marvin_config.json'}: not a JSON object")
    history = _read_csv(d / "marvin_history.csv", ["iteration", "layer", "word_length_bits"],
                        ["iteration", "word_length_bits"])
    geometry = _read_csv(d / "marvin_geometry.csv", GEOMETRY_COLUMNS, GEOMETRY_COLUMNS[1:])
    return {"history": history, "usage": usage, "geometry": geometry, "meta": meta}


def _read_csv(path: Path, columns: list[str], numeric: list[str]) -> pd.DataFrame:
    """A run table with its columns checked (one-line UserError naming the file)."""
    try:
        df = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:  # EmptyDataError, UnicodeDecodeError too
        raise UserError(f"{path}: not a readable CSV table ({' '.join(str(e).split())[:100]})") \
            from None
    missing = [c for c in columns if c not in df]
    if missing:
        raise UserError(f"{path}: missing column {missing[0]!r} (expected {', '.join(columns)})")
    for c in numeric:
        if df[c].dtype.kind not in "iub" or (len(df) and df[c].min() < 0):
            raise UserError(f"{path}: column {c!r}: expected non-negative integers")
    if not len(df):
        raise UserError(f"{path}: no rows")
    return df


def marvin_costs(run: dict, npu_name: str = "edge16",
                 model: TrainingCostModel = TrainingCostModel()) -> pd.DataFrame:
    """`compare_training` of a loaded run on an NPU preset or TOML file."""
    from npusim.hw.config import NPUConfig

    npu = NPUConfig.load(npu_name)
    return compare_training(run["geometry"], run["usage"], npu, model=model)


def write_marvin_report(run_dir: str | Path, out_dir: str | Path, npu_name: str = "edge16",
                        stem: str = "marvin") -> list[Path]:
    """Write ``<stem>_heatmap.png/.csv`` and ``<stem>_cost.png/.csv`` for a saved run."""
    from npusim.report.plots import precision_heatmap, training_savings

    run = load_run(run_dir)
    out = Path(out_dir)
    batches = int(run["usage"].groupby("layer")["batches"].sum().max())
    history = run["history"]
    precision_heatmap(history, out=out / f"{stem}_heatmap.png", batches=batches)
    files = [out / f"{stem}_heatmap.png", out / f"{stem}_heatmap.csv"]
    for op in ("act", "grad"):  # operands with their own word get their own heatmap
        if f"{op}_reason" in history and (history[f"{op}_reason"] == "init").any():
            png = out / f"{stem}_heatmap_{op}.png"
            precision_heatmap(history, out=png, batches=batches, value=f"{op}_word_bits")
            files += [png, png.with_suffix(".csv")]
    costs = marvin_costs(run, npu_name)
    costs["label"] = costs["variant"].replace({"run": "MARViN run"})
    training_savings(costs, out=out / f"{stem}_cost.png")
    return [*files, out / f"{stem}_cost.png", out / f"{stem}_cost.csv"]
