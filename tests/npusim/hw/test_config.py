"""NPUConfig: presets, TOML round trip, overrides, one-line errors naming file and key path."""

import math
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npusim.hw.config import ConfigError, NPUConfig, list_presets, parse_set_option

PRESETS = ["edge16", "mid32", "tpu128"]


def write(tmp_path, text, name="edge.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ------------------------------------------------------------------------ presets

def test_list_presets():
    assert list_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_validates(name):
    cfg = NPUConfig.preset(name)
    assert cfg.name == name and cfg.description
    assert NPUConfig.load(name) == cfg
    # Every preset keeps both accumulator levels at 32 bits and exact; users narrow them.
    assert cfg.precision.pe_acc_bits == cfg.precision.acc_bits == 32
    assert cfg.precision.pe_mode == cfg.precision.acc_mode == "exact"
    assert cfg.array.max_weight_bits == cfg.array.max_input_bits == 8
    assert cfg.technology.energy_table == "horowitz45"


def test_preset_values():
    edge, mid, tpu = (NPUConfig.preset(n) for n in PRESETS)
    assert (edge.array.rows, edge.array.cols, edge.array.dataflow) == (16, 16, "os")
    # [requant] pins only what the hardware fixes: Gemmini's round-to-nearest-even
    assert edge.requant.pinned() == tpu.requant.pinned() == {}
    assert mid.requant.pinned() == {"rounding": "half_even"}
    assert edge.array.clock_mhz == 500.0 and edge.memory.dram_bandwidth_bytes_per_cycle == 8.0
    assert (mid.array.rows, mid.array.dataflow, mid.array.clock_mhz) == (32, "ws", 800.0)
    assert (mid.memory.weight_sram_kib, mid.memory.accumulator_sram_kib) == (256.0, 64.0)
    assert mid.memory.dram_bandwidth_bytes_per_cycle == 16.0
    assert (tpu.array.rows, tpu.array.cols, tpu.array.dataflow) == (128, 128, "ws")
    assert tpu.array.clock_mhz == 700.0
    assert (tpu.memory.weight_sram_kib, tpu.memory.activation_sram_kib,
            tpu.memory.accumulator_sram_kib) == (4096.0, 24576.0, 4096.0)
    assert tpu.memory.dram_bandwidth_bytes_per_cycle == 32.0


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as ei:
        NPUConfig.preset("edge99")
    msg = one_line(ei)
    assert "edge99" in msg and all(p in msg for p in PRESETS)
    with pytest.raises(ConfigError) as ei:
        NPUConfig.load("edge99")
    assert all(p in one_line(ei) for p in PRESETS)


def test_load_path(tmp_path):
    path = write(tmp_path, 'name = "mine"\n[array]\nrows = 4\n')
    cfg = NPUConfig.load(str(path))
    assert cfg.name == "mine" and cfg.array.rows == 4
    assert NPUConfig.load(path) == cfg
    # Sections and keys left out take their defaults.
    assert cfg.array.cols == 16 and cfg.precision.acc_bits == 32


# --------------------------------------------------------------------- round trip

@pytest.mark.parametrize("name", PRESETS)
def test_toml_round_trip_presets(name, tmp_path):
    cfg = NPUConfig.preset(name)
    path = tmp_path / "out.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    back = NPUConfig.from_toml(path)
    assert back == cfg and back.config_hash() == cfg.config_hash()


def test_toml_round_trip_optional_and_dict_fields(tmp_path):
    cfg = NPUConfig.preset("mid32").with_overrides({
        "precision.pe_overflow": "wrap", "precision.acc_overflow": "saturate",
        "technology.energy_overrides.multiplier.int8": 0.25,
        "technology.energy_overrides.sram read": 12,
        "description": 'quotes " and \\ and \ttab and ünïcode',
    })
    path = tmp_path / "out.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert NPUConfig.from_toml(path) == cfg


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    description=st.text(max_size=30),
    overrides=st.dictionaries(st.text(min_size=1, max_size=12),
                              st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    clock=st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False),
)
def test_toml_round_trip_any_strings_and_floats(description, overrides, clock):
    cfg = NPUConfig(name="x", description=description).with_overrides(
        {"array.clock_mhz": clock, "technology.energy_overrides": overrides})
    assert NPUConfig.from_toml_str(cfg.to_toml()) == cfg


