"""The `npusim` command line (Typer): one module per command group."""

from npusim.cli.app import app, main

__all__ = ["app", "main"]
