"""Float models trained once per configuration and reused from the cache."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator

from npusim.data import dataset_fingerprint, load_dataset

from .checkpoint import cache_dir, config_hash, load_checkpoint, save_checkpoint
from .registry import create_model
from .training import TRAIN_THREADS, deterministic, train

log = logging.getLogger(__name__)


def float_config(model: str, data: str, epochs: int, seed: int = 0, width: float = 1.0,
                 lr: float = 0.1, batch_size: int = 128, threads: int = TRAIN_THREADS,
                 root: str | None = None) -> dict[str, Any]:
    """The configuration that identifies a float training run (and its cache entry): the torch
    thread count is part of it (multi-threaded float sums depend on it), and so is the data's
    fingerprint (`npusim.data.dataset_fingerprint`: the files under `root` for cifar10), so a
    bad or missing `root` fails here, before any cache lookup."""
    return {"kind": "float", "model": model, "data": data,
            "data_fingerprint": dataset_fingerprint(data, root), "epochs": epochs, "seed": seed,
            "width": width, "lr": lr, "batch_size": batch_size, "threads": threads}


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on a cache entry while it is looked up and, if missing, trained:
    processes sharing the cache (sweep workers on one machine, two sweeps) train it once;
    the others wait and reuse it. A no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cpu_meta() -> dict[str, str]:
    """The CPU kernels torch picked (a different instruction set may round differently)."""
    import platform

    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine()}


def float_cache_path(model: str, data: str, epochs: int, seed: int = 0, width: float = 1.0,
                     lr: float = 0.1, batch_size: int = 128, threads: int = TRAIN_THREADS,
                     root: str | None = None) -> Path:
    """Where `train_float` caches this configuration (the file exists once it is trained)."""
    cfg = float_config(model, data, epochs, seed, width, lr, batch_size, threads, root)
    return cache_dir() / "float" / f"{model}-{file_label(data)}-{config_hash(cfg)}.pt"


def file_label(data: str) -> str:
    """A data set spec (``folder:resize=256,crop=224``) as a portable file-name part; the
    cache key's hash carries the exact spec and the data's fingerprint."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", data)


def is_cached(path: Path) -> bool:
    """Whether a cache entry (checkpoint and sidecar) is complete."""
    return path.is_file() and path.with_suffix(".json").is_file()


def train_float(model: str, data: str, epochs: int, seed: int = 0, width: float = 1.0,
                lr: float = 0.1, batch_size: int = 128, out: str | Path | None = None,
                root: str | None = None, use_cache: bool = True, progress: bool | None = None,
                threads: int = TRAIN_THREADS) -> tuple[Path, dict[str, Any]]:
    """Train a float model on a data set (or reuse the cached run); return (checkpoint, meta).

    The same configuration (seed and `threads` included) gives the same checkpoint bytes in
    any process on the same kind of CPU (`models.training.deterministic`).
    """
    cfg = float_config(model, data, epochs, seed, width, lr, batch_size, threads, root)
    cached = float_cache_path(model, data, epochs, seed, width, lr, batch_size, threads, root)
    with cache_lock(cached) if use_cache else contextlib.nullcontext():
        return _train_float(cached, cfg, model, data, epochs, seed, width, lr, batch_size, out,
                            root, use_cache, progress, threads)


def _train_float(cached: Path, cfg, model, data, epochs, seed, width, lr, batch_size, out, root,
                 use_cache, progress, threads) -> tuple[Path, dict[str, Any]]:
    if use_cache and cached.is_file() and cached.with_suffix(".json").is_file():
        log.info("reusing cached float model %s", cached)
        net, meta = load_checkpoint(cached)
        if out is not None and Path(out) != cached:
            save_checkpoint(net, out, {k: v for k, v in meta.items() if k != "versions"})
            return Path(out), meta
        return cached, meta
    train_set = load_dataset(data, "train", root=root)
    test_set = load_dataset(data, "test", root=root)
    kwargs = {"num_classes": train_set.num_classes, "in_channels": train_set.input_shape[0],
              "width": width}
    with deterministic(seed, threads):
        net = create_model(model, **kwargs)
        result = train(net, train_set, epochs, test=test_set, lr=lr, batch_size=batch_size,
                       seed=seed, progress=progress)
    meta = {"model": model, "model_kwargs": kwargs, "dataset": data, "config": cfg,
            "cpu": cpu_meta(),
            "test_acc": result.test_acc, "train_seconds": result.seconds,
            "epoch_seconds": result.history["epoch_s"].tolist(),
            "history": result.history.to_dict(orient="list")}
    if use_cache:
        save_checkpoint(net, cached, meta)
    if out is not None:
        save_checkpoint(net, out, meta)
        return Path(out), meta
    return cached, meta