# ---------------------------------------------------------------------- overrides

def test_with_overrides_returns_new_config_and_keeps_original():
    base = NPUConfig.preset("edge16")
    new = base.with_overrides({"precision.acc_bits": 16, "array.dataflow": "ws"})
    assert new.precision.acc_bits == 16 and new.array.dataflow == "ws"
    assert base.precision.acc_bits == 32 and base.array.dataflow == "os"
    assert new != base and new.name == base.name
    assert base.with_overrides({}) == base


def test_with_overrides_coerces_cli_strings():
    base = NPUConfig.preset("edge16")
    new = base.with_overrides(parse_set_option([
        "precision.acc_bits=16", "array.dataflow=ws", "array.clock_mhz=1e3",
        "precision.pe_overflow=wrap", "memory.weight_sram_kib=32",
        "technology.energy_overrides.mult.int8=0.5"]))
    assert new.precision.acc_bits == 16 and isinstance(new.precision.acc_bits, int)
    assert new.array.dataflow == "ws" and new.array.clock_mhz == 1000.0
    assert new.memory.weight_sram_kib == 32.0
    assert new.precision.pe_mode == "wrap"
    assert new.technology.energy_overrides == {"mult.int8": 0.5}
    # "none" clears an optional per-level override again.
    assert new.with_overrides({"precision.pe_overflow": "none"}).precision.pe_overflow is None


@pytest.mark.parametrize("key, fragment", [
    ("precision.acc_bitz", "precision.acc_bitz"),
    ("precison.acc_bits", "precison"),
    ("bogus", "bogus"),
    ("precision.acc_bits.deeper", "precision.acc_bits.deeper"),
    ("precision", "precision"),
    ("", "unknown key"),
])
def test_with_overrides_rejects_unknown_paths(key, fragment):
    with pytest.raises(ConfigError) as ei:
        NPUConfig.preset("edge16").with_overrides({key: 1})
    msg = one_line(ei)
    assert fragment in msg


def test_with_overrides_suggests_close_key():
    with pytest.raises(ConfigError, match=r"did you mean 'precision.acc_bits'"):
        NPUConfig.preset("edge16").with_overrides({"precision.acc_bitz": 1})


@pytest.mark.parametrize("key, value, fragment", [
    ("precision.acc_bits", "99", "less than or equal to 62"),
    ("precision.acc_bits", "sixteen", "valid integer"),
    ("array.dataflow", "xs", "'os', 'ws' or 'is'"),
    ("array.clock_mhz", "-1", "greater than or equal to 0.001"),
    ("array.clock_mhz", "inf", "finite"),
    ("precision.overflow", "none", "'exact', 'wrap' or 'saturate'"),  # not optional
])
def test_with_overrides_rejects_bad_values(key, value, fragment):
    with pytest.raises(ConfigError) as ei:
        NPUConfig.preset("edge16").with_overrides({key: value})
    msg = one_line(ei)
    assert msg.startswith(f"overrides: {key}: ") and fragment in msg


def test_configs_are_frozen():
    cfg = NPUConfig.preset("edge16")
    with pytest.raises(Exception):
        cfg.precision.acc_bits = 16  # type: ignore[misc]
    assert hash(cfg) == hash(NPUConfig.preset("edge16"))


# ------------------------------------------------------------------ file errors

