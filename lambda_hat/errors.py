"""Domain errors. Core code raises them; only the CLI turns them into exit codes.

`str(err)` is one line a user can act on, naming the file or store path and the field.
"""

from __future__ import annotations

import re


def first_sentence(text: str, limit: int = 200) -> str:
    """A library's message (DuckDB's) up to its first sentence's end (what follows is advice for
    its own shell), never cut in the middle of a word."""
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " …"


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


class SweepError(BadInput):
    """Bad sweep input. `str(err)` is one line: `<file>: <entry>: <field>: <problem>`."""


class QueryRefused(BadInput):
    """A statement `lh query` does not run (exit 2, nothing written)."""


class QueryFailed(BadInput):
    """DuckDB could not run the query (a typo, an unknown column)."""


class QueryInterrupted(LhError):
    """The user interrupted a query (Ctrl-C): exit 130, as a shell reports SIGINT."""

    exit_code = 130


class ArtifactError(LhError):
    """An artifact that does not count as complete (incomplete, damaged, unreadable): never
    read as done; reconcile quarantines it."""


class ManifestError(ArtifactError):
    """A manifest that cannot be read or does not describe a valid artifact."""


class NeedsPlugin(ManifestError):
    """A complete artifact of a plugin's model kind or sampler, read where the plugin is not
    loaded: not damaged, so never quarantined nor collected; not indexed until it is loaded."""


class ArtifactDamaged(ArtifactError):
    """An artifact a command was asked to read does not check out (exit 1, as `lh verify`)."""


class TargetDamaged(ArtifactError):
    """The target a run was to sample failed its checksums and was quarantined. `target_id`
    names it (the driver may rebuild it); `str()` is the one line the user sees."""

    def __init__(self, message: str, target_id: str):
        super().__init__(message)
        self.target_id = target_id
        self.args = (str(self), target_id)  # both in args: Parsl pickles it back to the driver

    def __str__(self) -> str:
        return self.args[0]


class IndexBusy(LhError):
    """The index is held by another process (a query, another driver) past a bounded wait."""


class IndexUnavailable(IndexBusy):
    """The index cannot be opened as asked (permissions, a read-only file system): callers
    that wait out a busy index treat it alike; it is never taken for a corrupt file."""

    exit_code = 2


class IndexCorrupt(LhError):
    """The index file is not a usable DuckDB database: the store moves it aside and rebuilds."""

    exit_code = 2


class ExecutorStartError(LhError):
    """Parsl could not start the executor the run was configured with."""
