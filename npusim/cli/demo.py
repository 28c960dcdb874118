"""`npusim demo`: the main job on the embedded data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.cli.common import _progress, _setup_logging, app
from npusim.cli.sweep import _demo_db


@app.command()
def demo(
    # Defaults sized for a cold run of about 5 minutes on 2 cores (see the command's help).
    float_epochs: int = typer.Option(6, min=1, help="Float training epochs (cached)."),
    qat_epochs: int = typer.Option(1, min=1, help="QAT epochs per W/A setting (cached)."),
    bits: str = typer.Option("8/8,4/4,3/3", help="W/A settings (lsq, uniform in every layer)."),
    acc_bits: str = typer.Option("8:16", help="Accumulator widths swept (both levels)."),
    images: int = typer.Option(200, min=1, help="mnist5k test images simulated per point."),
    out: Path = typer.Option(Path("reports"), help="Where the figures go."),
    db: Optional[Path] = typer.Option(None, help="Results store (default "
                                      "$NPUSIM_CACHE/sweeps/demo.sqlite)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress "
                                            "bars on stderr (default: when it is a terminal)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """The main job: ResNet-20 on mnist5k, QAT at a few widths, accumulator-width sweep in
    wrap and saturate on edge16, costs, figures in reports/ (reruns reuse every cache).

    The defaults are shrunk to keep a cold run near 5 minutes on 2 cores: a 6-epoch float
    model, 1 QAT epoch per setting (one epoch also never freezes batch norm, which made 2-bit
    runs diverge in 2 epochs), 200 test images per point and accumulator widths 8..16 bits
    (plus the preset's 32-bit exact run). Raise them for better numbers.
    """
    import time

    _setup_logging(verbose)
    progress = _progress(progress)
    from npusim.hw.config import NPUConfig
    from npusim.sweep import Grid, ResultsStore, parse_npu_axis, parse_quant_axis

    t0 = time.perf_counter()
    base = NPUConfig.preset("edge16")
    q_axes = [parse_quant_axis(f"bits={bits}")]
    widths = parse_npu_axis(f"precision.pe_acc_bits,precision.acc_bits={acc_bits}", base)
    modes = parse_npu_axis("precision.overflow=wrap,saturate", base)
    from quantize import QuantConfig

    # Every layer at the W/A setting (first and last included), so each setting's own
    # accumulator needs show; with 8-bit first/last layers every setting would need the same
    # 16 bits for the 8-bit x 8-bit stem products.
    qbase = QuantConfig.make(method="lsq", first_layer_bits=None, last_layer_bits=None)
    grids = [Grid(q_axes, [widths, modes], base, qbase),  # the width sweep
             Grid(q_axes, [], base, qbase)]               # edge16 as shipped: 32-bit exact
    from models.cached import train_float
    from npusim.report.sweep_report import accuracy_table, write_report
    from npusim.sweep import sweep

    path = db or _demo_db()
    from models.cached import float_cache_path, is_cached

    state = ("from the cache" if is_cached(float_cache_path("resnet20", "mnist5k", float_epochs))
             else "training now, cached for later runs")
    typer.echo(f"demo: resnet20 on mnist5k; float model, {float_epochs} epochs ({state}) ...")
    _, fmeta = train_float("resnet20", "mnist5k", float_epochs, progress=progress)
    typer.echo(f"float top-1 {100 * fmeta['test_acc']:.2f}% ({time.perf_counter() - t0:.0f} s)")
    n = sum(len(g) for g in grids)
    typer.echo(f"sweep: {n} points (lsq {bits} x acc widths {acc_bits} x wrap/saturate, plus "
               f"32-bit exact) on edge16, {images} test images each; store: {path}")
    with ResultsStore(path) as store:
        fresh = len(store) == 0
        df = sweep(grids, model="resnet20", dataset="mnist5k", images=images,
                   epochs=qat_epochs, float_epochs=float_epochs, store=store, progress=progress)
        secs = time.perf_counter() - t0
        store.set_meta("title", "npusim demo: ResNet-20 on mnist5k, edge16")
        store.set_meta("command", f"npusim demo --float-epochs {float_epochs} --qat-epochs "
                                  f"{qat_epochs} --bits {bits} --acc-bits {acc_bits} "
                                  f"--images {images}")
        timing = dict(store.get_meta("timing_s") or {})
        timing["first run, empty store" if fresh else "latest rerun"] = round(secs)
        store.set_meta("timing_s", timing)
        store.set_meta("timing", "demo wall time up to the figures (training + sweep): " +
                       ", ".join(f"{k} {v} s" for k, v in timing.items()) + " (float and QAT "
                       "models come from the model cache when present; stored points are "
                       "never rerun)")
        written = write_report(store, out)
    from npusim.report.sweep_report import _with_setting

    typer.echo("top-1 (%) per accumulator width ('-': the NPU refuses the width):")
    typer.echo(accuracy_table(_with_setting(df)).to_string(index=False))
    ref = df[df["overflow_mode"] == "exact"]
    for r in ref.itertuples(index=False):
        typer.echo(f"{r.quant_label} 32-bit exact: top-1 {100 * r.top1:.2f}%, max observed "
                   f"accumulator {r.max_observed_bits} bits (L1 bound {r.max_bound_l1_bits}), "
                   f"{r.energy_per_image_uj:.2f} uJ/image, {r.energy_saving_vs_fp32:.1f}x less "
                   f"energy than FP32")
    typer.echo(f"{len(written)} files in {out}/ (index: {out / 'README.md'}); "
               f"{time.perf_counter() - t0:.0f} s")