@pytest.mark.parametrize("body, path, fragment", [
    ('name = "x"\ncolour = 1\n', "colour", "unknown key"),
    ('name = "x"\n[array]\ncolz = 16\n', "array.colz", "unknown key (did you mean 'array.cols'?)"),
    ('name = "x"\n[techno]\nnode_nm = 7.0\n', "techno", "unknown key"),
    ('name = "x"\n[array]\nrows = "16"\n', "array.rows", "valid integer (got '16')"),
    ('name = "x"\n[array]\nrows = 16.0\n', "array.rows", "valid integer"),
    ('name = "x"\n[array]\nrows = true\n', "array.rows", "valid integer"),
    ('name = "x"\narray = 5\n', "array", "expected a table"),
    ('name = 5\n', "name", "valid string"),
    ('name = "x"\n[precision]\nacc_bits = 99\n', "precision.acc_bits",
     "Input should be less than or equal to 62 (got 99)"),
    ('name = "x"\n[precision]\npe_acc_bits = 1\n', "precision.pe_acc_bits",
     "greater than or equal to 2"),
    ('name = "x"\n[requant]\nmultiplier_bits = 33\n', "requant.multiplier_bits", "32"),
    ('name = "x"\n[memory]\nweight_sram_kib = 0\n', "memory.weight_sram_kib", "greater than or equal to"),
    ('name = "x"\n[memory]\nweight_sram_kib = nan\n', "memory.weight_sram_kib", "finite"),
    ('name = "x"\n[array]\ndataflow = "rs"\n', "array.dataflow", "'os', 'ws' or 'is' (got 'rs')"),
    ('name = "x"\n[precision]\noverflow = "clip"\n', "precision.overflow", "got 'clip'"),
    ('name = "x"\n[requant]\nrounding = "half_down"\n', "requant.rounding", "half_even"),
    ('name = "x"\n[memory]\nweight_storage = "pad2"\n', "memory.weight_storage", "packed"),
    ('name = "x"\n[technology]\nenergy_overrides = { "mac.add" = "big" }\n',
     'technology.energy_overrides."mac.add"', "valid number"),
    ('description = "no name"\n', "name", "missing key"),
])
def test_from_toml_errors_name_file_and_key_path(tmp_path, body, path, fragment):
    file = write(tmp_path, body)
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(file)
    msg = one_line(ei)
    assert msg.startswith(f"{file}: {path}: "), msg
    assert fragment in msg


def test_from_toml_relative_path_named_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'name = "x"\n[precision]\nacc_bits = 99\n')
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml("edge.toml")
    assert one_line(ei) == ("edge.toml: precision.acc_bits: Input should be less than or equal"
                            " to 62 (got 99)")


def test_from_toml_syntax_error_names_file_and_line(tmp_path):
    file = write(tmp_path, 'name = "x"\n[array]\nrows = = 3\ncols = 4\n')
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(file)
    msg = one_line(ei)
    assert msg.startswith(f"{file}: ") and "line 3" in msg


def test_from_toml_duplicate_key_is_an_error(tmp_path):
    file = write(tmp_path, 'name = "x"\n[array]\nrows = 3\nrows = 4\n')
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(file)
    assert one_line(ei).startswith(f"{file}: TOML syntax error")


