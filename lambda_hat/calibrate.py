"""`lh calibrate SWEEP`: SGLD's step size chosen from pilots, and its bias extrapolated away.

A sampler entry of the sweep marks `overrides: {step_size_nbeta: auto}`. For it lh calibrate
writes a sweep of its own, the *pilots*: that entry replaced by a ladder of steps (ε·nβ = top,
top/2, top/4; science/calibration.py), each covering the same Langevin time, every other entry
as it was. The pilots are an ordinary sweep: `lh execute` runs them into the same store, so a
calibration run again computes nothing and an interrupted one resumes. Then, per target (and
per seed, γ, … of the entry), λ̂ against the step gives λ̂(ε → 0) with its standard error and
the largest step whose bias is within its error (`calibration.choose`).

It writes:
* SWEEP's `.calibrated.yaml` beside it: the entry with the chosen step (the smallest chosen over
  its targets, so that it holds for each), its steps, warm-up and thinning, which are those of a
  pilot: `lh execute` on it finds those runs done. An entry that could not be calibrated is left
  out and named in the file's header, never given a value;
* `calibration/NAME.md` and `.json`: each pilot's λ̂ ± SEM, R-hat, status, the line, λ̂(ε → 0),
  the choice and its reason, and the calibration's cost against the chosen run's.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambda_hat.errors import BadInput
from lambda_hat.science.calibration import RUNGS, TOP_STEP_SIZE_NBETA, Choice, Rung, choose, ladder
from lambda_hat.sweep import AUTO, SWEEP_NAME, read_sweep_data

# The settings a rung changes; a pilot's group is its run spec without them.
RUNG_FIELDS = ("step_size_nbeta", "steps", "warmup", "eval_every")


@dataclass(frozen=True)
class CalibrateRequest:
    sweep_path: Path
    store: str | None = None
    workers: int | None = None
    logs: Path = Path("logs")
    top: float = TOP_STEP_SIZE_NBETA
    out: Path | None = None  # the calibrated sweep; None: beside SWEEP as STEM.calibrated.yaml
    report_dir: Path = Path("calibration")


@dataclass
class Group:
    """One target × one grid point of an auto entry: its pilots, largest step first."""

    entry: int
    target_id: str
    label: str  # what else distinguishes the group (seed, γ, …)
    run_ids: list[str]
    rows: list[dict] = field(default_factory=list)  # each pilot's numbers
    choice: Choice | None = None


@dataclass
class CalibrateOutcome:
    exit_code: int = 0
    calibrated: Path | None = None
    report: Path | None = None
    groups: list[Group] = field(default_factory=list)
    chosen: dict[int, Rung | None] = field(default_factory=dict)  # entry -> its step (None: uncalibrated)


def auto_entries(data: Any, source: str) -> dict[int, dict]:
    """The sampler entries (by index) whose overrides hold `step_size_nbeta: auto`; every other
    `auto` is refused (exit 2, naming the entry and field), as is a sweep with none."""
    samplers = data.get("samplers") if isinstance(data, dict) else None
    if not isinstance(samplers, list):
        raise BadInput(f"{source}: samplers: must be a non-empty list of entries")
    found = {}
    for i, entry in enumerate(samplers):
        overrides = entry.get("overrides") if isinstance(entry, dict) else None
        if not isinstance(overrides, dict):
            continue
        autos = [k for k, v in overrides.items() if v == AUTO]
        if not autos:
            continue
        where = f"{source}: samplers[{i}]"
        if autos != ["step_size_nbeta"]:
            other = next(k for k in autos if k != "step_size_nbeta")
            raise BadInput(f"{where}: overrides.{other}: lh calibrate chooses only SGLD's step_size_nbeta")
        if entry.get("name") != "sgld":
            raise BadInput(f"{where}: name: step_size_nbeta: auto is for sgld entries, not {entry.get('name')!r}")
        if overrides.get("step_size") is not None or "step_size_nbeta" in (entry.get("grid") or {}):
            raise BadInput(f"{where}: overrides.step_size_nbeta: auto, with a step_size or a grid over the "
                           "step too; give only auto")
        found[i] = entry
    if not found:
        raise BadInput(f"{source}: no sampler entry has overrides: {{step_size_nbeta: auto}}; nothing to calibrate")
    return found


def _rungs(entry: dict, top: float) -> list[Rung]:
    from lambda_hat.specs import SGLDSpec

    defaults = SGLDSpec()
    o = entry.get("overrides") or {}
    return ladder(int(o.get("steps", defaults.steps)), int(o.get("warmup", defaults.warmup)),
                  int(o.get("eval_every", defaults.eval_every)), reference=defaults.step_size_nbeta, top=top)


def _with_rung(entry: dict, rung: Rung) -> dict:
    out = copy.deepcopy(entry)
    out["overrides"] = {**(entry.get("overrides") or {}), **rung._asdict()}
    return out


def pilot_data(data: dict, autos: dict[int, dict], top: float, name: str) -> tuple[dict, dict[int, list[Rung]]]:
    """The pilots' sweep (each auto entry replaced by its ladder's entries) and each entry's ladder."""
    ladders = {i: _rungs(e, top) for i, e in autos.items()}
    pilots = copy.deepcopy(data)
    pilots["name"] = name
    samplers = []
    for i, entry in enumerate(data["samplers"]):
        samplers += [_with_rung(entry, r) for r in ladders[i]] if i in autos else [copy.deepcopy(entry)]
    pilots["samplers"] = samplers
    return pilots, ladders


