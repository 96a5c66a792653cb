"""The manifest: one typed, versioned record per artifact, written last by the worker.

Workers build a `Manifest`, the store writes it (with per-array checksums and a checksum of
the manifest itself), the index ingests it (its columns derive from the models below) and
`lh verify` checks it. Version 1 manifests (lambda-hat 0.1, no self-checksum) still load.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lambda_hat.errors import ManifestError

MANIFEST_VERSION = 2
ArtifactKind = Literal["target", "run"]


class CodeInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    sha: str | None = None
    dirty: bool | None = None


class _Record(BaseModel):
    # Samplers and later versions add their own entries; the declared ones are typed and
    # become index columns, the rest stays in the manifest (and the `metrics` JSON column).
    model_config = ConfigDict(extra="allow")


class TargetMetrics(_Record):
    n_params: int | None = None
    n_data: int | None = None
    L0: float | None = None
    llc_true: float | None = None
    final_train_loss: float | None = None
    test_loss: float | None = None
    train_steps: int | None = None
    # w* quality (lambda-hat 0.2, `science/wstar.py`); absent (NULL) in older manifests.
    grad_norm: float | None = None  # ‖∇L_n(w*)‖
    hess_min_eig: float | None = None  # extreme Hessian eigenvalues of L_n at w*
    hess_max_eig: float | None = None
    hess_method: str | None = None  # "dense" or "lanczos"
    descent_gap: float | None = None  # L0 − L_n after L-BFGS from w*: nβ·descent_gap ≈ λ̂'s bias
    w_star_status: str | None = None  # "ok", "not_stationary" or "not_minimum"
    w_star_reason: str | None = None
    llc_multiplicity: int | None = None  # polynomial: multiplicity m of the exact λ
    L0_refined: float | None = None  # dln: L_n at the teacher refined to the nearest minimum
    trajectory_id: str | None = None  # a checkpoint target's training run (`ids.trajectory_id`)
    trained_from_step: int | None = None  # a checkpoint's build resumed from this stored step (0: from the start)


class TargetTimings(_Record):
    build_sec: float | None = None


class RunMetrics(_Record):
    draws: int | None = None
    beta: float | None = None
    n_beta: float | None = None
    n_data: int | None = None
    n_params: int | None = None
    L0: float | None = None
    llc_mean: float | None = None
    llc_std: float | None = None
    llc_sem: float | None = None
    llc_true: float | None = None
    llc_ref: float | None = None  # exact finite-n expectation of λ̂ under the run's posterior, where known
    llc_ref_se: float | None = None  # its numerical error
    llc_ref_method: str | None = None
    rel_error: float | None = None  # against llc_ref where there is one, else llc_true
    restrict: str | None = None  # a restricted run's free leaves, comma-joined (n_params counts them)
    # recorded per-example losses (`record.per_example`; science/per_example.py): how many examples,
    # the singular fluctuation ν and WAIC (nats per example), each with its standard error
    examples_recorded: int | None = None
    nu: float | None = None
    nu_se: float | None = None
    waic: float | None = None
    waic_se: float | None = None
    # ... and on held-out examples (`record.per_example.heldout`): how many, and the Bayes
    # generalisation loss of the predictive WAIC estimates, measured there, with its standard error
    heldout_recorded: int | None = None
    gen_loss: float | None = None
    gen_loss_se: float | None = None
    ess_bulk: float | None = None
    ess_tail: float | None = None
    r_hat: float | None = None
    step_size: float | None = None
    accept_rate_mean: float | None = None
    divergences: int | None = None
    divergence_rate: float | None = None
    nonfinite_draws: int | None = None
    total_fge: float | None = None
    walltime_sec: float | None = None
    compile_sec: float | None = None
    sample_sec: float | None = None
    status_reason: str | None = None  # why a run is not `ok` (e.g. "r_hat 1.02 > 1.01")


class RunTimings(_Record):
    sample_job_sec: float | None = None


METRICS = {"target": TargetMetrics, "run": RunMetrics}
TIMINGS = {"target": TargetTimings, "run": RunTimings}


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    manifest_version: int = 1
    id: str
    type: ArtifactKind
    spec_schema: str | None = Field(None, alias="schema")
    spec: dict[str, Any]
    status: str = "ok"
    metrics: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    arrays: dict[str, list[int]] = {}
    checksums: dict[str, str] = {}
    code: CodeInfo = CodeInfo()
    packages: dict[str, str | None] = {}
    python: str | None = None
    host: str | None = None
    created_at: str | None = None
    manifest_sha256: str | None = None

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def self_checksum(data: dict) -> str:
    """sha256 of the manifest's JSON without its own checksum field (sorted keys, compact)."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_manifest(text: str | bytes, where: str) -> tuple[Manifest, dict]:
    """The typed manifest and the raw dict it came from. Raises ManifestError."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ManifestError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: not a JSON object")
    try:
        return Manifest.model_validate(raw), raw
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ManifestError(f"{where}: {loc}: {first['msg']}") from None
