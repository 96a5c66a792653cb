"""The chain runner (science/engine.py): PRNG streams, segments, resume from a checkpoint, and a
fifth sampler added as one module + one spec class with no change to the pipeline."""

from __future__ import annotations

import json
import sys
import types
from typing import Literal

import numpy as np
import pytest
from lambda_hat import registry
from lambda_hat.specs import (
    DataSpec,
    HMCSpec,
    MCLMCSpec,
    MLPSpec,
    NUTSSpec,
    RunSpec,
    SamplerSpecBase,
    SGLDSpec,
    TargetSpec,
    TrainingSpec,
)

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from quadratic import D, GAMMA, L0, N_BETA, _quadratic, _theory  # noqa: E402

TINY = TargetSpec(model=MLPSpec(in_dim=3, depth=1, widths=[4]), data=DataSpec(n_data=200, n_test=50),
                  training=TrainingSpec(steps=300, learning_rate=0.01), seed=3)

# Small budgets, every warmup path that keeps state across segments (adapted mass matrix and step
# size, tuned MCLMC, RMSProp moments frozen into the preconditioner).
SAMPLERS = {
    "sgld": SGLDSpec(chains=2, steps=700, warmup=200, eval_every=10, batch_size=50, precond="rmsprop"),
    "hmc": HMCSpec(chains=2, draws=50, warmup=60, num_integration_steps=5),
    "nuts": NUTSSpec(chains=2, draws=50, warmup=60, max_num_doublings=5),
    "mclmc": MCLMCSpec(chains=2, draws=50, num_steps=100),
}


@pytest.fixture(scope="module")
def tiny():
    from lambda_hat.science import build_target

    return build_target(TINY)


@pytest.mark.parametrize("partitionable", [True, False])
def test_draw_keys_are_slices_of_one_split(partitionable):
    import jax

    from lambda_hat.science.engine import draw_keys

    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        key = jax.random.PRNGKey(11)
        total = 1003
        full = np.asarray(jax.random.split(key, total))
        for first, length in [(0, 10), (500, 7), (1000, 3)]:
            got = np.asarray(jax.jit(draw_keys, static_argnums=(2, 3))(key, first, length, total))
            np.testing.assert_array_equal(got, full[first:first + length])
        # past the end: keys exist (their draws are masked), the ones inside still match
        got = np.asarray(draw_keys(key, 1000, 5, total))
        np.testing.assert_array_equal(got[:3], full[1000:])
    finally:
        jax.config.update("jax_threefry_partitionable", old)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_segments_and_resume_are_bit_identical(tiny, name):
    """The same run in one segment, in segments of 7 draws (the last one partial, masked), and
    resumed from the checkpoint after its second segment: the same traces and metrics."""
    from lambda_hat.science import sample_run

    spec = SAMPLERS[name]
    run = RunSpec(target_id="t", sampler=spec, seed=2)
    whole = sample_run(run, TINY, tiny, segment_draws=spec.draws)
    saved = []
    cut = sample_run(run, TINY, tiny, segment_draws=7, on_segment=lambda c, t: saved.append((c, t)))
    assert [c.draws_done for c, _ in saved] == [min(7 * i, spec.draws) for i in range(1, len(saved) + 1)]
    ckpt = saved[1][0]
    so_far = {k: np.concatenate([t[k] for _, t in saved[:2]], axis=1) for k in saved[0][1]}
    resumed = sample_run(run, TINY, tiny, segment_draws=7, resume=(ckpt, so_far))
    for other in (cut, resumed):
        assert set(other.traces) == set(whole.traces)
        for k in whole.traces:
            if k != "walltime":
                np.testing.assert_array_equal(other.traces[k], whole.traces[k], err_msg=k)
        timing = {"walltime_sec", "compile_sec", "sample_sec", "compile_cache_hit"}
        same = {k: v for k, v in whole.metrics.items() if k not in timing}
        # exact equality, NaN included (json writes it as NaN)
        assert json.dumps({k: other.metrics[k] for k in same}, sort_keys=True) == json.dumps(same, sort_keys=True)


