"""Float training and evaluation on the uint8 data sets of `npusim.data`.

Models take raw pixel values (0..255 as float); their `input_norm` module normalises with the
data set's statistics, which `train` sets before the first step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from npusim.data import Dataset
from npusim.errors import UserError

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """Impossible training settings, or a run whose loss stopped being a finite number."""


def check_loss(loss: float, epoch: int, step: int, lr: float) -> None:
    """Refuse a loss that is NaN or infinite: the weights after it are garbage, and reporting
    their (chance) accuracy as a result would be silent nonsense."""
    if not math.isfinite(loss):
        raise TrainingError(f"training diverged: the loss is {loss} at epoch {epoch + 1}, step "
                            f"{step + 1} (peak lr {lr:g}); lower --lr")

# Random-crop padding (in pixels) and horizontal flips per data set; digit images must not be
# flipped. "auto" in `make_batches` looks the data set up here.
AUGMENT_POLICY: dict[str, tuple[int, bool]] = {
    "cifar10": (4, True),
    "mnist5k": (2, False),
    "digits": (1, False),
    "synthetic": (0, False),
}


#: Torch threads a training uses unless told otherwise. The float sums of a multi-threaded
#: kernel depend on the thread count, so the count is part of every training's cache key;
#: one thread makes a serial run, a cluster worker and another machine of the same CPU type
#: produce the same checkpoint, byte for byte.
TRAIN_THREADS = 1


@contextlib.contextmanager
def deterministic(seed: int, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Run a block reproducibly: torch's global RNG seeded with `seed` (state restored after),
    `threads` intra-op threads and deterministic algorithms (both restored after).

    Everything that draws from the global RNG inside the block (model initialisation,
    quantizer set-up, dropout) then depends on `seed` alone, not on what ran before in the
    process (torch seeds its global generator from the OS at start-up).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def set_input_stats(model: nn.Module, dataset: Dataset) -> None:
    """Copy the data set's per-channel mean/std into the model's `input_norm` (if it has one)."""
    norm = getattr(model, "input_norm", None)
    if norm is not None and hasattr(norm, "set_stats"):
        norm.set_stats(dataset.mean, dataset.std)


def _augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero fill, raw-pixel space) and optional flips."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        idx_n = torch.arange(n).view(n, 1, 1, 1)
        idx_c = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        x = padded[idx_n, idx_c, rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


def make_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    augment: bool | Literal["auto"] = False,
    seed: int = 0,
    epoch: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float images 0..255, int64 labels) batches; shuffling and augmentation are seeded."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(dataset)
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    pad, flip = AUGMENT_POLICY.get(dataset.name, (0, False)) if augment else (0, False)
    images = torch.from_numpy(np.ascontiguousarray(dataset.images))
    labels = torch.from_numpy(np.ascontiguousarray(dataset.labels))
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x = images[idx].float()
        if pad or flip:
            x = _augment(x, pad, flip, gen)
        yield x, labels[idx]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Top-1 accuracy (fraction) of `model` (or of a custom `forward`) on `dataset`."""
    model.eval()
    fwd = forward or model
    correct = 0
    for x, y in make_batches(dataset, batch_size, shuffle=False):
        correct += int((fwd(x).argmax(1) == y).sum())
    return correct / max(len(dataset), 1)


@dataclass
class TrainResult:
    """What a training run produced: per-epoch history and the final test accuracy."""

    history: pd.DataFrame
    test_acc: float | None
    seconds: float
    extra: dict = field(default_factory=dict)


def train(
    model: nn.Module,
    dataset: Dataset,
    epochs: int,
    test: Dataset | None = None,
    lr: float = 0.1,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
    augment: bool | Literal["auto"] = "auto",
    seed: int = 0,
    progress: bool | None = None,
    params: list[dict] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train with SGD (Nesterov momentum, weight decay) and a one-cycle or cosine schedule.

    `params` optionally gives optimizer parameter groups (QAT uses it for quantizer steps);
    `on_epoch_start(epoch)` lets callers switch phases (e.g. freeze batch-norm statistics).
    """
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise TrainingError(f"batch_size must be >= 1, got {batch_size}")
    if not (math.isfinite(lr) and lr > 0):
        raise TrainingError(f"lr must be a finite number > 0, got {lr}")
    torch.manual_seed(seed)
    set_input_stats(model, dataset)
    groups = params if params is not None else _default_groups(model, weight_decay)
    opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    total = steps_per_epoch * epochs
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g.get("lr", lr) for g in opt.param_groups], total_steps=total,
            pct_start=0.15, anneal_strategy="cos", div_factor=10.0, final_div_factor=100.0,
        )
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    elif schedule == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else:
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")
    if progress is None:
        progress = sys.stderr.isatty()
    criterion = nn.CrossEntropyLoss()
    rows = []
    t_start = time.perf_counter()
    for epoch in range(epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        t0 = time.perf_counter()
        seen = correct = 0
        loss_sum = 0.0
        batches = make_batches(dataset, batch_size, True, augment, seed, epoch)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            out = model(x)
            loss = criterion(out, y) if loss_fn is None else loss_fn(model, out, y)
            check_loss(float(loss.detach()), epoch, step, lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((out.argmax(1) == y).sum())
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "epoch_s": seconds}
        if test is not None:
            row["test_acc"] = evaluate(model, test)
        rows.append(row)
        log.info("epoch %d/%d %s", epoch + 1, epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    history = pd.DataFrame(rows)
    test_acc = float(history["test_acc"].iloc[-1]) if test is not None else None
    return TrainResult(history, test_acc, time.perf_counter() - t_start)


def _default_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not on BN parameters or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
