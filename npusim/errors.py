"""The one base class for user errors: bad input the CLI reports as one line and exit code 2.

Anything else that escapes a command is a bug. This module imports nothing, so every layer
(and `models`, `quantize`) may derive its errors from it.
"""


class UserError(ValueError):
    """Bad user input (file, config, argument); `str()` is always one line naming what was expected."""

    def __str__(self) -> str:
        text = super().__str__()
        return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(self).__name__
