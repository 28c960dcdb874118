"""The cost estimate: bit-width scaling of MAC and accumulator energy, storage by hand,
baselines on the same counts, simulator statistics, bookkeeping, and the `npusim cost` CLI."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from npusim.cost import COMPONENTS, action_counts, estimate_cost, load_energy_table, price, table_for_npu
from npusim.cost.energy_table import ENTRY_SPECS
from npusim.hw.config import NPUConfig
from npusim.ir.program import Node, TensorSpec, save_program
from tests.npusim.cost.test_mapping import residual_program
from tests.npusim.programs import conv_program, finish


def npu(**over):
    return NPUConfig.preset("edge16").with_overrides(over)


def conv(w_bits=4, x_bits=4, seed=0, **kw):
    """3x3 conv, 8 -> 16 channels on a 10x10 input (8x8 output), weights in the w_bits range."""
    q = (1 << (w_bits - 1)) - 1
    w = np.random.default_rng(seed).integers(-q, q + 1, size=(16, 8, 3, 3))
    return conv_program(w, np.zeros(16, int), (8, 10, 10), x_bits=x_bits, w_bits=w_bits, **kw)


def test_halving_both_operand_widths_cuts_multiply_energy_about_4x():
    cfg = npu()
    e8 = estimate_cost(conv(8, 8), cfg).layers.iloc[0]
    e4 = estimate_cost(conv(4, 4), cfg).layers.iloc[0]
    assert e8["macs"] == e4["macs"] == 64 * 72 * 16
    ratio = (e8["mac_pj"] / e8["macs"]) / (e4["mac_pj"] / e4["macs"])
    assert 3.5 <= ratio <= 4.5
    # and the multiply is charged at w_bits x a_bits from the table
    t = load_energy_table("horowitz45")
    assert e4["mac_pj"] == pytest.approx(e4["macs"] * t.energy("int_mul", bw=4, ba=4))


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_narrowing_the_accumulator_cuts_accumulator_energy_linearly(dataflow):
    prog = conv()
    wide = npu(**{"array.dataflow": dataflow})
    narrow = npu(**{"array.dataflow": dataflow, "precision.acc_bits": 16,
                    "precision.pe_acc_bits": 16})
    a32 = estimate_cost(prog, wide).layers.iloc[0]["accumulator_pj"]
    a16 = estimate_cost(prog, narrow).layers.iloc[0]["accumulator_pj"]
    assert a32 > 0 and a32 / a16 == pytest.approx(2.0, rel=1e-12)
    # 24 bits: exactly 24/32 of the 32-bit figure
    a24 = estimate_cost(prog, npu(**{"array.dataflow": dataflow, "precision.acc_bits": 24,
                                     "precision.pe_acc_bits": 24})).layers.iloc[0]
    assert a24["accumulator_pj"] / a32 == pytest.approx(24 / 32, rel=1e-12)


def test_accumulator_energy_by_hand_os():
    # os: one add (0.003125*acc pJ) and one acc-bit register write (0.009 pJ/bit) per MAC
    rep = estimate_cost(conv(), npu(**{"precision.acc_bits": 20}))
    row = rep.layers.iloc[0]
    assert row["accumulator_pj"] == pytest.approx(row["macs"] * (0.003125 * 20 + 0.009 * 20))


def test_requant_energy_by_hand():
    t = load_energy_table("horowitz45")
    rep = estimate_cost(conv(), npu(**{"precision.acc_bits": 24}))
    outputs = 16 * 8 * 8
    # fixed: multiply 24 x 32 bits, then add and shift at the 56-bit product
    per = t.energy("int_mul", bw=24, ba=32) + t.energy("int_add", 56) + t.energy("shift", 56)
    assert rep.layers.iloc[0]["requant_pj"] == pytest.approx(outputs * per)
    pow2 = estimate_cost(conv(), npu(**{"precision.acc_bits": 24, "requant.scale_mode": "pow2"}))
    assert pow2.layers.iloc[0]["requant_pj"] == pytest.approx(
        outputs * (t.energy("int_add", 24) + t.energy("shift", 24)))


@pytest.mark.parametrize("storage, w_stored", [("packed", 3), ("pad4", 4), ("pad8", 8)])
def test_storage_is_packed_bits_plus_metadata_exactly(storage, w_stored):
    # 4 filters x 2 channels x 3x3 = 72 weights at 3 bits; per output channel a 32-bit bias,
    # a 32-bit multiplier (edge16: requant.multiplier_bits = 32) and an 8-bit shift
    w = np.random.default_rng(0).integers(-3, 4, size=(4, 2, 3, 3))
    prog = conv_program(w, np.arange(4), (2, 5, 5), x_bits=4, w_bits=3)
    tot = estimate_cost(prog, npu(**{"memory.weight_storage": storage})).total
    bits = 72 * w_stored + 4 * 32 + 4 * 32 + 4 * 8
    assert tot["weight_storage_bits"] == bits
    assert tot["weight_storage_bytes"] == bits / 8
    if storage == "packed":
        assert bits == 504  # 216 + 128 + 128 + 32
    base = estimate_cost(prog, npu(**{"memory.weight_storage": storage})).baselines
    by = base.set_index("variant")["weight_storage_bits"]
    assert by["int8"] == 72 * 8 + 4 * (32 + 32 + 8)
    assert by["fp32"] == 72 * 32 + 4 * 32  # fp32 weights and biases, no requant metadata


def test_storage_follows_the_npu_multiplier_width():
    prog = conv()
    tot = estimate_cost(prog, npu(**{"requant.multiplier_bits": 16})).total
    assert tot["weight_storage_bits"] == 16 * 72 * 4 + 16 * (32 + 16 + 8)
    tot = estimate_cost(prog, npu(**{"requant.scale_mode": "pow2"})).total
    assert tot["weight_storage_bits"] == 16 * 72 * 4 + 16 * (32 + 8)  # M0 = 1 is not stored


def test_peak_activation_counts_live_residual_tensors():
    # add: h1 (144 x 4 b) + h2 (144 x 8 b) + y (144 x 4 b) = 2304 bits
    assert estimate_cost(residual_program(), npu()).total["peak_activation_bytes"] == 288


def test_baselines_use_the_same_counts_and_save():
    rep = estimate_cost(residual_program(), npu())
    base = rep.baselines.set_index("variant")
    assert list(base.index) == ["npu", "int8", "fp32"]
    assert base["macs"].nunique() == 1 and base["compute_cycles"].nunique() == 1
    mac_counts = rep.counts[rep.counts["component"] == "mac"].groupby("variant")["count"].sum()
    assert mac_counts.nunique() == 1
    tot = rep.total
    assert tot["energy_saving_vs_fp32"] > 1 and tot["storage_saving_vs_fp32"] > 1
    assert tot["energy_saving_vs_int8"] > 1 and tot["storage_saving_vs_int8"] > 1
    assert tot["energy_saving_vs_fp32"] == pytest.approx(
        base.loc["fp32", "energy_per_image_pj"] / base.loc["npu", "energy_per_image_pj"])
    assert base.loc["fp32", "requant_pj"] == 0  # no requantization in FP32
    # FP32 charges fp32 multiplies; INT8 8x8 multiplies
    c = rep.counts
    assert set(c[(c.variant == "fp32") & (c.component == "mac")]["entry"]) == \
        {"fp32_multiplier.multiply"}
    int8 = c[(c.variant == "int8") & (c.component == "mac")]
    assert (int8["bw"] == 8).all() and (int8["ba"] == 8).all()


def test_totals_are_consistent():
    rep = estimate_cost(residual_program(), npu())
    tot, lay = rep.total, rep.layers
    assert tot["energy_per_image_pj"] == pytest.approx(lay["energy_pj"].sum())
    assert tot["energy_per_image_pj"] == pytest.approx(rep.components["energy_pj"].sum())
    assert tot["energy_per_image_pj"] == pytest.approx(
        sum(tot[f"{c}_pj"] for c in COMPONENTS))
    assert tot["latency_us"] == pytest.approx(lay["latency_us"].sum())
    assert tot["avg_power_mw"] == pytest.approx(
        tot["energy_per_image_pj"] / tot["latency_us"] / 1e3)
    assert tot["avg_power_mw"] == pytest.approx(tot["dynamic_power_mw"] + tot["leakage_power_mw"])
    # leakage: 256 PEs x 5 uW + (64 + 64 + 16) KiB x 5 uW = 2.0 mW
    assert tot["leakage_power_mw"] == pytest.approx(256 * 0.005 + 144 * 0.005)
    priced = price(action_counts(residual_program(), npu()), table_for_npu(npu()))
    assert priced["energy_pj"].sum() == pytest.approx(tot["energy_per_image_pj"])


def test_every_row_records_table_and_npu():
    cfg = npu(**{"technology.energy_overrides.dram.access": "0"})
    rep = estimate_cost(residual_program(), cfg)
    for df in (rep.layers, rep.components, rep.totals, rep.baselines, rep.counts):
        assert (df["table_name"] == "horowitz45").all()
        assert (df["table_version"] == "1.0.0").all()
        assert (df["table_overrides"] == "dram.access=0").all()
        assert (df["npu"] == "edge16").all() and (df["config_hash"] == cfg.config_hash()).all()
    assert rep.total["dram_pj"] == 0  # the override applied


def test_stats_gate_zero_multiplies():
    prog = conv()
    cfg = npu()
    static = estimate_cost(prog, cfg).layers.iloc[0]
    macs = int(static["macs"])
    stats = pd.DataFrame({"layer": ["l"], "images": [4], "nonzero_macs": [4 * macs // 4]})
    rep = estimate_cost(prog, cfg, stats=stats)
    row = rep.layers.iloc[0]
    assert row["nonzero_macs"] == macs / 4
    assert row["mac_pj"] == pytest.approx(static["mac_pj"] / 4)
    assert row["mac_ungated_pj"] == pytest.approx(static["mac_pj"])
    assert row["accumulator_pj"] == pytest.approx(static["accumulator_pj"])  # not gated
    assert rep.total["counts_source"] == "simulated" and rep.total["simulated_images"] == 4
    assert rep.total["batch"] == 1


def test_bad_stats_are_refused():
    prog = conv()
    with pytest.raises(ValueError, match="missing column 'nonzero_macs'"):
        estimate_cost(prog, npu(), stats=pd.DataFrame({"layer": ["l"], "images": [1]}))
    with pytest.raises(ValueError, match="'zz' is not a node"):
        estimate_cost(prog, npu(), stats=pd.DataFrame(
            {"layer": ["l", "zz"], "images": [1, 1], "nonzero_macs": [1, 1]}))


def test_simulated_stats_flow():
    from npusim.sim.simulator import Simulator

    prog = conv(4, 4)
    x = np.random.default_rng(5).integers(0, 16, size=(3, 8, 10, 10))
    x[:, :, :5] = 0  # plenty of zero activations
    cfg = npu()
    res = Simulator(cfg).run(prog, x)
    rep = estimate_cost(prog, cfg, stats=res.stats)
    row = rep.layers.iloc[0]
    assert row["nonzero_macs"] == res.stats.iloc[0]["nonzero_macs"] / 3
    assert 0 < row["nonzero_macs"] < row["macs"]
    assert row["mac_pj"] < row["mac_ungated_pj"]


def test_embed_lookup_and_pooling_are_charged():
    t = load_energy_table("horowitz45")
    tensors = {"x": TensorSpec((1, 4, 4), 8, False), "e.lut": TensorSpec((1, 256, 2), 4, False),
               "y": TensorSpec((2, 4, 4), 4, False, 0.1),
               "p": TensorSpec((2, 2, 2), 4, False, 0.1)}
    lut = np.random.default_rng(0).integers(0, 16, size=(1, 256, 2)).astype(np.uint8)
    nodes = [Node("e", "embed", ["x"], "y"),
             Node("mp", "maxpool2d", ["y"], "p", {"kernel": 2, "stride": 2, "padding": 0})]
    prog = finish(nodes, tensors, {"e.lut": lut}, "x", ["p"])
    cfg = npu()
    lay = estimate_cost(prog, cfg).layers.set_index("layer")
    # 16 pixels x 2 values x 4 bits read from the 64 KiB weight SRAM
    assert lay.loc["e", "lookup_pj"] == pytest.approx(32 * 4 * t.sram_pj_per_bit(64))
    # 8 outputs x 3 compares at 4 bits
    assert lay.loc["mp", "vector_pj"] == pytest.approx(8 * 3 * t.energy("compare", 4))
    assert estimate_cost(prog, cfg).total["weight_storage_bits"] == 512 * 4


# ------------------------------------------------------------------------------- CLI

def run(*args):
    return subprocess.run([sys.executable, "-m", "npusim.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.slow
def test_cli_sources_lists_every_entry_with_a_source():
    res = run("cost", "--sources")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for key in ENTRY_SPECS:
        i = next(i for i, line in enumerate(lines) if line.startswith(key + " "))
        assert lines[i + 1].strip().startswith("source: ") and len(lines[i + 1].strip()) > 12
    assert "horowitz45@1.0.0" in lines[0]
    assert "requant" in res.stdout and "node_scaling.45" in res.stdout


def test_cli_cost_on_a_tiny_program(tmp_path, capsys):
    from npusim.cli.app import main

    path = save_program(residual_program(), tmp_path / "tiny.safetensors")
    csv = tmp_path / "cost.csv"
    assert main(["cost", str(path), "--npu", "edge16", "--set", "precision.acc_bits=16",
                 "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "total:" in out and "uJ/image" in out and "fp32" in out and "int8" in out
    assert "horowitz45@1.0.0" in out
    layers = pd.read_csv(csv)
    assert list(layers["layer"]) == ["c1", "c2", "add"] and (layers["acc_bits"] == 16).all()
    assert (tmp_path / "cost_baselines.csv").is_file()


@pytest.mark.slow
def test_cli_cost_errors_are_one_line(tmp_path):
    path = save_program(residual_program(), tmp_path / "tiny.safetensors")
    res = run("cost", str(path), "--set", "precision.bogus=3")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "precision.bogus" in err[0]
    res = run("cost", str(path), "--set", "technology.energy_overrides.dram.acess=3")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "dram.acess" in res.stderr
    res = run("cost")
    assert res.returncode == 2 and "PROGRAM" in res.stderr


@pytest.mark.parametrize("over, batch", [({}, 1), ({"memory.weight_sram_kib": 0.01}, 4),
                                          ({"memory.activation_sram_kib": 0.01}, 8)])
def test_dram_energy_splits_into_weights_and_activations(over, batch):
    """DRAM energy is per bit, so the weight and activation shares add up to it exactly and
    follow their bit counts; spills and non-resident weights show in the split."""
    rep = estimate_cost(residual_program(), npu(**over), images=batch)
    lay, tot = rep.layers, rep.total
    assert np.allclose(lay["dram_weight_pj"] + lay["dram_activation_pj"], lay["dram_pj"])
    assert tot["dram_weight_pj"] + tot["dram_activation_pj"] == pytest.approx(tot["dram_pj"])
    per_bit = lay["dram_pj"] / lay["dram_bits"].where(lay["dram_bits"] > 0)
    moved = lay["dram_bits"] > 0
    assert np.allclose((lay["dram_weight_pj"] / lay["dram_weight_bits"].where(
        lay["dram_weight_bits"] > 0)).dropna(), per_bit[moved & (lay["dram_weight_bits"] > 0)])
    assert tot["dram_weight_bytes"] == pytest.approx(lay["dram_weight_bits"].sum() / 8)
    if not over:
        assert tot["weights_resident"] and tot["dram_weight_pj"] == 0
    if "memory.weight_sram_kib" in over:
        assert not tot["weights_resident"] and tot["dram_weight_pj"] > 0
    if "memory.activation_sram_kib" in over:
        assert tot["activation_spill_layers"] > 0


def test_cli_cost_explains_dram_residency(tmp_path, capsys):
    from npusim.cli.app import main

    path = save_program(residual_program(), tmp_path / "tiny.safetensors")
    assert main(["cost", str(path), "--batch", "8", "--set", "memory.activation_sram_kib=0.01"]) == 0
    out = capsys.readouterr().out
    assert "DRAM per image: weights" in out and "activations" in out
    assert "stay resident" in out and "spill" in out and "rise with the batch" in out
