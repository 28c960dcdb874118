"""QAT runs trained once per configuration and reused from the cache (sweeps never retrain
for NPU-only axes)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from models.cached import cache_lock, cpu_meta, file_label, float_config, is_cached, train_float
from models.checkpoint import cache_dir, config_hash, load_checkpoint
from models.training import TRAIN_THREADS, deterministic
from npusim.data import dataset_fingerprint, load_dataset
from quantize.checkpoint import load_qat, save_qat
from quantize.config import QuantConfig
from quantize.qat import evaluate, prepare_qat, qat_train

log = logging.getLogger(__name__)


def qat_config(model: str, data: str, qcfg: QuantConfig, epochs: int, float_epochs: int,
               seed: int = 0, width: float = 1.0, lr: float = 0.01, threads: int = TRAIN_THREADS,
               root: str | None = None) -> dict[str, Any]:
    """The configuration that identifies a QAT run (and its cache entry), torch threads and
    the data's fingerprint included (they are the float model's too)."""
    return {"kind": "qat",
            "float": float_config(model, data, float_epochs, seed, width, threads=threads,
                                  root=root),
            "quant": qcfg.model_dump(mode="json"), "epochs": epochs, "lr": lr, "seed": seed,
            "threads": threads}


def train_qat(model: str, data: str, qcfg: QuantConfig, epochs: int = 3, float_epochs: int = 15,
              seed: int = 0, width: float = 1.0, lr: float = 0.01, root: str | None = None,
              progress: bool | None = None, threads: int = TRAIN_THREADS):
    """Fine-tune the cached float model with QAT (or reuse the cached run).

    Returns (quantized model, meta) where meta holds the fake-quant and integer-exact top-1.
    The same configuration (seed and `threads` included) gives the same checkpoint bytes in
    any process on the same kind of CPU, whether the float model was cached or not.
    """
    cfg = qat_config(model, data, qcfg, epochs, float_epochs, seed, width, lr, threads, root)
    path = cache_dir() / "qat" / f"{model}-{file_label(data)}-{qcfg.short_name()}-{config_hash(cfg)}.pt"
    with cache_lock(path):  # one process trains it, the others wait and reuse it
        return _train_qat(path, cfg, model, data, qcfg, epochs, float_epochs, seed, width, lr,
                          root, progress, threads)


def _train_qat(path, cfg, model, data, qcfg, epochs, float_epochs, seed, width, lr, root,
               progress, threads):
    if path.is_file() and path.with_suffix(".json").is_file():
        log.info("reusing cached QAT model %s", path)
        return load_qat(path)
    ckpt, _ = train_float(model, data, float_epochs, seed=seed, width=width, root=root,
                          progress=progress, threads=threads)
    train_set = load_dataset(data, "train", root=root)
    test_set = load_dataset(data, "test", root=root)
    with deterministic(seed, threads):  # the same state whether the float model was cached
        net, fmeta = load_checkpoint(ckpt)
        qmodel = prepare_qat(net, qcfg, train_set, seed=seed)
        result = qat_train(qmodel, train_set, epochs, lr=lr, seed=seed, progress=progress)
        acc = evaluate(qmodel, test_set)
    meta = {"model": fmeta["model"], "model_kwargs": fmeta["model_kwargs"], "dataset": data,
            "config": cfg, "cpu": cpu_meta(), "train_seconds": result.seconds, **acc}
    save_qat(qmodel, path, meta)
    return load_qat(path)




def qat_from_cache_path(checkpoint: str | Path, data: str, qcfg: QuantConfig, epochs: int,
                        lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                        root: str | None = None) -> Path:
    """Where `train_qat_from` caches a QAT run that starts from the float checkpoint file
    `checkpoint` (keyed by the file's SHA-256, so a retrained file is a new entry, and by the
    data's fingerprint)."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    cfg = {"kind": "qat-from", "from_sha256": digest, "data": data,
           "data_fingerprint": dataset_fingerprint(data, root),
           "quant": qcfg.model_dump(mode="json"), "epochs": epochs, "lr": lr,
           "batch_size": batch_size, "seed": seed}
    return cache_dir() / "qat" / f"from-{file_label(data)}-{qcfg.short_name()}-{config_hash(cfg)}.pt"


def train_qat_from(checkpoint: str | Path, data: str, qcfg: QuantConfig, epochs: int,
                   lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                   root: str | None = None, use_cache: bool = True,
                   progress: bool | None = None) -> tuple[Any, dict[str, Any], bool]:
    """Fine-tune the float checkpoint file with QAT, or reuse the cached run of the same file
    and settings. Returns (quantized model, meta with the accuracies, whether it was cached)."""
    path = qat_from_cache_path(checkpoint, data, qcfg, epochs, lr, batch_size, seed, root)
    with cache_lock(path):
        if use_cache and is_cached(path):
            log.info("reusing cached QAT model %s", path)
            qmodel, meta = load_qat(path)
            return qmodel, meta, True
        net, fmeta = load_checkpoint(checkpoint)
        train_set = load_dataset(data, "train", root=root)
        test_set = load_dataset(data, "test", root=root)
        qmodel = prepare_qat(net, qcfg, train_set, seed=seed)
        result = qat_train(qmodel, train_set, epochs, lr=lr, batch_size=batch_size, seed=seed,
                           progress=progress)
        acc = evaluate(qmodel, test_set)
        meta = {"model": fmeta["model"], "model_kwargs": fmeta["model_kwargs"], "dataset": data,
                "from": str(checkpoint), "cpu": cpu_meta(), "train_seconds": result.seconds,
                **acc}
        if use_cache:
            save_qat(qmodel, path, meta)
        return qmodel, meta, False
