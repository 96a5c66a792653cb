"""Where things live in a store. Paths only: no I/O beyond `exists` checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
# An artifact's arrays (since lambda-hat 0.2): one Zarr v3 hierarchy in a zip file, zarr's
# ZipStore layout. Artifacts written before hold the same hierarchy as a directory tree.
ARRAYS_ZIP = "arrays.zarr.zip"
DEFAULT_STORE = "runs"


def resolve_store_root(cli_store: str | None, sweep_store_root: str | None = None) -> Path:
    """`--store`, else `$LH_STORE`, else the sweep's `store_root`, else `./runs`; a leading `~`
    is the home directory."""
    from lambda_hat.errors import BadInput

    if cli_store is not None and not cli_store.strip():
        raise BadInput("--store '': an empty path is not a store directory")
    env = os.environ.get("LH_STORE")
    if cli_store is None and env is not None and not env.strip():
        # `LH_STORE="$SCRATCH"` with SCRATCH unset: not a quiet fall back to ./runs
        raise BadInput("LH_STORE is set but empty: name a store directory, or unset it for the default")
    for candidate, name in ((cli_store, "--store"), (env, "LH_STORE"), (sweep_store_root, "store_root")):
        if candidate:
            # `~` as a shell reads it (a sweep file's store_root, a quoted --store): never a
            # folder named `~` in the current directory
            expanded = os.path.expanduser(candidate)
            if expanded.startswith("~"):  # `~user` of no such user (`./~` is a folder named ~: as written)
                raise BadInput(f"{name} {candidate}: no such user's home directory")
            return Path(expanded)
    return Path(DEFAULT_STORE)


def enclosing_store(path: Path) -> Path | None:
    """The nearest directory among `path` and its parents that is laid out as a store (its
    `targets/` and `runs/` directories and its index, or its `.claims/`, side by side), or None:
    what no command but lh execute may write into, whichever store it was told to use."""
    for d in [path, *path.parents]:
        if (d / "targets").is_dir() and (d / "runs").is_dir() and (
                (d / "index.duckdb").is_file() or (d / ".claims").is_dir()):
            return d
    return None


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def index_path(self) -> Path:
        return self.root / "index.duckdb"

    @property
    def index_lock_path(self) -> Path:
        return self.root / ".index.lock"

    @property
    def claims_dir(self) -> Path:
        return self.root / ".claims"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / ".quarantine"

    @property
    def jax_cache_dir(self) -> Path:
        return self.root / ".jax_cache"

    @property
    def work_root(self) -> Path:
        return self.root / ".work"

    def work_dir(self, run_id: str) -> Path:
        """A run's scratch space while it samples: the traces of the segments done so far and
        the checkpoint to resume from. Never part of the run's artifact; removed once the
        artifact is in place."""
        return self.work_root / run_id

    def target_dir(self, target_id: str) -> Path:
        return self.targets_dir / target_id

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def artifact_dir(self, kind: str, artifact_id: str) -> Path:
        return (self.targets_dir if kind == "target" else self.runs_dir) / artifact_id

