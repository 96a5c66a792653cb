"""`lh promote`: the files a 2-target × 2-sampler sweep gets, idempotence, a store still being
written, disagreement marks. Real matplotlib (Agg), real stores, real files."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.promote import promote
from lambda_hat.store.artifacts import write_artifact
from lambda_hat.store.manifest import Manifest
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict

SWEEP = {
    "targets": [{"model": {"kind": "dln", "widths": [3, 2, 3]}, "data": {"n_data": 200}, "grid": {"teacher.rank": [0, 1]}}],
    "samplers": [{"name": "hmc", "overrides": {"draws": 40, "warmup": 10}},
                 {"name": "sgld", "overrides": {"steps": 500, "warmup": 100, "eval_every": 10}}],
}


def traces(rng, sampler, chains=4, draws=40, centre=2.0):
    llc = centre + rng.normal(size=(chains, draws))
    out = {"traces/llc": llc, "traces/loss": llc / 100, "traces/cumulative_fge": np.cumsum(np.full((chains, draws), 10.0), axis=1),
           "traces/walltime": np.cumsum(np.full((chains, draws), 0.01), axis=1)}
    if sampler == "hmc":
        out["traces/energy"] = rng.normal(size=(chains, draws))
        out["traces/diverging"] = np.zeros((chains, draws), bool)
    return out


def write_run(st, run, rng, llc_mean, llc_sem):
    metrics = {"llc_mean": llc_mean, "llc_sem": llc_sem, "r_hat": 1.001, "ess_bulk": 800.0, "draws": 40}
    write_artifact(st.layout.run_dir(run.run_id), traces(rng, run.spec.sampler.name, centre=llc_mean),
                   Manifest(id=run.run_id, type="run", spec=resolved_spec(run.spec), metrics=metrics))


@pytest.fixture
def sweep_store(tmp_path):
    """Target 0 (λ known): hmc and sgld disagree (2.0 vs 3.0, SEM 0.05); target 1: they agree."""
    root = tmp_path / "store"
    ex = expand(sweep_from_dict(SWEEP))
    st = Store.open(root, create=True)
    rng = np.random.default_rng(0)
    for i, t in enumerate(ex.targets):
        metrics = {"n_params": 12, "L0": 0.01, **({"llc_true": 2.5} if i == 0 else {})}
        write_artifact(st.layout.target_dir(t.target_id), {"X": np.zeros((3, 3))},
                       Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec), metrics=metrics))
    values = {(0, "hmc"): (2.0, 0.05), (0, "sgld"): (3.0, 0.05), (1, "hmc"): (2.0, 0.2), (1, "sgld"): (2.1, 0.2)}
    index_of = {t.target_id: i for i, t in enumerate(ex.targets)}
    for r in ex.runs:
        write_run(st, r, rng, *values[(index_of[r.spec.target_id], r.spec.sampler.name)])
    return st, ex


def files(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_two_targets_two_samplers_make_exactly_the_expected_files_once(tmp_path, sweep_store):
    st, ex = sweep_store
    out = tmp_path / "gallery"
    rep = promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    expected = {"index.html", "gallery.md", ".promote.json"}
    expected |= {f"targets/{t.target_id}/compare.png" for t in ex.targets}
    for r in ex.runs:
        plots = ["trace", "running_mean", "rank"] + (["energy"] if r.spec.sampler.name == "hmc" else [])
        expected |= {f"runs/{r.run_id}/{p}.png" for p in plots}
    made = files(out)
    assert set(made) == expected and len(expected) == 19
    assert all(v[1][:8] == b"\x89PNG\r\n\x1a\n" for k, v in made.items() if k.endswith(".png"))
    assert rep.runs == 4 and rep.targets == 2 and len(rep.written) == 18  # .promote.json is bookkeeping

    again = promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    assert again.written == [] and files(out) == made

    # Same inputs, same bytes: with the bookkeeping gone every file is redrawn, none rewritten.
    (out / ".promote.json").unlink()
    redrawn = promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    assert redrawn.written == []
    assert {k: v for k, v in files(out).items() if k != ".promote.json"} == {k: v for k, v in made.items() if k != ".promote.json"}

    # Nothing was written into the store: its artifacts still verify.
    assert st.verify().ok


def test_page_marks_disagreement_links_files_and_names_the_asymptotic_lambda(tmp_path, sweep_store):
    st, ex = sweep_store
    out = tmp_path / "gallery"
    promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    page = (out / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page):
        assert (out / ref).exists(), ref  # every plot and every link to the store resolves
    sections = {t.target_id: page.split(f'<section id="{t.target_id}">')[1].split("</section>")[0] for t in ex.targets}
    first, second = ex.targets
    assert sections[first.target_id].count("✕ disagrees") == 2 and "asymptotic λ = 2.5" in sections[first.target_id]
    assert "✕ disagrees" not in sections[second.target_id] and "asymptotic λ" not in sections[second.target_id]
    assert "deep linear network, widths 3-2-3, teacher rank 0, n = 200" in sections[first.target_id]
    hmc0 = next(r for r in ex.runs if r.spec.target_id == first.target_id and r.spec.sampler.name == "hmc")
    assert "λ̂ = 2.000 ± 0.050 (10.0 SE below the asymptotic λ)" in page.split(f'id="{hmc0.run_id}"')[1]
    md = (out / "gallery.md").read_text()
    assert md.count("| hmc |") == 2 and f"(targets/{first.target_id}/compare.png)" in md
    assert md.count(" ✕ |") == 2


def test_promote_on_a_store_being_written_shows_what_is_finished(tmp_path, sweep_store):
    st, ex = sweep_store
    out = tmp_path / "gallery"
    late = ex.runs[-1]
    kept = tmp_path / "late"
    shutil.move(st.layout.run_dir(late.run_id), kept)  # not written yet
    os.makedirs(st.layout.runs_dir / f".tmp-{late.run_id}-host-1-abcd")  # a writer at work
    rep = promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    assert rep.runs == 3 and rep.runs_wanted == 4
    assert not (out / "runs" / late.run_id).exists()
    assert "1 of the 4 chosen runs not finished yet" in (out / "index.html").read_text()
    before = files(out)
    shutil.move(kept, st.layout.run_dir(late.run_id))  # it finished
    rep = promote(st, out, run_ids=[r.run_id for r in ex.runs], target_ids=[t.target_id for t in ex.targets])
    changed = {k for k, v in files(out).items() if before.get(k) != v}
    assert changed == {"index.html", "gallery.md", ".promote.json", f"targets/{late.spec.target_id}/compare.png"} | {
        f"runs/{late.run_id}/{p}.png" for p in ("trace", "running_mean", "rank")}


def test_lh_promote_command_with_a_sweep_and_plot_subset(tmp_path, sweep_store, monkeypatch):
    st, ex = sweep_store
    sweep = tmp_path / "demo.yaml"
    sweep.write_text(json.dumps({"store_root": str(st.root), **SWEEP}))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["promote", str(sweep), "--plots", "trace,compare"])
    assert result.exit_code == 0, result.output
    assert "4 runs on 2 targets" in result.stdout and "8 files written" in result.stdout
    assert sorted(p.name for p in (tmp_path / "gallery").rglob("*.png")) == ["compare.png"] * 2 + ["trace.png"] * 4
    assert "lambda-hat gallery: demo" in (tmp_path / "gallery" / "index.html").read_text()
    again = runner.invoke(app, ["promote", str(sweep), "--plots", "trace,compare"])
    assert "0 files written" in again.stdout
    bad = runner.invoke(app, ["promote", str(sweep), "--plots", "trace,pie"])
    assert bad.exit_code == 2 and "unknown pie" in bad.stderr
    inside = runner.invoke(app, ["promote", str(sweep), "--outdir", str(st.root / "runs")])
    assert inside.exit_code == 2 and "inside the store" in inside.stderr
    assert "--outdir" in inside.stderr and " -o " not in inside.stderr


@pytest.mark.parametrize("how", ["0-byte zip", "flipped byte", "edited manifest"])
def test_promote_names_a_damaged_run_in_one_line_and_draws_the_others(tmp_path, sweep_store, how):
    """Issue 28, item 12: a corrupt run zip was a traceback (BadZipFile, or ZipStore's `_zf`)."""
    st, ex = sweep_store
    bad = ex.runs[1].run_id
    d = st.layout.run_dir(bad)
    if how == "0-byte zip":
        (d / "arrays.zarr.zip").write_bytes(b"")
    elif how == "flipped byte":
        data = bytearray((d / "arrays.zarr.zip").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "arrays.zarr.zip").write_bytes(bytes(data))
    else:
        text = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(text.replace('"draws": 40', '"draws": 41', 1))
    out = tmp_path / "gallery"
    result = CliRunner().invoke(app, ["promote", "--store", str(st.root), "--outdir", str(out), "--plots", "trace"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "damaged" in lines[0], result.stderr
    drawn = sorted(p.parent.name for p in (out / "runs").glob("*/trace.png"))
    assert drawn == sorted(r.run_id for r in ex.runs if r.run_id != bad)


POLY_SWEEP = {
    "targets": [{"model": {"kind": "polynomial", "powers": [2, 2]}, "data": {"n_data": 1000}}],
    "samplers": [{"name": "hmc", "overrides": {"draws": 40, "warmup": 10}},
                 {"name": "nuts", "overrides": {"draws": 40, "warmup": 10}}],
}


def test_polynomial_target_is_judged_against_its_finite_n_reference_and_numbers_read_as_promised(tmp_path):
    """A multiplicity-2 normal crossing (λ = 0.25, finite-n reference 0.137, stored with each run
    as the sampling job computes it): captions measure λ̂ against the reference, the target line
    names its powers and both λs, a flagged run says so, and gallery.md writes R-hat with 3
    decimals and ESS as an integer (was "1" and "3.1e+03")."""
    ex = expand(sweep_from_dict(POLY_SWEEP))
    st = Store.open(tmp_path / "store", create=True)
    (t,) = ex.targets
    write_artifact(st.layout.target_dir(t.target_id), {"X": np.zeros((3, 3))},
                   Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec),
                            metrics={"n_params": 2, "n_data": 1000, "llc_true": 0.25, "llc_multiplicity": 2}))
    rng = np.random.default_rng(0)
    hmc, nuts = sorted(ex.runs, key=lambda r: r.spec.sampler.name)
    for r, status, metrics in (
            (hmc, "ok", {"llc_mean": 0.141, "llc_sem": 0.004, "r_hat": 1.0, "ess_bulk": 3123.4}),
            (nuts, "divergent", {"llc_mean": 0.139, "llc_sem": 0.005, "r_hat": 1.01, "ess_bulk": 812.0,
                                 "status_reason": "divergence_rate 0.024 > 0.01"})):
        write_artifact(st.layout.run_dir(r.run_id), traces(rng, "hmc", centre=metrics["llc_mean"]),
                       Manifest(id=r.run_id, type="run", spec=resolved_spec(r.spec), status=status,
                                metrics={**metrics, "llc_true": 0.25, "draws": 40, "llc_ref": 0.137, "llc_ref_se": 0.001,
                                         "llc_ref_method": "quadrature"}))
    out = tmp_path / "gallery"
    promote(st, out, run_ids=[r.run_id for r in ex.runs])
    page = (out / "index.html").read_text()
    assert "polynomial, powers [2, 2] (y = x·w₁²·w₂²), n = 1000, 2 parameters" in page
    assert "depth None" not in page
    assert "finite-n reference λ = 0.137 ± 0.001 (quadrature) · asymptotic λ = 0.25 (multiplicity 2)" in page
    card = page.split(f'id="{hmc.run_id}"')[1].split("</article>")[0]
    assert "λ̂ = 0.1410 ± 0.0040 (1.0 SE above the finite-n reference)" in card and "SEM below" not in card
    flagged = page.split(f'id="{nuts.run_id}"')[1].split("</article>")[0]
    assert "check before trusting: divergent (divergence_rate 0.024 &gt; 0.01)" in flagged
    md = (out / "gallery.md").read_text()
    assert f"| hmc | `{hmc.run_id}` | 0.1410 ± 0.0040 | 1.000 | 3123 | ok |" in md
    assert f"| nuts | `{nuts.run_id}` | 0.1390 ± 0.0050 | 1.010 | 812 | divergent (divergence_rate 0.024 > 0.01) |" in md
    assert "e+0" not in md
