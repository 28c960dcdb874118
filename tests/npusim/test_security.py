"""Security and reliability: no code execution from --where, no temp-file clobbering, output paths
checked before work, files checked before allocation."""

import pandas as pd
import pytest

from npusim.cli.app import main


def _results_csv(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({
        "acc_bits": [8, 12, 16, 8, 12, 16],
        "top1": [0.5, 0.8, 0.9, 0.6, 0.85, 0.9],
        "overflow_mode": ["wrap"] * 3 + ["saturate"] * 3,
        "status": ["ok"] * 6,
        "quant_label": ["lsq-W8A8"] * 6,
    }).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("payload", [
    "@pd.io.common.os.system('touch {m}')",
    "acc_bits == @__builtins__.__import__('os').system('touch {m}')",
    "__import__('os').system('touch {m}')",
    "overflow_mode.__class__.__init__.__globals__['os'].system('touch {m}') == 0",
    "acc_bits > 8 and `top1`.__class__ == 1",
    "acc_bits == 8 or (open('{m}', 'w'))",
])
def test_where_payloads_are_refused_and_nothing_runs(tmp_path, capsys, payload):
    marker = tmp_path / "PWNED"
    res = _results_csv(tmp_path)
    rc = main(["plot", str(res), "--x", "acc_bits", "--where", payload.format(m=marker),
               "--out", str(tmp_path / "p.png")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --where:")
    assert not marker.exists()
    assert not (tmp_path / "p.png").exists()


def test_where_filters_rows(tmp_path, capsys):
    res = _results_csv(tmp_path)
    out = tmp_path / "p.png"
    assert main(["plot", str(res), "--x", "acc_bits", "--hue", "overflow_mode", "--where",
                 "overflow_mode == wrap and acc_bits >= 12", "--out", str(out)]) == 0
    data = pd.read_csv(out.with_suffix(".csv"))
    assert set(data["overflow_mode"]) == {"wrap"} and sorted(data["acc_bits"]) == [12, 16]
    capsys.readouterr()
    assert main(["plot", str(res), "--x", "acc_bits", "--where", "nope == 1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'nope'" in err[0] and "acc_bits" in err[0]
    assert main(["plot", str(res), "--x", "acc_bits", "--where", "acc_bits > 99",
                 "--out", str(out)]) == 2
