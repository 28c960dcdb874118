"""Multi-seed QAT experiments judged with statistics (reports/seed_claims.md).

A validation split is carved from the training split (stratified, fixed seed) for every tuning
choice; the test split is only for final numbers. One seed = one float model (trained on the
train-minus-validation part) fine-tuned by every QAT configuration of a cell list, so the
methods compared within a seed share their starting point. Differences between two methods are
judged by the 95 % Welch t interval of the difference of their mean top-1 over seeds.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from scipy import stats

from models.registry import create_model
from models.training import deterministic, train
from npusim.data import Dataset, load_dataset
from npusim.hw.config import NPUConfig
from quantize.config import QuantConfig
from quantize.qat import evaluate, prepare_qat, qat_train
from quantize.quantizers import DSQQuantizer, LGLSQQuantizer

log = logging.getLogger(__name__)

VAL_SEED = 12345  # seed of the generator that carves the validation split (fixed for every run)


def split_validation(train_set: Dataset, frac: float = 0.2, seed: int = VAL_SEED
                     ) -> tuple[Dataset, Dataset]:
    """(train part, validation part): `frac` of every class, chosen by a fixed generator."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(train_set.labels):
        idx = np.flatnonzero(train_set.labels == c)
        n_val = max(1, int(round(frac * len(idx))))
        val_idx.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(val_idx))
    keep = np.setdiff1d(np.arange(len(train_set)), val)

    def part(idx: np.ndarray, split: str) -> Dataset:
        return Dataset(train_set.name, split, np.ascontiguousarray(train_set.images[idx]),
                       train_set.labels[idx].copy(), train_set.num_classes, train_set.mean,
                       train_set.std)

    return part(keep, "train"), part(val, "val")


@dataclass(frozen=True)
class Budget:
    """What one seed trains: model, data set, epochs, learning rates, torch threads."""

    model: str = "resnet20"
    data: str = "digits"
    float_epochs: int = 10
    qat_epochs: int = 3
    float_lr: float = 0.1
    qat_lr: float = 0.01
    threads: int = 1


@dataclass(frozen=True)
class SeedJob:
    """One seed of a list of QAT cells (name -> config JSON) evaluated on `split`."""

    seed: int
    cells: tuple[tuple[str, str], ...]
    split: Literal["val", "test"]
    budget: Budget = field(default_factory=Budget)
    data_transform: str | None = None
    # "qat": cells are QuantConfig JSON fine-tuning the seed's float model; "marvin": cells are
    # MarvinConfig JSON (or "float32") trained from scratch for `budget.float_epochs`.
    kind: Literal["qat", "marvin"] = "qat"
    # (cell, body acc_bits, overflow mode): the cell's integer program is also run on
    # `body_npu(acc_bits, overflow)` (edge16, stem and classifier at 24 bits); row "cell@pP_mode"
    npu_evals: tuple[tuple[str, int, str], ...] = ()


def body_npu(acc_bits: int, overflow: str, wide_bits: int = 24,
             wide: tuple[str, ...] = ("stem", "fc")) -> NPUConfig:
    """edge16 with the body's accumulators (both levels) at `acc_bits` and `overflow`, and the
    layers matching `wide` at `wide_bits` ([[layer]] tables, as reports/per_layer_npu.toml)."""
    ov: dict[str, object] = {"precision.acc_bits": acc_bits, "precision.pe_acc_bits": acc_bits,
                             "precision.overflow": overflow}
    for i, pattern in enumerate(wide):
        ov |= {f"layer[{i}].match": pattern, f"layer[{i}].precision.acc_bits": wide_bits,
               f"layer[{i}].precision.pe_acc_bits": wide_bits}
    return NPUConfig.preset("edge16").with_overrides(ov)


def a2q_layer_stats(qmodel: Any) -> dict[str, dict[str, float]]:
    """Per A2Q layer: fraction of zero integer weights, mean budget T, mean ||q||_1 / T and
    mean learned norm / (s T) (> 1: the budget, not the learned norm, sets the weights)."""
    from quantize.a2q import A2QQuantizer

    out = {}
    for name, m in qmodel.named_modules():
        wq = getattr(m, "wq", None)
        if not isinstance(wq, A2QQuantizer) or not wq.initialized():
            continue
        with torch.no_grad():
            w = m.folded_weight()[0] if hasattr(m, "folded_weight") else m.linear.weight
            q = wq.int_repr(w).flatten(1).to(torch.float64)
            t = wq.budgets().to(torch.float64)
            s = wq._step_per_row(w).detach().to(torch.float64)
            norm = wq.norm.detach().to(torch.float64).clamp(min=1e-12)
        out[name] = {"zero_frac": float((q == 0).double().mean()), "fan_in": int(q.shape[1]),
                     "budget_t_mean": float(t.mean()),
                     "l1_over_t_mean": float((q.abs().sum(1) / t).mean()),
                     "norm_over_st_mean": float((norm / (s * t)).mean())}
    return out


