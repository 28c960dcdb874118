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
    epochs: int = typer.Option(15, min=1, help="Training epochs."),
    out: Optional[Path] = typer.Option(None, help="Write the checkpoint (.pt + .json) here."),
    seed: int = typer.Option(0, help="Random seed."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    lr: float = typer.Option(0.1, help="Peak learning rate."),
    batch_size: int = typer.Option(128, min=1, help="Batch size."),
    root: Optional[str] = typer.Option(None, help="Data directory (cifar10)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Retrain even if cached."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress per epoch."),
) -> None:
    """Train a float model on a data set (cached by configuration)."""
    _setup_logging(verbose)
    from models import list_models
    from models.cached import train_float
    from npusim.data import list_datasets

    if model not in list_models():
        _fail(f"--model: unknown model {model!r}; known: {', '.join(list_models())}")
    if data not in list_datasets():
        _fail(f"--data: unknown data set {data!r}; known: {', '.join(list_datasets())}")
    path, meta = train_float(model, data, epochs, seed=seed, width=width, lr=lr,
                             batch_size=batch_size, out=out, root=root, use_cache=not no_cache)
    secs = meta.get("epoch_seconds", [])
    per_epoch = f", {sum(secs) / len(secs):.1f} s/epoch" if secs else ""
    typer.echo(f"{model} on {data}: test top-1 {100 * meta['test_acc']:.2f}%{per_epoch}")
    typer.echo(f"checkpoint: {path}")


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
    except (CLIError, ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        typer.echo(f"error: {msg}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
