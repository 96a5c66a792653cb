"""Content IDs: sha256 of RFC 8785 canonical JSON of a resolved spec, tagged with type and schema.

An ID depends on the resolved spec alone: never on paths, times, code or package versions
(those go in the manifest). Bump a schema version only when the meaning of a resolved
spec changes; doing so deliberately invalidates every cached artifact of that type.
"""

from __future__ import annotations

import hashlib

import rfc8785

from lambda_hat.specs import RunSpec, TargetSpec

TARGET_SCHEMA = "lambda_hat.target/1"
RUN_SCHEMA = "lambda_hat.run/1"
HEX_CHARS = 12


def canonical_spec(spec: TargetSpec | RunSpec) -> dict:
    """The JSON-ready resolved spec that is hashed and stored in manifests."""
    return spec.model_dump(mode="json")


def _digest(schema: str, spec_json: dict) -> str:
    payload = rfc8785.dumps({"schema": schema, "spec": spec_json})
    return hashlib.sha256(payload).hexdigest()[:HEX_CHARS]


def target_id(spec: TargetSpec) -> str:
    return "tgt_" + _digest(TARGET_SCHEMA, canonical_spec(spec))


def run_id(spec: RunSpec) -> str:
    # spec.target_id is part of the hashed spec, so a run's ID changes with its target's.
    return "run_" + _digest(RUN_SCHEMA, canonical_spec(spec))
