"""`lh calibrate SWEEP`: SGLD's step size chosen from pilots and its bias extrapolated away; HMC's
and NUTS's target acceptance; the localizer γ of any sampler chosen on the plateau of λ̂(γ).

A sampler entry of the sweep marks `overrides: {step_size_nbeta: auto}` (SGLD),
`overrides: {target_acceptance: auto}` (HMC, NUTS) or `posterior: {gamma: auto}` (any sampler;
one per entry). For it lh calibrate writes a sweep of its own, the *pilots*: that entry replaced
by a ladder (of steps: ε·nβ = top, top/2, top/4, each covering the same Langevin time; of target
acceptance: 0.8 … 0.99; of γ: decades, `--gammas`; science/calibration.py),
every other entry as it was. The pilots are an ordinary sweep: `lh execute` runs them into the
same store, so a calibration run again computes nothing and an interrupted one resumes. Then,
per target (and per seed, γ, … of the entry), λ̂ against the step gives λ̂(ε → 0) with its
standard error and the largest step whose bias is within its error (`calibration.choose`);
λ̂ against γ gives the plateau and its middle (`calibration.gamma_plateau`); the pilots at
target acceptance 0.8 … 0.99 give the cheapest that neither diverges nor moves λ̂
(`calibration.choose_acceptance`).

It writes:
* SWEEP's `.calibrated.yaml` beside it: the entry with the chosen step (the smallest chosen over
  its targets, so that it holds for each), its steps, warm-up and thinning, or the chosen γ (the
  middle of the plateau all its targets share), which are those of a pilot: `lh execute` on it
  finds those runs done. An entry that could not be calibrated is left
  out and named in the file's header, never given a value;
* `calibration/NAME.md`, `.json` and `.png`: each pilot's λ̂ ± SEM, R-hat, status, the line and
  λ̂(ε → 0) or the plateau, the choice and its reason, the calibration's cost against the chosen
  run's, and a plot of it all (`calibration_plot.py`).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambda_hat.errors import BadInput
from lambda_hat.specs import ESS_BULK_MIN, DiagnosticsSpec
from lambda_hat.science.calibration import (ACCEPT_LADDER, GAMMA_CEILING, GAMMA_LADDER, RUNGS, TOP_STEP_SIZE_NBETA,
                                            Accept, Choice, Rung, choose, choose_acceptance, gamma_plateau, ladder,
                                            nbeta_slope)
from lambda_hat.sweep import AUTO, SWEEP_NAME, files_read, read_sweep_data

# The smallest --top: its ladder's pilots run 80× (at --top/4) the entry's steps at SGLD's default.
TOP_MIN = 1e-3
CALIBRATED_SUFFIX = "-calibrated"  # the calibrated sweep's name: NAME-calibrated
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
    gammas: tuple[float, ...] = GAMMA_LADDER  # the γ ladder, ascending


# A ladder is a list of Rungs (an SGLD step entry), of Accepts (an HMC/NUTS target acceptance
# entry) or of floats (the γ of a gamma entry).
Ladder = list  # list[Rung] | list[Accept] | list[float]


def ladder_kind(ladder_: Ladder) -> str:
    """"step", "accept" or "gamma"."""
    first = ladder_[0]
    return "step" if isinstance(first, Rung) else "accept" if isinstance(first, Accept) else "gamma"


@dataclass
class Group:
    """One target × one grid point of an auto entry: its pilots, largest step first."""

    entry: int
    target_id: str
    label: str  # what else distinguishes the group (seed, γ, …)
    run_ids: list[str]
    rows: list[dict] = field(default_factory=list)  # each pilot's numbers
    choice: Choice | None = None
    kind: str = "step"  # the ladder's: "step", "accept" or "gamma" (`ladder_kind`)
    ceiling: float | None = None  # γ groups: the largest γ considered (None: no limit known)


@dataclass
class CalibrateOutcome:
    exit_code: int = 0
    calibrated: Path | None = None
    report: Path | None = None
    groups: list[Group] = field(default_factory=list)
    chosen: dict[int, Rung | float | None] = field(default_factory=dict)  # entry -> its step or γ (None: uncalibrated)
    why_not: dict[int, str] = field(default_factory=dict)  # entry -> why it is uncalibrated though each group chose
    page: Path | None = None  # the report as an lh promote page, with each pilot's traces
    interrupted: bool = False  # stopped by a signal: nothing chosen, nothing written


def auto_entries(data: Any, source: str) -> dict[int, dict]:
    """The sampler entries (by index) whose overrides hold `step_size_nbeta: auto` (SGLD) or
    `target_acceptance: auto` (HMC, NUTS), or whose posterior holds `gamma: auto`; every other
    `auto`, two in one entry, or one with nothing to tune is refused (exit 2, naming the entry and
    field), as is a sweep with none."""
    samplers = data.get("samplers") if isinstance(data, dict) else None
    if not isinstance(samplers, list):
        raise BadInput(f"{source}: samplers: must be a non-empty list of entries")
    found = {}
    for i, entry in enumerate(samplers):
        if not isinstance(entry, dict):
            continue
        overrides, posterior = entry.get("overrides"), entry.get("posterior")
        autos = [k for k, v in overrides.items() if v == AUTO] if isinstance(overrides, dict) else []
        post_autos = [k for k, v in posterior.items() if v == AUTO] if isinstance(posterior, dict) else []
        where = f"{source}: samplers[{i}]"
        if (autos or post_autos) and "name" in (entry.get("grid") or {}):
            raise BadInput(f"{where}: grid.name: a grid over the sampler beside an auto setting; give one sampler "
                           "per auto entry")
        unknown = [k for k in autos if k not in ("step_size_nbeta", "target_acceptance")]
        if unknown:
            raise BadInput(f"{where}: overrides.{unknown[0]}: lh calibrate chooses only SGLD's step_size_nbeta, "
                           "HMC's and NUTS's target_acceptance and posterior.gamma")
        if post_autos:
            if post_autos != ["gamma"]:
                other = next(k for k in post_autos if k != "gamma")
                if other == "beta0":  # the tempering is the question asked; its effect is reported
                    raise BadInput(f"{where}: posterior.beta0: auto: nβ is not calibrated (the tempering is part of "
                                   "what λ̂ measures); give a value, and the report says how λ̂ depends on it")
                raise BadInput(f"{where}: posterior.{other}: lh calibrate chooses only posterior.gamma "
                               "and SGLD's step_size_nbeta")
            if autos:
                raise BadInput(f"{where}: overrides.{autos[0]}: auto beside posterior.gamma: auto (one auto setting "
                               f"per entry); calibrate γ first, then mark {autos[0]} auto in the calibrated sweep")
            if "posterior.gamma" in (entry.get("grid") or {}):
                raise BadInput(f"{where}: posterior.gamma: auto, with a grid over γ too; give only auto")
            found[i] = entry
            continue
        if not autos:
            continue
        if len(autos) > 1:
            raise BadInput(f"{where}: overrides.{autos[1]}: auto beside overrides.{autos[0]}: auto; one auto "
                           "setting per entry")
        if autos == ["target_acceptance"]:
            if entry.get("name") not in ("hmc", "nuts"):
                raise BadInput(f"{where}: name: target_acceptance: auto is for hmc and nuts entries, "
                               f"not {entry.get('name')!r}")
            grid = entry.get("grid") or {}
            if "target_acceptance" in grid:
                raise BadInput(f"{where}: overrides.target_acceptance: auto, with a grid over it too; give only auto")
            for field, off in (("adapt_step_size", False), ("warmup", 0)):
                if overrides.get(field) == off or off in (grid.get(field) or []):
                    raise BadInput(f"{where}: overrides.{field}: {str(off).lower()}: then no step is adapted and "
                                   "target_acceptance: auto has nothing to choose")
            found[i] = entry
            continue
        if entry.get("name") != "sgld":
            raise BadInput(f"{where}: name: step_size_nbeta: auto is for sgld entries, not {entry.get('name')!r}")
        if overrides.get("step_size") is not None or "step_size_nbeta" in (entry.get("grid") or {}):
            raise BadInput(f"{where}: overrides.step_size_nbeta: auto, with a step_size or a grid over the "
                           "step too; give only auto")
        found[i] = entry
    if not found:
        raise BadInput(f"{source}: no sampler entry has overrides: {{step_size_nbeta: auto}} or "
                       "{target_acceptance: auto} or posterior: {gamma: auto}; nothing to calibrate")
    return found


def parse_gammas(text: str) -> tuple[float, ...]:
    """`--gammas 0.1,1,10`: the values; checked by `calibrate` (exit 2 naming the flag)."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise BadInput(f"--gammas {text}: must be numbers separated by commas, e.g. 0.1,1,10,100") from None


