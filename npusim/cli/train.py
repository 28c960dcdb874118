"""`npusim train` (float, QAT, MARViN) and `npusim export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from npusim.cli.common import _fail, _setup_logging, app, check_numbers


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
    check_numbers(lr, width, seed)
    if marvin or marvin_config is not None:
        from npusim.cli.marvin import train_marvin_cmd

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

