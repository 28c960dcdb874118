"""The --where filter language: terms, and/or/not, parentheses, in-lists, typed comparisons,
one-line errors; compared with plain pandas masks."""

import numpy as np
import pandas as pd
import pytest

from npusim.report.filter import FilterError, filter_rows, row_mask


@pytest.fixture
def df():
    return pd.DataFrame({
        "acc_bits": [8, 12, 16, 20, 12],
        "top1": [0.1, 0.5, np.nan, 0.9, 0.7],
        "mode": ["wrap", "saturate", "exact", None, "wrap"],
        "label": ["lsq-W8A8", "lsq-W4A4", "ste-W8A8", "x", "y"],
        "ok": [True, False, True, True, False],
    })


@pytest.mark.parametrize("text, expect", [
    ("acc_bits >= 12", lambda d: d.acc_bits >= 12),
    ("acc_bits<12", lambda d: d.acc_bits < 12),
    ("acc_bits = 12", lambda d: d.acc_bits == 12),
    ("top1 > 0.4", lambda d: d.top1 > 0.4),
    ("top1 != 0.5", lambda d: d.top1 != 0.5),  # NaN kept, as in pandas
    ("mode == 'wrap'", lambda d: d["mode"] == "wrap"),
    ("mode != wrap", lambda d: d["mode"] != "wrap"),
    ("label == lsq-W8A8", lambda d: d.label == "lsq-W8A8"),
    ('label == "ste-W8A8" or acc_bits == 20', lambda d: (d.label == "ste-W8A8") | (d.acc_bits == 20)),
    ("acc_bits == 12 and mode == wrap or acc_bits == 8",
     lambda d: ((d.acc_bits == 12) & (d["mode"] == "wrap")) | (d.acc_bits == 8)),
    ("acc_bits == 12 and (mode == wrap or acc_bits == 8)",
     lambda d: (d.acc_bits == 12) & ((d["mode"] == "wrap") | (d.acc_bits == 8))),
    ("mode in [wrap, 'exact']", lambda d: d["mode"].isin(["wrap", "exact"])),
    ("acc_bits not in [8, 12]", lambda d: ~d.acc_bits.isin([8, 12])),
    ("not acc_bits > 12", lambda d: ~(d.acc_bits > 12)),
    ("ok == true & acc_bits > 8", lambda d: d.ok & (d.acc_bits > 8)),
    ("ok == false | top1 > 0.8", lambda d: ~d.ok | (d.top1 > 0.8)),
])
def test_filter_matches_pandas_mask(df, text, expect):
    assert row_mask(df, text).tolist() == expect(df).fillna(False).tolist()
    assert filter_rows(df, text).index.tolist() == df.index[expect(df).fillna(False)].tolist()


@pytest.mark.parametrize("text, words", [
    ("nope == 1", ["'nope'", "acc_bits", "label"]),
    ("acc_bits == wrap", ["'acc_bits'", "numeric"]),
    ("ok == maybe", ["'ok'"]),
    ("acc_bits ==", ["end"]),
    ("acc_bits == 1 2", ["2"]),
    ("(acc_bits == 1", ["')'"]),
    ("acc_bits in [1, 2", ["']'"]),
    ("acc_bits ~ 3", ["'~'"]),
    ("@x", ["'@'"]),
    ("acc_bits.__class__ == 1", ["'acc_bits.__class__'"]),
    ("", ["empty"]),
    ("(" * 50 + "acc_bits == 8" + ")" * 50, ["deep"]),
    ("acc_bits == 8 or " * 1000 + "acc_bits == 8", ["longer"]),
])
def test_bad_filters_raise_one_line(df, text, words):
    with pytest.raises(FilterError) as e:
        row_mask(df, text)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