def _rungs(entry: dict, top: float) -> list[Rung]:
    from lambda_hat.specs import SGLDSpec

    defaults = SGLDSpec()
    o = entry.get("overrides") or {}
    return ladder(int(o.get("steps", defaults.steps)), int(o.get("warmup", defaults.warmup)),
                  int(o.get("eval_every", defaults.eval_every)), reference=defaults.step_size_nbeta, top=top)


def _without_auto(data: dict, autos: dict[int, dict]) -> dict:
    """The sweep with every `auto` value removed (the field's default in its place)."""
    out = copy.deepcopy(data)
    for i in autos:
        for part in ("overrides", "posterior"):
            if isinstance(out["samplers"][i].get(part), dict):
                out["samplers"][i][part] = {k: v for k, v in out["samplers"][i][part].items() if v != AUTO}
    return out


def _is_gamma_entry(entry: dict) -> bool:
    return isinstance(entry.get("posterior"), dict) and entry["posterior"].get("gamma") == AUTO


def _with_rung(entry: dict, rung: Rung | Accept | float) -> dict:
    out = copy.deepcopy(entry)
    if isinstance(rung, (Rung, Accept)):
        out["overrides"] = {**(entry.get("overrides") or {}), **rung._asdict()}
    else:
        out["posterior"] = {**(entry.get("posterior") or {}), "gamma": rung}
    return out


