"""The cost model prices every layer at its own accumulator widths ([[layer]] tables)."""

import pytest

from npusim.cost import estimate_cost
from npusim.hw.config import NPUConfig
from tests.npusim.programs import stem_fc_program

WIDTH_COLUMNS = ["accumulator_pj", "requant_pj", "sram_pj", "acc_bits", "pe_acc_bits"]


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_each_layer_costs_what_it_costs_when_its_widths_are_the_body(dataflow):
    prog = stem_fc_program()
    base = NPUConfig.preset("edge16").with_overrides({"array.dataflow": dataflow})
    body12 = base.with_overrides({"precision.acc_bits": 12, "precision.pe_acc_bits": 12})
    body24 = base.with_overrides({"precision.acc_bits": 24, "precision.pe_acc_bits": 20})
    layered = body12.with_overrides({"layer[0].match": "stem",
                                     "layer[0].precision.acc_bits": 24,
                                     "layer[0].precision.pe_acc_bits": 20})
    got = estimate_cost(prog, layered).layers.set_index("layer")
    at12 = estimate_cost(prog, body12).layers.set_index("layer")
    at24 = estimate_cost(prog, body24).layers.set_index("layer")
    for col in WIDTH_COLUMNS:
        assert got.loc["stem", col] == pytest.approx(at24.loc["stem", col])
        assert got.loc["fc", col] == pytest.approx(at12.loc["fc", col])
    assert (got.loc["stem", "acc_bits"], got.loc["stem", "pe_acc_bits"]) == (24, 20)
    assert got.loc["stem", "accumulator_pj"] > at12.loc["stem", "accumulator_pj"]
    # the baselines do not depend on the NPU's widths
    base_rows = estimate_cost(prog, layered).baselines.set_index("variant")
    ref = estimate_cost(prog, body12).baselines.set_index("variant")
    for v in ("int8", "fp32"):
        assert base_rows.loc[v, "energy_per_image_pj"] == pytest.approx(
            ref.loc[v, "energy_per_image_pj"])
