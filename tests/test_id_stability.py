"""ID stability: published IDs never change, and a field added with its neutral value
leaves every existing ID as it was (ids.py states the policy)."""

import json
from pathlib import Path
from typing import Literal

import pytest

from lambda_hat.ids import hashed_spec, id_of_stored_spec, resolved_spec, run_id, target_id
from lambda_hat.specs import ID_NEUTRAL, DataSpec, RunSpec, TargetSpec, added_field

CORPUS = json.loads((Path(__file__).parent / "data" / "id_corpus.json").read_text())["specs"]


def test_corpus_covers_every_sampler_and_model_kind():
    runs = [c["spec"] for c in CORPUS if c["type"] == "run"]
    targets = [c["spec"] for c in CORPUS if c["type"] == "target"]
    assert {r["sampler"]["name"] for r in runs} == {"sgld", "hmc", "nuts", "mclmc"}
    assert {t["model"]["kind"] for t in targets} == {"mlp", "dln"}
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("entry", CORPUS, ids=[c["id"] for c in CORPUS])
def test_published_ids_do_not_change(entry):
    assert id_of_stored_spec(entry["type"], entry["spec"]) == entry["id"]


def test_resolved_specs_round_trip_unchanged():
    # A stored spec, validated again, is the same resolved spec: nothing is re-resolved differently.
    # Fields added since (`specs.added_field`, e.g. training.grad_tol) appear at their neutral
    # value, and only there: less those, it is the stored spec exactly.
    for entry in CORPUS:
        model = (TargetSpec if entry["type"] == "target" else RunSpec).model_validate(entry["spec"])
        assert hashed_spec(model) == entry["spec"]
        added = _added_at_neutral(resolved_spec(model), entry["spec"])
        assert all(v == _neutral(model, path) for path, v in added.items()), added


def _neutral(model, path: str):
    """The declared neutral value (`added_field`) of the field at dotted `path` in `model`."""
    *parents, name = path.split(".")
    for p in parents:
        model = getattr(model, p)
    extra = type(model).model_fields[name].json_schema_extra or {}
    assert ID_NEUTRAL in extra, f"{path} is not an added field"
    return extra[ID_NEUTRAL]


def _added_at_neutral(resolved: dict, stored: dict, prefix: str = "") -> dict:
    """The keys `resolved` has and `stored` lacks, with their values (dotted paths)."""
    out = {}
    for k, v in resolved.items():
        if k not in stored:
            out[prefix + k] = v
        elif isinstance(v, dict) and isinstance(stored[k], dict):
            out.update(_added_at_neutral(v, stored[k], f"{prefix}{k}."))
    return out


class DataSpecWithThinning(DataSpec):
    # A field as a later version would add it: `1` reproduces the old behaviour.
    thin: int = added_field(1, since="test", ge=1)
    shuffle: Literal["none", "once"] = added_field("none", since="test")


class TargetSpecWithThinning(TargetSpec):
    data: DataSpecWithThinning = DataSpecWithThinning()


def test_added_field_at_neutral_value_keeps_every_target_id():
    for entry in (c for c in CORPUS if c["type"] == "target"):
        newer = TargetSpecWithThinning.model_validate(entry["spec"])
        assert newer.data.thin == 1
        assert "thin" in resolved_spec(newer)["data"]  # stored in manifests...
        assert "thin" not in hashed_spec(newer)["data"]  # ...but not hashed
        assert target_id(newer) == entry["id"]


def test_added_field_away_from_neutral_changes_the_id():
    entry = next(c for c in CORPUS if c["type"] == "target")
    ids = set()
    for update in ({}, {"thin": 2}, {"shuffle": "once"}, {"thin": 2, "shuffle": "once"}):
        spec = json.loads(json.dumps(entry["spec"]))
        spec["data"].update(update)
        ids.add(target_id(TargetSpecWithThinning.model_validate(spec)))
    assert len(ids) == 4 and entry["id"] in ids


def test_run_id_covers_target_id():
    entry = next(c for c in CORPUS if c["type"] == "run")
    spec = RunSpec.model_validate({**entry["spec"], "target_id": "tgt_000000000000"})
    assert run_id(spec) != entry["id"]
