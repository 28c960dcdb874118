"""MARViN training: SGD on float32 master weights through fixed-point layers whose word
lengths the precision controller switches within epochs; plus the layer geometry the training
cost model needs.

The loop is `models.training.train`'s (same batches, augmentation, SGD with Nesterov momentum,
weight decay on conv/linear weights, one-cycle / cosine / constant schedule, seeds), with the
controller's two hooks added around the optimizer step, so a float32 run with
`models.training.train` and a MARViN run differ only in the arithmetic.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from models.training import _default_groups, check_loss, evaluate, make_batches, set_input_stats
from npusim.data import Dataset
from quantize.marvin.config import MarvinConfig
from quantize.marvin.controller import PrecisionController
from quantize.marvin.layers import attach, detach, marvin_layers

log = logging.getLogger(__name__)

__all__ = ["MarvinResult", "layer_geometry", "save_run", "train_marvin"]


@dataclass
class MarvinResult:
    """A MARViN run: per-epoch table, decision history, format usage, geometry, accuracies."""

    epochs: pd.DataFrame
    history: pd.DataFrame
    usage: pd.DataFrame
    geometry: pd.DataFrame
    config: MarvinConfig
    test_acc: float | None
    float_test_acc: float | None
    seconds: float
    extra: dict = field(default_factory=dict)


def layer_geometry(model: nn.Module, input_shape: tuple[int, int, int]) -> pd.DataFrame:
    """Per conv / linear layer, the GEMM of one image's forward pass (docs/npu_file.md convention).

    Columns: ``layer, op, M`` (output pixels), ``K`` (window), ``N`` (filters), ``groups``,
    ``weights`` (count), ``input_grad`` (False for the first layer run: no gradient wrt the
    network input is needed). Layers are in execution order.
    """
    rows: list[dict] = []
    hooks = []
    types = (nn.Conv2d, nn.Linear)

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                g = int(mod.groups)
                o, cg, kh, kw = mod.weight.shape
                m, k, n = int(out.shape[-1] * out.shape[-2]), int(kh * kw * cg), int(o // g)
                op = "conv2d"
            else:
                g, op = 1, "linear"
                m = int(out.numel() // out.shape[-1] // out.shape[0])
                k, n = int(mod.in_features), int(mod.out_features)
            rows.append({"layer": name, "op": op, "M": m, "K": k, "N": n, "groups": g,
                         "weights": int(mod.weight.numel())})
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, types):
            hooks.append(mod.register_forward_hook(hook(name)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    df = pd.DataFrame(rows, columns=["layer", "op", "M", "K", "N", "groups", "weights"])
    df["input_grad"] = [i > 0 for i in range(len(df))]
    return df


def train_marvin(model: nn.Module, dataset: Dataset, epochs: int, config: MarvinConfig,
                 test: Dataset | None = None, lr: float = 0.1, batch_size: int = 128,
                 weight_decay: float = 5e-4, momentum: float = 0.9,
                 schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
                 augment: bool | Literal["auto"] = "auto", seed: int = 0,
                 progress: bool | None = None, keep_attached: bool = False) -> MarvinResult:
    """Train `model` with MARViN; on return it is a plain float model again (master weights)
    unless `keep_attached`.

    ``test_acc`` is the fixed-point model's (formats of the last decision); ``float_test_acc``
    the float master weights'.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    torch.manual_seed(seed)
    set_input_stats(model, dataset)
    geometry = layer_geometry(model, dataset.input_shape)
    formats = attach(model, config)
    try:
        modules = marvin_layers(model)
        ctl = PrecisionController(formats, modules, config)
        ctl.start()
        groups = _default_groups(model, weight_decay)
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
        group_of = {id(p): i for i, g in enumerate(opt.param_groups) for p in g["params"]}
        steps_per_epoch = math.ceil(len(dataset) / batch_size)
        total = steps_per_epoch * epochs
        sched = _scheduler(opt, schedule, lr, total)
        if progress is None:
            progress = sys.stderr.isatty()
        criterion = nn.CrossEntropyLoss()
        rows = []
        it = 0
        t_start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            t0 = time.perf_counter()
            seen = correct = 0
            loss_sum = 0.0
            batches = make_batches(dataset, batch_size, True, augment, seed, epoch)
            bar = tqdm(batches, total=steps_per_epoch, desc=f"marvin epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False)
            for step, (x, y) in enumerate(bar):
                out = model(x)
                loss = criterion(out, y)
                check_loss(float(loss.detach()), epoch, step, lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                ctl.observe_updates({n: opt.param_groups[group_of[id(m.weight)]]["lr"]
                                     for n, m in modules.items()})
                ctl.before_step()
                opt.step()
                sched.step()
                it += 1
                ctl.after_step(it, len(y))
                seen += len(y)
                loss_sum += float(loss.detach()) * len(y)
                correct += int((out.argmax(1) == y).sum())
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "epoch_s": time.perf_counter() - t0,
                   "mean_word_bits": float(pd.Series([f.word_bits for f in formats.values()])
                                           .mean()),
                   "mean_act_bits": float(pd.Series([f.act_bits for f in formats.values()])
                                          .mean()),
                   "mean_grad_bits": float(pd.Series([f.grad_bits for f in formats.values()])
                                           .mean())}
            if test is not None:
                row["test_acc"] = evaluate(model, test)
            rows.append(row)
            log.info("marvin epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        seconds = time.perf_counter() - t_start
        test_acc = float(rows[-1]["test_acc"]) if test is not None else None
    finally:
        if not keep_attached:
            detach(model)
    float_acc = None
    if test is not None and not keep_attached:
        float_acc = evaluate(model, test)
    return MarvinResult(pd.DataFrame(rows), ctl.history(), ctl.usage(), geometry, config,
                        test_acc, float_acc, seconds)


def _scheduler(opt, schedule: str, lr: float, total: int):
    # the same schedules, with the same constants, as models.training.train
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g.get("lr", lr) for g in opt.param_groups], total_steps=total,
            pct_start=0.15, anneal_strategy="cos", div_factor=10.0, final_div_factor=100.0)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")


def save_run(result: MarvinResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the run's tables (CSV, atomically) and config (JSON) into `out_dir`."""
    from models.checkpoint import atomic_write_bytes
    from npusim.io import write_csv

    out = Path(out_dir)
    paths = {"history": out / "marvin_history.csv", "usage": out / "marvin_usage.csv",
             "geometry": out / "marvin_geometry.csv", "epochs": out / "marvin_epochs.csv",
             "config": out / "marvin_config.json"}
    write_csv(result.history, paths["history"])
    write_csv(result.usage, paths["usage"])
    write_csv(result.geometry, paths["geometry"])
    write_csv(result.epochs, paths["epochs"])
    meta = {"config": json.loads(result.config.to_json()), "test_acc": result.test_acc,
            "float_test_acc": result.float_test_acc, "seconds": result.seconds, **result.extra}
    atomic_write_bytes(paths["config"], json.dumps(meta, indent=2).encode())
    return paths
