"""`bounds` of 64-bit weights: Python-int arithmetic, never a wrapped int64."""

import numpy as np

from npusim.cli.app import main
from npusim.ir.arith import bits_needed
from npusim.ir.bounds import l1_bound_bits
from npusim.ir.program import save_program
from tests.npusim.programs import conv_program


def _reference(w, bias, xlo, xhi) -> int:
    rows = [[int(v) for v in r] for r in w.reshape(w.shape[0], -1)]
    lo = min(min(int(b) + sum(min(v * xlo, v * xhi) for v in r) for r, b in zip(rows, bias)), 0)
    hi = max(max(int(b) + sum(max(v * xlo, v * xhi) for v in r) for r, b in zip(rows, bias)), 0)
    return bits_needed(lo, hi)


def test_l1_bound_of_64_bit_weights_does_not_wrap():
    i64 = np.iinfo(np.int64)
    w = np.array([[i64.min, i64.min, i64.max], [i64.max, 5, -7]], dtype=np.int64)
    bias = np.array([i64.min, 3], dtype=np.int64)
    got = l1_bound_bits(w, bias, 0, 255)
    assert got == _reference(w, bias, 0, 255) and got > 64
    small = np.array([[3, -4, 5]], dtype=np.int8)
    assert l1_bound_bits(small, np.zeros(1, np.int32), -8, 7) == _reference(small, [0], -8, 7)


def test_bounds_command_prints_the_true_width_for_64_bit_weights(tmp_path, capsys):
    i64 = np.iinfo(np.int64)
    w = np.full((2, 1, 2, 2), i64.min, dtype=np.int64)
    prog = conv_program(w, np.zeros(2, np.int64), (1, 2, 2), w_bits=64, s_w=np.full(2, 1e-12))
    save_program(prog, tmp_path / "p.safetensors")
    assert main(["bounds", str(tmp_path / "p.safetensors")]) == 0
    out = capsys.readouterr().out
    row = out.splitlines()[1].split()
    header = out.splitlines()[0].split()
    expected = _reference(w, [0, 0], 0, 255)
    assert int(row[header.index("bound_l1_bits")]) == expected == 64 + 8 + 2 + 1 - 1
    assert int(row[header.index("product_bits")]) == 64 + 8
