"""QAT runs trained once per configuration and reused from the cache (sweeps never retrain
for NPU-only axes)."""

from __future__ import annotations

import logging
from typing import Any

from models.cached import cache_lock, cpu_meta, float_config, train_float
from models.checkpoint import cache_dir, config_hash, load_checkpoint
from models.training import TRAIN_THREADS, deterministic
from npusim.data import load_dataset
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
    path = cache_dir() / "qat" / f"{model}-{data}-{qcfg.short_name()}-{config_hash(cfg)}.pt"
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


