"""Generate tests/npusim/cost/golden/scalesim_resnet20.csv with SCALE-Sim 3.0.0 (not a
dependency of npusim; run it in its own venv):

    python3.11 -m venv .scalesim-venv && .scalesim-venv/bin/pip install scalesim==3.0.0
    .scalesim-venv/bin/python tests/npusim/cost/make_golden_scalesim.py

Every distinct conv / linear layer of ResNet-20 on a 28x28x1 input (mnist5k; the CIFAR
ResNet-20 of He et al. 2016 with widths 16/32/64, option-B 1x1 shortcuts), each on 8x8,
16x16 and 32x32 arrays in the os, ws and is dataflows. SCALE-Sim has no padding, and its
output size is ``ceil((H - R + s) / s)``, one more than a conv's ``(H - R) // s + 1`` when
``s > 1`` and ``H - R`` is odd (it counts a partial last window); so every layer is given the
rows and columns of the padded input that our conv reads, ``(Ho - 1) * s + k``, and the output
sizes agree. SRAMs are large and the
interface bandwidth is CALC, so no layer stalls. The CSV keeps SCALE-Sim's own numbers:
``total_cycles`` (COMPUTE_REPORT "Total Cycles"), ``stall_cycles`` and the SRAM accesses of
DETAILED_ACCESS_REPORT. This script imports nothing from npusim.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

# name, ifmap h, w, filter h, w, channels, filters, stride: the input rows/columns our conv
# reads, (Ho - 1) * stride + k of the padded input (see the module docstring)
LAYERS = [
    ("stem", 30, 30, 3, 3, 1, 16, 1),
    ("layer1.conv", 30, 30, 3, 3, 16, 16, 1),
    ("layer2.0.conv1", 29, 29, 3, 3, 16, 32, 2),
    ("layer2.0.shortcut", 27, 27, 1, 1, 16, 32, 2),
    ("layer2.conv", 16, 16, 3, 3, 32, 32, 1),
    ("layer3.0.conv1", 15, 15, 3, 3, 32, 64, 2),
    ("layer3.0.shortcut", 13, 13, 1, 1, 32, 64, 2),
    ("layer3.conv", 9, 9, 3, 3, 64, 64, 1),
    ("fc", 1, 1, 1, 1, 64, 10, 1),
]
ARRAYS = (8, 16, 32)
DATAFLOWS = ("os", "ws", "is")

CONFIG = """[general]
run_name = golden

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = 4096
FilterSramSzkB = 4096
OfmapSramSzkB = 4096
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {df}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""

TOPO_HEADER = ("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
               "Num Filter, Strides,\n")
LAYOUT_HEADER = "Layer name," + ",".join(f"f{i}" for i in range(20)) + ",\n"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        rows = list(csv.reader(f))
    head = [h.strip() for h in rows[0]]
    return [dict(zip(head, (v.strip() for v in r))) for r in rows[1:] if r]


def run(rows: int, df: str, work: Path) -> list[dict[str, object]]:
    """SCALE-Sim's per-layer numbers for every layer of LAYERS on a rows x rows array."""
    from scalesim.scale_sim import scalesim

    cfg, topo, layout = work / "golden.cfg", work / "resnet20.csv", work / "layout.csv"
    cfg.write_text(CONFIG.format(rows=rows, cols=rows, df=df))
    topo.write_text(TOPO_HEADER + "".join(",".join(map(str, layer)) + ",\n" for layer in LAYERS))
    layout.write_text(LAYOUT_HEADER + "".join(
        f"{layer[0]}," + ",".join(["1"] * 20) + ",\n" for layer in LAYERS))
    out = work / "out"
    with redirect_stdout(io.StringIO()):
        sim = scalesim(save_disk_space=True, verbose=False, config=str(cfg),
                       topology=str(topo), layout=str(layout))
        sim.run_scale(top_path=str(out))
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    compute = _read(run_dir / "COMPUTE_REPORT.csv")
    detail = _read(run_dir / "DETAILED_ACCESS_REPORT.csv")
    result = []
    for layer, c, d in zip(LAYERS, compute, detail):
        name, h, w, fh, fw, ch, nf, s = layer
        result.append({
            "layer": name, "rows": rows, "cols": rows, "dataflow": df, "ifmap_h": h,
            "ifmap_w": w, "filter_h": fh, "filter_w": fw, "channels": ch, "filters": nf,
            "stride": s, "total_cycles": int(float(c["Total Cycles"])),
            "stall_cycles": int(float(c["Stall Cycles"])),
            "sram_ifmap_reads": int(float(d["SRAM IFMAP Reads"])),
            "sram_filter_reads": int(float(d["SRAM Filter Reads"])),
            "sram_ofmap_writes": int(float(d["SRAM OFMAP Writes"])),
        })
    return result


def main() -> int:
    from importlib.metadata import version

    import scalesim  # noqa: F401  (fail early outside the SCALE-Sim venv)

    assert version("scalesim") == "3.0.0", version("scalesim")
    dest = Path(__file__).with_name("golden") / "scalesim_resnet20.csv"
    dest.parent.mkdir(exist_ok=True)
    rows_out: list[dict[str, object]] = []
    for rows in ARRAYS:
        for df in DATAFLOWS:
            with tempfile.TemporaryDirectory() as tmp:
                cwd = os.getcwd()
                os.chdir(tmp)  # SCALE-Sim writes beside the cwd in some versions
                try:
                    rows_out += run(rows, df, Path(tmp))
                finally:
                    os.chdir(cwd)
            print(f"{rows}x{rows} {df}: done", file=sys.stderr)
    with open(dest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    print(f"wrote {dest} ({len(rows_out)} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
