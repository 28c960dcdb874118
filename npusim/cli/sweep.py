"""Sweeps and their results: sweep, plot, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.cli.common import (
    DATA_HELP,
    ROOT_HELP,
    _check_data,
    _check_data_loads,
    _fail,
    _progress,
    _setup_logging,
    app,
)


def _cache_root() -> Path:
    import os

    root = os.environ.get("NPUSIM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "npusim"


def _check_model_data(model: str, data: str) -> None:
    from models import list_models

    if model not in list_models():
        _fail(f"--model: unknown model {model!r}; known: {', '.join(list_models())}")
    _check_data(data)


def _sweep_view(df):
    import pandas as pd

    ok = df["status"] == "ok"
    return pd.DataFrame({
        "point": df["point_label"],
        "top1_%": (100 * df["top1"].astype(float)).round(2),
        "overflows_per_mac": df["overflow_rate"].astype(float).map(
            lambda v: "" if v != v else f"{v:.1e}"),
        "energy_uj": df["energy_per_image_uj"].astype(float).round(3),
        "latency_us": df["latency_us"].astype(float).round(1),
        "vs_fp32": df["energy_saving_vs_fp32"].astype(float).round(2),
        "vs_int8": df["energy_saving_vs_int8"].astype(float).round(2),
        "status": df["status"].where(ok, "refused"),
    })


def _echo_sweep(df) -> None:
    """The sweep's table, then one line per refused point with the NPU's reason."""
    typer.echo(_sweep_view(df).to_string(index=False))
    for r in df[df["status"] != "ok"].itertuples(index=False):
        typer.echo(f"refused {r.point_label}: {r.error}")


@app.command("sweep")
def sweep_cmd(
    model: str = typer.Option("resnet20", help="Model name (see models.list_models())."),
    data: Optional[str] = typer.Option(None, help=DATA_HELP + " Default: mnist5k (with "
                                       "--program: the program's)."),
    program: Optional[Path] = typer.Option(None, "--program", help="Hardware-only sweep: "
                                           "simulate this IntegerProgram on every NPU point "
                                           "(no training; --quant is refused)."),
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
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress "
                                            "bars on stderr (default: when it is a terminal)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
    workers: Optional[int] = typer.Option(None, min=1, help="Run on a local Dask cluster of N "
                                          "single-threaded worker processes (127.0.0.1)."),
    scheduler: Optional[str] = typer.Option(None, help="Run on the Dask cluster whose "
                                            "scheduler is at tcp://HOST:PORT."),
    scheduler_file: Optional[Path] = typer.Option(None, help="Run on the Dask cluster "
                                                  "described by this scheduler file."),
    train_threads: int = typer.Option(1, min=1, help="Torch threads per training (part of "
                                      "the cache key: the same count gives the same model)."),
    engine: str = typer.Option("auto", help="Conv engine (with --program): auto, reference, "
                               "float or int8."),
) -> None:
    """Sweep quantization x NPU settings: simulate, cost and store every point (resumable).

    With --workers, --scheduler or --scheduler-file the points run on a Dask cluster (see
    docs/cluster.md); the rows are the same as a serial run's."""
    _setup_logging(verbose)
    progress = _progress(progress)
    from npusim.cli.common import check_numbers
    from npusim.io import check_output_path
    from npusim.sweep import Grid, ResultsStore, sweep

    check_numbers(lr, width, seed)

    if csv is not None:
        check_output_path(csv, "--csv")
    if db is not None:
        check_output_path(db, "--db")

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
    if program is not None:
        if quants:
            _fail("--program: a hardware-only sweep has no quantization axes (--quant, "
                  "--method, --bits); the program's quantization is fixed")
        if workers is not None or scheduler is not None or scheduler_file is not None:
            _fail("--program: a hardware-only sweep runs here (no --workers / --scheduler)")
        _sweep_program(program, data, split, images, npu, sets, db, csv, root, engine)
        return
    data = data or "mnist5k"
    grid = Grid.parse(quants, sets, npu=npu)  # validates every axis before anything runs
    _check_model_data(model, data)
    cluster = [f for f, v in (("--workers", workers), ("--scheduler", scheduler),
                              ("--scheduler-file", scheduler_file)) if v is not None]
    if len(cluster) > 1:
        _fail(f"{cluster[0]} and {cluster[1]}: give one way to reach a cluster")
    if scheduler_file is not None and not scheduler_file.is_file():
        _fail(f"--scheduler-file: {scheduler_file} not found")
    _check_data_loads(data, root, ("train", split))  # a bad data directory before any training
    points = grid.points()
    path = db or _cache_root() / "sweeps" / "sweep.sqlite"
    kwargs = dict(model=model, dataset=data, split=split, images=images or None, epochs=epochs,
                  float_epochs=float_epochs, width=width, seed=seed, lr=lr, root=root,
                  progress=progress, train_threads=train_threads)
    with ResultsStore(path) as store:  # a store that cannot be opened is refused first
        typer.echo(f"sweep: {len(points)} points ({model} on {data}, {npu}); results: {path}")
        if cluster:
            from npusim.sweep.distributed import cluster_client, sweep_distributed

            with cluster_client(workers, scheduler, scheduler_file) as client:
                df = sweep_distributed(points, client, store=store, **kwargs)
        else:
            df = sweep(points, store=store, **kwargs)
        _echo_sweep(df)
        changed = df.get("requant_changes")
        for text in ([] if changed is None else changed.dropna().unique()):
            if text:  # the NPU's pinned [requant] keys override the program's
                typer.echo(f"requant: the NPU's [requant] differs from the program's: {text}")
        if csv is not None:
            store.export_csv(csv, df["point_hash"])
            typer.echo(f"results: {csv}")


