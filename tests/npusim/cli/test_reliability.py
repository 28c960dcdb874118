"""Silent nonsense the CLI refuses (issue 17): stale cache keys, impossible numbers, top-1 where
there are no class scores, read-only stores. In-process through `main`, one line and exit 2."""


import numpy as np
import pytest

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


def test_an_empty_split_is_refused(tmp_path, monkeypatch, capsys):
    import pickle

    import numpy as np

    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    root = _write_cifar(tmp_path / "a")
    empty = {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}
    (root / "test_batch").write_bytes(pickle.dumps(empty, protocol=4))
    assert main([*TINY, "--data", "cifar10", "--root", str(root), "--no-cache"]) == 2
    assert "cifar10: the test split is empty (0 images)" in _one_error_line(capsys)


# ----------------------------------------------------------- what an NPU can run, and its cost

def _program(tmp_path, kernel: int = 16):
    """A conv over a synthetic (1, 16, 16) image: 10 outputs of 1x1 (kernel 16, class scores)
    or of (17 - kernel)^2 pixels."""
    from npusim.ir.program import save_program
    from tests.npusim.programs import conv_program

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(10, 1, kernel, kernel))
    path = tmp_path / f"p{kernel}.safetensors"
    save_program(conv_program(w, np.zeros(10, np.int64), (1, 16, 16)), path)
    return str(path)


@pytest.mark.parametrize("sets", [
    ["precision.acc_bits=12"],  # one 8x8-bit product needs 17 bits
    ["array.max_weight_bits=4"],
])
def test_cost_refuses_exactly_what_simulate_refuses(tmp_path, capsys, sets):
    prog = _program(tmp_path)
    flags = [x for s in sets for x in ("--set", s)]
    assert main(["simulate", prog, "--data", "synthetic", *flags]) == 2
    refused = _one_error_line(capsys)
    assert main(["cost", prog, *flags]) == 2
    assert _one_error_line(capsys) == refused
    assert main(["simulate", prog, "--data", "synthetic"]) == 0
    assert main(["cost", prog]) == 0


@pytest.mark.parametrize("key, value", [
    ("array.clock_mhz", "1e-300"), ("memory.weight_sram_kib", "1e308"),
    ("array.rows", str(2**63)), ("array.cols", "0"), ("array.clock_mhz", "nan"),
    ("memory.dram_bandwidth_bytes_per_cycle", "inf"), ("technology.supply_v", "1e9"),
])
def test_cost_refuses_absurd_npu_numbers(tmp_path, capsys, key, value):
    assert main(["cost", _program(tmp_path), "--set", f"{key}={value}"]) == 2
    assert key in _one_error_line(capsys)


def test_cost_refuses_a_non_finite_result(tmp_path, capsys):
    assert main(["cost", _program(tmp_path), "--set",
                 "technology.energy_overrides.int_multiplier.multiply.c2=1e308"]) == 2
    assert "is not finite" in _one_error_line(capsys)


def test_cost_numbers_are_finite_at_the_limits(tmp_path, capsys):
    sets = ["array.clock_mhz=0.001", "array.rows=4096", "array.cols=4096",
            "memory.weight_sram_kib=67108864", "memory.dram_bandwidth_bytes_per_cycle=0.0009765625"]
    assert main(["cost", _program(tmp_path), *[x for s in sets for x in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "inf" not in out and "nan" not in out


def test_narrowing_acc_bits_narrows_the_pe_partial_sums_of_a_preset(tmp_path, capsys):
    from npusim.hw.config import NPUConfig

    cfg = NPUConfig.preset("mid32").with_overrides({"precision.acc_bits": 14})
    assert (cfg.precision.pe_acc_bits, cfg.precision.acc_bits) == (14, 14)
    pinned = cfg.with_overrides({"precision.pe_acc_bits": 12, "precision.acc_bits": 20})
    assert (pinned.precision.pe_acc_bits, pinned.precision.acc_bits) == (12, 20)
    toml = tmp_path / "npu.toml"
    toml.write_text('name = "x"\n[precision]\npe_acc_bits = 32\nacc_bits = 32\n')
    assert main(["cost", _program(tmp_path), "--npu", str(toml),
                 "--set", "precision.acc_bits=20"]) == 2
    line = _one_error_line(capsys)
    assert "precision.pe_acc_bits = 32" in line and "precision.acc_bits = 20" in line


def test_top1_only_for_class_scores(tmp_path, capsys):
    assert main(["simulate", _program(tmp_path, 16), "--data", "synthetic"]) == 0
    assert "top-1 " in capsys.readouterr().out
    assert main(["simulate", _program(tmp_path, 3), "--data", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert "no top-1 (output" in out and "[10, 14, 14] is not 10 class scores" in out


# ---------------------------------------------------------------- impossible training numbers

@pytest.mark.parametrize("args, field", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-0.1"], "--lr"),
    (["--lr", "0"], "--lr"), (["--width", "nan"], "--width"), (["--width", "0"], "--width"),
    (["--width", "1e9"], "--width"), (["--seed", "-1"], "--seed"),
])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_impossible_training_numbers_exit_2_before_training(tmp_path, monkeypatch, capsys,
                                                            command, args, field):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    assert main([command, "--data", "digits", *args]) == 2
    assert field in _one_error_line(capsys)
    assert not (tmp_path / "cache").exists()  # nothing was trained or stored


def test_a_diverging_loss_is_an_error_not_chance_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUSIM_CACHE", str(tmp_path / "cache"))
    import models.training as training

    real = training.nn.CrossEntropyLoss

    class Exploding(real):  # the loss of a run whose weights overflowed
        def forward(self, out, y):
            return super().forward(out, y) * float("inf")

    monkeypatch.setattr(training.nn, "CrossEntropyLoss", Exploding)
    assert main([*TINY, "--data", "digits", "--no-cache"]) == 2
    line = _one_error_line(capsys)
    assert "training diverged: the loss is" in line and "epoch 1, step 1" in line
