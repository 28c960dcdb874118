"""One requantization spec: QuantConfig, the program file and the NPU share `RequantSpec`; an
NPU without [requant] runs a program as exported, and one that pins other keys says so."""

import logging

import numpy as np
import pytest

from npusim.cli.app import main
from npusim.hw.config import NPUConfig
from npusim.ir.program import ProgramError, load_program, save_program
from npusim.ir.requant import RequantOverrides, RequantSpec
from npusim.sim.simulator import Simulator
from tests.npusim import naive
from tests.npusim.programs import conv_program

#: Not the export defaults (half_up, 20), and not the old NPU defaults (half_away, 16) either.
EXPORTED = RequantSpec(rounding="half_even", add_frac_bits=16)


def tie_program(spec=EXPORTED, in_shape=(1, 8, 8)):
    """A conv whose multiplier is exactly 1/8, so many accumulators round at a tie and the
    rounding convention shows in the outputs."""
    w = np.random.default_rng(0).integers(-7, 8, size=(4, in_shape[0], 3, 3))
    bias = np.array([3, -5, 0, 11])
    return conv_program(w, bias, in_shape, s_x=0.5, s_w=[0.25] * 4, s_y=1.0, y_bits=8,
                        y_signed=True, rq_settings=spec)


def images(n=6, shape=(1, 8, 8)):
    return np.random.default_rng(1).integers(0, 256, size=(n, *shape))


def oracle(prog, x, rounding):
    """The independent NumPy oracle under `rounding` (32-bit fixed-point multiplier)."""
    node = prog.nodes[0]
    w = prog.arrays["l.weight"].astype(np.int64)
    acc, _, _ = naive.conv2d_acc(x, w, prog.arrays["l.bias"].astype(np.int64), 1, 0, 1, 0)
    from npusim.ir.requant import node_requant

    p = node_requant(prog, node, RequantSpec(rounding=rounding))
    lo, hi = node.attrs["clamp"]
    return naive.requantize(acc, p.m0, p.n, rounding, 32, 0, lo, hi)


# ------------------------------------------------------------------------- one type

def test_quant_config_npu_and_program_share_the_one_type():
    import quantize
    from quantize.config import QuantConfig

    assert QuantConfig.model_fields["requant"].annotation is RequantSpec
    assert quantize.RequantSpec is RequantSpec
    assert NPUConfig.model_fields["requant"].annotation is RequantOverrides
    # the NPU's section has exactly the spec's keys, each optional, with the same ranges
    assert list(RequantOverrides.model_fields) == list(RequantSpec.model_fields)
    assert all(f.default is None for f in RequantOverrides.model_fields.values())
    with pytest.raises(Exception, match="less than or equal to 32"):
        RequantOverrides(multiplier_bits=33)
    # one set of defaults: what export writes is what QuantConfig and the spec say
    assert QuantConfig().requant == RequantSpec()
    assert (RequantSpec().scale_mode, RequantSpec().multiplier_bits, RequantSpec().max_shift,
            RequantSpec().rounding, RequantSpec().add_frac_bits) == ("fixed", 32, 62, "half_up",
                                                                      20)


def test_program_file_records_its_spec(tmp_path):
    prog = tie_program()
    path = tmp_path / "p.safetensors"
    save_program(prog, path)
    assert RequantSpec.from_dict(load_program(path).requant) == EXPORTED


@pytest.mark.parametrize("change, needle", [
    ({"rounding": "half_down"}, "requant.rounding: Input should be"),
    ({"multiplier_bits": 33}, "requant.multiplier_bits: Input should be less than or equal"),
    ({"add_frac_bits": "16"}, "requant.add_frac_bits: Input should be a valid integer"),
    ({"max_shift": True}, "requant.max_shift"),
    ({"colour": 1}, "requant.colour: unknown key"),
])
def test_manifest_requant_validated_by_the_spec(change, needle):
    prog = tie_program()
    prog.requant = {**prog.requant, **change}
    with pytest.raises(ProgramError) as e:
        prog.validate("p.safetensors")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("p.safetensors: ") and needle in msg, msg


def test_manifest_requant_needs_every_key():
    prog = tie_program()
    prog.requant = {k: v for k, v in prog.requant.items() if k != "rounding"}
    with pytest.raises(ProgramError, match=r"requant\.rounding: missing key"):
        prog.validate("p")


# ------------------------------------------------------------------ weight zero points

def test_weight_zero_point_is_refused_naming_tensor_and_field():
    # x = 7, w = 1 with a weight zero point 5 would be 7 * (1 - 5) = -28; the NPU has no
    # weight zero point, so it would compute 7: refused, not silently ignored
    prog = conv_program(np.ones((1, 1, 1, 1)), [0], (1, 1, 1), s_x=1.0, s_w=[1.0], s_y=1.0,
                        y_signed=True)
    prog.validate("p")
    prog.tensors["l.weight"].zero_point = 5
    with pytest.raises(ProgramError) as e:
        prog.validate("p")
    assert str(e.value) == ("p: tensor 'l.weight': zero_point: weights are symmetric (the NPU "
                            "has no weight zero point), expected 0, got 5")


# ----------------------------------------------------------------- the effective spec

