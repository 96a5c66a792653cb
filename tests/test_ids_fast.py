"""The planner's run IDs (ids.RunIds: each sampler setting canonicalised once) equal the
reference `ids.run_id` byte for byte, on random specs and on the published corpus."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_hat.ids import RunIds, canonical, run_id
from lambda_hat.planner import expand
from lambda_hat.specs import SAFE_INT_MAX, PosteriorSpec, RunSpec, SamplerRun
from lambda_hat.sweep import SAMPLER_CLASSES, sweep_from_dict

CORPUS = json.loads((Path(__file__).parent / "data" / "id_corpus.json").read_text())["specs"]

ints = st.integers(-SAFE_INT_MAX, SAFE_INT_MAX)
# Floats whose RFC 8785 form is not their repr: exponents, subnormals, integral values, -0.0.
positive = st.one_of(st.floats(min_value=5e-324, max_value=1e300, allow_nan=False, allow_infinity=False),
                     st.sampled_from([1e-7, 1e21, 1e-300, 2.0, 0.1, 123456789.0]))
# Any text: quotes, backslashes, control characters, astral code points (RFC 8785 escapes some).
target_ids = st.one_of(st.from_regex(r"tgt_[0-9a-f]{12}", fullmatch=True), st.text(max_size=30))


@st.composite
def samplers(draw):
    name = draw(st.sampled_from(sorted(SAMPLER_CLASSES)))
    fields = {"chains": draw(st.integers(1, 64)), "dtype": draw(st.sampled_from(["float32", "float64"]))}
    if name == "sgld":
        steps = draw(st.integers(100, 10**6))
        fields.update(steps=steps, warmup=draw(st.integers(0, steps // 2)), eval_every=1,
                      step_size=draw(st.one_of(st.none(), positive)),
                      precond=draw(st.sampled_from(["none", "rmsprop", "adam"])))
    elif name in ("hmc", "nuts"):
        fields.update(draws=draw(st.integers(4, 10**6)), step_size=draw(positive),
                      target_acceptance=draw(st.floats(0.01, 0.99)), adapt_mass_matrix=draw(st.booleans()))
    else:
        fields.update(L=draw(positive), step_size=draw(positive), tune=draw(st.booleans()),
                      frac_tune2=draw(st.floats(0, 1)))
    return SAMPLER_CLASSES[name](name=name, **fields)


posteriors = st.builds(PosteriorSpec, beta_mode=st.sampled_from(["1_over_log_n", "fixed"]), beta0=positive,
                       gamma=st.one_of(st.just(0.0), st.just(-0.0), positive))


@settings(max_examples=300, deadline=None)
@given(sampler=samplers(), posterior=posteriors, seed=ints, tids=st.lists(target_ids, min_size=1, max_size=4))
def test_fast_run_ids_equal_the_reference(sampler, posterior, seed, tids):
    ids = RunIds.of(SamplerRun(sampler=sampler, posterior=posterior, seed=seed))
    for tid in tids:
        reference = run_id(RunSpec(target_id=tid, sampler=sampler, posterior=posterior, seed=seed))
        assert ids(canonical(tid)) == reference


def test_fast_run_ids_reproduce_the_published_corpus():
    runs = [e for e in CORPUS if e["type"] == "run"]
    assert runs
    for entry in runs:
        spec = RunSpec.model_validate(entry["spec"])
        fast = RunIds(spec.sampler, spec.posterior, spec.seed)(canonical(spec.target_id))
        assert fast == entry["id"]


def test_expand_gives_the_reference_ids_and_specs():
    sweep = sweep_from_dict({
        "targets": [{"model": "small", "data": "small", "grid": {"seed": [1, 2, 3]}}],
        "samplers": [{"name": "sgld", "grid": {"seed": [0, 7]}}, {"name": "hmc", "posterior": {"gamma": 100.0}}],
    })
    ex = expand(sweep)
    assert len(ex.runs) == 9 and len({r.run_id for r in ex.runs}) == 9
    for r in ex.runs:
        assert r.spec.target_id == r.target_id
        assert run_id(r.spec) == r.run_id