def quantizer_trace(qmodel: Any) -> dict[str, float]:
    """Scalars worth logging per epoch: DSQ's mean alpha and mean u, LG-LSQ's k per layer."""
    out: dict[str, float] = {}
    alphas, uppers = [], []
    for name, m in qmodel.named_modules():
        if isinstance(m, DSQQuantizer) and m.initialized():
            alphas.append(float(m.alpha_value()))
            uppers.append(float(m.upper.detach().abs().mean()))
        elif isinstance(m, LGLSQQuantizer) and m.initialized():
            out[f"k[{name}]"] = float(m.k)
    if alphas:
        out["dsq_alpha_mean"] = float(np.mean(alphas))
        out["dsq_upper_mean"] = float(np.mean(uppers))
    return out


def _load(job: SeedJob) -> tuple[Dataset, Dataset]:
    full = load_dataset(job.budget.data, "train")
    test = load_dataset(job.budget.data, "test") if job.split == "test" else None
    if job.data_transform == "lowcontrast":
        full = low_contrast(full)
        test = None if test is None else low_contrast(test)
    elif job.data_transform is not None:
        raise ValueError(f"data_transform must be None or 'lowcontrast', got {job.data_transform!r}")
    train_part, val = split_validation(full)
    return (train_part, val) if test is None else (train_part, test)


def low_contrast(ds: Dataset, low: int = 96, high: int = 128, noise: float = 3.0,
                 seed: int = 7) -> Dataset:
    """Pixels compressed into the grey band [low, high] plus Gaussian noise (sd `noise` grey
    levels), rounded and clipped to uint8: a 2-4-bit uniform input over 0..255 then keeps only
    one or two levels of the digit, while a learned per-value table can spread the band out."""
    rng = np.random.default_rng(seed)
    x = low + ds.images.astype(np.float64) * (high - low) / 255.0
    x = np.clip(np.round(x + rng.normal(0.0, noise, x.shape)), 0, 255).astype(np.uint8)
    mean = tuple(float(v) for v in (x.reshape(x.shape[0], x.shape[1], -1) / 255.0)
                 .transpose(1, 0, 2).reshape(x.shape[1], -1).mean(axis=1))
    std = tuple(float(v) for v in (x.reshape(x.shape[0], x.shape[1], -1) / 255.0)
                .transpose(1, 0, 2).reshape(x.shape[1], -1).std(axis=1))
    return Dataset(f"{ds.name}-lowcontrast", ds.split, np.ascontiguousarray(x), ds.labels,
                   ds.num_classes, mean, std)


def run_marvin_seed(job: SeedJob) -> list[dict[str, Any]]:
    """Train every cell from scratch (same initial weights per seed); one row per cell with the
    fixed-point model's top-1 and a trace: the mean weight word of the last epoch, the guard
    count, and the run's ``geometry`` and ``usage`` tables as record lists (what
    `npusim.cost.training` charges; quantize may not import it, so the benchmark does)."""
    from models.training import evaluate as float_eval
    from quantize.marvin import MarvinConfig, layer_geometry, train_marvin
    from quantize.marvin.controller import USAGE_COLUMNS

    b = job.budget
    train_part, held_out = _load(job)
    rows = []
    for name, cfg_json in job.cells:
        with deterministic(job.seed, b.threads):
            net = create_model(b.model, num_classes=train_part.num_classes,
                               in_channels=train_part.input_shape[0])
            if cfg_json == "float32":
                geometry = layer_geometry(net, train_part.input_shape)
                train(net, train_part, b.float_epochs, lr=b.float_lr, seed=job.seed,
                      progress=False)
                acc, bits, guards = float_eval(net, held_out), 32.0, 0
                n = len(train_part)  # train()'s batches: 128 images, the last one short
                sizes = Counter([min(128, n - i) for i in range(0, n, 128)] * b.float_epochs)
                usage = pd.DataFrame([(layer, 32, 32, 32, True, True, True, bs, c)
                                      for layer in geometry["layer"]
                                      for bs, c in sorted(sizes.items())],
                                     columns=USAGE_COLUMNS)
            else:
                res = train_marvin(net, train_part, b.float_epochs,
                                   MarvinConfig.from_json(cfg_json), test=held_out,
                                   lr=b.float_lr, seed=job.seed, progress=False)
                acc = float(res.test_acc)
                bits = float(res.epochs["mean_word_bits"].iloc[-1])
                guards = int((res.history["reason"] == "guard").sum())
                geometry, usage = res.geometry, res.usage
        trace = {"mean_word_bits": bits, "guard_switches": guards,
                 "geometry": geometry.to_dict("split", index=False),
                 "usage": usage.to_dict("split", index=False)}
        rows.append({"cell": name, "seed": job.seed, "split": job.split, "top1_pct": 100 * acc,
                     "trace": json.dumps(trace, default=_json_scalar)})
        log.info("seed %d %s %s: %.2f %%", job.seed, job.split, name, 100 * acc)
    return rows


