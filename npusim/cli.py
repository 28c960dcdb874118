"""The `npusim` command line: thin calls into the library, one-line errors, short tables."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import Abort, Exit, TyperException

app = typer.Typer(
    name="npusim",
    help="Bit-accurate integer NPU simulator and quantization co-design framework.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CLIError(Exception):
    """An error the CLI reports as one line and exit code 2."""


def _fail(message: str) -> None:
    raise CLIError(message)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command()
def train(
    model: str = typer.Option("resnet20", help="Model name (see models.list_models())."),
    data: str = typer.Option("mnist5k", help="Data set: mnist5k, digits, cifar10, synthetic."),
    epochs: int = typer.Option(15, min=1, help="Training (or QAT fine-tuning) epochs."),
    out: Optional[Path] = typer.Option(None, help="Write the checkpoint (.pt + .json) here."),
    seed: int = typer.Option(0, help="Random seed."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (float 0.1, QAT 0.01)."),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    root: Optional[str] = typer.Option(None, help="Data directory (cifar10)."),
    quant: Optional[str] = typer.Option(None, help="QAT method: ste, pact, lsq, lglsq, dsq."),
    wbits: int = typer.Option(4, help="QAT weight bits."),
    abits: int = typer.Option(4, help="QAT activation bits."),
    quant_config: Optional[Path] = typer.Option(None, help="A QuantConfig JSON file (QAT)."),
    from_ckpt: Optional[Path] = typer.Option(None, "--from", help="Float checkpoint to fine-tune."),
    export: Optional[Path] = typer.Option(None, help="Also export the IntegerProgram here (QAT)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Retrain even if cached."),
    marvin: bool = typer.Option(False, "--marvin", help="MARViN fixed-point training with "
                                "per-layer word lengths (from scratch, or --from a checkpoint)."),
    marvin_config: Optional[Path] = typer.Option(None, help="A MarvinConfig JSON file."),
    marvin_out: Path = typer.Option(Path("marvin_run"), help="Directory for the MARViN history "
                                    "CSV, heatmap and cost figure."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress per epoch."),
) -> None:
    """Train a float model (cached), fine-tune it with QAT when --quant is given, or train
    it with MARViN when --marvin is given."""
    _setup_logging(verbose)
    if marvin or marvin_config is not None:
        from npusim.marvin_cli import train_marvin_cmd

        if quant is not None or quant_config or export:
            _fail("--marvin: trains a float model; quantize it afterwards with --quant --from")
        train_marvin_cmd(model, data, epochs, out, seed, width, lr or 0.1, batch_size, root,
                         marvin_config, from_ckpt, marvin_out)
        return
    from models import list_models
    from models.cached import train_float
    from npusim.data import list_datasets

    if model not in list_models():
        _fail(f"--model: unknown model {model!r}; known: {', '.join(list_models())}")
    if data not in list_datasets():
        _fail(f"--data: unknown data set {data!r}; known: {', '.join(list_datasets())}")
    if quant is None and (quant_config or from_ckpt or export):
        _fail("--from, --quant-config and --export need --quant")
    if quant is None:
        path, meta = train_float(model, data, epochs, seed=seed, width=width, lr=lr or 0.1,
                                 batch_size=batch_size, out=out, root=root,
                                 use_cache=not no_cache)
        secs = meta.get("epoch_seconds", [])
        per_epoch = f", {sum(secs) / len(secs):.1f} s/epoch" if secs else ""
        typer.echo(f"{model} on {data}: test top-1 {100 * meta['test_acc']:.2f}%{per_epoch}")
        typer.echo(f"checkpoint: {path}")
        return
    _train_qat(model, data, epochs, out, seed, width, lr or 0.01, batch_size, root, quant, wbits,
               abits, quant_config, from_ckpt, export)


def _train_qat(model, data, epochs, out, seed, width, lr, batch_size, root, quant, wbits, abits,
               quant_config, from_ckpt, export) -> None:
    from models.cached import train_float
    from models.checkpoint import load_checkpoint
    from npusim.data import load_dataset
    from quantize import QuantConfig, evaluate, export_program, prepare_qat, qat_train
    from quantize.checkpoint import save_qat

    if quant_config is not None:
        if not quant_config.is_file():
            _fail(f"--quant-config: {quant_config} not found")
        import json

        text = quant_config.read_text()
        try:  # --quant/--wbits/--abits fill the keys the file does not set
            doc = json.loads(text)
            if isinstance(doc, dict):
                text = json.dumps({"method": quant, "weight_bits": wbits, "act_bits": abits,
                                   **doc})
        except json.JSONDecodeError:
            pass  # from_json reports it in one line
        cfg = QuantConfig.from_json(text, source=str(quant_config))
    else:
        cfg = QuantConfig.make(method=quant, weight_bits=wbits, act_bits=abits)
    if from_ckpt is None:
        from_ckpt, _ = train_float(model, data, 15, width=width, root=root)
    net, fmeta = load_checkpoint(from_ckpt)
    train_set = load_dataset(data, "train", root=root)
    test_set = load_dataset(data, "test", root=root)
    qmodel = prepare_qat(net, cfg, train_set, seed=seed)
    result = qat_train(qmodel, train_set, epochs, lr=lr, batch_size=batch_size, seed=seed)
    acc = evaluate(qmodel, test_set)
    typer.echo(f"{cfg.short_name()} {fmeta['model']} on {data}: fake-quant top-1 "
               f"{100 * acc['fake_quant_acc']:.2f}%, integer-exact top-1 "
               f"{100 * acc['integer_acc']:.2f}% ({result.seconds:.0f} s)")
    if out is not None:
        save_qat(qmodel, out, {"model": fmeta["model"], "model_kwargs": fmeta["model_kwargs"],
                               "dataset": data, "from": str(from_ckpt), **acc})
        typer.echo(f"checkpoint: {out}")
    if export is not None:
        export_program(qmodel, export)
        typer.echo(f"program: {export}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A QAT checkpoint (.pt with .json sidecar)."),
    out: Path = typer.Option(..., help="Where to write the IntegerProgram (.safetensors)."),
) -> None:
    """Export a QAT checkpoint as an IntegerProgram."""
    from quantize import export_program
    from quantize.checkpoint import load_qat

    qmodel, _ = load_qat(checkpoint)
    prog = export_program(qmodel, out)
    typer.echo(f"program: {out} ({len(prog.nodes)} nodes)")


@app.command()
def inspect(program: Path = typer.Argument(..., help="An IntegerProgram file.")) -> None:
    """Print an IntegerProgram's nodes, shapes, bits, scales and shifts."""
    from npusim.inspect import program_table
    from npusim.program import load_program

    prog = load_program(program)
    typer.echo(f"{program}: {len(prog.nodes)} nodes, input {prog.input} "
               f"{list(prog.tensors[prog.input].shape)}, requant {prog.requant}")
    typer.echo(program_table(prog).to_string(index=False))