# --------------------------------------------------------------------------- a fifth sampler

def _langevin_module():
    """Unadjusted full-batch Langevin, w ← w + (ε/2)·∇log p(w) + √ε·ξ: the whole sampler."""
    import jax
    import jax.numpy as jnp

    from lambda_hat.science.engine import Algorithm, no_warmup
    from lambda_hat.science.posterior import make_logdensity

    mod = types.ModuleType("toy_langevin")

    def from_spec(s):
        def keys(chain_key):
            k_init, k_draw = jax.random.split(chain_key)
            return k_init, None, k_draw

        def step(key, w, params, problem):
            logdensity = make_logdensity(problem.loss_fn, problem.w_star, problem.n_beta, problem.gamma)
            eps = s.step_size
            w = w + 0.5 * eps * jax.grad(logdensity)(w) + jnp.sqrt(eps) * jax.random.normal(key, w.shape, w.dtype)
            return w, {"loss": problem.loss_fn(w)}

        return Algorithm(keys, lambda key, w0, problem: w0, no_warmup, step)

    def costs(s, traces, n, loss_eval_fge):
        chains, draws = traces["loss"].shape
        return np.zeros(chains), np.full((chains, draws), 1.0 + loss_eval_fge)

    mod.from_spec, mod.costs = from_spec, costs
    return mod


class LangevinSpec(SamplerSpecBase):
    name: Literal["langevin"] = "langevin"
    draws: int = 2000
    step_size: float = 0.002


@pytest.fixture
def langevin():
    """The toy registered as a sampler (spec class and module) for the test, removed after it."""
    toy = _langevin_module()
    registry.register_sampler(registry.Sampler(LangevinSpec, module=toy))
    yield toy
    registry.unregister_sampler("langevin")


def test_a_fifth_sampler_is_one_module_and_one_spec(tiny, jax64, langevin):
    """Registered with its spec class, the toy's runs pass full validation and run through
    `sample_run` unchanged, and on a quadratic loss its λ̂ matches the exact stationary law of the
    discretised chain: per coordinate (a = nβh + γ) the variance is ε / (1 − (1 − εa/2)²)."""
    from lambda_hat.science import engine, sample_run
    from lambda_hat.science.llc import llc_from_loss, summarize
    from lambda_hat.science.pipeline import LOSS_EVAL_FGE
    from lambda_hat.science.posterior import INIT_FGE

    toy = langevin
    run = RunSpec.model_validate({"target_id": "t", "sampler": {"name": "langevin", "chains": 2, "draws": 30},
                                  "seed": 1})
    spec = run.sampler
    assert isinstance(spec, LangevinSpec)
    r = sample_run(run, TINY, tiny, segment_draws=8)
    assert r.traces["loss"].shape == (2, 30) and np.isfinite(r.traces["llc"]).all()
    assert r.metrics["sampler"] == "langevin"
    assert r.metrics["total_fge"] == pytest.approx(2 * (INIT_FGE + 30 * (1 + LOSS_EVAL_FGE)))

    h, w_star, loss = _quadratic(jax64)
    spec = LangevinSpec(step_size=0.002, draws=4000)
    problem = engine.problem_from_loss(loss, w_star, N_BETA, GAMMA)
    traces = jax64.jit(lambda k: engine.run_chains(toy.from_spec(spec), problem, k, spec.chains, spec.draws))(
        jax64.random.PRNGKey(0))
    s = summarize(llc_from_loss(np.asarray(traces["loss"]), L0, N_BETA))
    a = N_BETA * np.asarray(h) + GAMMA
    eps = spec.step_size
    exact_discrete = float(0.5 * N_BETA * np.sum(np.asarray(h) * eps / (1 - (1 - eps * a / 2) ** 2)))
    assert s["llc_sem"] < 0.05 * _theory(h)  # the test has power
    # tolerance: 4 Monte-Carlo standard errors of the discretised chain's exact value
    assert abs(s["llc_mean"] - exact_discrete) < 4 * s["llc_sem"], (s["llc_mean"], exact_discrete, s["llc_sem"])
    assert D == len(np.asarray(h))
