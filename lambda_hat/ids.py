"""Content IDs: sha256 of RFC 8785 canonical JSON of a resolved spec, tagged with type and schema.

An ID depends on the resolved spec alone (for a user's model, `kind: python`, that spec holds
the digests of its code and data: `user_models.py`): never on paths, times, code or package versions
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

from lambda_hat.specs import ID_NEUTRAL, NOT_HASHED, PosteriorSpec, RunSpec, SamplerRun, TargetSpec

TARGET_SCHEMA = "lambda_hat.target/1"
RUN_SCHEMA = "lambda_hat.run/1"
TRAJECTORY_SCHEMA = "lambda_hat.trajectory/1"
PREFIXES = {"target": "tgt_", "run": "run_", "trajectory": "traj_"}
HEX_CHARS = 12


def is_artifact_id(name: str) -> bool:
    """Whether `name` has the shape of a target's or a run's ID (tgt_/run_ and the hex digits)."""
    prefix, _, digits = name.partition("_")
    return (prefix + "_") in (PREFIXES["target"], PREFIXES["run"]) and len(digits) == HEX_CHARS and all(
        c in "0123456789abcdef" for c in digits)


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
        if extra.get(NOT_HASHED) or (ID_NEUTRAL in extra and value == extra[ID_NEUTRAL]):
            data.pop(name, None)
        elif isinstance(value, BaseModel) and isinstance(data.get(name), dict):
            _drop_neutral(value, data[name])
    return data


def _digest(schema: str, spec_json: dict) -> str:
    payload = rfc8785.dumps({"schema": schema, "spec": spec_json})
    return hashlib.sha256(payload).hexdigest()[:HEX_CHARS]


def target_id(spec: TargetSpec) -> str:
    return PREFIXES["target"] + _digest(TARGET_SCHEMA, hashed_spec(spec))


def trajectory_id(spec: TargetSpec) -> str | None:
    """The training run a checkpoint target belongs to (None for an ordinary target): the hash of
    its spec without the step, so every checkpoint of one run shares it and a plain target of the
    same spec (trained by another rule) never does."""
    if spec.step is None:
        return None
    return PREFIXES["trajectory"] + _digest(TRAJECTORY_SCHEMA, hashed_spec(spec.trajectory()))


def run_id(spec: RunSpec) -> str:
    # spec.target_id is part of the hashed spec, so a run's ID changes with its target's.
    return PREFIXES["run"] + _digest(RUN_SCHEMA, hashed_spec(spec))


# Stands in for the target ID in a run's canonical payload. RFC 8785 sorts keys by name, never
# by value, so the payload is the same bytes either side of wherever the target ID goes.
_TARGET_ID_SLOT = "tgt_\u2603slot\u2603"


class RunIds:
    """`run_id` for one (sampler, posterior, seed) on many targets, byte for byte.

    `run_id` canonicalises the whole spec per run; in a sweep only the target ID differs
    between the runs of one sampler setting. This canonicalises the setting once, around a slot
    for the target ID, and hashes prefix + target ID + suffix (the prefix's hash state is kept,
    so a run costs one short sha256 update). tests/test_ids_fast.py checks it against `run_id`."""

    __slots__ = ("_head", "_tail")

    def __init__(self, sampler, posterior: PosteriorSpec, seed: int, free: list[str] | None = None, record=None):
        spec = RunSpec(target_id=_TARGET_ID_SLOT, sampler=sampler, posterior=posterior, seed=seed, free=free,
                       record=record)
        payload = rfc8785.dumps({"schema": RUN_SCHEMA, "spec": hashed_spec(spec)})
        slot_json = rfc8785.dumps(_TARGET_ID_SLOT)
        head, slot, tail = payload.partition(slot_json)
        if not slot or slot_json in tail:
            raise AssertionError("the target ID slot must occur exactly once in a run's payload")
        self._head, self._tail = hashlib.sha256(head), tail

    @classmethod
    def of(cls, setting: SamplerRun) -> "RunIds":
        return cls(setting.sampler, setting.posterior, setting.seed, setting.free, setting.record)

    def __call__(self, target_id_json: bytes) -> str:
        """The run's ID on the target whose ID is `target_id_json`, as `canonical(target_id)`."""
        h = self._head.copy()
        h.update(target_id_json)
        h.update(self._tail)
        return PREFIXES["run"] + h.hexdigest()[:HEX_CHARS]


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value (a target ID, for `RunIds`)."""
    return rfc8785.dumps(value)


def id_of_stored_spec(kind: str, spec_json: Any) -> str:
    """The ID a stored (manifest) spec hashes to today. Raises ValueError if it no longer
    validates as a spec of that kind."""
    model = {"target": TargetSpec, "run": RunSpec}[kind].model_validate(spec_json)
    return target_id(model) if kind == "target" else run_id(model)