def _load_npu(npu: str, sets: list[str]):
    from npusim.config import NPUConfig, parse_set_option

    cfg = NPUConfig.load(npu)
    return cfg.with_overrides(parse_set_option(sets)) if sets else cfg


@app.command()
def simulate(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    npu: str = typer.Option("edge16", help="NPU preset name or TOML file."),
    data: Optional[str] = typer.Option(None, help="Data set (default: the one it was trained on)."),
    split: str = typer.Option("test", help="Data split."),
    limit: Optional[int] = typer.Option(None, min=1, help="Simulate only the first N images."),
    set_: list[str] = typer.Option([], "--set", help="Override an NPU field: key=value."),
    csv: Optional[Path] = typer.Option(None, help="Write the per-layer table as CSV."),
    root: Optional[str] = typer.Option(None, help="Data directory (cifar10)."),
) -> None:
    """Simulate a program bit-accurately on a virtual NPU; print top-1 and per-layer stats."""
    import time

    from npusim.data import load_dataset
    from npusim.program import load_program
    from npusim.simulator import Simulator, overflow_rate

    prog = load_program(program)
    cfg = _load_npu(npu, set_)
    name = data or prog.meta.get("dataset")
    if not name:
        _fail("--data: the program does not record its data set; name one")
    ds = load_dataset(name, split, root=root).subset(limit)
    t0 = time.perf_counter()
    res = Simulator(cfg).run(prog, ds.images)
    secs = time.perf_counter() - t0
    typer.echo(f"{cfg.name}: {len(ds)} {name}/{split} images in {secs:.1f} s, top-1 "
               f"{100 * res.accuracy(ds.labels):.2f}%, overflow rate {overflow_rate(res.stats):.2e}")
    cols = ["layer", "op", "output_shape", "macs_per_image", "pe_overflows", "acc_overflows",
            "acc_min", "acc_max", "observed_bits", "bound_l1_bits", "bound_dtype_bits"]
    typer.echo(res.stats[[c for c in cols if c in res.stats]].to_string(index=False))
    if csv is not None:
        from npusim.report_util import write_csv

        write_csv(res.stats, csv)
        typer.echo(f"per-layer table: {csv}")


