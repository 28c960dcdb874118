"""The data sets' one error type (its own module, so every loader module can raise it)."""

from __future__ import annotations

from npusim.errors import UserError


class DatasetError(UserError):
    """Any user-facing dataset failure; the message is always a single line."""

    def __init__(self, message: object) -> None:
        super().__init__(_one_line(message))


def _one_line(text: object, limit: int | None = None) -> str:
    line = " ".join(str(text).split())
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    return line