def _sweep_program(program: Path, data: Optional[str], split: str, images: int, npu: str,
                   sets: list[str], db: Optional[Path], csv: Optional[Path], root: Optional[str],
                   engine: str) -> None:
    """`npusim sweep --program`: every NPU point of the grid on one program, no training."""
    from npusim.data import load_dataset
    from npusim.hw.config import NPUConfig
    from npusim.ir.program import load_program
    from npusim.sim import engines
    from npusim.sweep import Grid, ResultsStore
    from npusim.sweep.hw_only import sweep_program

    if engine not in engines.ENGINES:
        _fail(f"--engine: expected one of {', '.join(engines.ENGINES)}, got {engine!r}")
    prog = load_program(program)
    base = NPUConfig.load(npu)
    base.check_layers([n.name for n in prog.nodes], source=npu)
    grid = Grid.parse([], sets, npu=base)  # every axis validated before anything runs
    points = grid.points()
    for p in points:  # a swept layer table must match too
        p.npu.check_layers([n.name for n in prog.nodes], source=f"--set point {p.label()}")
    name = data or prog.meta.get("dataset")
    if not name:
        _fail("--data: the program does not record its data set; name one")
    _check_data(name)
    ds = load_dataset(name, split, root=root).subset(images or None)
    path = db or _cache_root() / "sweeps" / "sweep.sqlite"
    evaluation = {"dataset": name, "split": split, "images": len(ds)}
    with ResultsStore(path) as store:  # a store that cannot be opened is refused first
        typer.echo(f"sweep: {len(points)} points ({program.name} on {name}/{split}, {len(ds)} "
                   f"images, {npu}); results: {path}")
        df = sweep_program(prog, points, ds.images, ds.labels, evaluation=evaluation,
                           label=program.stem, store=store, engine=engine)
        _echo_sweep(df)
        if csv is not None:
            store.export_csv(csv, df["point_hash"])
            typer.echo(f"results: {csv}")


def _read_results(results: Path):
    import pandas as pd

    if not results.is_file():
        _fail(f"RESULTS: {results} not found")
    if results.suffix.lower() == ".csv":
        try:
            return pd.read_csv(results)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (UnicodeDecodeError, pd.errors.ParserError) as e:
            _fail(f"RESULTS: {results} is not a readable CSV file "
                  f"({' '.join(str(e).split())[:120]})")
    from npusim.sweep import ResultsStore

    with ResultsStore(results, readonly=True) as store:
        return store.to_frame()


@app.command()
def plot(
    results: Path = typer.Argument(..., help="A results store (.sqlite) or a sweep CSV."),
    x: str = typer.Option(..., help="Column on the x axis, e.g. acc_bits."),
    y: str = typer.Option("top1", help="Column on the y axis, e.g. energy_per_image_uj."),
    hue: Optional[str] = typer.Option(None, help="Colour by this column, e.g. quant_label."),
    style: Optional[str] = typer.Option(None, help="Marker by this column, e.g. "
                                        "overflow_mode."),
    where: Optional[str] = typer.Option(None, help="Keep rows matching COLUMN OP VALUE terms "
                                        "(== != < <= > >=, in [a, b]) joined by and/or, e.g. "
                                        "\"overflow_mode != exact and acc_bits >= 12\"."),
    kind: str = typer.Option("auto", help="auto (a scatter, lines when x is an ordered sweep "
                             "axis: numeric, one point per group and value), line or scatter."),
    out: Path = typer.Option(Path("plot.png"), help="PNG to write (its CSV goes beside it)."),
) -> None:
    """Draw any two columns of stored sweep results (PNG + the CSV behind it)."""
    from npusim.io import check_output_path
    from npusim.report.plots import custom

    check_output_path(out, "--out")
    check_output_path(out.with_suffix(".csv"), "--out (its CSV)")
    if kind not in ("auto", "line", "scatter"):
        _fail(f"--kind: expected auto, line or scatter, got {kind!r}")
    df = _read_results(results)
    if not len(df):
        _fail(f"RESULTS: {results} holds no points")
    if where is not None:
        from npusim.report.filter import FilterError, filter_rows

        try:
            df = filter_rows(df, where)
        except FilterError as e:
            _fail(f"--where: {e}")
        if not len(df):
            _fail(f"--where: no row of {results} matches {where!r}")
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
    from npusim.io import check_output_path
    from npusim.report.sweep_report import write_report

    check_output_path(out, "--out", directory=True)
    if marvin is not None:
        from npusim.report.marvin import write_marvin_report

        files = write_marvin_report(marvin, out, npu)
        typer.echo(f"MARViN: {', '.join(str(f) for f in files)}")
        if results is None:
            return
    path = results or _demo_db()
    if not path.is_file():
        _fail(f"RESULTS: {path} not found (run npusim sweep or npusim demo first)")
    written = write_report(path, out)
    typer.echo(f"wrote {len(written)} files; index: {out / 'README.md'}")