@app.command()
def bounds(
    program: Path = typer.Argument(..., help="An IntegerProgram file."),
    data: Optional[str] = typer.Option(None, help="Also simulate this data set for observed bits."),
    limit: int = typer.Option(200, min=1, help="Images to observe."),
) -> None:
    """Per-layer accumulator bits a program needs: data-type bound, exact weight bound, observed."""
    from npusim.inspect import bounds_table
    from npusim.program import load_program

    prog = load_program(program)
    images = None
    if data:
        from npusim.data import load_dataset

        images = load_dataset(data, "test").subset(limit).images
    typer.echo(bounds_table(prog, images).to_string(index=False))


@app.command()
def cost(
    program: Optional[Path] = typer.Argument(None, help="An IntegerProgram file."),
    npu: str = typer.Option("edge16", help="NPU preset name or TOML file."),
    set_: list[str] = typer.Option([], "--set", help="Override an NPU field: key=value."),
    energy_table: Optional[str] = typer.Option(
        None, help="Energy table: a shipped name or a TOML file (default: the NPU's)."),
    csv: Optional[Path] = typer.Option(
        None, help="Write the per-layer table here (and the baselines to *_baselines.csv)."),
    data: Optional[str] = typer.Option(
        None, help="Simulate this data set for non-zero MAC counts (default: static counts)."),
    split: str = typer.Option("test", help="Data split (with --data)."),
    limit: int = typer.Option(100, min=1, help="Images to simulate (with --data)."),
    batch: int = typer.Option(1, min=1, help="Images per batch: weights that fit the weight "
                              "SRAM are read from DRAM once per batch."),
    sources: bool = typer.Option(False, "--sources", help="Print every energy number with its "
                                 "source and how composite actions are charged, then exit."),
) -> None:
    """Energy, latency, power and storage of a program, with FP32 and INT8 baselines."""
    import pandas as pd

    from npusim.cost import charging_rules, estimate_cost, table_for_npu

    sets = list(set_) + ([f"technology.energy_table={energy_table}"] if energy_table else [])
    cfg = _load_npu(npu, sets)
    table = table_for_npu(cfg)
    if sources:
        typer.echo(f"energy table {table.label} ({table.path}), node {table.node_nm:g} nm, "
                   f"{table.supply_v:g} V: {table.data.description}")
        for r in table.sources().itertuples(index=False):
            typer.echo(f"{r.entry:26s} {r.value} {r.unit}\n{'':26s} source: {r.source}")
        typer.echo("how composite actions are charged:")
        for r in charging_rules().itertuples(index=False):
            typer.echo(f"{r.action:26s} {r.charged_as}")
        return
    if program is None:
        _fail("PROGRAM: an IntegerProgram file is needed (or use --sources)")
    from npusim.program import load_program

    prog = load_program(program)
    stats = None
    if data is not None:
        from npusim.data import load_dataset
        from npusim.simulator import Simulator

        ds = load_dataset(data, split).subset(limit)
        stats = Simulator(cfg).run(prog, ds.images).stats
    rep = estimate_cost(prog, cfg, stats=stats, images=batch, table=table)
    tot = rep.total
    a = cfg.array
    typer.echo(f"{program}: {cfg.name} ({a.rows}x{a.cols} {a.dataflow}, {a.clock_mhz:g} MHz), "
               f"energy table {table.label}, batch {batch}, {tot['counts_source']} counts"
               + (f" ({len(ds)} {data}/{split} images)" if stats is not None else "")
               + (", weights resident in SRAM" if tot["weights_resident"] else ""))
    lay = rep.layers
    view = pd.DataFrame({
        "layer": lay["layer"], "op": lay["op"], "macs": lay["macs"], "cycles": lay["cycles"],
        "latency_us": lay["latency_us"].round(2), "energy_nj": (lay["energy_pj"] / 1e3).round(2),
        **{f"{c}_%": (100 * lay[f"{c}_pj"] / lay["energy_pj"].where(lay["energy_pj"] > 0)).round(1)
           for c in ("mac", "accumulator", "sram", "dram")}})
    typer.echo(view.to_string(index=False))
    e = tot["energy_per_image_pj"]
    split_txt = ", ".join(f"{c} {100 * tot[f'{c}_pj'] / e:.1f}%" for c in
                          ("mac", "operand", "accumulator", "requant", "vector", "sram",
                           "lookup", "dram", "leakage") if tot[f"{c}_pj"]) if e else ""
    typer.echo(f"total: {e / 1e6:.3f} uJ/image ({split_txt}); latency {tot['latency_us']:.1f} us "
               f"({tot['cycles']} cycles, {tot['stall_cycles']} stall); avg power "
               f"{tot['avg_power_mw']:.2f} mW (leakage {tot['leakage_power_mw']:.2f} mW); weights "
               f"{tot['weight_storage_bytes'] / 1024:.2f} KiB; peak activations "
               f"{tot['peak_activation_bytes'] / 1024:.2f} KiB")
    base = rep.baselines
    typer.echo(pd.DataFrame({
        "variant": base["variant"], "energy_uj": base["energy_per_image_uj"].round(3),
        "latency_us": base["latency_us"].round(1), "avg_power_mw": base["avg_power_mw"].round(2),
        "weights_kib": (base["weight_storage_bytes"] / 1024).round(2),
        "energy_saving": base["energy_saving"].round(2),
        "storage_saving": base["storage_saving"].round(2)}).to_string(index=False))
    if csv is not None:
        from npusim.report_util import write_csv

        write_csv(rep.layers, csv)
        write_csv(rep.baselines, csv.with_name(f"{csv.stem}_baselines.csv"))
        typer.echo(f"per-layer table: {csv}")


