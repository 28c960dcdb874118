"""QAT checkpoints: the quantized model's state_dict plus a JSON sidecar with its recipe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from models import create_model
from models.checkpoint import CheckpointError, read_meta, save_checkpoint, sidecar_path
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
    side = sidecar_path(path)
    for key in ("quant_config", "input_shape"):
        if key not in meta:
            raise CheckpointError(f"{side}: not a QAT checkpoint (no {key!r} in the sidecar)")
    if not isinstance(meta["quant_config"], dict):
        raise CheckpointError(f"{side}: quant_config: expected an object, got "
                              f"{type(meta['quant_config']).__name__}")
    if not isinstance(meta.get("qmeta", {}), dict):
        raise CheckpointError(f"{side}: qmeta: expected an object, got "
                              f"{type(meta['qmeta']).__name__}")
    channels = meta["model_kwargs"].get("in_channels", 3)
    if not isinstance(meta["input_shape"], list):
        raise CheckpointError(f"{side}: input_shape: expected [C, H, W], got "
                              f"{meta['input_shape']!r}")
    if meta["input_shape"][0] != channels:  # read_meta checked it is [C, H, W]
        raise CheckpointError(f"{side}: input_shape: {meta['input_shape'][0]} channels, the model "
                              f"takes {channels} (model_kwargs.in_channels)")
    cfg = QuantConfig.from_json(__import__("json").dumps(meta["quant_config"]), source=str(side))
    model = create_model(meta["model"], **meta["model_kwargs"])
    q = quantize_model(model, cfg, input_shape=tuple(meta["input_shape"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        q.load_state_dict(state)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load QAT weights ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0]})") from None
    q.meta.update(meta.get("qmeta", {}))
    q.eval()
    return q, meta