def pilot_data(data: dict, autos: dict[int, dict], top: float, name: str,
               gammas: tuple[float, ...] = GAMMA_LADDER) -> tuple[dict, dict[int, Ladder]]:
    """The pilots' sweep (each auto entry replaced by its ladder's entries) and each entry's ladder."""
    ladders = {i: list(gammas) if _is_gamma_entry(e) else [Accept(a) for a in ACCEPT_LADDER]
               if (e.get("overrides") or {}).get("target_acceptance") == AUTO else _rungs(e, top)
               for i, e in autos.items()}
    pilots = copy.deepcopy(data)
    pilots["name"] = name
    samplers = []
    for i, entry in enumerate(data["samplers"]):
        samplers += [_with_rung(entry, r) for r in ladders[i]] if i in autos else [copy.deepcopy(entry)]
    pilots["samplers"] = samplers
    return pilots, ladders


PILOTS_HEADER = "The pilots lh calibrate wrote for"  # each file's first line: what it may replace
CALIBRATED_HEADER = "with its auto settings chosen by lh calibrate"


def _check_ours(path: Path, header: str, what: str, hint: str = "move it away") -> None:
    """A file lh calibrate names itself beside the sweep is replaced only when it wrote it (its
    first line says so): a file of the user's at that name is refused, before any work."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except FileNotFoundError:
        return
    except OSError as err:
        raise BadInput(f"{path}: {what} cannot be read ({err.strerror})") from None
    if not (first.startswith(b"# ") and header.encode() in first):
        raise BadInput(f"{path}: {what} would replace this file, which lh calibrate did not write; {hint}")


def _write_yaml(path: Path, data: dict, header: list[str], store_root: Path, flag: str = "-o") -> None:
    import yaml

    from lambda_hat.files import write_atomic
    from lambda_hat.output_paths import check_output_path

    check_output_path(path, store_root, flag)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    write_atomic(path, text.encode())


def _groups(pilot_path: Path, pilots: dict, ladders: dict[int, Ladder], autos: dict[int, dict]) -> list[Group]:
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
        kind = ladder_kind(rungs)
        gamma = kind == "gamma"
        steps = (rungs if gamma else [a.target_acceptance for a in rungs] if kind == "accept"
                 else [r.step_size_nbeta for r in rungs])
        groups: dict[str, Group] = {}
        for run in expanded.runs:
            spec = resolved_spec(run.spec)
            sampler, posterior = spec["sampler"], spec.get("posterior", {})
            if gamma:
                key = {**spec, "posterior": {k: v for k, v in posterior.items() if k != "gamma"}}
                at = posterior["gamma"]
            elif kind == "accept":
                key = {**spec, "sampler": {k: v for k, v in sampler.items() if k != "target_acceptance"}}
                at = sampler["target_acceptance"]
            else:
                key = {**spec, "sampler": {k: v for k, v in sampler.items() if k not in RUNG_FIELDS}}
                at = sampler["step_size_nbeta"]
            g = groups.setdefault(json.dumps(key, sort_keys=True),
                                  Group(i, run.target_id, _label(spec, gamma), [""] * len(rungs), kind=kind))
            g.run_ids[steps.index(at)] = run.run_id
        out += [g for g in groups.values() if all(g.run_ids)]
    return out


def _label(spec: dict, gamma_axis: bool = False) -> str:
    post = spec.get("posterior", {})
    return f"seed {spec.get('seed')}" if gamma_axis else f"seed {spec.get('seed')}, γ {post.get('gamma')}"


def _gamma_ceiling(store, group: Group) -> float | None:
    """GAMMA_CEILING·nβ·h_max for the group's target: nβ from a pilot, h_max (the largest Hessian
    eigenvalue at w*) from the target's manifest; None where either is unknown."""
    n_beta = next((r["n_beta"] for r in group.rows if r.get("n_beta")), None)
    targets, _ = store.checked_manifests("target", [group.target_id])
    h_max = targets[0].metrics.get("hess_max_eig") if targets else None
    if n_beta is None or h_max is None or not math.isfinite(h_max) or h_max <= 0:
        return None
    return GAMMA_CEILING * n_beta * h_max