@app.command()
def presets() -> None:
    """List the NPU presets shipped with npusim."""
    from npusim.config import NPUConfig, list_presets

    for name in list_presets():
        cfg = NPUConfig.preset(name)
        a, p = cfg.array, cfg.precision
        typer.echo(f"{name:8s} {a.rows}x{a.cols} {a.dataflow} {a.clock_mhz:g} MHz, "
                   f"acc {p.pe_acc_bits}/{p.acc_bits} bits {p.overflow}: {cfg.description}")


# ----------------------------------------------------------------------- sweeps & reports

def _cache_root() -> Path:
    import os

    root = os.environ.get("NPUSIM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "npusim"


def _check_model_data(model: str, data: str) -> None:
    from models import list_models
    from npusim.data import list_datasets

    if model not in list_models():
        _fail(f"--model: unknown model {model!r}; known: {', '.join(list_models())}")
    if data not in list_datasets():
        _fail(f"--data: unknown data set {data!r}; known: {', '.join(list_datasets())}")


def _sweep_view(df):
    import pandas as pd

    ok = df["status"] == "ok"
    return pd.DataFrame({
        "point": df["point_label"],
        "top1_%": (100 * df["top1"].astype(float)).round(2),
        "overflow_rate": df["overflow_rate"].astype(float).map(
            lambda v: "" if v != v else f"{v:.1e}"),
        "energy_uj": df["energy_per_image_uj"].astype(float).round(3),
        "latency_us": df["latency_us"].astype(float).round(1),
        "vs_fp32": df["energy_saving_vs_fp32"].astype(float).round(2),
        "vs_int8": df["energy_saving_vs_int8"].astype(float).round(2),
        "status": df["status"].where(ok, "refused"),
    })


@app.command("sweep")
def sweep_cmd(
    model: str = typer.Option("resnet20", help="Model name (see models.list_models())."),
    data: str = typer.Option("mnist5k", help="Data set: mnist5k, digits, cifar10, synthetic."),
    split: str = typer.Option("test", help="Split simulated at every point."),
    images: int = typer.Option(500, min=0, help="Simulate the first N images (0: all)."),
    epochs: int = typer.Option(3, min=1, help="QAT fine-tuning epochs per quantization setting."),
    float_epochs: int = typer.Option(15, min=1, help="Epochs of the float model QAT starts from."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    seed: int = typer.Option(0, help="Random seed."),
    lr: float = typer.Option(0.01, help="QAT peak learning rate."),
    quant: list[str] = typer.Option([], "--quant", help="Quantization axis KEY=V1,V2 (QuantConfig "
                                    "field, or bits=8/8,4/4, overrides=PATTERN:wNaM+...)."),
    method: Optional[str] = typer.Option(None, help="Shorthand for --quant method=...: "
                                         "ste,pact,lsq,lglsq,dsq."),
    bits: Optional[str] = typer.Option(None, help="Shorthand for --quant bits=...: W/A pairs "
                                       "8/8,4/4 (or 8,4)."),
    npu: str = typer.Option("edge16", help="Base NPU: a preset name or a TOML file."),
    set_: list[str] = typer.Option([], "--set", help="NPU axis KEY=V1,V2 or KEY=A:B[:STEP]; "
                                   "KEY1,KEY2=... sets several keys together."),
    acc_bits: Optional[str] = typer.Option(None, help="Shorthand: both accumulator levels, "
                                           "e.g. 8:20 or 12,16,32."),
    overflow: Optional[str] = typer.Option(None, help="Shorthand for --set precision.overflow="
                                           "...: exact,wrap,saturate."),
    db: Optional[Path] = typer.Option(None, help="Results store (SQLite; default "
                                      "$NPUSIM_CACHE/sweeps/sweep.sqlite). Points already in "
                                      "it are not rerun."),
    csv: Optional[Path] = typer.Option(None, help="Also export this sweep's rows as CSV."),
    root: Optional[str] = typer.Option(None, help="Data directory (cifar10)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Sweep quantization x NPU settings: simulate, cost and store every point (resumable)."""
    _setup_logging(verbose)
    from npusim.sweep import Grid, ResultsStore, sweep

    sets = list(set_)
    if acc_bits is not None:
        sets.append(f"precision.pe_acc_bits,precision.acc_bits={acc_bits}")
    if overflow is not None:
        sets.append(f"precision.overflow={overflow}")
    quants = list(quant)
    if method is not None:
        quants.append(f"method={method}")
    if bits is not None:
        quants.append(f"bits={bits}")
    grid = Grid.parse(quants, sets, npu=npu)  # validates every axis before anything runs
    _check_model_data(model, data)
    points = grid.points()
    path = db or _cache_root() / "sweeps" / "sweep.sqlite"
    typer.echo(f"sweep: {len(points)} points ({model} on {data}, {npu}); results: {path}")
    with ResultsStore(path) as store:
        df = sweep(points, model=model, dataset=data, split=split, images=images or None,
                   epochs=epochs, float_epochs=float_epochs, width=width, seed=seed, lr=lr,
                   root=root, store=store, progress=progress)
        typer.echo(_sweep_view(df).to_string(index=False))
        if csv is not None:
            store.export_csv(csv, df["point_hash"])
            typer.echo(f"results: {csv}")


def _read_results(results: Path):
    import pandas as pd

    if not results.is_file():
        _fail(f"RESULTS: {results} not found")
    if results.suffix.lower() == ".csv":
        return pd.read_csv(results)
    from npusim.sweep import ResultsStore

    with ResultsStore(results) as store:
        return store.to_frame()


@app.command()
def plot(
    results: Path = typer.Argument(..., help="A results store (.sqlite) or a sweep CSV."),
    x: str = typer.Option(..., help="Column on the x axis, e.g. acc_bits."),
    y: str = typer.Option("top1", help="Column on the y axis, e.g. energy_per_image_uj."),
    hue: Optional[str] = typer.Option(None, help="Colour by this column, e.g. quant_label."),
    style: Optional[str] = typer.Option(None, help="Line style by this column, e.g. "
                                        "overflow_mode."),
    where: Optional[str] = typer.Option(None, help="Keep rows matching a pandas query, e.g. "
                                        "\"overflow_mode != 'exact'\"."),
    kind: str = typer.Option("auto", help="auto, line or scatter."),
    out: Path = typer.Option(Path("plot.png"), help="PNG to write (its CSV goes beside it)."),
) -> None:
    """Draw any two columns of stored sweep results (PNG + the CSV behind it)."""
    from npusim.plots import custom

    if kind not in ("auto", "line", "scatter"):
        _fail(f"--kind: expected auto, line or scatter, got {kind!r}")
    df = _read_results(results)
    if not len(df):
        _fail(f"RESULTS: {results} holds no points")
    if where:
        try:
            df = df.query(where)
        except Exception as e:  # pandas raises many types for a bad expression
            _fail(f"--where: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    for flag, col in (("--x", x), ("--y", y), ("--hue", hue), ("--style", style)):
        if col is not None and col not in df:
            _fail(f"{flag}: no column {col!r} in {results} (e.g. {', '.join(df.columns[:8])}, ...)")
    custom(df, x, y, hue=hue, style=style, kind=kind, out=out)
    typer.echo(f"figure: {out} (data: {out.with_suffix('.csv')})")


def _demo_db() -> Path:
    return _cache_root() / "sweeps" / "demo.sqlite"


@app.command()
def report(
    results: Optional[Path] = typer.Argument(None, help="A results store (default: the demo's, "
                                             "$NPUSIM_CACHE/sweeps/demo.sqlite)."),
    out: Path = typer.Option(Path("reports"), help="Directory for the figures and README.md."),
    marvin: Optional[Path] = typer.Option(None, "--marvin", help="Also (or only, without "
                                          "RESULTS) draw a MARViN run's heatmap and cost figure."),
    npu: str = typer.Option("edge16", help="NPU preset or TOML file for the MARViN costs."),
) -> None:
    """Regenerate figures, CSVs and the README.md index in reports/ from stored results."""
    from npusim.report import write_report

    if marvin is not None:
        from npusim.marvin_report import write_marvin_report

        files = write_marvin_report(marvin, out, npu)
        typer.echo(f"MARViN: {', '.join(str(f) for f in files)}")
        if results is None:
            return
    path = results or _demo_db()
    if not path.is_file():
        _fail(f"RESULTS: {path} not found (run npusim sweep or npusim demo first)")
    written = write_report(path, out)
    typer.echo(f"wrote {len(written)} files; index: {out / 'README.md'}")


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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
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
    from npusim.config import NPUConfig
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
    from npusim.report import accuracy_table, write_report
    from npusim.sweep import sweep

    path = db or _demo_db()
    typer.echo(f"demo: resnet20 on mnist5k; float model ({float_epochs} epochs, cached) ...")
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
    from npusim.report import _with_setting

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


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning every user error into one line."""
    try:
        app(args=argv, standalone_mode=False, prog_name="npusim")
    except Exit as e:
        return e.exit_code
    except Abort:
        typer.echo("aborted", err=True)
        return 130
    except TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            app(args=["--help"], standalone_mode=False, prog_name="npusim")
            return 2
        typer.echo(f"error: {e.format_message()}", err=True)
        return max(int(getattr(e, "exit_code", 2)), 2)
    except (CLIError, ValueError, FileNotFoundError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        typer.echo(f"error: {msg}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
