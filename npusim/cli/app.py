"""The `npusim` entry point: registers every command module on the app and maps errors to exit codes.

Exit codes: 0 success; 2 a user error (`npusim.errors.UserError`, a bad argument, an unreadable
file), one line on stderr; 1 an internal error (a bug), one line unless `--debug` (or
NPUSIM_DEBUG=1) asks for the traceback; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.exceptions import Abort, Exit, TyperException

from npusim.cli.common import app
from npusim.errors import UserError

# importing a command module registers its commands, in this (the help) order
# isort: off
from npusim.cli import train  # noqa: F401
from npusim.cli import program  # noqa: F401
from npusim.cli import sweep  # noqa: F401
from npusim.cli import demo  # noqa: F401
from npusim.cli import onnx  # noqa: F401
# isort: on

_debug = {"on": False}


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Print the traceback of an internal error "
                               "(also NPUSIM_DEBUG=1)."),
) -> None:
    if debug:
        _debug["on"] = True


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app; a user error is one line (exit 2), a bug exit 1."""
    _debug["on"] = os.environ.get("NPUSIM_DEBUG", "") not in ("", "0")
    try:
        # Typer returns (not raises) the code of a typer.Exit, and of Ctrl-C as 130
        rc = app(args=argv, standalone_mode=False, prog_name="npusim")
    except Exit as e:
        rc = e.exit_code
    except (Abort, KeyboardInterrupt):
        rc = 130
    except TyperException as e:  # a usage error: unknown option, bad value, missing argument
        if type(e).__name__ == "NoArgsIsHelpError":
            app(args=["--help"], standalone_mode=False, prog_name="npusim")
            return 2
        typer.echo(f"error: {_one_line_usage(e)}", err=True)
        return max(int(getattr(e, "exit_code", 2)), 2)
    except (UserError, OSError) as e:  # bad input, or a file the user named that cannot be read/written
        if _debug["on"]:
            traceback.print_exc()
        typer.echo(f"error: {_one_line(e)}", err=True)
        return 2
    except Exception as e:  # anything else is a bug in npusim
        if _debug["on"]:
            traceback.print_exc()
        typer.echo(f"error: internal error (bug): {type(e).__name__}: {_one_line(e)}"
                   " — rerun with --debug for the traceback", err=True)
        return 1
    if rc == 130:
        typer.echo("aborted", err=True)
    return rc if isinstance(rc, int) else 0


def _one_line_usage(e: TyperException) -> str:
    fmt = getattr(e, "format_message", None)
    return " ".join((fmt() if fmt else str(e)).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
