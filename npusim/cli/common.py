"""What every command module shares: the Typer app, the one-line user error, logging set-up."""

from __future__ import annotations

import logging

import typer

from npusim.errors import UserError

app = typer.Typer(
    name="npusim",
    help="Bit-accurate integer NPU simulator and quantization co-design framework.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class CLIError(UserError):
    """An error the CLI reports as one line and exit code 2."""


def _fail(message: str) -> None:
    raise CLIError(message)


#: --data / --root help, shared by every command that reads a data set
DATA_HELP = ("Data set: mnist5k, digits, cifar10, synthetic, or folder (an image tree under "
             "--root); options as NAME:KEY=V,..., e.g. folder:resize=256,crop=224.")
ROOT_HELP = "Data directory (cifar10, folder)."


def _check_data(data: str) -> None:
    """A one-line --data error before any work starts (name and options, no data read)."""
    from npusim.data import DatasetError, check_data_spec

    try:
        check_data_spec(data)
    except DatasetError as exc:
        _fail(f"--data: {exc}")


def _check_data_loads(data: str, root: str | None, splits: tuple[str, ...]) -> None:
    """Load the `splits` of a data set read from files (cifar10, folder) so that a bad or
    empty directory is refused before any message or training (the arrays are cached per
    process: the run that follows reuses them)."""
    from npusim.data import load_dataset, parse_data_spec

    if parse_data_spec(data)[0] in ("cifar10", "folder"):
        for split in splits:
            load_dataset(data, split, root=root)


def check_numbers(lr: float | None, width: float, seed: int) -> None:
    """Refuse training numbers no run can use (click's ranges let NaN through)."""
    import math

    from npusim.limits import MAX_WIDTH

    if lr is not None and not (math.isfinite(lr) and 0 < lr <= 10):
        _fail(f"--lr: expected a learning rate in (0, 10], got {lr}")
    if not (math.isfinite(width) and 0 < width <= MAX_WIDTH):
        _fail(f"--width: expected a width multiplier in (0, {MAX_WIDTH:g}], got {width}")
    if not 0 <= seed < 2**63:
        _fail(f"--seed: expected an integer in [0, 2^63), got {seed}")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")



def _progress(flag: bool | None) -> bool:
    """--progress/--no-progress, or by default whether stderr is a terminal."""
    import sys

    return sys.stderr.isatty() if flag is None else flag
