"""QuantConfig: JSON round trip and one-line rejections naming the field."""

import pytest

from quantize import QuantConfig, QuantConfigError
from quantize.config import LayerOverride


def test_json_round_trip():
    cfg = QuantConfig(method="lglsq", weight_bits=3, act_bits=3, options={"k": 4.0},
                      overrides=(LayerOverride(pattern="layer3.*", weight_bits=2),))
    back = QuantConfig.from_json(cfg.to_json())
    assert back == cfg and back.overrides[0].weight_bits == 2


@pytest.mark.parametrize("bad, field", [
    ({"weight_bits": 1}, "weight_bits"),
    ({"act_bits": 17}, "act_bits"),
    ({"method": "nope"}, "method"),
    ({"wieght_bits": 4}, "wieght_bits"),
    ({"acc_bits": 8}, "acc_bits"),
    ({"requant": {"rounding": "half_down"}}, "requant.rounding"),
    ({"requant": {"multiplier_bits": 40}}, "requant.multiplier_bits"),
    ({"options": {"nonsense": 1}}, "options"),
    ({"overrides": [{"pattern": "x", "weight_bits": 99}]}, "overrides.0.weight_bits"),
])
def test_rejects_bad_values_naming_the_field(bad, field):
    import json

    with pytest.raises(QuantConfigError) as e:
        QuantConfig.from_json(json.dumps(bad), source="cfg.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cfg.json: ") and field in msg


def test_acc_bits_must_hold_one_product():
    QuantConfig.make(weight_bits=8, act_bits=8, acc_bits=16)
    with pytest.raises(QuantConfigError, match="acc_bits"):
        QuantConfig.make(weight_bits=8, act_bits=8, acc_bits=15)


def test_frozen_and_overrides():
    cfg = QuantConfig(overrides=(LayerOverride(pattern="layer1.*", act_bits=2),
                                 LayerOverride(pattern="layer1.0.*", act_bits=3)))
    with pytest.raises(Exception):
        cfg.weight_bits = 2
    assert cfg.layer_bits("layer1.0.conv1", "act", 4) == 3  # the last match wins
    assert cfg.layer_bits("layer1.1.conv1", "act", 4) == 2
    assert cfg.layer_bits("layer2.0.conv1", "act", 4) == 4