def _write_yaml(path: Path, data: dict, header: list[str], store_root: Path, flag: str = "-o") -> None:
    import yaml

    from lambda_hat.files import write_atomic
    from lambda_hat.output_paths import check_output_path

    check_output_path(path, store_root, flag)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_atomic(path, text.encode())


def _groups(pilot_path: Path, pilots: dict, ladders: dict[int, list[Rung]], autos: dict[int, dict]) -> list[Group]:
    """Each auto entry's pilots, grouped: one group per target and per setting of the entry that
    is not the rung's (seed, γ, …). Each entry's ladder is expanded on its own, so two entries
    whose pilots look alike are never mixed up."""
    from lambda_hat.ids import resolved_spec
    from lambda_hat.planner import expand
    from lambda_hat.sweep import sweep_from_dict

    out: list[Group] = []
    for i, rungs in ladders.items():
        only_i = {**pilots, "samplers": [_with_rung(autos[i], r) for r in rungs]}
        expanded = expand(sweep_from_dict(only_i, str(pilot_path), base_dir=str(pilot_path.resolve().parent)))
        steps = [r.step_size_nbeta for r in rungs]
        groups: dict[str, Group] = {}
        for run in expanded.runs:
            spec = resolved_spec(run.spec)
            sampler = spec["sampler"]
            rest = {k: v for k, v in sampler.items() if k not in RUNG_FIELDS}
            g = groups.setdefault(json.dumps({**spec, "sampler": rest}, sort_keys=True),
                                  Group(i, run.target_id, _label(spec), [""] * len(rungs)))
            g.run_ids[steps.index(sampler["step_size_nbeta"])] = run.run_id
        out += [g for g in groups.values() if all(g.run_ids)]
    return out


def _label(spec: dict) -> str:
    post = spec.get("posterior", {})
    return f"seed {spec.get('seed')}, γ {post.get('gamma')}"


def _numbers(store, group: Group, ladder_: list[Rung]) -> None:
    manifests, _ = store.checked_manifests("run", group.run_ids)
    by_id = {m.id: m for m in manifests}
    for run_id, rung in zip(group.run_ids, ladder_):
        m = by_id.get(run_id)
        metrics = m.metrics if m else {}
        group.rows.append({"run_id": run_id, **rung._asdict(), "llc_mean": metrics.get("llc_mean"),
                           "llc_sem": metrics.get("llc_sem"), "r_hat": metrics.get("r_hat"),
                           "ess_bulk": metrics.get("ess_bulk"), "status": m.status if m else "missing",
                           "sample_sec": metrics.get("sample_sec"), "total_fge": metrics.get("total_fge")})
    choice = choose(ladder_, [r["llc_mean"] for r in group.rows], [r["llc_sem"] for r in group.rows],
                    [r["status"] for r in group.rows])
    flagged = [f"{r['step_size_nbeta']:g}" for r in group.rows if r["status"] == "unconverged"]
    if flagged and choice.rung is not None:  # chosen, but on SEMs the diagnostics do not vouch for
        choice = choice._replace(reason=choice.reason + f"; pilots at ε·nβ {', '.join(flagged)} are unconverged, "
                                 "so their SEMs may understate the error (more steps make the choice surer)")
    group.choice = choice


