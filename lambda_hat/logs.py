"""Where `lh execute` writes each job's output, and how `lh status` reads the names back: one
home for the naming. A target build's log is `build_target/<tgt_id>.log`, a run's
`run_sampler/<tgt_id>_<sampler>_<run_id>.log`, each with an `.err` beside it."""

from __future__ import annotations

from pathlib import Path

FOLDERS = {"target": "build_target", "run": "run_sampler"}


# The first line of every job's .log: the store the job writes to, resolved (the worker's
# `execute.apps.job_logs` writes it; `lh status` reads it to tell stores sharing a logs folder apart).
STORE_LINE = "store "


def job_logs(root: Path, kind: str, artifact_id: str, target_id: str | None = None,
             sampler: str | None = None) -> tuple[Path, Path]:
    """(.log, .err) of one job: a target's build, or a run (which needs its target and sampler)."""
    if kind == "target":
        base = root / FOLDERS["target"] / artifact_id
    else:
        base = root / FOLDERS["run"] / f"{target_id}_{sampler}_{artifact_id}"
    return base.with_suffix(".log"), base.with_suffix(".err")


def named_by(path: Path, kind: str) -> tuple[str, str | None]:
    """(artifact ID, its target's ID for a run) from a job log's name (`job_logs` read back)."""
    if kind == "target":
        return path.stem, None
    head, _, run_hex = path.stem.rpartition("_run_")
    return "run_" + run_hex, head.rsplit("_", 1)[0]
