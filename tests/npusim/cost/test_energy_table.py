"""The energy table: shipped numbers, bit-width fits, SRAM interpolation, scaling, validation
of bad tables and overrides (one line naming the file and key path)."""

import math
import subprocess
import sys
from importlib import resources

import pytest

from npusim.cost.energy_table import (
    ENTRY_SPECS,
    EnergyTableError,
    list_energy_tables,
    load_energy_table,
    table_for_npu,
)
from npusim.hw.config import NPUConfig


@pytest.fixture(scope="module")
def table():
    return load_energy_table("horowitz45")


def shipped_text() -> str:
    return resources.files("npusim").joinpath("energy/horowitz45.toml").read_text("utf-8")


def test_shipped_table_header(table):
    assert list_energy_tables() == ["horowitz45"]
    assert (table.name, table.version, table.data.node_nm) == ("horowitz45", "1.0.0", 45.0)
    assert table.data.description
    assert set(table.keys()) == set(ENTRY_SPECS)


def test_horowitz_points_reproduced(table):
    # QTools fits reproduce Horowitz: 8-bit mult 0.2 pJ, 32-bit mult 3.1 pJ, 32-bit add 0.1 pJ
    assert table.energy("int_mul", bw=8, ba=8) == pytest.approx(0.2, abs=1e-5)
    assert table.energy("int_multiplier.multiply", bw=32, ba=32) == pytest.approx(3.1, abs=1e-4)
    assert table.energy("int_add", 32) == pytest.approx(0.1)
    assert table.energy("int_add", bits=8) == pytest.approx(0.025)
    assert table.energy("fp32_add") == 0.9 and table.energy("fp32_mul") == 3.7
    assert table.energy("dram.access") == 20.3125  # 1.3 nJ / 64 bits
    assert table.energy("register.write") == 0.009


def test_multiply_uses_geometric_mean_width(table):
    # b = sqrt(bw * ba): a 2 x 8 multiply costs like 4 x 4
    assert table.energy("int_mul", bw=2, ba=8) == pytest.approx(table.energy("int_mul", bw=4, ba=4))


