"""The `npusim` entry point: registers every command module on the app and maps errors to exit codes."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import Abort, Exit, TyperException

# importing a command module registers its commands, in this (the help) order
from npusim.cli import train  # noqa: F401, I001
from npusim.cli import program  # noqa: F401
from npusim.cli import sweep  # noqa: F401
from npusim.cli import demo  # noqa: F401
from npusim.cli import onnx  # noqa: F401
from npusim.cli.common import CLIError, app

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