def test_from_toml_missing_file_lists_presets(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(missing)
    msg = one_line(ei)
    assert str(missing) in msg and all(p in msg for p in PRESETS)
    with pytest.raises(ConfigError):
        NPUConfig.load(str(missing))
    with pytest.raises(ConfigError, match="directory"):
        NPUConfig.from_toml(tmp_path)


def test_many_errors_still_one_line(tmp_path):
    file = write(tmp_path, 'name = "x"\n[array]\nrows = 0\ncols = 0\ndataflow = "q"\n')
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(file)
    msg = one_line(ei)
    assert "array.rows" in msg and "+2 more" in msg


# ------------------------------------------------------------ cross-field rules

def test_product_must_fit_64_bits():
    # Without a pinned multiplier width the NPU cannot know the product (the simulator checks
    # each node's against the program's width when it plans it).
    assert NPUConfig(name="x").with_overrides({"precision.acc_bits": 62}).precision.acc_bits == 62
    ok = NPUConfig(name="x").with_overrides({"precision.acc_bits": 32,
                                             "requant.multiplier_bits": 32})
    assert ok.precision.acc_bits + ok.requant.multiplier_bits == 64
    with pytest.raises(ConfigError) as ei:
        ok.with_overrides({"precision.acc_bits": 33})
    msg = one_line(ei)
    assert "precision.acc_bits" in msg and "requant.multiplier_bits" in msg
    assert "64-bit register" in msg and "65" in msg
    # Only the fixed-point multiplier makes that product.
    for mode in ("pow2", "float"):
        wide = ok.with_overrides({"requant.scale_mode": mode, "precision.acc_bits": 62})
        assert wide.precision.acc_bits == 62
    narrow = ok.with_overrides({"precision.acc_bits": 48, "requant.multiplier_bits": 16})
    assert narrow.precision.acc_bits == 48


def test_product_rule_in_file(tmp_path):
    file = write(tmp_path, 'name = "x"\n[precision]\nacc_bits = 40\n[requant]\n'
                 'multiplier_bits = 32\n')
    with pytest.raises(ConfigError) as ei:
        NPUConfig.from_toml(file)
    msg = one_line(ei)
    assert msg.startswith(f"{file}: precision.acc_bits + requant.multiplier_bits")


@pytest.mark.parametrize("overflow, pe, acc, want_pe, want_acc", [
    ("exact", None, None, "exact", "exact"),
    ("wrap", None, None, "wrap", "wrap"),
    ("exact", "wrap", None, "wrap", "exact"),
    ("exact", None, "saturate", "exact", "saturate"),
    ("saturate", "wrap", "exact", "wrap", "exact"),
])
def test_per_level_overflow_resolution(overflow, pe, acc, want_pe, want_acc):
    cfg = NPUConfig(name="x").with_overrides({
        "precision.overflow": overflow, "precision.pe_overflow": pe,
        "precision.acc_overflow": acc})
    assert (cfg.precision.pe_mode, cfg.precision.acc_mode) == (want_pe, want_acc)


# ------------------------------------------------------------------------ hashing

def test_config_hash_stable_and_sensitive(tmp_path):
    a = NPUConfig.preset("edge16")
    b = NPUConfig.preset("edge16")
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16 and int(a.config_hash(), 16) >= 0
    path = tmp_path / "copy.toml"
    path.write_text(a.to_toml(), encoding="utf-8")
    assert NPUConfig.from_toml(path).config_hash() == a.config_hash()
    # The same change reached two ways hashes the same; any change hashes differently.
    assert (a.with_overrides({"precision.acc_bits": "16"}).config_hash()
            == b.with_overrides({"precision.acc_bits": 16}).config_hash())
    hashes = {a.config_hash()}
    for key, value in [("precision.acc_bits", 31), ("array.dataflow", "ws"),
                       ("memory.weight_sram_kib", 65.0), ("technology.energy_overrides.x.y", 1.0),
                       ("precision.pe_overflow", "exact"), ("name", "other")]:
        hashes.add(a.with_overrides({key: value}).config_hash())
    assert len(hashes) == 7


# ------------------------------------------------------------------ --set parsing

def test_parse_set_option():
    assert parse_set_option([]) == {}
    assert parse_set_option(["precision.acc_bits=16", " array.dataflow = ws ",
                             "description=a=b", "technology.energy_table="]) == {
        "precision.acc_bits": "16", "array.dataflow": "ws", "description": "a=b",
        "technology.energy_table": ""}


@pytest.mark.parametrize("item", ["precision.acc_bits", "=16", "a..b=1", ".a=1", "a b=1"])
def test_parse_set_option_malformed(item):
    with pytest.raises(ConfigError) as ei:
        parse_set_option([item])
    assert repr(item) in one_line(ei)


def test_parse_set_option_duplicate_key():
    with pytest.raises(ConfigError, match="more than once"):
        parse_set_option(["precision.acc_bits=16", "precision.acc_bits=8"])


# ------------------------------------------------------------------------ imports

@pytest.mark.slow
def test_import_config_does_not_import_torch_or_numba():
    code = ("import sys, npusim.hw.config; "
            "bad = [m for m in ('torch', 'numba') if m in sys.modules]; "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_defaults_are_the_documented_ones():
    cfg = NPUConfig(name="x")
    assert (cfg.array.rows, cfg.array.cols, cfg.array.dataflow) == (16, 16, "os")
    assert cfg.requant.pinned() == {}  # every requant key is the program's
    assert cfg.memory.weight_storage == "packed" and cfg.memory.sram_word_bits == 64
    assert math.isclose(cfg.technology.supply_v, 0.9)
    assert cfg.technology.energy_overrides == {}
