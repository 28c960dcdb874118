"""[[layer]] tables of an NPU config: TOML round trip, first match wins, --set syntax,
one-line refusals."""

import textwrap

import pytest

from npusim.hw.config import ConfigError, NPUConfig

TEXT = textwrap.dedent("""\
    name = "mine"
    [precision]
    acc_bits = 12
    pe_acc_bits = 12
    overflow = "wrap"
    [[layer]]
    match = "stem*"
    precision = { acc_bits = 24, pe_acc_bits = 24 }
    [[layer]]
    match = "*"
    precision = { overflow = "saturate", acc_bits = 16 }
    """)


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_toml_round_trip_keeps_the_tables_in_order(tmp_path):
    cfg = NPUConfig.from_toml_str(TEXT, source="mine.toml")
    assert [t.match for t in cfg.layer] == ["stem*", "*"]
    text = cfg.to_toml()
    assert text.count("[[layer]]") == 2
    back = NPUConfig.from_toml_str(text)
    assert back == cfg and back.config_hash() == cfg.config_hash()
    path = tmp_path / "n.toml"
    path.write_text(text)
    assert NPUConfig.load(path) == cfg


def test_the_first_matching_table_wins_and_overflow_sets_both_levels():
    cfg = NPUConfig.from_toml_str(TEXT).with_overrides({"precision.acc_overflow": "exact"})
    stem = cfg.precision_for("stem.conv")
    assert (stem.acc_bits, stem.pe_acc_bits, stem.acc_mode) == (24, 24, "exact")
    other = cfg.precision_for("layer1.0.conv1")  # the catch-all table
    assert (other.acc_bits, other.pe_acc_bits) == (16, 12)
    assert other.pe_mode == other.acc_mode == "saturate"  # the table's overflow: both levels
    assert NPUConfig.from_toml_str('name = "x"').precision_for("a") == NPUConfig(name="x").precision


def test_set_reaches_tables_by_index_and_appends_one():
    cfg = NPUConfig.from_toml_str(TEXT)
    new = cfg.with_overrides({"layer[0].precision.acc_bits": "20",
                              "layer[0].precision.pe_acc_bits": "20", "layer[2].match": "fc",
                              "layer[2].precision.overflow": "exact",
                              "precision.acc_bits": "10", "precision.pe_acc_bits": "10"})
    assert new.layer[0].precision.acc_bits == 20 and new.layer[2].match == "fc"
    assert new.precision.acc_bits == 10 and new.precision_for("stem").acc_bits == 20
    assert new.with_overrides({"layer[0].precision.pe_acc_bits": "none"}).precision_for(
        "stem").pe_acc_bits == 10


def test_a_table_obeys_pe_within_acc_and_inherits_same_as_acc():
    with pytest.raises(ConfigError) as e:  # the body's explicit pe 12 is wider than 10
        NPUConfig.from_toml_str(TEXT).with_overrides({"layer[1].precision.acc_bits": "10"})
    assert "layer[1] ('*'): precision.pe_acc_bits = 12 is wider than" in one_line(e)
    cfg = NPUConfig.from_toml_str('name = "x"\n[precision]\nacc_bits = 32\n'
                                  '[[layer]]\nmatch = "body*"\nprecision = { acc_bits = 14 }')
    assert cfg.precision_for("body.conv").pe_acc_bits == 14  # "the same as acc_bits"
    assert cfg.precision_for("stem").pe_acc_bits == 32


@pytest.mark.parametrize("over, want", [
    ({"layer[3].match": "a"}, "layer[3].match: there are 2 [[layer]] tables (layer[2] adds one)"),
    ({"layer[0].precision.acc": "3"}, "did you mean 'layer[0].precision.acc_bits'?"),
    ({"layer[0].bits": "3"}, "layer[0].bits: unknown key"),
    ({"layer[0].precision.acc_bits": "99"}, "layer[0].precision.acc_bits: Input should be less"),
    ({"layer[0].precision.overflow": "clip"}, "layer[0].precision.overflow: Input should be"),
    ({"layer[2].precision.acc_bits": "9"}, "layer[2].match: missing key"),
    ({"layer.stem.acc_bits": "9"}, "a [[layer]] table is set by index: layer[N].match=GLOB"),
    ({"layer[x].match": "a"}, "a [[layer]] table is set by index"),
])
def test_bad_overrides_are_one_line(over, want):
    with pytest.raises(ConfigError) as e:
        NPUConfig.from_toml_str(TEXT).with_overrides(over)
    assert want in one_line(e)


@pytest.mark.parametrize("table, want", [
    ('match = "a"\nprecision = { acc_bit = 20 }',
     "f.toml: layer[0].precision.acc_bit: unknown key (did you mean 'layer[0].precision.acc_bits'?)"),
    ('match = "a"\nprecison = { acc_bits = 20 }', "f.toml: layer[0].precison: unknown key"),
    ('precision = { acc_bits = 20 }', "f.toml: layer[0].match: missing key"),
    ('match = ""', "f.toml: layer[0].match: String should have at least 1 character"),
    ('match = "a"\nprecision = { acc_bits = "20" }', "f.toml: layer[0].precision.acc_bits:"),
    ('match = "a"\nprecision = { acc_bits = 1 }', "greater than or equal to 2"),
])
def test_bad_tables_in_a_file_are_one_line(table, want):
    with pytest.raises(ConfigError) as e:
        NPUConfig.from_toml_str(f'name = "x"\n[[layer]]\n{table}\n', source="f.toml")
    assert want in one_line(e)


def test_a_pattern_that_matches_no_node_is_refused():
    cfg = NPUConfig.from_toml_str(TEXT).with_overrides({"layer[1].match": "clf*"})
    cfg.check_layers(["stem", "clf"])
    with pytest.raises(ConfigError) as e:
        cfg.check_layers(["stem", "fc"], source="mine.toml")
    assert one_line(e) == ("mine.toml: layer[1].match 'clf*' matches no node of the program "
                           "(nodes: stem, fc)")


def test_a_sweep_axis_varies_the_body_or_a_table():
    from npusim.sweep.grid import Grid

    base = NPUConfig.from_toml_str(TEXT)
    grid = Grid.parse([], ["precision.pe_acc_bits,precision.acc_bits=8:10",
                           "layer[0].precision.pe_acc_bits,layer[0].precision.acc_bits=20,24"],
                      npu=base)
    points = grid.points()
    assert len(points) == 6
    for p in points:
        assert p.npu.layer[1] == base.layer[1]  # the catch-all table keeps its widths
    assert {(p.npu.precision.acc_bits, p.npu.precision_for("stem").acc_bits) for p in points} == {
        (b, t) for b in (8, 9, 10) for t in (20, 24)}
    assert points[0].label().endswith("pe_acc_bits,acc_bits=8 layer[0].pe_acc_bits,layer[0].acc_bits=20")
