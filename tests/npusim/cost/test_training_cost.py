"""Training cost model (npusim.cost.training): constant histories equal the fixed baselines,
float32 is the reference, narrower words are cheaper, and the accounting is checked."""

import pandas as pd
import pytest

from npusim.cost.training import (
    USAGE_COLUMNS,
    TrainingCostModel,
    compare_training,
    constant_usage,
    mac_bit_costs,
    training_cost,
    usage_from_history,
)
from npusim.errors import UserError
from npusim.hw.config import NPUConfig

GEOM = pd.DataFrame({"layer": ["conv1", "conv2", "fc"], "M": [64, 16, 1], "K": [9, 72, 128],
                     "N": [8, 8, 10], "groups": [1, 1, 1], "weights": [72, 576, 1280],
                     "input_grad": [False, True, True]})
BATCHES = [32] * 7 + [10]
NPU = NPUConfig.preset("edge16")


def history(bits_by_iteration: dict[int, int]) -> pd.DataFrame:
    rows = [{"iteration": it, "layer": layer, "word_length_bits": wl}
            for it, wl in bits_by_iteration.items() for layer in GEOM["layer"]]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("bits", [8, 16])
def test_constant_history_costs_exactly_the_fixed_baseline(bits):
    usage = usage_from_history(history({0: bits, 3: bits, 5: bits}), BATCHES)
    cmp = compare_training(GEOM, usage, NPU).set_index("variant")
    for col in ("energy_pj", "cycles", "time_us", "macs"):
        assert cmp.loc["run", col] == cmp.loc[f"fixed{bits}", col]
    assert cmp.loc["float32", "speedup_vs_fp32"] == 1.0
    assert cmp.loc["float32", "energy_ratio_vs_fp32"] == 1.0


def test_switching_history_is_the_sum_of_its_segments():
    h = history({0: 8, 4: 16})
    usage = usage_from_history(h, BATCHES)
    assert usage.groupby("layer")["batches"].sum().tolist() == [8, 8, 8]
    total = training_cost(GEOM, usage, NPU)["energy_pj"].sum()
    first = training_cost(GEOM, constant_usage(GEOM, BATCHES[:4], 8), NPU)["energy_pj"].sum()
    rest = training_cost(GEOM, constant_usage(GEOM, BATCHES[4:], 16), NPU)["energy_pj"].sum()
    assert total == pytest.approx(first + rest, rel=1e-12)


def test_narrower_words_are_cheaper_and_faster_than_float32():
    usage = constant_usage(GEOM, BATCHES, 4)
    cmp = compare_training(GEOM, usage, NPU).set_index("variant")
    e = cmp["energy_ratio_vs_fp32"]
    assert e["run"] < e["fixed8"] < e["fixed16"] < 1.0
    s = cmp["speedup_vs_fp32"]
    assert s["run"] >= s["fixed8"] >= s["fixed16"] > 1.0
    one = compare_training(GEOM, usage, NPU, model=TrainingCostModel(throughput="one_mac"))
    assert (one["speedup_vs_fp32"] == 1.0).all()
    assert one["energy_pj"].tolist() == cmp["energy_pj"].tolist()  # time model only


def test_macs_are_forward_plus_two_backward_products():
    cost = training_cost(GEOM, constant_usage(GEOM, [32], 8), NPU)
    fwd = (GEOM["M"] * GEOM["K"] * GEOM["N"] * 32).sum()
    per_phase = cost.groupby("phase")["macs"].sum()
    assert per_phase["forward"] == fwd
    assert per_phase["grad_weight"] == fwd
    assert per_phase["grad_input"] == fwd - 64 * 9 * 8 * 32  # no input gradient for conv1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="missing column"):
        training_cost(GEOM.drop(columns=["K"]), constant_usage(GEOM, [1], 8), NPU)
    bad = constant_usage(GEOM, [1], 8).assign(layer="nope")
    with pytest.raises(ValueError, match="nope"):
        training_cost(GEOM, bad, NPU)
    with pytest.raises(ValueError, match="iteration 0"):
        usage_from_history(history({2: 8}), BATCHES)


def test_mac_bit_costs_on_a_hand_computed_case():
    """Layer a (first: no input gradient) at w8 a4 g16, layer b in float32; one batch of 2."""
    geom = pd.DataFrame({"layer": ["a", "b"], "M": [4, 1], "K": [3, 8], "N": [2, 5],
                         "groups": [1, 1], "weights": [6, 40], "input_grad": [False, True]})
    usage = pd.DataFrame([("a", 8, 4, 16, False, False, False, 2, 1),
                          ("b", 32, 32, 32, True, True, True, 2, 1)], columns=USAGE_COLUMNS)
    c = mac_bit_costs(geom, usage)
    # a: 2*4*3*2 = 48 MACs in forward (4x8) and grad-weight (16x4); b: 2*8*5 = 80 in three GEMMs
    assert c["macs"] == 48 * 2 + 80 * 3
    assert c["weight_bits_per_mac"] == pytest.approx((48 * 8 + 160 * 32) / 208)
    assert c["act_bits_per_mac"] == pytest.approx((96 * 4 + 160 * 32) / 256)
    assert c["grad_bits_per_mac"] == pytest.approx((48 * 16 + 160 * 32) / 208)
    assert c["quadratic_cost_rel_fp32"] == pytest.approx(
        (48 * 4 * 8 + 48 * 16 * 4 + 240 * 1024) / (336 * 1024))
    assert c["linear_cost_rel_fp32"] == pytest.approx((48 * 8 + 48 * 16 + 240 * 32) / (336 * 32))


@pytest.mark.parametrize("bits", [4, 6, 8, 16])
def test_mac_bit_costs_of_a_fixed_word_are_the_bit_ratios(bits):
    c = mac_bit_costs(GEOM, constant_usage(GEOM, BATCHES, bits))
    assert c["weight_bits_per_mac"] == c["act_bits_per_mac"] == c["grad_bits_per_mac"] == bits
    assert c["quadratic_cost_rel_fp32"] == pytest.approx((bits / 32) ** 2)
    assert c["linear_cost_rel_fp32"] == pytest.approx(bits / 32)
    f = mac_bit_costs(GEOM, constant_usage(GEOM, BATCHES, None))
    assert f["quadratic_cost_rel_fp32"] == f["linear_cost_rel_fp32"] == 1.0


def test_mac_bit_costs_refuses_unknown_layers():
    usage = constant_usage(GEOM, BATCHES, 8).assign(layer="nope")
    with pytest.raises(UserError, match="nope"):
        mac_bit_costs(GEOM, usage)
