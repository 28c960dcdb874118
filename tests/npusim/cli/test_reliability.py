"""Silent nonsense the CLI refuses (issue 17): stale cache keys, impossible numbers, top-1 where
there are no class scores, read-only stores. In-process through `main`, one line and exit 2."""


from npusim.cli.app import main
from tests.npusim.data.test_datasets import _write_cifar


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


TINY = ["train", "--model", "resnet8", "--width", "0.25", "--epochs", "1", "--batch-size", "50"]


def test_train_cache_key_follows_the_data_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    a, b = _write_cifar(tmp_path / "a"), _write_cifar(tmp_path / "b")
    raw = bytearray((b / "data_batch_2").read_bytes())
    raw[len(raw) // 2] ^= 1
    (b / "data_batch_2").write_bytes(bytes(raw))

    def checkpoint(root) -> str:
        assert main([*TINY, "--data", "cifar10", "--root", str(root)]) == 0
        return capsys.readouterr().out.split("checkpoint: ")[1].strip()

    first = checkpoint(a)
    assert checkpoint(a) == first  # the same files: the cached model
    assert checkpoint(b) != first  # other files: another model
    # a missing directory is refused before the cache is looked at (a model is cached)
    assert main([*TINY, "--data", "cifar10", "--root", str(tmp_path / "nonexistent")]) == 2
    assert "nonexistent does not exist" in _one_error_line(capsys)
    assert main([*TINY, "--data", "digits", "--root", str(a)]) == 2
    assert "digits reads none" in _one_error_line(capsys)
