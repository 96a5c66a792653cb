"""Issue 28, items 9, 10, 11 and 15: inputs that cannot be honoured are bad input.

A float32 spec's random key keeps only 32 bits of its seed, so a seed outside 0 ... 2^32 - 1 would
compute what another seed computes under a different ID: refused when the sweep is loaded. A
float64 spec keeps all 64 bits, so every seed it accepted before is still accepted. n_data < 2
(β = 1/log n) is refused too. γ = 0 at a w* without curvature is allowed and starts finite.
A memory error names the field that made the job large."""

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.specs import SEED_MAX_FLOAT32

S = "samplers: [{name: hmc}]\n"
T = "targets: [{model: small, data: small}]\n"
X32 = "jax_enable_x64: false\n"


def _plan(tmp_path, monkeypatch, text: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(text)
    return CliRunner().invoke(app, ["plan", "sweep.yaml", "--store", "store"])


def _assert_refused(result, tmp_path, fragment: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sweep.yaml: " in lines[0] and fragment in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # nothing written
    return lines[0]


UNHONOURABLE_SEEDS = [
    ("target seed 2^32 + 5, x64 off", X32 + "targets: [{model: small, seed: 4294967301}]\n" + S,
     "targets[0]: seed: 4294967301 does not fit the 32-bit random key of a float32 spec (it would give the "
     "numbers of seed 5)"),
    ("run seed 2^32 + 5, x64 off", X32 + T + "samplers: [{name: hmc, seed: 4294967301}]\n",
     "samplers[0] (hmc): seed: 4294967301 does not fit the 32-bit random key"),
    ("negative target seed, float32", "targets: [{model: small, dtype: float32, seed: -1}]\n" + S,
     "targets[0]: seed: -1 does not fit the 32-bit random key of a float32 spec (it would give the numbers of "
     "seed 4294967295)"),
    ("negative run seed, float32 sampler", T + "samplers: [{name: sgld, dtype: float32, seed: -7}]\n",
     "samplers[0] (sgld): seed: -7 does not fit"),
    ("2^32 in a target grid", X32 + "targets: [{model: small, grid: {seed: [1, 4294967296]}}]\n" + S,
     "targets[0] grid{seed=4294967296}: seed: 4294967296 does not fit"),
    ("2^32 in a sampler grid", X32 + T + "samplers: [{name: hmc, grid: {seed: [4294967296]}}]\n",
     "samplers[0] (hmc) grid{seed=4294967296}: seed: 4294967296 does not fit"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,text,fragment", UNHONOURABLE_SEEDS, ids=[c[0] for c in UNHONOURABLE_SEEDS])
def test_seed_beyond_the_key_width_of_its_dtype_is_refused(tmp_path, monkeypatch, name, text, fragment):
    _assert_refused(_plan(tmp_path, monkeypatch, text), tmp_path, fragment)


HONOURED_SEEDS = [
    ("largest float32 seeds", X32 + f"targets: [{{model: small, seed: {SEED_MAX_FLOAT32}}}]\n"
     f"samplers: [{{name: hmc, seed: {SEED_MAX_FLOAT32}}}]\n"),
    ("seed 0 with x64 off", X32 + "targets: [{model: small, seed: 0}]\nsamplers: [{name: hmc, seed: 0}]\n"),
    # float64 keys keep 64 bits: what was accepted before still is (no sweep or store is broken).
    ("float64 seeds beyond 32 bits", "targets: [{model: small, seed: 4294967301}]\n"
     "samplers: [{name: hmc, seed: -1}, {name: sgld, seed: 9007199254740991}]\n"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,text", HONOURED_SEEDS, ids=[c[0] for c in HONOURED_SEEDS])
def test_seeds_the_key_holds_still_plan(tmp_path, monkeypatch, name, text):
    result = _plan(tmp_path, monkeypatch, text)
    assert result.exit_code == 0, (result.output, result.exception)


def test_seeds_valid_for_float32_give_the_same_key_in_both_precisions():
    """Why 0 ... 2^32 - 1 is the float32 rule: those seeds give one key whichever x64 mode a spec
    runs in (models.precision), and the ones past either end repeat a key of a seed inside."""
    import jax
    import numpy as np

    from lambda_hat.science.models import precision

    def key(seed, dtype):
        with precision(dtype):
            return np.asarray(jax.random.key_data(jax.random.PRNGKey(seed))).tolist()

    for seed in (0, 5, 2**31 - 1, 2**31, SEED_MAX_FLOAT32):
        assert key(seed, "float32") == key(seed, "float64"), seed
    assert key(2**32 + 5, "float32") == key(5, "float32")
    assert key(-1, "float32") == key(SEED_MAX_FLOAT32, "float32")
    assert key(2**32 + 5, "float64") != key(5, "float64")


# --------------------------------------------------------------------------- n_data


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["data", "overrides", "grid"])
def test_n_data_below_2_is_refused(tmp_path, monkeypatch, where):
    entry = {"data": "{model: small, data: {n_data: 1}}",
             "overrides": "{model: small, data: small, overrides: {data: {n_data: 1}}}",
             "grid": "{model: {kind: dln, widths: [2, 2]}, grid: {data.n_data: [2, 1]}}"}[where]
    line = _assert_refused(_plan(tmp_path, monkeypatch, f"targets: [{entry}]\n" + S), tmp_path,
                           "data.n_data: Input should be greater than or equal to 2")
    assert "targets[0]" in line


@pytest.mark.timeout(30)
def test_n_data_2_plans(tmp_path, monkeypatch):
    result = _plan(tmp_path, monkeypatch, "targets: [{model: small, data: {n_data: 2}}]\n" + S)
    assert result.exit_code == 0, (result.output, result.exception)


# --------------------------------------------------------------------------- memory errors name the field at fault

FIELD_AT_FAULT = [
    ("chains: 1000000", T + "samplers: [{name: hmc, chains: 1000000}]\n", "samplers[0] (hmc): chains: "),
    ("sgld chains: 1000000", T + "samplers: [{name: sgld, chains: 1000000}]\n", "samplers[0] (sgld): chains: "),
    ("draws: 10^9", T + "samplers: [{name: mclmc, draws: 1000000000}]\n", "samplers[0] (mclmc): draws: "),
    ("sgld steps: 10^11", T + "samplers: [{name: sgld, steps: 100000000000}]\n", "samplers[0] (sgld): steps: "),
    ("model in_dim: 10^8", "targets: [{model: {in_dim: 100000000}}]\n" + S, "targets[0]: model.in_dim: "),
    ("model out_dim: 10^8", "targets: [{model: {out_dim: 100000000}}]\n" + S, "targets[0]: model.out_dim: "),
    ("dln input width 10^8", "targets: [{model: {kind: dln, widths: [100000000, 1]}}]\n" + S,
     "targets[0]: model.widths: "),
    ("n_test: 10^9", "targets: [{model: small, data: {n_test: 1000000000}}]\n" + S, "targets[0]: data.n_test: "),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,text,fragment", FIELD_AT_FAULT, ids=[c[0] for c in FIELD_AT_FAULT])
def test_memory_error_names_the_field_at_fault(tmp_path, monkeypatch, name, text, fragment):
    line = _assert_refused(_plan(tmp_path, monkeypatch, text), tmp_path, fragment)
    assert "needs at least" in line


# --------------------------------------------------------------------------- γ = 0


@pytest.mark.timeout(120)
def test_gamma_0_at_a_w_star_without_curvature_starts_finite():
    """polynomial powers [64] at w* = 0: L_n is flat to order 128, so tr H = 0 and with γ = 0 the
    start scale 1/√(γ + nβκ) was infinite (every draw non-finite). Now the start is finite, and
    is the one the default γ = 1 gives there (its width, 1/√1, then the same halvings)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lambda_hat.science.models import precision
    from lambda_hat.science.posterior import dispersed_start, flat_model, make_full_loss
    from lambda_hat.specs import PosteriorSpec, TargetSpec

    spec = TargetSpec(model={"kind": "polynomial", "powers": [64]}, data={"n_data": 100})
    with precision(spec.dtype):
        # what build_target makes of it: w* = 0, Y pure noise
        X = jax.random.normal(jax.random.PRNGKey(0), (spec.data.n_data, 1), jnp.float64)
        Y = spec.data.noise_scale * jax.random.normal(jax.random.PRNGKey(1), (spec.data.n_data, 1), jnp.float64)
        w_star, predict = flat_model({"w": jnp.zeros(1, jnp.float64)}, spec.model)
        loss = make_full_loss(predict, X, Y)
        n_beta = spec.data.n_data * PosteriorSpec(gamma=0.0).beta(spec.data.n_data)
        start = jax.jit(lambda key, gamma: dispersed_start(key, loss, w_star, n_beta, gamma))
        for i in range(3):
            key = jax.random.PRNGKey(i)
            flat = np.asarray(start(key, jnp.asarray(0.0, w_star.dtype)))
            assert np.all(np.isfinite(flat)) and np.any(flat != np.asarray(w_star)), flat
            assert flat.tobytes() == np.asarray(start(key, jnp.asarray(1.0, w_star.dtype))).tobytes()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gamma_0_run_on_a_proper_flat_posterior_has_finite_draws():
    """The issue's case end to end: HMC with posterior {gamma: 0} on polynomial [64]."""
    import numpy as np

    from lambda_hat.ids import target_id
    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import HMCSpec, PosteriorSpec, RunSpec, TargetSpec

    spec = TargetSpec(model={"kind": "polynomial", "powers": [64]}, data={"n_data": 200})
    run = RunSpec(target_id=target_id(spec), sampler=HMCSpec(chains=2, draws=20, warmup=20),
                  posterior=PosteriorSpec(gamma=0.0))
    result = sample_run(run, spec, build_target(spec))
    assert result.metrics["status"] != "nonfinite", result.metrics
    assert np.all(np.isfinite(np.asarray(result.traces["llc"])))
