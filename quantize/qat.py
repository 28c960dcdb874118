"""Quantization-aware training and the two evaluations (fake-quant and integer-exact)."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
from torch import nn

from models.training import TrainResult, make_batches, train
from models.training import evaluate as float_evaluate
from npusim.data import Dataset
from quantize.config import QuantConfig
from quantize.export import build_program
from quantize.integer_eval import run_integer
from quantize.model import QuantizedModel, calibrate, quantize_model

log = logging.getLogger(__name__)


def evaluate(qmodel: QuantizedModel, data: Dataset, integer: bool = True) -> dict[str, float]:
    """Top-1 of the fake-quant forward and, with `integer`, of the exported integer program
    (computed exactly as the NPU does, through the shared arithmetic)."""
    res = {"fake_quant_acc": float_evaluate(qmodel, data)}
    if integer:
        logits = run_integer(build_program(qmodel), data.images)
        res["integer_acc"] = float(np.mean(np.argmax(logits, axis=1) == data.labels))
    return res


def prepare_qat(model: nn.Module, config: QuantConfig, train_set: Dataset,
                calib_images: int = 256, seed: int = 0) -> QuantizedModel:
    """Quantize a float model and calibrate its activation quantizers on training images."""
    from models.training import set_input_stats

    set_input_stats(model, train_set)
    qmodel = quantize_model(model, config, input_shape=train_set.input_shape)
    qmodel.meta["dataset"] = train_set.name
    x, _ = next(make_batches(train_set, calib_images, shuffle=True, seed=seed))
    calibrate(qmodel, x)
    return qmodel


def qat_train(qmodel: QuantizedModel, train_set: Dataset, epochs: int, test: Dataset | None = None,
              lr: float = 0.01, weight_decay: float = 5e-5, quant_lr: float | None = None,
              batch_size: int = 128, seed: int = 0, progress: bool | None = None,
              on_epoch_start: Callable[[int], Any] | None = None) -> TrainResult:
    """Fine-tune a quantized model; BN statistics freeze for the last `bn_freeze_frac` epochs.
    `on_epoch_start(epoch)` is called after the schedule's own start-of-epoch switches."""
    cfg = qmodel.config
    quant_ids = {id(p) for p in qmodel.quant_parameters()}
    decay, no_decay = [], []
    for p in qmodel.parameters():
        if id(p) in quant_ids or not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    qparams = qmodel.quant_parameters()
    if qparams:
        groups.append({"params": qparams, "weight_decay": 0.0, "lr": quant_lr or lr})
    # BN statistics freeze for the last epochs only, never the first: frozen BN scales each
    # channel's gradient by gamma/sigma, which is unstable at the start of low-bit fine-tuning
    # (observed: W4A4 diverges within a few steps), while the cosine schedule has the learning
    # rate small by the time the folded form is trained.
    freeze_from = max(1, epochs - int(math.ceil(cfg.bn_freeze_frac * epochs))) \
        if cfg.bn_freeze_frac else epochs

    def start(epoch: int) -> None:
        qmodel.set_bn_frozen(epoch >= freeze_from)
        qmodel.set_progress(epoch / max(epochs - 1, 1))
        if on_epoch_start is not None:
            on_epoch_start(epoch)

    return train(qmodel, train_set, epochs, test=test, lr=lr, batch_size=batch_size,
                 params=groups, seed=seed, progress=progress, on_epoch_start=start,
                 schedule="cosine")