def calibrate(req: CalibrateRequest, console) -> CalibrateOutcome:
    from lambda_hat.execute.driver import ExecuteRequest, execute
    from lambda_hat.output_paths import check_output_dir, check_output_path
    from lambda_hat.store import Store, resolve_store_root
    from lambda_hat.sweep import sweep_from_dict

    source = str(req.sweep_path)
    if not (0 < req.top < 10) or not math.isfinite(req.top):
        raise BadInput(f"--top {req.top:g}: the ladder's largest ε·nβ must be in (0, 10)")
    data = read_sweep_data(req.sweep_path)
    autos = auto_entries(data, source)
    stem = req.sweep_path.stem
    name = data.get("name", stem)  # as results/NAME.parquet
    if not (isinstance(name, str) and SWEEP_NAME.fullmatch(name)):
        raise BadInput(f"{source}: name: must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    pilot_path = req.sweep_path.with_name(f"{stem}.pilots.yaml")
    out = req.out or req.sweep_path.with_name(f"{stem}.calibrated.yaml")
    pilots, ladders = pilot_data(data, autos, req.top, f"{name}-pilots")
    root = resolve_store_root(req.store, data.get("store_root"))
    # Everything checked before anything is written: the outputs, the logs, the store, and the
    # pilots' sweep itself (from memory: a bad --top must not leave a pilots file behind).
    for path, flag in ((out, "-o"), (pilot_path, "the pilots file"),
                       (req.report_dir / f"{name}.md", "--report-dir"), (req.report_dir / f"{name}.json", "--report-dir")):
        check_output_path(path, root, flag)  # before any work, as every command's outputs (a link loop included)
    if out.resolve() in (req.sweep_path.resolve(), pilot_path.resolve()):
        what = "the sweep" if out.resolve() == req.sweep_path.resolve() else "the pilots file"
        raise BadInput(f"-o {out}: is {what} lh calibrate reads; name another file")
    check_output_dir(req.logs, root, "--logs")
    # named as the sweep's pilots at this --top: the field at fault is the sweep's, or --top's
    sweep_from_dict(pilots, f"{source} (its pilots at --top {req.top:g})", base_dir=str(req.sweep_path.resolve().parent))
    Store.open(root, create=True)  # exists and is writable, or one line
    _write_yaml(pilot_path, pilots, [f"The pilots lh calibrate wrote for {req.sweep_path.name} (do not edit):",
                                     f"each step_size_nbeta: auto entry as a ladder of {RUNGS} steps."], root,
                "the pilots file")
    outcome = CalibrateOutcome()
    console.print(f"[bold]=== Calibration: {sum(len(v) for v in ladders.values())} pilot settings "
                  f"({pilot_path}) ===[/bold]")
    ran = execute(ExecuteRequest(sweep_path=pilot_path, store=req.store, workers=req.workers, logs=req.logs), console)
    if ran.exit_code:
        outcome.exit_code = ran.exit_code
        if ran.interrupted:
            return outcome
    store = Store.open(root)
    outcome.groups = _groups(pilot_path, pilots, ladders, autos)
    for g in outcome.groups:
        _numbers(store, g, ladders[g.entry])
    outcome.chosen = _chosen(outcome.groups, ladders)
    outcome.calibrated = _write_calibrated(out, data, outcome, req.sweep_path, root, req.report_dir)
    outcome.report = _write_report(req.report_dir, name, outcome, ladders, root)
    if outcome.calibrated is None or any(v is None for v in outcome.chosen.values()):
        outcome.exit_code = outcome.exit_code or 1
    return outcome


def _chosen(groups: list[Group], ladders: dict[int, list[Rung]]) -> dict[int, Rung | None]:
    """Per auto entry: the smallest of its groups' chosen steps (largest index), None if any group
    is uncalibrated."""
    chosen: dict[int, Rung | None] = {}
    for i in ladders:
        mine = [g for g in groups if g.entry == i]
        if not mine or any(g.choice is None or g.choice.rung is None for g in mine):
            chosen[i] = None
        else:
            chosen[i] = ladders[i][max(g.choice.rung for g in mine)]
    return chosen


def _write_calibrated(out: Path, data: dict, outcome: CalibrateOutcome, sweep_path: Path, root: Path,
                      report_dir: Path) -> Path | None:
    header = [f"{sweep_path.name} with its step_size_nbeta: auto chosen by lh calibrate (report: {report_dir}/).",
              "Each chosen entry is one of the pilots: lh execute finds its runs done."]
    samplers = []
    for i, entry in enumerate(data["samplers"]):
        if i not in outcome.chosen:
            samplers.append(entry)
            continue
        rung = outcome.chosen[i]
        if rung is None:
            reasons = {g.choice.reason for g in outcome.groups if g.entry == i and g.choice and g.choice.rung is None}
            header.append(f"samplers[{i}] left out, uncalibrated: {'; '.join(sorted(reasons)) or 'no pilot finished'}")
            continue
        samplers.append(_with_rung(entry, rung))
        for g in outcome.groups:
            if g.entry == i and g.choice and g.choice.fit:
                f = g.choice.fit
                header.append(f"samplers[{i}] on {g.target_id} ({g.label}): λ̂(ε→0) = {f.llc0:.4g} ± {f.llc0_se:.2g}")
    if not samplers:
        return None
    calibrated = {**{k: v for k, v in data.items() if k != "samplers"}, "samplers": samplers}
    _write_yaml(out, calibrated, header, root)
    return out


def _write_report(report_dir: Path, stem: str, outcome: CalibrateOutcome, ladders, root: Path) -> Path:
    from lambda_hat.files import write_atomic
    from lambda_hat.output_paths import check_output_path

    lines = [f"# Calibration of {stem}: SGLD's step size", ""]
    doc: dict[str, Any] = {"sweep": stem, "groups": []}
    for g in outcome.groups:
        c = g.choice
        lines += [f"## samplers[{g.entry}] on {g.target_id} ({g.label})", "",
                  "| ε·nβ | steps | warmup | eval_every | λ̂ ± SEM | R-hat | status | run |", "|---|---|---|---|---|---|---|---|"]
        for r in g.rows:
            est = "—" if r["llc_mean"] is None else f"{r['llc_mean']:.4g} ± {r['llc_sem']:.2g}"
            rhat = "—" if r["r_hat"] is None else f"{r['r_hat']:.3f}"
            lines.append(f"| {r['step_size_nbeta']:g} | {r['steps']} | {r['warmup']} | {r['eval_every']} | {est} | "
                         f"{rhat} | {r['status']} | {r['run_id']} |")
        lines.append("")
        if c and c.fit:
            lines.append(f"λ̂(ε → 0) = **{c.fit.llc0:.4g} ± {c.fit.llc0_se:.2g}** (weighted line: slope "
                         f"{c.fit.slope:.3g} ± {c.fit.slope_se:.2g} per unit ε·nβ, χ² {c.fit.chi2:.2f} on {c.fit.dof} dof)")
        chosen = "uncalibrated" if c is None or c.rung is None else f"ε·nβ = {ladders[g.entry][c.rung].step_size_nbeta:g}"
        lines += [f"Choice: {chosen}: {c.reason if c else 'no pilot finished'}", ""]
        cost = [r["sample_sec"] for r in g.rows if r["sample_sec"] is not None]
        if c and c.rung is not None and len(cost) == len(g.rows) and g.rows[c.rung]["sample_sec"]:
            lines += [f"Cost: the pilots sampled {sum(cost):.1f} s, {sum(cost) / g.rows[c.rung]['sample_sec']:.1f}× "
                      "the chosen run (which is one of them)", ""]
        doc["groups"].append({"entry": g.entry, "target_id": g.target_id, "label": g.label, "pilots": g.rows,
                              "llc0": c.fit.llc0 if c and c.fit else None,
                              "llc0_se": c.fit.llc0_se if c and c.fit else None,
                              "slope": c.fit.slope if c and c.fit else None,
                              "chi2": c.fit.chi2 if c and c.fit else None,
                              "chosen_step_size_nbeta": None if c is None or c.rung is None
                              else ladders[g.entry][c.rung].step_size_nbeta,
                              "reason": c.reason if c else "no pilot finished"})
    md, js = report_dir / f"{stem}.md", report_dir / f"{stem}.json"
    for path, text in ((md, "\n".join(lines) + "\n"), (js, json.dumps(doc, indent=1) + "\n")):
        check_output_path(path, root, "--report-dir")
        write_atomic(path, text.encode())
    return md
