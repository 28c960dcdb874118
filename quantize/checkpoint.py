"""QAT checkpoints: the quantized model's state_dict plus a JSON sidecar with its recipe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from models import create_model
from models.checkpoint import CheckpointError, read_meta, save_checkpoint
from quantize.config import QuantConfig
from quantize.model import QuantizedModel, quantize_model


def save_qat(qmodel: QuantizedModel, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Save a quantized model; `meta` needs `model` and `model_kwargs` of the float network."""
    full = {**meta, "quant_config": qmodel.config.model_dump(mode="json"),
            "input_shape": list(qmodel.input_shape), "qmeta": qmodel.meta}
    return save_checkpoint(qmodel, path, full)


def load_qat(path: str | os.PathLike) -> tuple[QuantizedModel, dict[str, Any]]:
    """Rebuild a quantized model from its sidecar and load its weights (weights_only=True)."""
    meta = read_meta(path)
    if "quant_config" not in meta:
        raise CheckpointError(f"{path}: not a QAT checkpoint (no 'quant_config' in the sidecar)")
    cfg = QuantConfig.from_json(__import__("json").dumps(meta["quant_config"]), source=str(path))
    model = create_model(meta["model"], **meta["model_kwargs"])
    q = quantize_model(model, cfg, input_shape=tuple(meta["input_shape"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        q.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load QAT weights ({str(e).splitlines()[0]})") from None
    q.meta.update(meta.get("qmeta", {}))
    q.eval()
    return q, meta
