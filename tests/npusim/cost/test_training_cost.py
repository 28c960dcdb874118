"""Training cost model (npusim.cost.training): constant histories equal the fixed baselines,
float32 is the reference, narrower words are cheaper, and the accounting is checked."""

import pandas as pd
import pytest

from npusim.cost.training import (
    TrainingCostModel,
    compare_training,
    constant_usage,
    training_cost,
    usage_from_history,
)
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
