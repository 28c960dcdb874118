"""Name -> constructor registry of the models in `models/`."""

from __future__ import annotations

import logging
from typing import Callable

from torch import nn

from models.mobilenetv2 import mobilenetv2, mobilenetv2_cifar
from models.resnet_cifar import check_model_args, resnet8, resnet14, resnet20, resnet32, resnet56
from models.resnet_imagenet import resnet18, resnet34
from models.shufflenetv2 import (
    shufflenetv2_x0_5,
    shufflenetv2_x0_5_cifar,
    shufflenetv2_x1_0,
    shufflenetv2_x1_0_cifar,
)
from npusim.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["MODEL_REGISTRY", "create_model", "list_models"]

ModelConstructor = Callable[..., nn.Module]

MODEL_REGISTRY: dict[str, ModelConstructor] = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "mobilenetv2": mobilenetv2,
    "mobilenetv2_cifar": mobilenetv2_cifar,
    "shufflenetv2_x0_5": shufflenetv2_x0_5,
    "shufflenetv2_x1_0": shufflenetv2_x1_0,
    "shufflenetv2_x0_5_cifar": shufflenetv2_x0_5_cifar,
    "shufflenetv2_x1_0_cifar": shufflenetv2_x1_0_cifar,
}


def list_models() -> list[str]:
    """Return the registered model names, in registration order."""
    return list(MODEL_REGISTRY)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> nn.Module:
    """Build the registered model ``name``; ValueError for an unknown name or bad arguments."""
    if name not in MODEL_REGISTRY:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    check_model_args(num_classes, in_channels, width)
    logger.info("creating model %s (num_classes=%d, in_channels=%d, width=%s)", name,
                num_classes, in_channels, width)
    return MODEL_REGISTRY[name](num_classes=num_classes, in_channels=in_channels, width=width)
