"""Per-layer table (shapes, parameters, MACs) of the Conv2d/Linear layers of a model."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["SUMMARY_COLUMNS", "summary"]

SUMMARY_COLUMNS: tuple[str, ...] = (
    "layer", "op", "in_channels", "out_channels", "kernel", "stride", "groups",
    "output_shape", "params", "macs",
)


def _pair_str(value: int | tuple[int, ...]) -> str:
    if isinstance(value, int):
        return f"{value}x{value}"
    return "x".join(str(v) for v in value)


def _stride(value: int | tuple[int, ...]) -> int | str:
    if isinstance(value, int):
        return value
    return value[0] if all(v == value[0] for v in value) else _pair_str(value)


def _layer_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _row(name: str, module: nn.Module, out: torch.Tensor) -> dict[str, Any]:
    out_elements = out[0].numel()  # per image (batch of 1)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = out_elements * (module.in_channels // module.groups) * kh * kw
        return {
            "layer": name, "op": "conv2d", "in_channels": module.in_channels,
            "out_channels": module.out_channels, "kernel": _pair_str(module.kernel_size),
            "stride": _stride(module.stride), "groups": module.groups,
            "output_shape": "x".join(str(d) for d in out.shape[1:]),
            "params": _layer_params(module), "macs": macs,
        }
    assert isinstance(module, nn.Linear)
    return {
        "layer": name, "op": "linear", "in_channels": module.in_features,
        "out_channels": module.out_features, "kernel": "1x1", "stride": 1, "groups": 1,
        "output_shape": "x".join(str(d) for d in out.shape[1:]),
        "params": _layer_params(module), "macs": out_elements * module.in_features,
    }


def summary(model: nn.Module, input_shape: tuple[int, int, int]) -> pd.DataFrame:
    """Run one zero image through ``model`` (eval mode) and tabulate its Conv2d/Linear layers."""
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            row = _row(name, module, output)
            if name in rows:  # a layer called more than once: count every call's MACs
                logger.warning("layer %s ran more than once; summing its MACs", name)
                rows[name]["macs"] += row["macs"]
                return
            rows[name] = row
            order.append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(make_hook(name)))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    unused = len(handles) - len(order)
    if unused:
        logger.info("%d Conv2d/Linear layer(s) did not run and are left out", unused)
    df = pd.DataFrame([rows[n] for n in order], columns=list(SUMMARY_COLUMNS))
    df.attrs["total_params"] = int(sum(p.numel() for p in model.parameters()))
    df.attrs["total_macs"] = int(df["macs"].sum()) if len(df) else 0
    logger.debug("summary: %d layers, %d params, %d MACs", len(df), df.attrs["total_params"],
                 df.attrs["total_macs"])
    return df