def _more_steps(rows: list[dict], ess_min: float) -> str:
    """How much longer unconverged pilots would have to run, at the least, for the bulk ESS the
    sweep asks: the ESS of relaxed chains grows in proportion to their length, and chains still
    relaxing grow it more slowly (on a normal crossing, SGLD's 63 of 400 asked for 6.3×, which
    gave 225: tests/test_calibration_rules.py). "" where the ESS is not what flagged them."""
    ess = [r["ess_bulk"] for r in rows if r["status"] == "unconverged" and r.get("ess_bulk") is not None
           and math.isfinite(r["ess_bulk"]) and 0 < r["ess_bulk"] < ess_min]
    if not ess:
        return ""
    return f" (bulk ESS down to {min(ess):.0f} against {ess_min:g}: {ess_min / min(ess):.1f}× their steps at the least)"


def _numbers(store, group: Group, ladder_: Ladder, ess_min: float = ESS_BULK_MIN) -> None:
    manifests, _ = store.checked_manifests("run", group.run_ids)
    by_id = {m.id: m for m in manifests}
    kind = group.kind
    gamma = kind == "gamma"
    for run_id, rung in zip(group.run_ids, ladder_):
        m = by_id.get(run_id)
        metrics = m.metrics if m else {}
        group.rows.append({"run_id": run_id, **({"gamma": rung} if gamma else rung._asdict()),
                           "divergence_rate": metrics.get("divergence_rate"),
                           "llc_mean": metrics.get("llc_mean"),
                           "llc_sem": metrics.get("llc_sem"), "r_hat": metrics.get("r_hat"),
                           "ess_bulk": metrics.get("ess_bulk"), "status": m.status if m else "missing",
                           "sample_sec": metrics.get("sample_sec"), "total_fge": metrics.get("total_fge"),
                           "n_beta": metrics.get("n_beta")})
        slope = nbeta_slope(metrics.get("llc_mean"), metrics.get("llc_std_draws"), metrics.get("llc_sem"),
                            metrics.get("ess_bulk"))
        group.rows[-1].update({"nbeta_slope": slope and slope.slope, "nbeta_slope_se": slope and slope.se})
    llc, sem, status = ([r[k] for r in group.rows] for k in ("llc_mean", "llc_sem", "status"))
    if gamma:
        group.ceiling = _gamma_ceiling(store, group)
        choice = gamma_plateau(ladder_, llc, sem, status, group.ceiling)
    elif kind == "accept":
        choice = choose_acceptance([a.target_acceptance for a in ladder_], llc, sem, status)
    else:
        choice = choose(ladder_, llc, sem, status)
    axis = {"gamma": "gamma", "accept": "target_acceptance", "step": "step_size_nbeta"}[kind]
    flagged = [f"{r[axis]:g}" for r in group.rows if r["status"] == "unconverged"]
    at = {"gamma": "γ", "accept": "target acceptance", "step": "ε·nβ"}[kind]
    if flagged and choice.rung is not None:  # chosen, but on SEMs the diagnostics do not vouch for
        choice = choice._replace(reason=choice.reason + f"; pilots at {at} {', '.join(flagged)} are unconverged, "
                                 "so their SEMs may understate the error (more steps make the choice surer"
                                 f"{_more_steps(group.rows, ess_min)})")
    elif flagged:  # chains still relaxing may be all that keeps the pilots apart
        choice = choice._replace(reason=choice.reason + f"; pilots at {at} {', '.join(flagged)} are unconverged: "
                                 f"longer pilots first{_more_steps(group.rows, ess_min)}")
    group.choice = choice


