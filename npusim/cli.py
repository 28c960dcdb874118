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
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress per epoch."),
) -> None:
    """Train a float model (cached), or fine-tune it with QAT when --quant is given."""
    _setup_logging(verbose)
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
        cfg = QuantConfig.from_json(quant_config.read_text(), source=str(quant_config))
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


@app.command()
def demo(
    epochs: int = typer.Option(15, min=1, help="Float training epochs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress."),
) -> None:
    """Run the main job on the embedded MNIST subset (trains once, then reuses the cache)."""
    _setup_logging(verbose)
    from models.cached import train_float

    path, meta = train_float("resnet20", "mnist5k", epochs)
    typer.echo(f"float resnet20 on mnist5k: test top-1 {100 * meta['test_acc']:.2f}%")
    typer.echo(f"checkpoint: {path}")


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
