"""Checkpoints (state_dict + JSON sidecar, loaded with ``weights_only=True``) and the cache.

A checkpoint ``model.pt`` has a sidecar ``model.json`` naming the model constructor and its
arguments, the data set, the accuracy and the versions that produced it, so a model can be
rebuilt without pickling Python objects. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npusim.errors import UserError

log = logging.getLogger(__name__)

CACHE_ENV = "NPUSIM_CACHE"


class CheckpointError(UserError):
    """A checkpoint file or its sidecar is missing or malformed."""


def cache_dir() -> Path:
    """The cache directory: ``$NPUSIM_CACHE`` or ``~/.cache/npusim``."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root) if root else Path.home() / ".cache" / "npusim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result."""
    import numpy

    from npusim import __version__

    return {"npusim": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory, then rename."""
    from npusim.io import atomic_write_bytes as write

    write(path, data)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that belongs to a checkpoint."""
    return Path(path).with_suffix(".json")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Save ``model.state_dict()`` to `path` and `meta` (plus versions) to its JSON sidecar.

    `meta` must contain ``model`` (registry name) and ``model_kwargs`` so `load_checkpoint`
    can rebuild the network.
    """
    path = Path(path)
    for key in ("model", "model_kwargs"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    full = {**meta, "versions": versions()}
    atomic_write_bytes(sidecar_path(path), json.dumps(full, indent=2, sort_keys=True).encode())
    log.info("saved checkpoint %s", path)
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's JSON sidecar."""
    side = sidecar_path(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not side.is_file():
        raise CheckpointError(f"{side}: sidecar JSON not found (expected next to the checkpoint)")
    try:
        meta = json.loads(side.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{side}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise CheckpointError(f"{side}: JSON nested too deeply") from None
    if not isinstance(meta, dict) or "model" not in meta or "model_kwargs" not in meta:
        raise CheckpointError(f"{side}: expected keys 'model' and 'model_kwargs'")
    _check_sidecar_bounds(meta, side)
    return meta


def _check_sidecar_bounds(meta: dict[str, Any], side: Path) -> None:
    """Refuse sidecar values that would build an absurdly large model (before building it)."""
    from npusim.limits import MAX_CLASSES, MAX_IN_CHANNELS, MAX_SPATIAL, MAX_WIDTH

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    kw = meta["model_kwargs"]
    if not isinstance(meta["model"], str) or not isinstance(kw, dict):
        raise CheckpointError(f"{side}: model must be a name and model_kwargs an object")
    unknown = sorted(set(kw) - {"num_classes", "in_channels", "width"})
    if unknown:
        raise CheckpointError(f"{side}: model_kwargs: unknown key {unknown[0]!r}")
    for key, most in (("num_classes", MAX_CLASSES), ("in_channels", MAX_IN_CHANNELS)):
        if key in kw and not (is_int(kw[key]) and 1 <= kw[key] <= most):
            raise CheckpointError(f"{side}: model_kwargs.{key}: expected an int in [1, {most}], "
                                  f"got {kw[key]!r}")
    width = kw.get("width", 1.0)
    if not (isinstance(width, (int, float)) and not isinstance(width, bool)
            and 0 < width <= MAX_WIDTH):
        raise CheckpointError(f"{side}: model_kwargs.width: expected a number in (0, {MAX_WIDTH:g}]"
                              f", got {width!r}")
    shape = meta.get("input_shape")
    if shape is not None and not (
            isinstance(shape, list) and len(shape) == 3 and all(is_int(d) for d in shape)
            and 1 <= shape[0] <= MAX_IN_CHANNELS and all(1 <= d <= MAX_SPATIAL for d in shape[1:])):
        raise CheckpointError(f"{side}: input_shape: expected [C, H, W] with C in [1, "
                              f"{MAX_IN_CHANNELS}] and H, W in [1, {MAX_SPATIAL}], got {shape!r}")


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model named in the sidecar and load its weights (``weights_only=True``)."""
    from models import create_model

    meta = read_meta(path)
    model = create_model(meta["model"], **meta["model_kwargs"])
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__})") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise CheckpointError(f"{path}: not a state_dict (expected a dict of named tensors, got "
                              f"{type(state).__name__})")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match model {meta['model']!r}: {first}") from None
    model.eval()
    return model, meta
