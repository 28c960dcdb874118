"""Integer-exact evaluation is the simulator on an ideal NPU: one interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.hw.config import NPUConfig
from npusim.sim import SimulationError, Simulator
from quantize.integer_eval import run_integer
from tests.npusim import naive
from tests.npusim.programs import conv_program


def _wide_linear():
    """16-bit weights and inputs, no requantization."""
    rng = np.random.default_rng(0)
    w = rng.integers(-(1 << 15), 1 << 15, size=(3, 64))
    bias = rng.integers(-1000, 1000, size=3)
    prog = conv_program(w, bias, (64,), x_bits=16, w_bits=16, requant=False, op="linear")
    x = rng.integers(0, 1 << 16, size=(4, 64))
    return prog, x, w, bias


def test_run_integer_is_simulator_run(monkeypatch):
    prog, x, _, _ = _wide_linear()

    def refuse(self, *a, **k):
        raise RuntimeError("Simulator.run reached")

    monkeypatch.setattr(Simulator, "run", refuse)
    with pytest.raises(RuntimeError, match="Simulator.run reached"):
        run_integer(prog, x)


def test_run_integer_equals_simulator_on_the_ideal_npu_and_is_exact():
    prog, x, w, bias = _wide_linear()
    got = run_integer(prog, x)
    sim = Simulator(NPUConfig.ideal(prog.requant)).run(prog, x)
    np.testing.assert_array_equal(got, sim.logits)
    ref, _, _ = naive.linear_acc(x, w, bias, 0, pe_bits=62, acc_bits=62)
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(SimulationError, match="16-bit weights"):  # an edge NPU refuses it
        Simulator(NPUConfig.preset("edge16")).run(prog, x)


def test_ideal_npu_is_exact_and_wide():
    cfg = NPUConfig.ideal({"scale_mode": "fixed", "multiplier_bits": 32, "max_shift": 62,
                           "rounding": "half_even", "add_frac_bits": 20})
    assert cfg.precision.acc_bits == cfg.precision.pe_acc_bits == 62
    assert cfg.precision.acc_mode == cfg.precision.pe_mode == "exact"
    assert cfg.array.max_weight_bits == cfg.array.max_input_bits == 16
    assert cfg.requant.rounding == "half_even" and cfg.requant.add_frac_bits == 20