def calibrate(req: CalibrateRequest, console) -> CalibrateOutcome:
    from lambda_hat.execute.driver import ExecuteRequest, execute
    from lambda_hat.output_paths import check_logs_dir, check_output_dir, check_output_path
    from lambda_hat.store import Store, resolve_store_root
    from lambda_hat.sweep import sweep_from_dict

    source = str(req.sweep_path)
    if not (TOP_MIN <= req.top < 10) or not math.isfinite(req.top):  # pilots' steps grow as 1/ε
        raise BadInput(f"--top {req.top:g}: the ladder's largest ε·nβ must be at least {TOP_MIN:g} and below 10 "
                       f"(SGLD's default step is 0.02)")
    data = read_sweep_data(req.sweep_path)
    autos = auto_entries(data, source)
    stem = req.sweep_path.stem
    name = data.get("name", stem)  # as results/NAME.parquet
    if not (isinstance(name, str) and SWEEP_NAME.fullmatch(name)):
        raise BadInput(f"{source}: name: must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    pilot_path = req.sweep_path.with_name(f"{stem}.pilots.yaml")
    out = req.out or req.sweep_path.with_name(f"{stem}.calibrated.yaml")
    gammas = tuple(req.gammas)
    if (len(gammas) < 2 or len(gammas) > 12 or list(gammas) != sorted(set(gammas))
            or not all(math.isfinite(g) and g > 0 for g in gammas)):
        raise BadInput(f"--gammas {','.join(f'{g:g}' for g in gammas)}: the γ ladder must be 2 to 12 positive "
                       "finite values, increasing")
    pilots, ladders = pilot_data(data, autos, req.top, f"{name}-pilots", gammas)
    root = resolve_store_root(req.store, data.get("store_root"))
    # Everything checked before anything is written: the outputs, the logs, the store, and the
    # pilots' sweep itself (from memory: a bad --top must not leave a pilots file behind).
    for path, flag in ((out, "-o"), (pilot_path, "the pilots file"), (req.report_dir / f"{name}.md", "--report-dir"),
                       (req.report_dir / f"{name}.json", "--report-dir"), (req.report_dir / f"{name}.png", "--report-dir")):
        check_output_path(path, root, flag)  # before any work, as every command's outputs (a link loop included)
    # Each file it writes is a file of its own, and none is the sweep it reads (a report named
    # like the sweep, or -o naming the report, replaced one with the other).
    written = {req.sweep_path.resolve(): "the sweep lh calibrate reads"}
    pilot_results = Path("results") / f"{name}-pilots.parquet"  # what the pilots' lh execute writes (results_file)
    for path, what in ((pilot_path, "the pilots file"), (pilot_results, "the pilots' results file"),
                       (out, "the calibrated sweep (-o)"),
                       *((req.report_dir / f"{name}.{ext}", f"the report's {ext}") for ext in ("md", "json", "png"))):
        other = written.setdefault(path.resolve(), what)
        if other == what:
            continue
        if "(-o)" in other:  # -o named a file the report writes: -o is at fault
            raise BadInput(f"-o {out}: is {what} ({path}); name another file")
        if "(-o)" in what:
            raise BadInput(f"-o {out}: is {other}; name another file")
        raise BadInput(f"--report-dir {req.report_dir}: {what} would be {path}, which is {other}; "
                       "name another directory")
    _check_ours(pilot_path, PILOTS_HEADER, "the pilots file")
    if req.out is None:  # named by lh, not by the user: replaced only if lh calibrate wrote it
        _check_ours(out, CALIBRATED_HEADER, "the calibrated sweep", "move it away, or name the output with -o")
    check_logs_dir(req.logs, root)
    from lambda_hat import promote as gallery

    page_dir = req.report_dir / name  # the page: the report and the pilots' traces
    if os.path.islink(page_dir):  # lh names this folder, not the user: a link there is planted, never followed
        raise BadInput(f"--report-dir {req.report_dir}: {page_dir} is a symbolic link, where lh calibrate writes "
                       "the report's page in a directory of its own; move it away")
    check_output_dir(page_dir, root, "--report-dir")
    gallery.check_gallery(page_dir, "--report-dir", root)
    # The sweep itself first, each auto entry at the defaults (its indices are the user's), then the
    # pilots: what fails only there is --top's or --gammas' doing.
    base_dir = str(req.sweep_path.resolve().parent)
    base = sweep_from_dict(_without_auto(data, autos), source, base_dir=base_dir)
    for what, path in files_read(base.targets):  # the model's code and checkpoints: inputs, never outputs
        other = written.get(path.resolve())
        if other is not None:
            given = (f"-o {out}" if "(-o)" in other else f"--report-dir {req.report_dir}" if "report" in other
                     else f"the sweep's name {name!r}")
            raise BadInput(f"{given}: {other} would be {path}, which is {what}; name another file")
    sweep_from_dict(pilots, f"{source} (its pilots at --top {req.top:g}, --gammas {','.join(f'{g:g}' for g in gammas)})",
                    base_dir=base_dir)
    # The pilots file before the store: a sweep folder that cannot be written leaves no new store behind
    _write_yaml(pilot_path, pilots, [f"{PILOTS_HEADER} {req.sweep_path.name} (do not edit):",
                                     f"each step_size_nbeta: auto entry as a ladder of {RUNGS} steps, each "
                                     f"target_acceptance: auto entry at {', '.join(map(str, ACCEPT_LADDER))}, "
                                     f"each gamma: auto entry as a ladder of {len(gammas)} values of γ."], root,
                "the pilots file")
    Store.open(root, create=True)  # exists and is writable, or one line
    outcome = CalibrateOutcome()
    console.print(f"[bold]=== Calibration: {sum(len(v) for v in ladders.values())} pilot settings "
                  f"({pilot_path}) ===[/bold]")
    ran = execute(ExecuteRequest(sweep_path=pilot_path, store=req.store, workers=req.workers, logs=req.logs), console)
    if ran.exit_code:
        outcome.exit_code = ran.exit_code
        if ran.interrupted:
            outcome.interrupted = True
            return outcome
    store = Store.open(root)
    outcome.groups = _groups(pilot_path, pilots, ladders, autos)
    ess_min = DiagnosticsSpec.model_validate(data.get("diagnostics") or {}).ess_bulk_min
    for g in outcome.groups:
        _numbers(store, g, ladders[g.entry], ess_min)
    outcome.chosen, outcome.why_not = _chosen(outcome.groups, ladders)
    outcome.calibrated = _write_calibrated(out, data, outcome, req.sweep_path, root, req.report_dir, name)
    outcome.report = _write_report(req.report_dir, name, outcome, ladders, root)
    outcome.page = _write_page(store, req.report_dir, name, outcome)
    if outcome.calibrated is None or any(v is None for v in outcome.chosen.values()):
        outcome.exit_code = outcome.exit_code or 1
    return outcome


def _chosen(groups: list[Group], ladders: dict[int, Ladder]) -> tuple[dict[int, Rung | float | None], dict[int, str]]:
    """Per auto entry: the smallest of its groups' chosen steps (largest index); for γ, the middle
    of the range every group's plateau holds. None if any group is uncalibrated, or (γ) if the
    plateaus have no γ in common, with the reason."""
    chosen: dict[int, Rung | float | None] = {}
    why_not: dict[int, str] = {}
    for i in ladders:
        mine = [g for g in groups if g.entry == i]
        if not mine or any(g.choice is None or g.choice.rung is None for g in mine):
            chosen[i] = None
        elif ladder_kind(ladders[i]) == "gamma":
            common = sorted(set.intersection(*(set(g.choice.plateau) for g in mine)))
            if common:
                chosen[i] = ladders[i][common[(len(common) - 1) // 2]]
            else:
                chosen[i] = None
                why_not[i] = ("its targets' plateaus share no γ (" + "; ".join(
                    f"{g.target_id}: γ {ladders[i][g.choice.plateau[0]]:g}–{ladders[i][g.choice.plateau[-1]]:g}"
                    for g in mine) + "): calibrate them in sweeps of their own")
        else:
            chosen[i] = ladders[i][max(g.choice.rung for g in mine)]
    return chosen, why_not


def _write_calibrated(out: Path, data: dict, outcome: CalibrateOutcome, sweep_path: Path, root: Path,
                      report_dir: Path, name: str) -> Path | None:
    header = [f"{sweep_path.name} {CALIBRATED_HEADER} (report: {report_dir}/).",
              "Each chosen entry is one of the pilots: lh execute finds its runs done."]
    samplers = []
    for i, entry in enumerate(data["samplers"]):
        if i not in outcome.chosen:
            samplers.append(entry)
            continue
        rung = outcome.chosen[i]
        if rung is None:
            reasons = {g.choice.reason for g in outcome.groups if g.entry == i and g.choice and g.choice.rung is None}
            reasons |= {outcome.why_not[i]} if i in outcome.why_not else set()
            header.append(f"samplers[{i}] left out, uncalibrated: {'; '.join(sorted(reasons)) or 'no pilot finished'}")
            continue
        samplers.append(_with_rung(entry, rung))
        for g in outcome.groups:
            if g.entry == i and g.choice and g.choice.fit:
                f = g.choice.fit
                header.append(f"samplers[{i}] on {g.target_id} ({g.label}): λ̂(ε→0) = {f.llc0:.4g} ± {f.llc0_se:.2g}")
            elif g.entry == i and g.choice and g.choice.plateau:
                row = next(r for r in g.rows if r["gamma"] == rung)
                span = f"{g.rows[g.choice.plateau[0]]['gamma']:g}–{g.rows[g.choice.plateau[-1]]['gamma']:g}"
                header.append(f"samplers[{i}] on {g.target_id} ({g.label}): γ = {rung:g} on the plateau γ {span}, "
                              f"λ̂ = {row['llc_mean']:.4g} ± {row['llc_sem']:.2g}")
            elif g.entry == i and g.choice and isinstance(rung, Accept):
                row = next(r for r in g.rows if r["target_acceptance"] == rung.target_acceptance)
                header.append(f"samplers[{i}] on {g.target_id} ({g.label}): target_acceptance = "
                              f"{rung.target_acceptance:g}, λ̂ = {row['llc_mean']:.4g} ± {row['llc_sem']:.2g}, "
                              f"divergent {100 * (row['divergence_rate'] or 0):.2g} %")
    if not samplers:
        return None
    calibrated = {**{k: v for k, v in data.items() if k != "samplers"}, "samplers": samplers}
    # its own name: its results file, and the report of a calibration of it (γ first, then the
    # step), do not overwrite this one's
    calibrated["name"] = name if name.endswith(CALIBRATED_SUFFIX) else name + CALIBRATED_SUFFIX
    _write_yaml(out, calibrated, header, root)
    return out


def _write_page(store, report_dir: Path, stem: str, outcome: CalibrateOutcome) -> Path | None:
    """The report as an lh promote page in report_dir/STEM/: the figure and the report's text
    first, then each pilot run's card (its λ̂ trace, which is its loss trace scaled: nβ·(L − L0),
    and running mean), grouped by target."""
    from lambda_hat import promote as gallery

    run_ids = list(dict.fromkeys(r["run_id"] for g in outcome.groups for r in g.rows if r.get("run_id")))
    if not run_ids:
        return None
    md, png = report_dir / f"{stem}.md", report_dir / f"{stem}.png"
    preface = gallery.Preface(f"Calibration of {stem}", md.read_text(),
                              png.read_bytes() if png.is_file() else None)
    outdir = report_dir / stem
    gallery.promote(store, outdir, run_ids=run_ids, title=f"lh calibrate: {stem}", plots=("trace", "running_mean"),
                    preface=preface)
    return outdir / "index.html"


def _nbeta_words(row: dict) -> str:
    """The chosen pilot's dependence on nβ in words (`calibration.nbeta_slope`). Called a
    dependence past 3 standard errors: a report holds many groups, and at 2 one in twenty would
    be a false alarm (on six normal crossings one was, at 2.03)."""
    slope, se, llc = row["nbeta_slope"], row["nbeta_slope_se"], row["llc_mean"]
    doubled = slope * math.log(2)
    rel = f" ({100 * doubled / llc:+.1f} %)" if llc else ""
    sure = ("within 3 standard errors of 0: no dependence on nβ is seen near this value"
            if abs(slope) <= 3 * se else "λ̂ depends on nβ here: report the nβ with the number")
    return (f"nβ dependence at the choice: dλ̂/d ln(nβ) = λ̂ − Var(per-draw λ̂) = {slope:.3g} ± {se:.2g}; "
            f"doubling nβ would move λ̂ by about {doubled:+.3g}{rel}; {sure}")


def _write_report(report_dir: Path, stem: str, outcome: CalibrateOutcome, ladders, root: Path) -> Path:
    from lambda_hat.files import write_atomic
    from lambda_hat.output_paths import check_output_path

    lines = [f"# Calibration of {stem}", ""]
    doc: dict[str, Any] = {"sweep": stem, "groups": []}
    for g in outcome.groups:
        c = g.choice
        kind = g.kind
        gamma = kind == "gamma"
        what = {"gamma": "γ", "accept": "target acceptance", "step": "SGLD's step"}[kind]
        lines += [f"## samplers[{g.entry}] on {g.target_id} ({g.label}): {what}", ""]
        n_beta = next((r["n_beta"] for r in g.rows if r.get("n_beta")), None)
        if n_beta is not None:  # not calibrated: the tempering is part of the question, not a sampler setting
            lines += [f"nβ = {n_beta:.4g} (β at its setting in the sweep, by default 1/log n; not calibrated)", ""]
        if gamma:
            lines += ["| γ | λ̂ ± SEM | R-hat | status | run |", "|---|---|---|---|---|"]
        elif kind == "accept":
            lines += ["| target acceptance | λ̂ ± SEM | R-hat | divergent | status | run |", "|---|---|---|---|---|---|"]
        else:
            lines += ["| ε·nβ | steps | warmup | eval_every | λ̂ ± SEM | R-hat | status | run |",
                      "|---|---|---|---|---|---|---|---|"]
        for r in g.rows:
            est = "—" if r["llc_mean"] is None or r["llc_sem"] is None else f"{r['llc_mean']:.4g} ± {r['llc_sem']:.2g}"
            rhat = "—" if r["r_hat"] is None else f"{r['r_hat']:.3f}"
            div = "—" if r["divergence_rate"] is None else f"{100 * r['divergence_rate']:.2g} %"
            head = (f"| {r['gamma']:g} |" if gamma else f"| {r['target_acceptance']:g} |" if kind == "accept" else
                    f"| {r['step_size_nbeta']:g} | {r['steps']} | {r['warmup']} | {r['eval_every']} |")
            rhat = f"{rhat} | {div}" if kind == "accept" else rhat
            lines.append(f"{head} {est} | {rhat} | {r['status']} | {r['run_id']} |")
        lines.append("")
        if c and c.fit:
            lines.append(f"λ̂(ε → 0) = **{c.fit.llc0:.4g} ± {c.fit.llc0_se:.2g}** (weighted line: slope "
                         f"{c.fit.slope:.3g} ± {c.fit.slope_se:.2g} per unit ε·nβ, χ² {c.fit.chi2:.2f} on {c.fit.dof} dof)")
        if gamma:
            lines.append("Largest γ considered: " + ("none known (no Hessian estimate)" if g.ceiling is None else
                         f"{GAMMA_CEILING:g}·nβ·h_max = {g.ceiling:.4g}"))
        if c is None or c.rung is None:
            chosen = "uncalibrated"
        elif kind == "accept":
            chosen = f"target_acceptance = {ladders[g.entry][c.rung].target_acceptance:g}"
        else:
            chosen = f"γ = {ladders[g.entry][c.rung]:g}" if gamma else f"ε·nβ = {ladders[g.entry][c.rung].step_size_nbeta:g}"
        lines += [f"Choice: {chosen}: {c.reason if c else 'no pilot finished'}", ""]
        at_choice = g.rows[c.rung] if c and c.rung is not None else None
        if at_choice and at_choice["nbeta_slope"] is not None:
            lines += [_nbeta_words(at_choice), ""]
        entry_choice = outcome.chosen.get(g.entry)
        if gamma and c and c.rung is not None and entry_choice is not None and entry_choice != ladders[g.entry][c.rung]:
            lines += [f"The entry takes γ = {entry_choice:g}, inside every one of its targets' plateaus.", ""]
        if kind == "accept" and c and c.rung is not None and entry_choice is not None and entry_choice != ladders[g.entry][c.rung]:
            lines += [f"The entry takes target_acceptance = {entry_choice.target_acceptance:g}, the most careful of its "
                      "targets' choices (so the cost below is against a run the calibrated sweep does not use).", ""]
        cost = [r["sample_sec"] for r in g.rows if r["sample_sec"] is not None]
        if c and c.rung is not None and len(cost) == len(g.rows) and g.rows[c.rung]["sample_sec"]:
            lines += [f"Cost: the pilots sampled {sum(cost):.1f} s, {sum(cost) / g.rows[c.rung]['sample_sec']:.1f}× "
                      "the chosen run (which is one of them)", ""]
        item: dict[str, Any] = {"entry": g.entry, "kind": kind, "target_id": g.target_id,
                                "label": g.label, "pilots": g.rows, "reason": c.reason if c else "no pilot finished"}
        item["nbeta_slope"] = None if at_choice is None else at_choice["nbeta_slope"]
        item["nbeta_slope_se"] = None if at_choice is None else at_choice["nbeta_slope_se"]
        if gamma:
            item.update({"ceiling": g.ceiling,
                         "plateau": [ladders[g.entry][k] for k in c.plateau] if c and c.plateau else None,
                         "chosen_gamma": None if c is None or c.rung is None else ladders[g.entry][c.rung],
                         "entry_gamma": entry_choice})
        elif kind == "accept":
            item["chosen_target_acceptance"] = (None if c is None or c.rung is None
                                                else ladders[g.entry][c.rung].target_acceptance)
            item["entry_target_acceptance"] = None if entry_choice is None else entry_choice.target_acceptance
        else:
            item.update({"llc0": c.fit.llc0 if c and c.fit else None,
                         "llc0_se": c.fit.llc0_se if c and c.fit else None,
                         "slope": c.fit.slope if c and c.fit else None,
                         "chi2": c.fit.chi2 if c and c.fit else None,
                         "chosen_step_size_nbeta": None if c is None or c.rung is None
                         else ladders[g.entry][c.rung].step_size_nbeta})
        doc["groups"].append(item)
    for i, why in sorted(outcome.why_not.items()):
        lines += [f"samplers[{i}] is uncalibrated: {why}", ""]
    md, js, png = report_dir / f"{stem}.md", report_dir / f"{stem}.json", report_dir / f"{stem}.png"
    if doc["groups"]:
        from lambda_hat.calibration_plot import MAX_PANELS

        first = "" if len(doc["groups"]) <= MAX_PANELS else f" (the first {MAX_PANELS} of {len(doc['groups'])} groups)"
        lines[1:1] = ["", f"![λ̂ of every pilot, the line or plateau, the choice]({png.name}){first}"]
    for path, text in ((md, "\n".join(lines) + "\n"), (js, json.dumps(doc, indent=1) + "\n")):
        check_output_path(path, root, "--report-dir")
        write_atomic(path, text.encode())
    if doc["groups"]:
        from lambda_hat.calibration_plot import write_calibration_figure

        check_output_path(png, root, "--report-dir")
        write_calibration_figure(doc["groups"], png)
    return md
