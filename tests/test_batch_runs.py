"""`pipeline.sample_runs`: runs of one target that differ only in seed, β, γ or the sampler's runtime
scalars, sampled as one vmapped program, give each run the numbers it gets alone (equal in law;
here, on short runs, to within rounding), with its own γ, β and step size."""

from __future__ import annotations

import pytest

from lambda_hat.specs import RunSpec, TargetSpec

T = TargetSpec(model={"kind": "dln", "widths": [5, 3, 5]}, teacher={"rank": 1}, data={"n_data": 1000}, seed=0)


@pytest.fixture(scope="module")
def arrays(jax64):
    from lambda_hat.science import build_target

    return build_target(T)


@pytest.mark.parametrize("sampler", [
    {"name": "sgld", "steps": 2000, "warmup": 500},
    {"name": "hmc", "draws": 60, "warmup": 60},
])
def test_batched_runs_match_runs_alone(arrays, sampler):
    from lambda_hat.science.pipeline import sample_run, sample_runs

    runs = [RunSpec(target_id="t", sampler=sampler, seed=s, posterior=p)
            for s, p in ((1, {}), (2, {}), (3, {"gamma": 10.0}), (4, {"beta_mode": "1_over_log_n", "beta0": 2.0}))]
    if sampler["name"] == "sgld":
        runs.append(RunSpec(target_id="t", sampler={**sampler, "step_size_nbeta": 0.01}, seed=5))
    alone = [sample_run(r, T, arrays).metrics for r in runs]
    together = [r.metrics for r in sample_runs(runs, T, arrays)]
    assert len(together) == len(runs)
    for a, b in zip(alone, together):
        for k in ("gamma", "beta", "n_beta", "step_size", "total_fge"):
            assert b[k] == pytest.approx(a[k], rel=1e-12, nan_ok=True), k
        # Equal in law; in practice equal to rounding, which HMC's trajectories amplify over its
        # draws (1e-6 here; 1 % leaves room for another CPU while still catching a run given
        # another run's seed, γ or β: those move λ̂ by 5-20 % here).
        assert b["llc_mean"] == pytest.approx(a["llc_mean"], rel=1e-6 if sampler["name"] == "sgld" else 1e-2), \
            (a["llc_mean"], b["llc_mean"])
    # the runs really differ (seeds, γ, β): a batch that reused one run's inputs would not
    assert len({round(m["llc_mean"], 6) for m in together}) == len(runs)


def test_runs_that_differ_otherwise_are_refused(arrays):
    from lambda_hat.science.pipeline import sample_runs

    runs = [RunSpec(target_id="t", sampler={"name": "hmc", "draws": 10, "warmup": 10}, seed=1),
            RunSpec(target_id="t", sampler={"name": "hmc", "draws": 20, "warmup": 10}, seed=2)]
    with pytest.raises(ValueError, match="may differ only in seed"):
        sample_runs(runs, T, arrays)


def test_execute_batch_runs_end_to_end(tmp_path):
    """`lh execute --batch-runs`: four SGLD seeds of one target go out as one job, an HMC run on its
    own; every run gets its own artifact, manifest and results row, a rerun has nothing to do, and
    each batched run's λ̂ matches the same run sampled alone in another store."""
    import json

    import pyarrow.parquet as pq

    from lhproc import TARGET, lh, start

    sgld = "  - {name: sgld, chains: 2, grid: {seed: [1, 2, 3, 4]}, overrides: {steps: 400, warmup: 100, eval_every: 10}}\n"
    sweep = ("store_root: store\ntargets:\n" + TARGET + "samplers:\n" + sgld +
             "  - {name: hmc, chains: 2, overrides: {draws: 20, warmup: 20}}\n")
    # the same SGLD runs, each alone, in a second store (its own directory and driver), sampled
    # while the batched execute runs: their λ̂ are compared below
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "s.yaml").write_text("store_root: store\ntargets:\n" + TARGET + "samplers:\n" + sgld)
    alone = start(tmp_path / "alone", "execute", "s.yaml", "--workers", "1")
    (tmp_path / "s.yaml").write_text(sweep)
    out = lh(tmp_path, "execute", "s.yaml", "--workers", "1", "--batch-runs", "-v").stdout
    assert "Submitting 4 sgld runs as one batch" in out, out
    rows = pq.read_table(tmp_path / "results" / "s.parquet").to_pylist()
    assert len(rows) == 5 and len({r["run_id"] for r in rows}) == 5
    runs = tmp_path / "store" / "runs"
    batched = {}
    for d in runs.iterdir():
        m = json.loads((d / "manifest.json").read_text())
        if m["spec"]["sampler"]["name"] == "sgld":
            assert m["timings"]["batch_runs"] == 4
            batched[m["id"]] = m["metrics"]["llc_mean"]
    assert len(batched) == 4
    assert "nothing to do" in lh(tmp_path, "execute", "s.yaml", "--batch-runs").stdout
    alone_out, _ = alone.communicate(timeout=600)
    assert alone.returncode == 0 and "5 jobs completed, 0 failed" in alone_out, alone_out
    for rid, llc in batched.items():
        m = json.loads((tmp_path / "alone" / "store" / "runs" / rid / "manifest.json").read_text())
        assert m["metrics"]["llc_mean"] == pytest.approx(llc, rel=1e-6), rid  # SGLD forgets rounding differences
