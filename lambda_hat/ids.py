"""Content IDs: sha256 of RFC 8785 canonical JSON of a resolved spec, tagged with type and schema.

An ID depends on the resolved spec alone: never on paths, times, code or package versions
(those go in the manifest). Bump a schema version only when the meaning of a resolved
spec changes; doing so deliberately invalidates every cached artifact of that type.

ID stability (an ID is a promise to users' stores). A spec field added after IDs were
published is declared with `specs.added_field(neutral, since=...)`, where `neutral` is the
value that reproduces the behaviour from before the field existed. While the field holds
that value it is left out of the hashed bytes, so every existing spec keeps its ID; any
other value enters the hash and gives a new ID. Its default may differ from the neutral
value only together with a schema bump. `tests/data/id_corpus.json` holds published IDs
that `tests/test_id_stability.py` checks on every run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from pydantic import BaseModel

from lambda_hat.specs import ID_NEUTRAL, RunSpec, TargetSpec

TARGET_SCHEMA = "lambda_hat.target/1"
RUN_SCHEMA = "lambda_hat.run/1"
SCHEMAS = {"target": TARGET_SCHEMA, "run": RUN_SCHEMA}
PREFIXES = {"target": "tgt_", "run": "run_"}
HEX_CHARS = 12


def resolved_spec(spec: BaseModel) -> dict:
    """The JSON-ready resolved spec, every field written out: what manifests store."""
    return spec.model_dump(mode="json")


def hashed_spec(spec: BaseModel) -> dict:
    """The resolved spec less the later-added fields that hold their neutral value."""
    return _drop_neutral(spec, spec.model_dump(mode="json"))


def _drop_neutral(model: BaseModel, data: dict) -> dict:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if ID_NEUTRAL in extra and value == extra[ID_NEUTRAL]:
            data.pop(name, None)
        elif isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            _drop_neutral(value, data[name])
    return data


def _digest(schema: str, spec_json: dict) -> str:
    payload = rfc8785.dumps({"schema": schema, "spec": spec_json})
    return hashlib.sha256(payload).hexdigest()[:HEX_CHARS]


def target_id(spec: TargetSpec) -> str:
    return PREFIXES["target"] + _digest(TARGET_SCHEMA, hashed_spec(spec))


def run_id(spec: RunSpec) -> str:
    # spec.target_id is part of the hashed spec, so a run's ID changes with its target's.
    return PREFIXES["run"] + _digest(RUN_SCHEMA, hashed_spec(spec))


def id_of_stored_spec(kind: str, spec_json: Any) -> str:
    """The ID a stored (manifest) spec hashes to today. Raises ValueError if it no longer
    validates as a spec of that kind."""
    model = {"target": TargetSpec, "run": RunSpec}[kind].model_validate(spec_json)
    return target_id(model) if kind == "target" else run_id(model)