def _json_scalar(v: Any) -> Any:
    """NumPy scalars in a pandas ``to_dict`` as plain JSON numbers / booleans."""
    return v.item() if hasattr(v, "item") else str(v)


def run_seed(job: SeedJob) -> list[dict[str, Any]]:
    """Train the seed's float model, then every cell from it; one row per cell."""
    if job.kind == "marvin":
        return run_marvin_seed(job)
    b = job.budget
    train_part, held_out = _load(job)
    with deterministic(job.seed, b.threads):
        net = create_model(b.model, num_classes=train_part.num_classes,
                           in_channels=train_part.input_shape[0])
        train(net, train_part, b.float_epochs, lr=b.float_lr, seed=job.seed, progress=False)
    from models.training import evaluate as float_eval

    rows = [{"cell": "fp32", "seed": job.seed, "split": job.split,
             "top1_pct": 100 * float_eval(net, held_out), "trace": "{}"}]
    for name, cfg_json in job.cells:
        qcfg = QuantConfig.from_json(cfg_json)
        trace: list[dict[str, float]] = []
        with deterministic(job.seed, b.threads):
            qmodel = prepare_qat(copy.deepcopy(net), qcfg, train_part, seed=job.seed)
            trace.append(quantizer_trace(qmodel))
            res = qat_train(qmodel, train_part, b.qat_epochs, lr=b.qat_lr, seed=job.seed,
                            progress=False,
                            on_epoch_start=lambda e, q=qmodel: e and trace.append(quantizer_trace(q)))
            trace.append(quantizer_trace(qmodel))
            acc = evaluate(qmodel, held_out, integer=False)["fake_quant_acc"]
        loss = float(res.history["train_loss"].iloc[-1])
        if any(c == name for c, _, _ in job.npu_evals):
            trace.append({"a2q_layers": a2q_layer_stats(qmodel)})
        rows.append({"cell": name, "seed": job.seed, "split": job.split, "top1_pct": 100 * acc,
                     "final_train_loss": loss, "trace": json.dumps(trace)})
        log.info("seed %d %s %s: %.2f %%", job.seed, job.split, name, 100 * acc)
        rows += _npu_rows(job, name, qmodel, held_out)
    return rows


def _npu_rows(job: SeedJob, name: str, qmodel: Any, held_out: Dataset) -> list[dict[str, Any]]:
    """The cell's integer program on each of its `job.npu_evals` NPUs: top-1, overflow events."""
    from npusim.sim import Simulator
    from quantize.export import build_program

    evals = [(p, mode) for c, p, mode in job.npu_evals if c == name]
    if not evals:
        return []
    prog, rows = build_program(qmodel), []
    for p, mode in evals:
        res = Simulator(body_npu(p, mode)).run(prog, held_out.images)
        events = int(res.stats[["pe_overflows", "acc_overflows"]].fillna(0).to_numpy().sum())
        rows.append({"cell": f"{name}@p{p}_{mode}", "seed": job.seed, "split": job.split,
                     "top1_pct": 100 * res.accuracy(held_out.labels),
                     "trace": json.dumps({"overflow_events": events})})
        log.info("seed %d %s %s@p%d_%s: %.2f %%", job.seed, job.split, name, p, mode,
                 rows[-1]["top1_pct"])
    return rows


def iter_jobs(jobs: list[SeedJob], processes: int = 2) -> Iterator[list[dict[str, Any]]]:
    """Each job's rows, in job order, computed in `processes` worker processes (1: here)."""
    if processes <= 1:
        yield from map(run_seed, jobs)
        return
    with ProcessPoolExecutor(max_workers=processes) as pool:
        yield from pool.map(run_seed, jobs)


def welch_diff(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """mean(a) - mean(b) and its Welch t interval (scipy.stats.ttest_ind, equal_var=False)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch_diff needs at least 2 values per group")
    diff = float(a.mean() - b.mean())
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return {"diff": diff, "low": diff, "high": diff}
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return {"diff": diff, "low": float(ci.low), "high": float(ci.high)}


def verdict(low: float, high: float, margin: float = 0.0) -> str:
    """'reproduced' when the whole interval of (method - baseline) lies above -`margin`...

    The claims compared here are "the method is better than the baseline": reproduced when the
    interval lies above 0, not reproduced when it lies at or below 0 (the baseline is at least
    as good), inconclusive when it straddles 0.
    """
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > margin:
        return "reproduced"
    if high <= margin:
        return "not reproduced"
    return "inconclusive"
