"""`dataset_fingerprint`: the data part of every training cache key and sweep point hash."""

import os

import pytest

from npusim.data import DatasetError, dataset_fingerprint
from tests.npusim.data.test_datasets import _write_cifar


def test_cifar10_roots_with_different_content_differ_same_content_agrees(tmp_path):
    a, b, c = (_write_cifar(tmp_path / n) for n in ("a", "b", "c"))
    raw = bytearray((b / "test_batch").read_bytes())
    raw[len(raw) // 2] ^= 1  # one bit of one pixel
    (b / "test_batch").write_bytes(bytes(raw))
    fa, fb, fc = (dataset_fingerprint("cifar10", root=r) for r in (a, b, c))
    assert fa.startswith("cifar10:v") and fa != fb
    assert fa == fc  # same bytes in another directory, written at another time
    os.utime(a / "data_batch_1", ns=(1, 1))  # mtime alone does not change the content key
    assert dataset_fingerprint("cifar10", root=str(a)) == fa


def test_cifar10_missing_root_or_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_fingerprint("cifar10", root=tmp_path / "nonexistent")
    root = _write_cifar(tmp_path / "a")
    (root / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3 is missing"):
        dataset_fingerprint("cifar10", root=root)


def test_builtin_sets_fingerprint_their_data_and_refuse_a_root(tmp_path):
    d = dataset_fingerprint("digits")
    assert d == dataset_fingerprint("digits") and d.startswith("digits:v")
    s0 = dataset_fingerprint("synthetic", n=16, seed=0)
    assert s0 != dataset_fingerprint("synthetic", n=16, seed=1)
    with pytest.raises(DatasetError, match="reads none"):
        dataset_fingerprint("digits", root=tmp_path)
