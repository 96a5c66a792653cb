"""Domain errors. Core code raises them; only the CLI turns them into exit codes.

`str(err)` is one line a user can act on, naming the file or store path and the field.
"""

from __future__ import annotations


class LhError(Exception):
    """An error the user should see as one line, with the exit code it maps to."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(LhError):
    """The command's input (sweep, path, option) cannot be used; nothing was written."""

    exit_code = 2


class StoreError(LhError):
    """The store cannot be used as asked (missing, not a store, busy, not writable)."""

    exit_code = 2
