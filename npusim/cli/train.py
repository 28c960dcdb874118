"""`npusim train` (float, QAT, MARViN) and `npusim export`."""

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
    _setup_logging,
    app,
    check_numbers,
)


@app.command()
def train(
    model: str = typer.Option("resnet20", help="Model name (see models.list_models())."),
    data: str = typer.Option("mnist5k", help=DATA_HELP),
    epochs: int = typer.Option(15, min=1, help="Training (or QAT fine-tuning) epochs."),
    out: Optional[Path] = typer.Option(None, help="Write the checkpoint (.pt + .json) here."),
    seed: int = typer.Option(0, help="Random seed."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (float 0.1, QAT 0.01)."),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    root: Optional[str] = typer.Option(None, help=ROOT_HELP),
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
    """Train a float model, fine-tune it with QAT when --quant is given (from --from, or from a
    15-epoch float model it trains first), or train it with MARViN when --marvin is given.
    Float and QAT runs are cached ($NPUSIM_CACHE, --no-cache to retrain)."""
    _setup_logging(verbose)
    check_numbers(lr, width, seed)
    _check_data(data)
    from npusim.io import check_output_path

    if out is not None:
        check_output_path(out, "--out")
        check_output_path(out.with_suffix(".json"), "--out (its .json sidecar)")
    if export is not None:
        check_output_path(export, "--export")
    if marvin or marvin_config is not None:
        check_output_path(marvin_out, "--marvin-out", directory=True)
        from npusim.cli.marvin import train_marvin_cmd

        if quant is not None or quant_config or export:
            _fail("--marvin: trains a float model; quantize it afterwards with --quant --from")
        train_marvin_cmd(model, data, epochs, out, seed, width, lr or 0.1, batch_size, root,
                         marvin_config, from_ckpt, marvin_out)
        return
    from models import list_models
    from models.cached import train_float

    if model not in list_models():
        _fail(f"--model: unknown model {model!r}; known: {', '.join(list_models())}")
    if quant is None and (quant_config or from_ckpt or export):
        _fail("--from, --quant-config and --export need --quant")
    _check_data_loads(data, root, ("train", "test"))
    if quant is None:
        from models.cached import float_cache_path, is_cached

        hit = not no_cache and is_cached(float_cache_path(model, data, epochs, seed, width,
                                                          lr or 0.1, batch_size, root=root))
        typer.echo(f"{model} on {data}: {epochs} epoch(s) from the cache (--no-cache retrains)"
                   if hit else f"training {model} on {data} for {epochs} epoch(s) ...")
        path, meta = train_float(model, data, epochs, seed=seed, width=width, lr=lr or 0.1,
                                 batch_size=batch_size, out=out, root=root,
                                 use_cache=not no_cache)
        secs = meta.get("epoch_seconds", [])
        per_epoch = f", {sum(secs) / len(secs):.1f} s/epoch" if secs else ""
        typer.echo(f"{model} on {data}: test top-1 {100 * meta['test_acc']:.2f}%{per_epoch}")
        typer.echo(f"checkpoint: {path}")
        return
    _train_qat(model, data, epochs, out, seed, width, lr or 0.01, batch_size, root, quant, wbits,
               abits, quant_config, from_ckpt, export, use_cache=not no_cache)


#: Epochs of the float model `train --quant` trains (and caches) when no --from is given.
_IMPLICIT_FLOAT_EPOCHS = 15


def _train_qat(model, data, epochs, out, seed, width, lr, batch_size, root, quant, wbits, abits,
               quant_config, from_ckpt, export, use_cache=True) -> None:
    from models.cached import float_cache_path, is_cached, train_float
    from quantize import QuantConfig, export_program
    from quantize.cached import qat_from_cache_path, train_qat_from
    from quantize.checkpoint import save_qat

    if quant_config is not None:
        if not quant_config.is_file():
            _fail(f"--quant-config: {quant_config} not found")
        import json

        try:
            text = quant_config.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            _fail(f"--quant-config: {quant_config}: not UTF-8 text (byte {e.start})")
        try:  # --quant/--wbits/--abits fill the keys the file does not set
            doc = json.loads(text)
            if isinstance(doc, dict):
                text = json.dumps({"method": quant, "weight_bits": wbits, "act_bits": abits,
                                   **doc})
        except (json.JSONDecodeError, RecursionError):
            pass  # from_json reports it in one line
        cfg = QuantConfig.from_json(text, source=str(quant_config))
    else:
        cfg = QuantConfig.make(method=quant, weight_bits=wbits, act_bits=abits)
    if from_ckpt is None:
        fpath = float_cache_path(model, data, _IMPLICIT_FLOAT_EPOCHS, width=width, root=root)
        if use_cache and is_cached(fpath):
            typer.echo(f"no --from: using the cached float {model} on {data} "
                       f"({_IMPLICIT_FLOAT_EPOCHS} epochs)")
        else:
            typer.echo(f"no --from: training a float {model} on {data} first "
                       f"({_IMPLICIT_FLOAT_EPOCHS} epochs, cached for later runs) ...")
        from_ckpt, _ = train_float(model, data, _IMPLICIT_FLOAT_EPOCHS, width=width, root=root)
    elif not from_ckpt.is_file():
        _fail(f"--from: {from_ckpt} not found")
    else:
        from models.checkpoint import load_checkpoint

        load_checkpoint(from_ckpt)  # a bad --from file is refused before any message or work
    qpath = qat_from_cache_path(from_ckpt, data, cfg, epochs, lr, batch_size, seed, root)
    if use_cache and is_cached(qpath):
        typer.echo(f"QAT {cfg.short_name()} ({epochs} epochs) from {from_ckpt}: cached")
    else:
        typer.echo(f"QAT {cfg.short_name()}: fine-tuning {from_ckpt} for {epochs} epoch(s) ...")
    qmodel, acc, _ = train_qat_from(from_ckpt, data, cfg, epochs, lr=lr, batch_size=batch_size,
                                    seed=seed, root=root, use_cache=use_cache)
    secs = f" ({acc['train_seconds']:.0f} s)" if "train_seconds" in acc else ""
    typer.echo(f"{cfg.short_name()} {acc['model']} on {data}: fake-quant top-1 "
               f"{100 * acc['fake_quant_acc']:.2f}%, integer-exact top-1 "
               f"{100 * acc['integer_acc']:.2f}%{secs}")
    if out is not None:
        save_qat(qmodel, out, {k: v for k, v in acc.items() if k not in (
            "quant_config", "input_shape", "qmeta", "versions")})
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
    from npusim.io import check_output_path
    from quantize import export_program
    from quantize.checkpoint import load_qat

    check_output_path(out, "--out")
    qmodel, _ = load_qat(checkpoint)
    prog = export_program(qmodel, out)
    typer.echo(f"program: {out} ({len(prog.nodes)} nodes)")

