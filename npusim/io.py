"""Small helpers for writing files: atomic writes, output-path checks, report tables."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from npusim.errors import UserError


class OutputPathError(UserError):
    """An output path that cannot be written (one line naming the option and the path)."""


def _file_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], object]) -> Path:
    """Write `path` atomically: `writer(f)` fills a fresh binary temporary file made with mkstemp
    beside it (unique, O_EXCL: never a planted name or symlink), which then replaces `path`.
    The temporary file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            writer(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see atomic_write)."""
    return atomic_write(path, lambda f: f.write(data))


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a CSV atomically (see atomic_write)."""
    return atomic_write(path, lambda f: df.to_csv(f, index=False, mode="wb"))


def check_output_path(path: str | os.PathLike, what: str, directory: bool = False) -> Path:
    """Refuse, with one line naming `what`, an output path that cannot be written: an existing
    directory where a file is expected (or a file where a directory is), or a parent that is not a
    directory or not writable. Call it before any long work."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{what}: {path} exists and is not a directory")
    elif path.is_dir():
        raise OutputPathError(f"{what}: {path} is a directory; expected a file name")
    parent = path if directory else path.parent
    parent = parent.absolute()
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            raise OutputPathError(f"{what}: {parent} is a dangling symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what}: cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: cannot create {path}: {parent} is not writable")
    return path


def markdown_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured markdown table of `df` (no external dependency)."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])
