"""Float training, checkpoints and the cache."""

import json

import numpy as np
import pytest
import torch

from models import create_model
from models.cached import train_float
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.training import evaluate, make_batches, train
from npusim.data import load_dataset


@pytest.fixture(scope="module")
def synth():
    kw = dict(n=192, num_classes=4, shape=(1, 12, 12), seed=3)
    return load_dataset("synthetic", "train", **kw), load_dataset("synthetic", "test", **kw)


@pytest.mark.slow
def test_one_epoch_smoke_training_learns(synth):
    train_set, test_set = synth
    model = create_model("resnet8", num_classes=4, in_channels=1, width=0.5)
    before = evaluate(model, test_set)
    result = train(model, train_set, epochs=2, test=test_set, lr=0.05, batch_size=32, seed=1)
    assert list(result.history.columns[:4]) == ["epoch", "train_loss", "train_acc", "epoch_s"]
    assert len(result.history) == 2
    assert result.test_acc == pytest.approx(evaluate(model, test_set))
    # prototypes plus noise are easy: two epochs must beat chance clearly
    assert result.test_acc > max(before, 0.5)
    # the data set statistics reached the model
    assert torch.allclose(model.input_norm.mean, torch.tensor(train_set.mean, dtype=torch.float32))


@pytest.mark.slow
def test_shufflenetv2_trains(synth):
    train_set, _ = synth
    model = create_model("shufflenetv2_x0_5_cifar", num_classes=4, in_channels=1, width=0.25)
    result = train(model, train_set, epochs=3, lr=0.05, batch_size=32, seed=1)
    loss = result.history["train_loss"].tolist()
    assert all(np.isfinite(loss)) and loss[-1] < loss[0]


@pytest.mark.slow
def test_training_is_deterministic(synth):
    train_set, _ = synth
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("resnet8", num_classes=4, in_channels=1, width=0.25)
        train(model, train_set, epochs=1, batch_size=64, seed=7)
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_augmentation_translates_and_keeps_values():
    data = load_dataset("mnist5k", "test").subset(64)
    (plain, y1), = list(make_batches(data, 64, shuffle=False))
    (aug, y2), = list(make_batches(data, 64, shuffle=False, augment=True, seed=0))
    assert torch.equal(y1, y2)
    assert aug.shape == plain.shape
    assert not torch.equal(aug, plain)
    # translation by <= 2 pixels with zero fill: total ink can only shrink, never grow
    assert bool((aug.sum((1, 2, 3)) <= plain.sum((1, 2, 3)) + 1e-3).all())
    assert set(np.unique(aug.numpy())) <= set(np.unique(plain.numpy())) | {0.0}


@pytest.mark.slow
def test_checkpoint_round_trip(tmp_path, synth):
    model = create_model("resnet8", num_classes=4, in_channels=1, width=0.5)
    train(model, synth[0], epochs=1, batch_size=64)
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, {"model": "resnet8", "test_acc": 0.5,
                                  "model_kwargs": {"num_classes": 4, "in_channels": 1, "width": 0.5}})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == "resnet8" and "torch" in meta["versions"]
    loaded, meta2 = load_checkpoint(path)
    x = torch.from_numpy(synth[1].images[:8]).float()
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert meta2["test_acc"] == 0.5
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "x.pt").write_bytes(b"garbage")
    (tmp_path / "x.json").write_text(json.dumps({"model": "resnet8", "model_kwargs": {}}))
    with pytest.raises(CheckpointError, match=r"x\.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"x\.json: not valid JSON"):
        load_checkpoint(tmp_path / "x.pt")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    # weights_only=True: a checkpoint holding an arbitrary object must not load
    path = tmp_path / "evil.pt"
    torch.save({"x": object()}, path)
    path.with_suffix(".json").write_text(json.dumps({"model": "resnet8", "model_kwargs": {}}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.slow
def test_train_float_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path))
    kw = dict(model="resnet8", data="digits", epochs=1, width=0.25, batch_size=256)
    path1, meta1 = train_float(**kw)
    mtime = path1.stat().st_mtime_ns
    import models.cached as cached

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(cached, "train", boom)
    path2, meta2 = train_float(**kw)
    assert path2 == path1 and path1.stat().st_mtime_ns == mtime
    assert meta2["test_acc"] == meta1["test_acc"]


def test_deterministic_block_ignores_and_restores_global_state():
    from models.training import deterministic

    def init_weights() -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in
                          create_model("resnet8", num_classes=4, in_channels=1,
                                       width=0.25).parameters()])

    threads = torch.get_num_threads()
    with deterministic(5, threads=1):
        first = init_weights()
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    torch.rand(17)  # global RNG draws in between must not matter
    state = torch.random.get_rng_state()
    with deterministic(5, threads=1):
        assert torch.equal(init_weights(), first)
    with deterministic(6, threads=1):
        assert not torch.equal(init_weights(), first)
    # the caller's generator, thread count and algorithm setting come back
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="threads"):
        with deterministic(0, threads=0):
            pass


_TRAIN_AND_HASH = """
import hashlib, sys
import torch
if sys.argv[1] == "disturb":  # unrelated global state before training must not matter
    torch.set_num_threads(2)
    torch.rand(1000)
from models.checkpoint import cache_dir
from quantize import QuantConfig
from quantize.cached import train_qat
train_qat("resnet8", "digits", QuantConfig.make(method="lsq", weight_bits=4, act_bits=4),
          epochs=1, float_epochs=1, width=0.25)
for f in sorted(cache_dir().rglob("*.pt")):
    print(f.parent.name, f.name, hashlib.sha256(f.read_bytes()).hexdigest())
"""


@pytest.mark.slow
def test_training_gives_the_same_checkpoint_bytes_in_fresh_processes(tmp_path):
    # Fresh processes are the point here: torch seeds its global generator differently in
    # every process, which is what made cold runs of `npusim demo` disagree.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    outs = []
    for i, mode in enumerate(("plain", "disturb")):
        env = {**os.environ, "NPUSIM_CACHE": str(tmp_path / f"cache{i}"),
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        res = subprocess.run([sys.executable, "-c", _TRAIN_AND_HASH, mode], cwd=root, env=env,
                             capture_output=True, text=True, check=True)
        outs.append(res.stdout.split("\n"))
    assert [line.split()[0] for line in outs[0] if line] == ["float", "qat"]
    assert outs[0] == outs[1]


def test_cache_lock_lets_one_process_train_an_entry_at_a_time(tmp_path):
    import threading

    from models.cached import cache_lock

    entry = tmp_path / "float" / "m.pt"
    order = []
    inside = threading.Event()

    def second():
        with cache_lock(entry):  # a separate open file: blocks like another process would
            order.append("second")

    with cache_lock(entry):
        t = threading.Thread(target=second)
        t.start()
        inside.wait(0.3)  # give the thread time to block on the lock
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]