def test_npu_without_requant_runs_the_program_as_exported(tmp_path, caplog):
    prog, x = tie_program(), images()
    bare = tmp_path / "bare.toml"
    bare.write_text('name = "bare"\n[array]\nrows = 8\ncols = 8\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="npusim"):
        sim = Simulator(NPUConfig.load(bare))
        got = sim.run(prog, x).logits
    assert sim.settings == EXPORTED and sim.requant_changes == {}
    assert not caplog.records  # nothing differs, nothing to say
    # the program's own convention, by the oracle and by a preset pinning the same keys
    np.testing.assert_array_equal(got, oracle(prog, x, "half_even"))
    pinned = NPUConfig.preset("edge16").with_overrides(
        {f"requant.{k}": v for k, v in EXPORTED.to_dict().items()})
    np.testing.assert_array_equal(got, Simulator(pinned).run(prog, x).logits)
    np.testing.assert_array_equal(got, Simulator(NPUConfig.preset("edge16")).run(prog, x).logits)
    # ... which the old NPU defaults (half_away / 16) would not have given
    assert not np.array_equal(got, oracle(prog, x, "half_away"))


def test_npu_that_pins_other_keys_warns_once_and_says_which(caplog):
    prog, x = tie_program(), images()
    cfg = NPUConfig.preset("edge16").with_overrides({"requant.rounding": "half_up",
                                                     "requant.add_frac_bits": 16})
    with caplog.at_level(logging.WARNING, logger="npusim"):
        sims = [Simulator(cfg), Simulator(cfg.with_overrides({"precision.acc_bits": 30}))]
        outs = [s.run(prog, x).logits for s in sims]
        sims[0].run(prog, x)  # run again: no second warning
    # only the key that differs (add_frac_bits equals the program's)
    assert sims[0].requant_changes == {"rounding": ("half_even", "half_up")}
    assert sims[0].settings == EXPORTED.model_copy(update={"rounding": "half_up"})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'edge16'" in warnings[0] and "rounding half_even -> half_up" in warnings[0]
    assert "add_frac_bits" not in warnings[0]
    np.testing.assert_array_equal(outs[0], oracle(prog, x, "half_up"))
    assert not np.array_equal(outs[0], oracle(prog, x, "half_even"))
    # another program with the same difference is warned about again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="npusim"):
        Simulator(cfg).run(tie_program(), x)
    assert len(caplog.records) == 1


def test_plan_of_another_program_does_not_leak_its_spec():
    a, b, x = tie_program(), tie_program(RequantSpec(rounding="half_away")), images()
    sim = Simulator(NPUConfig.preset("edge16"))
    first = sim.run(a, x).logits
    sim.plan(b)
    assert sim.settings.rounding == "half_away"
    np.testing.assert_array_equal(sim.run(a, x).logits, first)
    assert sim.settings == EXPORTED


def test_product_width_refused_per_node_when_the_npu_pins_no_multiplier():
    # 62-bit accumulators: the NPU config is valid (it cannot know the program's multiplier
    # width); the simulator checks each node's product acc * M0 against the program's width
    cfg = NPUConfig(name="x").with_overrides({"precision.acc_bits": 62,
                                              "precision.pe_acc_bits": 62})
    x = images()
    Simulator(cfg).run(tie_program(), x)  # small accumulators: the product fits
    wide = tie_program()  # a bias near 2^31: a 33-bit accumulator times a 32-bit M0
    wide.arrays["l.bias"] = np.array([2 ** 31 - 1, 0, 0, 0], dtype=wide.arrays["l.bias"].dtype)
    from npusim.sim.simulator import SimulationError

    with pytest.raises(SimulationError) as e:
        Simulator(cfg).run(wide, x)
    msg = str(e.value)
    assert "\n" not in msg and "node 'l'" in msg and "64-bit register" in msg
    assert "requant.multiplier_bits" in msg
    # shift-only hardware has no such product
    Simulator(cfg.with_overrides({"requant.scale_mode": "pow2"})).run(wide, x)


def test_npu_file_section_is_partial_and_round_trips(tmp_path):
    cfg = NPUConfig.from_toml_str('name = "x"\n[requant]\nrounding = "half_away"\n')
    assert cfg.requant.pinned() == {"rounding": "half_away"}
    assert NPUConfig.from_toml_str(cfg.to_toml()) == cfg
    assert "[requant]" not in NPUConfig(name="y").to_toml()
    # --set pins a key, and "none" gives it back to the program
    pinned = NPUConfig(name="y").with_overrides({"requant.max_shift": "40"})
    assert pinned.requant.pinned() == {"max_shift": 40}
    assert pinned.with_overrides({"requant.max_shift": "none"}).requant.pinned() == {}
    assert pinned.config_hash() != NPUConfig(name="y").config_hash()


# ------------------------------------------------------------------------------- CLI

def test_cli_simulate_and_cost_print_the_difference_once(tmp_path, capsys):
    prog = tie_program()
    prog.meta["dataset"] = "digits"
    path = tmp_path / "p.safetensors"
    save_program(prog, path)
    assert main(["simulate", str(path), "--limit", "5"]) == 0
    assert "requant" not in capsys.readouterr().out  # edge16 pins nothing
    assert main(["simulate", str(path), "--limit", "5", "--set",
                 "requant.rounding=half_away"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("requant:")]
    assert lines == [("requant: the NPU's [requant] differs from the program's: rounding "
                      "half_even -> half_away")]
    assert main(["cost", str(path), "--npu", "mid32", "--set", "requant.add_frac_bits=20"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("requant:")]
    # mid32's pinned half_even is the program's own
    assert lines == [("requant: the NPU's [requant] differs from the program's: add_frac_bits "
                      "16 -> 20")]


def test_sweep_row_records_what_ran():
    from npusim.sweep.run import _npu_columns

    cols = _npu_columns(NPUConfig.preset("mid32"), RequantSpec())
    assert (cols["rounding"], cols["add_frac_bits"], cols["scale_mode"]) == ("half_even", 20,
                                                                             "fixed")
    assert cols["requant_changes"] == "rounding half_up -> half_even"
    assert _npu_columns(NPUConfig.preset("edge16"), EXPORTED)["requant_changes"] == ""
