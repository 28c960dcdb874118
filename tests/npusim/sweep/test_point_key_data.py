"""A sweep point's key includes the data's fingerprint: another --root is not "already stored"."""

from npusim.sweep.grid import Grid
from npusim.sweep.run import _plan
from npusim.sweep.store import ResultsStore
from tests.npusim.data.test_datasets import _write_cifar


def _keys(root) -> list[str]:
    with ResultsStore(":memory:") as db:
        _, keyed, order, _ = _plan(Grid.parse().points(), db, "resnet8", "cifar10", "test", 8,
                                   1, 1, 0.25, 0, 0.01, str(root), 1)
    return order


def test_point_hash_follows_the_data_directory(tmp_path):
    a, b, c = (_write_cifar(tmp_path / n) for n in "abc")
    raw = bytearray((b / "data_batch_5").read_bytes())
    raw[len(raw) // 2] ^= 1
    (b / "data_batch_5").write_bytes(bytes(raw))
    assert _keys(a) != _keys(b)
    assert _keys(a) == _keys(c)
