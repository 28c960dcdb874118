"""Commands that cross to ONNX: import a quantized ONNX model, export a program as ONNX."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from npusim.cli.common import _fail, app


def _parse_pixels(values: list[str]) -> tuple[list[float], list[float], list[float]]:
    """`MEAN,STD[,SCALE]` once (every channel) or once per channel -> (mean, std, scale)."""
    means, stds, scales = [], [], []
    for v in values:
        try:
            parts = [float(x) for x in v.split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (2, 3) or not all(math.isfinite(p) for p in parts) \
                or parts[1] <= 0 or (len(parts) == 3 and parts[2] <= 0):
            _fail(f"--pixels: expected MEAN,STD[,SCALE] with STD, SCALE > 0, got {v!r}")
        means.append(parts[0])
        stds.append(parts[1])
        scales.append(parts[2] if len(parts) == 3 else 255.0)
    return means, stds, scales


@app.command("import")
def import_(
    model: Path = typer.Argument(..., help="A quantized ONNX model (QDQ or QOperator)."),
    out: Path = typer.Option(..., "--out", help="The IntegerProgram file to write."),
    pixels: list[str] = typer.Option(
        [], "--pixels", help="Raw uint8 pixels in: MEAN,STD[,SCALE] (float input = "
        "(p/SCALE - MEAN)/STD, SCALE 255); once for all channels or once per channel."),
) -> None:
    """Import an ONNX Runtime-quantized model as a float-mode (ORT-exact) IntegerProgram."""
    from npusim.io import check_output_path
    from npusim.ir.program import save_program
    from npusim.onnx import import_onnx

    check_output_path(out, "--out")
    px = _parse_pixels(pixels) if pixels else None
    prog = import_onnx(model, pixels=px)
    save_program(prog, out)
    spec = prog.tensors[prog.input]
    typer.echo(f"{model} -> {out}: {len(prog.nodes)} nodes, input {prog.input} "
               f"{list(spec.shape)} {'s' if spec.signed else 'u'}{spec.bits}, requant float")


@app.command("export-onnx")
def export_onnx_cmd(
    program: Path = typer.Argument(..., help="An IntegerProgram file (requant scale_mode float)."),
    out: Path = typer.Option(..., "--out", help="The ONNX model to write."),
) -> None:
    """Export a float-mode program as a QOperator ONNX model that ONNX Runtime runs."""
    from npusim.io import check_output_path
    from npusim.ir.program import load_program
    from npusim.onnx import export_onnx

    check_output_path(out, "--out")
    prog = load_program(program)
    export_onnx(prog, out)
    typer.echo(f"{program} -> {out}: {len(prog.nodes)} nodes")