@pytest.mark.parametrize("b", [4, 8, 16, 32])
def test_halving_both_operands_cuts_multiply_about_4x(table, b):
    ratio = table.energy("int_mul", bw=b, ba=b) / table.energy("int_mul", bw=b // 2, ba=b // 2)
    assert 3.5 <= ratio <= 4.5


def test_adder_is_linear(table):
    assert table.energy("int_add", 32) / table.energy("int_add", 16) == pytest.approx(2.0)


def test_sram_loglog_interpolation(table):
    # exactly the points: 10 / 20 / 100 pJ per 64 bits
    assert table.sram_pj_per_bit(8) == pytest.approx(0.156)
    assert table.sram_pj_per_bit(32) == pytest.approx(0.3125)
    assert table.sram_pj_per_bit(1024) == pytest.approx(1.56)
    # between points: a straight line in log-log, so the geometric midpoint -> geometric mean
    assert table.sram_pj_per_bit(16) == pytest.approx(math.sqrt(0.156 * 0.3125))
    # beyond the ends: the end segments' slopes
    slope_lo = math.log(0.3125 / 0.156) / math.log(4)
    assert table.sram_pj_per_bit(2) == pytest.approx(0.156 * (2 / 8) ** slope_lo)
    slope_hi = math.log(1.56 / 0.3125) / math.log(32)
    assert table.sram_pj_per_bit(4096) == pytest.approx(1.56 * 4 ** slope_hi)
    sizes = [1, 4, 8, 20, 64, 256, 1024, 8192]
    values = [table.sram_pj_per_bit(s) for s in sizes]
    assert values == sorted(values)


def test_sources_cover_every_entry(table):
    src = table.sources()
    assert set(ENTRY_SPECS) <= set(src["entry"])
    assert (src["source"].str.len() > 10).all()
    assert {"entry", "value", "unit", "source"} <= set(src.columns)
    # leakage figures have no Horowitz source and say so
    leak = src[src["entry"].str.startswith("leakage.")]
    assert leak["source"].str.startswith("assumption").all()


def test_node_scaling_refuses_unknown_node_then_uses_a_supplied_factor(table):
    with pytest.raises(EnergyTableError, match="28 nm") as exc:
        table.for_technology(28, 0.9)
    assert "node_scaling.28" in str(exc.value) and "\n" not in str(exc.value)
    t28 = load_energy_table("horowitz45", {"node_scaling.28": 0.5}).for_technology(28, 0.9)
    assert t28.energy("int_add", 32) == pytest.approx(0.05)
    assert t28.energy("dram.access") == 20.3125  # off-chip: not node-scaled
    assert t28.energy("leakage.pe") == pytest.approx(0.0025)


def test_supply_voltage_scaling(table):
    half = table.for_technology(45, 0.45)
    assert half.energy("int_add", 32) == pytest.approx(0.1 * 0.25)  # CV^2
    assert half.energy("leakage.sram") == pytest.approx(0.005 * 0.5)  # V * I_leak
    assert half.energy("dram.access") == 20.3125


def test_overrides_apply_and_record_themselves():
    t = load_energy_table("horowitz45", {"dram.access": 8.0, "int_multiplier.multiply.c2": 0.004,
                                         "sram.access.32": 0.25, "int_adder.add": 0.005})
    assert t.energy("dram.access") == 8.0
    assert t.energy("int_add", 10) == pytest.approx(0.05)
    assert t.energy("int_mul", bw=4, ba=4) == pytest.approx(0.004 * 16 + 0.0010417 * 4)
    assert t.sram_pj_per_bit(32) == 0.25
    assert t.overrides == {"dram.access": 8.0, "int_multiplier.multiply.c2": 0.004,
                           "sram.access.32": 0.25, "int_adder.add": 0.005}
    assert "dram.access=8" in t.label and t.label.startswith("horowitz45@1.0.0+overrides(")
    src = t.sources().set_index("entry")["source"]
    assert src["dram.access"].startswith("override dram.access=8 (table: 20.3125)")
    assert src["int_multiplier.multiply"].startswith("override int_multiplier.multiply.c2=0.004")
    assert not src["fp32_adder.add"].startswith("override")


def test_npu_config_overrides_reach_the_table():
    cfg = NPUConfig.preset("edge16").with_overrides(
        {"technology.energy_overrides.dram.access": "4.5"})
    t = table_for_npu(cfg)
    assert t.energy("dram") == 4.5 and t.overrides == {"dram.access": 4.5}


@pytest.mark.parametrize("overrides, fragment", [
    ({"dram.acess": 1.0}, "unknown key 'dram.acess' (did you mean 'dram.access'?)"),
    ({"bogus": 1.0}, "unknown key 'bogus'"),
    ({"dram.access": -1.0}, "entries.dram.access.value: Input should be greater than or equal"),
    ({"dram.access": "x"}, "dram.access: expected a number"),
    ({"int_multiplier.multiply": 0.2}, "quadratic fit; override one coefficient"),
    ({"int_multiplier.multiply.c3": 0.2}, "unknown key 'int_multiplier.multiply.c3'"),
    ({"sram.access": 0.2}, "loglog fit; override one point"),
    ({"sram.access.16": 0.2}, "unknown key 'sram.access.16'"),
    ({"node_scaling.abc": 0.5}, "is not a number"),
])
def test_bad_overrides_fail_in_one_line(overrides, fragment):
    with pytest.raises(EnergyTableError) as exc:
        load_energy_table("horowitz45", overrides)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg
    assert msg.startswith("energy/horowitz45.toml")


def _bad(tmp_path, old, new):
    text = shipped_text()
    assert old in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(EnergyTableError) as exc:
        load_energy_table(str(path))
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_bad_table_unknown_key(tmp_path):
    msg = _bad(tmp_path, 'value = 20.3125', 'value = 20.3125\nvalu = 1.0')
    assert "entries.dram.access.valu: unknown key (did you mean 'value'?)" in msg


def test_bad_table_unknown_entry(tmp_path):
    msg = _bad(tmp_path, "[entries.sram.access]", "[entries.sram.acess]")
    assert "entries.sram.acess: unknown entry 'sram.acess' (did you mean 'sram.access'?)" in msg


def test_bad_table_negative_energy(tmp_path):
    msg = _bad(tmp_path, "value = 0.9", "value = -0.9")
    assert "entries.fp32_adder.add.value: Input should be greater than or equal to 0" in msg


def test_bad_table_missing_unit(tmp_path):
    msg = _bad(tmp_path, 'unit = "pJ/op"\nmodel = "constant"\nvalue = 3.7',
               'model = "constant"\nvalue = 3.7')
    assert "entries.fp32_multiplier.multiply.unit: missing key" in msg


def test_bad_table_missing_source(tmp_path):
    msg = _bad(tmp_path, 'source = "Horowitz ISSCC 2014, 45 nm: fp32 add 0.9 pJ"\n', "")
    assert "entries.fp32_adder.add.source: missing key" in msg


def test_bad_table_wrong_unit_extra_param_syntax_and_header(tmp_path):
    assert "expected 'pJ/bit' for this entry (got 'nJ')" in _bad(
        tmp_path, 'unit = "pJ/bit"\nmodel = "constant"\nvalue = 20.3125',
        'unit = "nJ"\nmodel = "constant"\nvalue = 20.3125')
    assert "'value' is not used by a quadratic model" in _bad(
        tmp_path, "c2 = 0.0029948", "c2 = 0.0029948\nvalue = 1.0")
    assert "TOML syntax error" in _bad(tmp_path, 'name = "horowitz45"', 'name = ')
    assert "version: missing key" in _bad(tmp_path, 'version = "1.0.0"\n', "")


def test_missing_entry_is_named(tmp_path):
    text = shipped_text()
    start = text.index("[entries.leakage.sram]")
    path = tmp_path / "partial.toml"
    path.write_text(text[:start])
    with pytest.raises(EnergyTableError, match=r"entries\.leakage\.sram: missing entry"):
        load_energy_table(path)


def test_missing_file_lists_shipped_tables(tmp_path):
    with pytest.raises(EnergyTableError, match="no such file.*horowitz45"):
        load_energy_table(str(tmp_path / "none.toml"))


def test_user_table_by_path_round_trips(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(shipped_text().replace('name = "horowitz45"', 'name = "mine"')
                    .replace('version = "1.0.0"', 'version = "2.1"'))
    t = load_energy_table(str(path))
    assert (t.name, t.version, t.path) == ("mine", "2.1", str(path))
    assert t.energy("int_mul", bw=8, ba=8) == pytest.approx(0.2, abs=1e-5)


@pytest.mark.slow
def test_import_cost_is_torch_and_numba_free():
    code = ("import sys, npusim.cost; "
            "bad = [m for m in ('torch', 'numba') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
