"""The cost model reads concat / slice / channel_shuffle from the op table."""

import numpy as np

from npusim.cost.mapping import liveness, network_mapping, program_precision
from npusim.hw.config import NPUConfig
from npusim.ir.requant import RequantSpec
from tests.npusim.sim.test_concat_shuffle import _program


def test_views_cost_nothing_and_concat_requantizes_every_output_on_the_vector_unit():
    prog = _program(6, 2, 3, 0.05, 0, 0.03, 0, 0.04, 0, False, 2, ("b", "a"), RequantSpec())
    npu = NPUConfig.preset("edge16")
    rows = network_mapping(prog, npu).set_index("layer")
    for name in ("s1", "s2", "shuf"):
        assert rows.loc[name, "unit"] == "none" and rows.loc[name, "compute_cycles"] == 0
    cat = rows.loc["cat"]
    assert cat["unit"] == "vector" and cat["vector_ops"] == 6 * 3 * 3
    assert cat["requant_outputs"] == 6 * 3 * 3
    # a view shares its input's buffer: nothing new is live while it runs
    live = liveness(prog, program_precision(prog, npu, "npu"))
    assert live["s1"] == live["s2"] == np.prod(prog.tensors["x"].shape) * 8


def test_concat_is_charged_one_requantization_per_output():
    from npusim.cost.estimate import action_counts

    prog = _program(6, 2, 3, 0.05, 0, 0.03, 0, 0.04, 0, False, 2, ("b", "a"), RequantSpec())
    counts = action_counts(prog, NPUConfig.preset("edge16"))
    cat = counts[(counts["layer"] == "cat") & (counts["component"] == "requant")]
    assert set(cat["entry"]) == {"int_multiplier.multiply", "int_adder.add", "shifter.shift"}
    assert (cat["count"] == 6 * 3 * 3).all()
    assert counts[counts["layer"].isin(["s1", "s2", "shuf"])]["component"].isin(
        ["sram", "dram", "leakage"]).all()
