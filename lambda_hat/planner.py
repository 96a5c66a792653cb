"""The planner: a pure function from (sweep, what the store holds) to what must be done."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from lambda_hat.ids import RunIds, canonical, target_id, trajectory_id
from lambda_hat.specs import RunSpec, SamplerRun, Sweep, TargetSpec, free_leaves
from lambda_hat.store import StoreSnapshot
from lambda_hat.errors import SweepError
from lambda_hat.sweep import DEFAULT_MAX_RUNS, load_sweep


class PlannedRun(NamedTuple):
    """A run of the sweep. Its RunSpec is built when asked for (`spec`): a plan of a million
    runs needs their IDs, and only the runs that are submitted need their specs. (A NamedTuple:
    half the construction cost of a frozen dataclass, which counts at a million runs.)"""

    run_id: str
    target_id: str
    setting: SamplerRun

    @property
    def spec(self) -> RunSpec:
        s = self.setting
        return RunSpec(target_id=self.target_id, sampler=s.sampler, posterior=s.posterior, seed=s.seed, free=s.free,
                       record=s.record)


@dataclass(frozen=True)
class PlannedTarget:
    target_id: str
    spec: TargetSpec
    # A checkpoint target: the sweep's checkpoints of its trajectory at smaller steps, in step
    # order (its build resumes from the last one stored, after that one's build if it is planned).
    earlier: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expanded:
    """Every target and run a sweep names, with IDs, in sweep order."""

    targets: list[PlannedTarget]
    runs: list[PlannedRun]


@dataclass(frozen=True)
class Plan:
    targets_to_build: list[PlannedTarget] = field(default_factory=list)
    targets_cached: list[PlannedTarget] = field(default_factory=list)
    runs_to_sample: list[PlannedRun] = field(default_factory=list)
    runs_cached: list[PlannedRun] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not self.targets_to_build and not self.runs_to_sample

    def as_json(self) -> dict[str, list[str]]:
        return {
            "targets_to_build": [t.target_id for t in self.targets_to_build],
            "targets_cached": [t.target_id for t in self.targets_cached],
            "runs_to_sample": [r.run_id for r in self.runs_to_sample],
            "runs_cached": [r.run_id for r in self.runs_cached],
        }

    def summary(self) -> str:
        from lambda_hat.text import plural

        return (f"{plural(len(self.targets_to_build), 'target')} to build, {plural(len(self.runs_to_sample), 'run')} to sample, "
                f"{len(self.targets_cached) + len(self.runs_cached)} cached")


def describe_target(t: PlannedTarget) -> str:
    d = t.spec.data
    # a user's model brings its own data: only its size is lambda-hat's to show
    data = f"n{d.n_data}" if t.spec.model.kind == "python" else f"n{d.n_data}/{d.x_dist}"
    step = "" if t.spec.step is None else f", step={t.spec.step}"  # a checkpoint of a trajectory
    return f"model={t.spec.model.describe()}, data={data}, seed={t.spec.seed}{step}"


def expand(sweep: Sweep, *, max_runs: int = DEFAULT_MAX_RUNS) -> Expanded:
    """Targets x samplers. Each run names its target by ID, so its own ID covers the target's.

    A sweep of more than `max_runs` runs is refused before any is built (`load_sweep` refuses
    it earlier, from the grids; this guards sweeps built in Python)."""
    n_runs = len(sweep.targets) * len(sweep.samplers)
    if n_runs > max_runs:
        raise SweepError(f"the sweep has {n_runs:,} runs, more than the limit of {max_runs:,} (max_runs)")
    # Entries written differently may name one computation (a preset and its values written
    # out; a restriction that selects every leaf): one ID, one job, one row.
    first: dict[str, PlannedTarget] = {}
    for spec in sweep.targets:
        tid = target_id(spec)
        first.setdefault(tid, PlannedTarget(tid, spec))
    targets = _with_earlier(list(first.values()))
    # Each sampler setting is canonicalised once (not once per run); see ids.RunIds.
    settings = [(s, None if s.restrict else RunIds.of(s)) for s in sweep.samplers]
    runs: dict[str, PlannedRun] = {}
    for t in targets:
        tid, tid_json = t.target_id, canonical(t.target_id)
        for s, ids in settings:
            if ids is None:
                # a restriction is resolved on each target to its sorted leaves (`specs.free_leaves`)
                s = s.model_copy(update={"free": _free_leaves(t.spec, s)})
                ids = RunIds.of(s)
            run_id = ids(tid_json)
            if run_id not in runs:
                runs[run_id] = PlannedRun(run_id, tid, s)
    return Expanded(targets, list(runs.values()))


OPTAX_ADAMW_DECAY = 1e-4  # optax.adamw's default weight_decay: what `weight_decay: null` trains with
# train.CHECK_EVERY (not imported: that module imports JAX, which `lh plan` does not need): the
# stopping rules are checked after each chunk of this many steps, and never before the last
# chunk of a training of at most this many steps (the test file checks that the two agree).
TRAIN_CHECK_EVERY = 100


def _plain_training(tr, n: int):
    """`tr` as the training it runs on `n` examples: adam is adamw without decay, adamw's null
    decay is optax's default, `early_stop_tol` is unused beside `grad_tol` (and 0 disables it, as
    null does), a `batch_size` at or above n is the full batch (as null is), and a training of at
    most TRAIN_CHECK_EVERY steps ends after its only chunk whatever its stopping rule says."""
    plain = {}
    if tr.optimizer == "adam":
        plain.update(optimizer="adamw", weight_decay=0.0)
    elif tr.optimizer == "adamw" and tr.weight_decay is None:
        plain["weight_decay"] = OPTAX_ADAMW_DECAY
    if tr.grad_tol is not None or tr.early_stop_tol == 0:
        plain["early_stop_tol"] = None
    if tr.steps <= TRAIN_CHECK_EVERY:
        plain.update(early_stop_tol=None, grad_tol=None)
    if tr.batch_size is not None and tr.batch_size >= n:
        plain["batch_size"] = None
    return tr.model_copy(update=plain)


# The data fields each input distribution and noise model reads (science/data.py); the others
# are never read. n_data, n_test, x_dist and noise_model are always used.
_X_DIST_READS = {"gauss_iso": (), "gauss_aniso": ("cov_decay",), "mixture": ("mixture_k", "mixture_spread"),
                 "lowdim_manifold": ("x_dim_latent",), "heavy_tail": ("student_df",)}
_NOISE_READS = {"gauss": ("noise_scale",), "hetero": ("noise_scale", "hetero_scale"),
                "student_t": ("noise_scale", "student_df"),
                "outliers": ("noise_scale", "outlier_frac", "outlier_scale")}
_DATA_ALWAYS = ("n_data", "n_test", "x_dist", "noise_model")


def _trains(spec: TargetSpec) -> bool:
    """Whether building `spec` trains a student (`train.train` or a trajectory): not for a
    polynomial model (measured at w* = 0), a dln or mlp measured at its teacher (or, dln, the
    teacher refined by L-BFGS), nor a python model whose factory hands over w* ("trained": the
    sweep's loader wrote it into the spec) or whose checkpoint is read from a file."""
    m = spec.model
    kind = getattr(m, "kind", None)
    if kind == "polynomial":
        return False
    if kind in ("mlp", "dln"):
        return spec.w_star == "trained"
    if kind == "python":
        return not (m.trained or getattr(m, "params_file", None) is not None)
    return True  # another kind: assume it trains


def _plain_target(spec: TargetSpec) -> TargetSpec:
    """`spec` as the target it builds: its training as `_plain_training`, or none where nothing is
    trained (`_trains`), with a dln's `init` then unused too; the data fields its `x_dist` and
    `noise_model` never read at their defaults; a python model's data but n_data (the factory
    supplies the data; the loader sets n_data to its size)."""
    m, d = spec.model, spec.data
    kind = getattr(m, "kind", None)
    update = {}
    if not _trains(spec):
        update["training"] = type(spec.training)()
        if kind == "dln":
            update["model"] = m.model_copy(update={"init": type(m).model_fields["init"].default})
    else:
        update["training"] = _plain_training(spec.training, d.n_data)
    if kind == "python":
        update["data"] = type(d)(n_data=d.n_data)
        if getattr(m, "params_file", None) is not None:
            # a checkpoint read from a file: w* is its params (by content), whatever step its name says
            update["step"] = None
    elif kind in ("mlp", "dln", "polynomial") and d.x_dist in _X_DIST_READS and d.noise_model in _NOISE_READS:
        read = {*_DATA_ALWAYS, *_X_DIST_READS[d.x_dist], *_NOISE_READS[d.noise_model]}
        default = type(d).model_fields
        unread = {f: default[f].default for f in default if f not in read and getattr(d, f) != default[f].default}
        if unread:
            update["data"] = d.model_copy(update=unread)
    return spec.model_copy(update=update)


# MCLMC's settings that only its tuner reads (`samplers/mclmc.py`)
MCLMC_TUNING = ("frac_tune1", "frac_tune2", "frac_tune3", "desired_energy_var", "trust_in_estimate",
                "num_effective_samples", "diagonal_preconditioning")


def _plain_setting(setting: SamplerRun, n: int, n_test: int | None) -> SamplerRun:
    """`setting` as the computation it runs on a target of `n` examples (and `n_test` held-out
    ones, where the sweep knows them): SGLD's batch_size at or above n is the full batch, its
    steps past the last draw are never run, its step_size_nbeta is unused beside step_size; HMC's
    and NUTS's adaptation settings are unused without warmup (and target_acceptance without
    adaptation); MCLMC's tuning settings are unused untuned (`tune: false` or `num_steps: 0`); a
    per-example record of at least n examples records them all, of at least `n_test` held-out
    ones all of those, and draws nothing with its seed when nothing is drawn."""
    s, update = setting.sampler, {}
    default = type(s).model_fields
    if s.name == "sgld":
        plain = {"batch_size": min(s.batch_size, n), "steps": s.warmup + s.draws * s.eval_every}
        if s.step_size is not None:
            plain["step_size_nbeta"] = default["step_size_nbeta"].default
        update["sampler"] = s.model_copy(update=plain)
    elif s.name in ("hmc", "nuts"):
        unused = ["target_acceptance", "adapt_step_size", "adapt_mass_matrix"] if s.warmup == 0 else \
            ["target_acceptance"] if not (s.adapt_step_size or s.adapt_mass_matrix) else []
        if unused:
            update["sampler"] = s.model_copy(update={f: default[f].default for f in unused})
    elif s.name == "mclmc" and not (s.tune and s.num_steps > 0):
        # untuned (samplers/mclmc.py): L and step_size as given, no tuner; desired_energy_var
        # only scales the kernel's energy cutoff, which is infinite (its max ratio is inf)
        plain = {f: default[f].default for f in MCLMC_TUNING}
        update["sampler"] = s.model_copy(update={**plain, "tune": False, "num_steps": 0})
    pe = setting.record.per_example if setting.record is not None else None
    if pe is not None:
        subset = "all" if pe.subset == "all" or pe.subset >= n else pe.subset
        heldout = "all" if pe.heldout == "all" or (n_test is not None and pe.heldout >= n_test > 0) else pe.heldout
        recorded = n if subset == "all" else subset
        drawn = subset != "all" or 0 < pe.query < recorded or heldout not in (0, "all")
        plain = {"subset": subset, "heldout": heldout, "query": pe.query}
        if not drawn:
            plain["seed"] = type(pe).model_fields["seed"].default
        update["record"] = setting.record.model_copy(update={"per_example": pe.model_copy(update=plain)})
    return setting.model_copy(update=update) if update else setting


def _differences(a, b, fields: list[tuple[str, str]]) -> str:
    return "; ".join(f"{label} {va!r} and {vb!r}" for label, name in fields
                     for va, vb in [(_dotted(a, name), _dotted(b, name))] if va != vb)


def _dotted(obj, name: str):
    for part in name.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj


def _target_differences(a: TargetSpec, b: TargetSpec) -> str:
    """Why two targets of one `_plain_target` build alike: the settings that differ (all unused)."""
    fields = [(f"{part}.{f}", f"{part}.{f}") for part in ("training", "data")
              for f in type(getattr(a, part)).model_fields]
    why = _differences(a, b, fields + [("model.init", "model.init")])
    if a.step != b.step:  # two checkpoint files of one content (the rest is alike: `_plain_target`)
        return (f"step {a.step} and {b.step}: checkpoint files of the same params build alike"
                + (f"; {why}" if why else ""))
    if not _trains(a):
        w_star = "handed over" if a.model.kind == "python" else \
            {"teacher": "the teacher", "refined": "the refined teacher"}.get(a.w_star, a.w_star)
        return why + f" build alike (w* is {w_star}: nothing is trained)"
    return why + (" train alike" if why.startswith("training.") and "; data." not in why else " build alike")


def same_computations(expanded: Expanded) -> list[tuple[str, str, str]]:
    """(first ID, later ID, the settings that differ) for the sweep's targets and runs that are
    one computation under two IDs.

    An ID hashes the spec as written, and a store's IDs never change, so some spellings keep
    one computation apart (`_plain_training`, `_plain_setting`). Both would be built or sampled,
    bit for bit alike, and read as two replicates; `lh plan` and `lh execute` name them. (Runs
    on two such targets are not listed again.)"""
    out: list[tuple[str, str, str]] = []
    first_target: dict[str, PlannedTarget] = {}
    for t in expanded.targets:
        earlier = first_target.setdefault(target_id(_plain_target(t.spec)), t)
        if earlier is not t:
            out.append((earlier.target_id, t.target_id, _target_differences(earlier.spec, t.spec)))
    # n_data and, for the built-in data (a factory's test set is its own), n_test
    n_data = {t.target_id: (t.spec.data.n_data, None if getattr(t.spec.model, "kind", None) == "python"
                            else t.spec.data.n_test) for t in expanded.targets}
    # One key per (setting, sizes), not per run: a sweep of a million runs has a few settings.
    settings = {id(r.setting): r.setting for r in expanded.runs}
    key_of: dict[tuple[int, tuple], str] = {}
    for n in set(n_data.values()):
        for sid, setting in settings.items():
            key_of[(sid, n)] = RunIds.of(_plain_setting(setting, *n))(b'""')
    shared = {n_k for n_k, count in Counter((n, k) for (_, n), k in key_of.items()).items() if count > 1}
    repeated = {(sid, n) for (sid, n), k in key_of.items() if (n, k) in shared}
    first: dict[tuple[str, str], PlannedRun] = {}
    for r in expanded.runs if repeated else []:
        n = n_data[r.target_id]
        if (id(r.setting), n) not in repeated:
            continue
        earlier = first.setdefault((r.target_id, key_of[(id(r.setting), n)]), r)
        if earlier is not r:
            a, b = earlier.setting, r.setting
            fields = ["batch_size", "steps", "step_size_nbeta", "target_acceptance", "adapt_step_size",
                      "adapt_mass_matrix", "tune", "num_steps", *MCLMC_TUNING]
            why = _differences(a, b, [(f, f"sampler.{f}") for f in fields] + [
                (f"record.per_example.{f}", f"record.per_example.{f}") for f in ("subset", "heldout", "query", "seed")])
            # the data's size, where it is the reason (a batch or record at least as large as the data)
            sizes = f" on n_data {n[0]}" + (f", n_test {n[1]}" if "heldout" in why else "") \
                if "batch_size" in why or "record.per_example" in why else ""
            out.append((earlier.run_id, r.run_id, why + f" run alike{sizes}"))
    return out


def describe_same_computations(pairs: list[tuple[str, str, str]], shown: int = 5) -> list[str]:
    """Lines naming `same_computations`' pairs (the first `shown`, then how many more)."""
    if not pairs:
        return []
    lines = [f"note: {len(pairs)} of the sweep's targets and runs repeat another's computation under another ID "
             "(built or sampled bit for bit alike: not independent replicates):"]
    lines += [f"  {later} = {first}: {why}" for first, later, why in pairs[:shown]]
    if len(pairs) > shown:
        lines.append(f"  … and {len(pairs) - shown} more (lh plan --limit 0 lists them)")
    return lines


def _with_earlier(targets: list[PlannedTarget]) -> list[PlannedTarget]:
    """Each checkpoint target with its trajectory's earlier checkpoints (`PlannedTarget.earlier`)."""
    by_trajectory: dict[str, list[PlannedTarget]] = {}
    for t in targets:
        # a checkpoint trained elsewhere is read from its file, never trained from another
        if t.spec.step is not None and getattr(t.spec.model, "params_file", None) is None:
            by_trajectory.setdefault(trajectory_id(t.spec), []).append(t)
    earlier: dict[str, tuple[str, ...]] = {}
    for group in by_trajectory.values():
        ids = list(dict.fromkeys(t.target_id for t in sorted(group, key=lambda t: t.spec.step)))
        earlier.update((tid, tuple(ids[:i])) for i, tid in enumerate(ids))
    return [PlannedTarget(t.target_id, t.spec, earlier[t.target_id]) if earlier.get(t.target_id) else t
            for t in targets]


def _free_leaves(target: TargetSpec, setting: SamplerRun) -> list[str] | None:
    try:
        return free_leaves(target, setting.restrict)
    except ValueError as err:
        raise SweepError(f"sampler {setting.sampler.name}: {err}") from None


def load(sweep_path, *, max_runs: int = DEFAULT_MAX_RUNS) -> tuple[Sweep, Expanded]:
    """A sweep file read, checked and expanded: what `lh plan` and `lh execute` start from.
    Raises SweepError (bad input, one line)."""
    sweep = load_sweep(sweep_path, max_runs=max_runs)
    return sweep, expand(sweep, max_runs=max_runs)


def plan(sweep: Sweep | Expanded, snapshot: StoreSnapshot) -> Plan:
    ex = sweep if isinstance(sweep, Expanded) else expand(sweep)
    p = Plan()
    for t in ex.targets:
        (p.targets_cached if t.target_id in snapshot.target_ids else p.targets_to_build).append(t)
    for r in ex.runs:
        (p.runs_cached if r.run_id in snapshot.run_ids else p.runs_to_sample).append(r)
    return p


BATCH_RUNS_MAX = 64  # runs per batched job: their chains' states and traces are held together


def batches(runs: list[PlannedRun]) -> list[list[PlannedRun]]:
    """`runs` grouped for `lh execute --batch-runs`: runs with the same `RunSpec.batch_key` (same
    target, same settings but for seed, β, γ and runtime scalars), in plan order, at most
    BATCH_RUNS_MAX a group. A run that records per-example losses is a group of its own: its
    recorded array alone may take the size a run is allowed (`sweep.per_example_cap`)."""
    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        alone = r.setting.record is not None and r.setting.record.per_example is not None
        groups.setdefault(r.run_id if alone else r.spec.batch_key(), []).append(r)
    return [g[i:i + BATCH_RUNS_MAX] for g in groups.values() for i in range(0, len(g), BATCH_RUNS_MAX)]
