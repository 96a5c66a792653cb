"""`build_target` and `sample_run`: specs in, arrays and numbers out. No file I/O.

PRNG keys: a target uses jax.random.PRNGKey(target.seed) split into (data, student init,
training) keys; the data key is split again into distribution / teacher / X / noise keys,
so the teacher's weights never share a key with the student's. A run uses
PRNGKey(run.seed). Same spec → same numbers on the same machine.

dtypes: `target.dtype` is the dtype of data, training and w*; `run.sampler.dtype` is the
dtype the sampler computes in (data and w* are cast to it, and L0 is recomputed in it with
the same loss function, so llc = nβ·(L_n(w) − L0) never mixes precisions). Each runs in
the x64 mode its dtype needs (`models.precision`: on for float64, off for float32, scoped
to the call), so every target × sampler dtype pair works whatever the process-wide
`jax_enable_x64`, and nothing here changes that global flag. Traces come back in the
sampler's dtype; λ̂ and its statistics are computed in float64 (numpy).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import NamedTuple

import numpy as np


def build_target(spec):
    """The target's model kind builds it (`registry.ModelKind.build`), in its dtype's precision."""
    from lambda_hat import registry

    from .models import precision

    with precision(spec.dtype):
        return registry.model_kind(spec.model.kind).build_target(spec)


# In-process cache of compiled executables (a run's start and its segment function), keyed on
# everything the traced function closes over (static config, shapes, dtypes); data, w* and the
# sampler state are arguments, so one executable serves every target of the same shapes.
_COMPILED: "OrderedDict[tuple, object]" = OrderedDict()
_COMPILED_MAX = 16


def _timed(cache_key, make_fn, *args):
    """Compile `make_fn()` for `args` (or reuse the compiled executable cached under
    `cache_key`) and run it. `make_fn()` must return a pure function of `args` whose closure
    holds only Python scalars / shapes / static config, never arrays: the data then never
    become HLO constants, so compiles are smaller and the persistent compilation cache
    (`jax_compilation_cache_dir`) hits across targets of the same shapes.
    Returns (numpy outputs, compile_sec, run_sec, in-process cache hit)."""
    import jax

    from . import compiling

    t0 = time.perf_counter()
    compiled = _COMPILED.get(cache_key)
    hit = compiled is not None
    if hit:
        _COMPILED.move_to_end(cache_key)
    else:
        compiled = compiling.compile(cache_key, lambda: jax.jit(make_fn()).lower(*args))
        _COMPILED[cache_key] = compiled
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    return jax.tree.map(np.asarray, out), t1 - t0, t2 - t1, hit


def _walltime_per_draw(warm_fge, draw_fge, sample_sec: float) -> np.ndarray:
    """Seconds from the start of the compiled call to the end of each draw, (chains, draws).

    One compiled call runs warmup and all draws, so only its total is measured. Chains are
    `vmap`ped and advance in lockstep: draw i ends for every chain when the slowest chain's
    gradient evaluations up to i are done. The measured time is therefore spread over the
    warmup and the draws in proportion to the per-step maximum over chains of gradient
    evaluations (exact when a gradient dominates a step's cost, as it does here)."""
    step_cost = np.max(draw_fge, axis=0)
    cum = np.max(warm_fge) + np.cumsum(step_cost)
    frac = cum / cum[-1] if cum[-1] > 0 else np.linspace(1 / len(cum), 1, len(cum))
    return np.broadcast_to(sample_sec * frac, draw_fge.shape).copy()


# Cost of one full-data loss evaluation, in full-gradient evaluations. A gradient is a forward and a
# backward pass, and a dense network's backward pass costs about twice its forward (per layer one
# matmul for the input gradient and one for the weight gradient, against one forward): the usual
# 2N-forward / 6N-training FLOP count. SGLD pays it for every recorded draw (its minibatch steps
# never see the full loss); HMC/NUTS/MCLMC read the loss off their state's log density for free.
LOSS_EVAL_FGE = 1.0 / 3.0

from lambda_hat.specs import DIVERGENCE_MAX as MAX_DIVERGENCE_RATE  # noqa: E402,F401  (default divergent-run threshold)


# A run is cut into about this many segments, so that the worker can persist its
# traces and a checkpoint as it goes; `segment_length` picks the length. Each segment costs one
# dispatch of the compiled segment function and a transfer of the chains' state (benchmarks/engine.py
# measures it against one compiled call).
SEGMENTS_PER_RUN = 50


def segment_length(draws: int, segments: int = SEGMENTS_PER_RUN) -> int:
    """Draws per segment: about draws / segments, preferring a divisor of `draws` within a factor
    of two (every segment full), and at least 2 (XLA unrolls a one-step loop, which compiles
    the step differently and changes the numbers in the last bits)."""
    target = max(2, -(-draws // segments))
    for k in range(target, max(2, target // 2) - 1, -1):
        if draws % k == 0:
            return k
    return target


class Checkpoint(NamedTuple):
    """A run's state after `draws_done` draws, as host arrays: what the worker persists after a
    segment and hands back to `sample_run(resume=...)`. `leaves` are the leaves of
    `engine.Chains` (sampler states, tuned parameters, draw keys, warmup costs), in
    `jax.tree.leaves` order; `compile_sec` / `sample_sec` the time spent so far."""

    draws_done: int
    leaves: list
    L0: float
    compile_sec: float
    sample_sec: float


def sample_run(run, target, arrays, *, resume=None, on_segment=None, segment_draws: int | None = None,
               diagnostics=None):
    """Sample the localized tempered posterior; see the module doc and `RunResult`.

    The sampler (`registry.sampler(run.sampler.name)`) runs in the engine (`engine.py`): one compiled
    call for init + warmup, then segments of `segment_draws` draws (default `segment_length`),
    one compiled function reused for all of them. After each segment `on_segment(checkpoint,
    traces)` is called with a `Checkpoint` and that segment's traces {name: (chains, n)}; a run
    given `resume=(checkpoint, traces so far)` continues after `checkpoint.draws_done` draws and
    gives the same numbers, bit for bit, as one never interrupted (same machine and code).

    Metrics beyond `llc.summarize`'s: L0 (recomputed in the sampler's dtype), beta, n_beta,
    gamma, step_size (mean over chains of the step size used), total_fge (full-gradient
    evaluations summed over chains, warmup/tuning included: SGLD counts a minibatch
    gradient as min(batch_size, n)/n and each recorded draw's full-data loss as LOSS_EVAL_FGE,
    HMC/NUTS the integrator steps, MCLMC the integrator's gradients per step (both read the
    recorded loss off their state's log density), and every chain's dispersed start
    `posterior.INIT_FGE`), fge_recording (the recorded draws' share of total_fge), fge_warmup,
    accept_rate_mean / divergences (HMC, NUTS), L (MCLMC), compile_sec (lower + compile, ~0 on
    an in-process cache hit), sample_sec (the compiled calls), walltime_sec (their sum),
    compile_cache_hit. Chains start dispersed around w* (`posterior.dispersed_start`).

    status, most severe first (`llc.STATUS_PRECEDENCE`): "nonfinite" when a draw is NaN/inf
    (statistics NaN); "divergent" when more than MAX_DIVERGENCE_RATE of the HMC/NUTS draws were
    divergent transitions (`divergences` and `divergence_rate` always recorded); "unconverged"
    when R-hat > llc.R_HAT_MAX or bulk ESS < llc.ESS_BULK_MIN; else "ok". Numbers are kept in
    every case but "nonfinite"; `flags` lists every reason that applies (a divergent run may
    also be unconverged) and `status_reason` joins them.
    """
    from .models import precision

    with precision(run.sampler.dtype):
        return _sample_run(run, target, arrays, resume, on_segment, segment_draws, diagnostics)


def sample_runs(runs, target, arrays, *, diagnostics=None):
    """Several runs of one target sampled together, as one `vmap`ped program over the runs: a list
    of `RunResult`, one per run, each as `sample_run` would describe it.

    The runs must differ only in what the compiled sampler takes as arguments: `seed`, the
    posterior's β (`beta0`) and γ, and the sampler's runtime scalars (SGLD's step size); anything
    else is refused (ValueError). Every run keeps its own PRNG stream, but its numbers are equal in
    law, not bit for bit, to the same run sampled alone (batched matrix products round differently).
    compile_sec and sample_sec are the batch's, shared by its runs. No checkpoints: a batch that is
    killed starts again."""
    from .models import precision

    runs = list(runs)
    if not runs:
        return []
    check_batchable(runs)
    with precision(runs[0].sampler.dtype):
        return _sample_run(runs[0], target, arrays, None, None, None, diagnostics, batch=runs)


def check_batchable(runs) -> None:
    keys = {r.batch_key() for r in runs}
    if len(keys) > 1:
        raise ValueError("runs of one batch may differ only in seed, posterior.beta0, posterior.gamma and the "
                         f"sampler's runtime scalars; got {len(keys)} different settings")


def _sample_run(run, target, arrays, resume, on_segment, segment_draws, diagnostics, batch=None):
    import jax
    import jax.numpy as jnp

    from lambda_hat import registry

    from . import engine
    from .models import jnp_dtype, model_key
    from .per_example import example_rows
    from .posterior import (as_inputs, flat_model, make_example_losses, make_full_loss, make_minibatch_loss, n_rows,
                            start_rows, take_rows)

    s, post = run.sampler, run.posterior
    if post.loss != "mse":
        raise NotImplementedError(f"posterior.loss={post.loss!r} is not implemented")
    entry = registry.sampler(s.name)
    sampler = entry.load()
    dtype = jnp_dtype(s.dtype)
    n = n_rows(arrays.X)
    if n != target.data.n_data:
        raise ValueError(f"arrays hold {n} rows but target.data.n_data is {target.data.n_data}")
    beta = float(post.beta(n))
    n_beta = n * beta
    gamma = float(post.gamma)
    params = {k: jnp.asarray(v, dtype) for k, v in arrays.params.items()}
    X, Y = as_inputs(arrays.X, dtype), jnp.asarray(arrays.Y, dtype)
    # the forward pass's key: an MLP's activation; "identity" for a deep linear network (no
    # biases); ("polynomial", powers) for a normal-crossing model
    activation = model_key(target.model)
    w_star, predict = flat_model(params, activation)  # predict closes over shapes only
    if int(w_star.size) != target.model.n_params:
        raise ValueError(f"params have {w_star.size} entries but the model has {target.model.n_params}")
    alg = sampler.from_spec(s)
    scalars = entry.runtime_scalars(s, n_beta)
    names = sorted(entry.scalars)
    draws = int(s.draws)
    K = max(2, min(int(segment_draws), draws)) if segment_draws else segment_length(draws)

    # A restricted run (`run.free`) samples only those leaves; the others stay bitwise at w*.
    free = run.free
    idx = None if free is None else free_positions(params, free)
    d = int(w_star.size) if idx is None else int(idx.size)
    rows = start_rows(n, d)

    # the per-example loss (`losses.per_example`): "mse" for every built-in model
    loss_name = getattr(target.model, "loss", None) or "mse"
    # recorded per-example losses (`record.per_example`): their rows, passed in as data
    per_ex = run.record.per_example if run.record is not None else None
    ex_rows = None if per_ex is None else example_rows(n, per_ex.subset, per_ex.seed)
    ex_data = None if ex_rows is None else (take_rows(X, ex_rows), Y[ex_rows])
    # ... and the held-out examples' (`record.per_example.heldout`): recorded with them, as
    # columns after the training examples', split again in `_finish`
    held_rows = None
    if per_ex is not None and per_ex.heldout != 0:
        X_test, Y_test = heldout_examples(target, entry_kind=registry.model_kind(target.model.kind))
        held_rows = example_rows(n_rows(X_test), per_ex.heldout, per_ex.seed)
        X_held, Y_held = take_rows(as_inputs(X_test, dtype), held_rows), jnp.asarray(Y_test, dtype)[held_rows]
        ex_data = (jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ex_data[0], X_held),
                   jnp.concatenate([ex_data[1], Y_held]))

    def problem(w_full, X, Y, ex, n_beta, gamma, values):
        if idx is None:
            w_star, pred = w_full, predict
        else:  # the posterior of the free coordinates, the rest held at w* (an argument, not a constant)
            w_star = w_full[idx]

            def pred(v, x):
                return predict(w_full.at[idx].set(v), x)
        start_loss = None if rows is None else (
            lambda key: (lambda w: make_minibatch_loss(pred, X, Y, rows, loss_name)(w, key)))
        example_loss = None if ex is None else make_example_losses(pred, *ex, loss_name=loss_name)
        return engine.Problem(make_full_loss(pred, X, Y, loss_name=loss_name),
                              lambda b: make_minibatch_loss(pred, X, Y, b, loss_name),
                              w_star, n_beta, gamma, dict(zip(names, values)), start_loss, example_loss)

    def make_start():
        def fn(key, w_star, X, Y, ex, n_beta, gamma, values):
            p = problem(w_star, X, Y, ex, n_beta, gamma, values)
            return engine.start(alg, p, key, s.chains, disperse=True), p.loss_fn(p.w_star)

        return fn

    def make_segment():
        def fn(chains, first, w_star, X, Y, ex, n_beta, gamma, values):
            return engine.segment(alg, problem(w_star, X, Y, ex, n_beta, gamma, values), chains, first, K, draws)

        return fn

    # nβ, γ and the runtime scalars (SGLD's ε) are arguments: a β, γ or ε sweep reuses one executable.
    exclude = set(entry.scalar_fields) or None
    cache_key = (
        sampler.__name__, s.model_dump_json(exclude=exclude), activation, bool(jax.config.jax_enable_x64),
        tuple((k, v.shape, str(v.dtype)) for k, v in sorted(params.items())), _layout(X), Y.shape, str(Y.dtype), rows,
    ) + (() if loss_name == "mse" else (loss_name,)) + (() if free is None else ("free", tuple(free))) + (
        () if ex_rows is None else ("examples", len(ex_rows))) + (() if held_rows is None else ("heldout", len(held_rows)))
    if batch is not None:
        # one program over the runs: keys, nβ, γ and the runtime scalars get a leading run axis
        B = len(batch)
        nbs = [n * float(r.posterior.beta(n)) for r in batch]
        vals = [entry.runtime_scalars(r.sampler, nb) for r, nb in zip(batch, nbs)]
        data = (w_star, X, Y, ex_data, jnp.asarray(nbs, dtype),
                jnp.asarray([float(r.posterior.gamma) for r in batch], dtype),
                [jnp.asarray([v[k] for v in vals], dtype) for k in names])
        key = jnp.stack([jax.random.PRNGKey(r.seed) for r in batch])
        single_start, single_segment = make_start, make_segment
        make_start = lambda: jax.vmap(single_start(), in_axes=(0, None, None, None, None, 0, 0, 0))  # noqa: E731
        make_segment = lambda: jax.vmap(single_segment(), in_axes=(0, None, None, None, None, None, 0, 0, 0))  # noqa: E731
        cache_key = cache_key + ("batch", B)
    else:
        data = (w_star, X, Y, ex_data, jnp.asarray(n_beta, dtype), jnp.asarray(gamma, dtype),
                [jnp.asarray(scalars[k], dtype) for k in names])
        key = jax.random.PRNGKey(run.seed)
    # the draw axis of a segment's info: (chains, draws, ...), a batch's (runs, chains, draws, ...)
    axis = 1 if batch is None else 2

    def draw_axis(take):
        return (slice(None),) * axis + (slice(0, take),)

    if resume is None:
        (chains, L0), t_compile, t_run, hit = _timed(cache_key + ("start",), make_start, key, *data)
        L0, done, traces = (float(L0) if batch is None else L0), 0, {}
    else:
        ckpt, traces = resume
        treedef = jax.tree.structure(jax.eval_shape(make_start(), key, *data)[0])
        chains = jax.tree.unflatten(treedef, [np.asarray(a) for a in ckpt.leaves])
        L0, done, t_compile, t_run, hit = ckpt.L0, ckpt.draws_done, ckpt.compile_sec, ckpt.sample_sec, True
        traces = {k: [np.asarray(v)] for k, v in traces.items()}
    while done < draws:
        (chains, info), tc, tr, seg_hit = _timed(cache_key + ("segment", K), make_segment, chains,
                                                  np.int32(done), *data)
        t_compile, t_run, hit = t_compile + tc, t_run + tr, hit and seg_hit
        take = min(K, draws - done)
        info = {k: v[draw_axis(take)] for k, v in info.items()}
        for k, v in info.items():
            traces.setdefault(k, []).append(v)
        done += take
        if on_segment is not None:
            on_segment(Checkpoint(done, jax.tree.leaves(chains), L0, t_compile, t_run), info)
    traces = {k: np.concatenate(v, axis=axis) for k, v in traces.items()}
    examples = None
    if ex_rows is not None:  # ℓ_i(w*) of the recorded examples, in the sampler's dtype as L0 is
        at_w_star = jax.jit(lambda w, ex: make_example_losses(predict, *ex, loss_name=loss_name)(w))(w_star, ex_data)
        examples = (ex_rows, np.asarray(at_w_star, np.float64), loss_name, int(np.shape(arrays.Y)[-1]), held_rows)
    shared = _Sampled(target, arrays, entry, n, rows, d, diagnostics, t_compile, t_run, hit, examples)
    if batch is None:
        return _finish(run, traces, np.asarray(chains.warmup_grad_evals), L0, shared)
    return [_finish(r, {k: v[i] for k, v in traces.items()}, np.asarray(chains.warmup_grad_evals)[i], float(L0[i]),
                    shared)
            for i, r in enumerate(batch)]


def heldout_examples(target, entry_kind):
    """The held-out examples the target declares, (X_test, Y_test); refused when it declares none."""
    from lambda_hat.errors import BadInput

    got = entry_kind.heldout_data(target)
    if got is None:
        raise BadInput(f"record.per_example.heldout: target {target.model.kind} declares no held-out examples "
                       "(a factory returns them as test_data)")
    return got


def free_positions(params: dict, free: list[str]) -> np.ndarray:
    """Positions of the leaves `free` in the flat vector `ravel_pytree(params)`: a mask raveled
    the same way, so the order is ravel_pytree's whatever it is."""
    from jax.flatten_util import ravel_pytree

    missing = sorted(set(free) - set(params))
    if missing:
        raise ValueError(f"restricted run names parameters the target does not have: {', '.join(missing)}")
    mask, _ = ravel_pytree({k: np.full(np.shape(v), k in free) for k, v in params.items()})
    return np.flatnonzero(np.asarray(mask))


def _layout(X):
    """X's shapes and dtypes for a cache key: an array's shape, a pytree's (path, shape, dtype) leaves."""
    import jax

    if hasattr(X, "shape"):
        return X.shape
    return tuple((jax.tree_util.keystr(p), a.shape, str(a.dtype)) for p, a in jax.tree_util.tree_leaves_with_path(X))


class _Sampled(NamedTuple):
    """What the runs of one sampling program share: its target, sampler (`registry.Sampler`),
    rows n, start rows, free dimension d, thresholds, and timings (a batch's are its runs' total)."""

    target: object
    arrays: object
    sampler: object
    n: int
    rows: int | None
    d: int
    diagnostics: object
    t_compile: float
    t_run: float
    hit: bool
    # recorded per-example losses: (rows, ℓ_i(w*), loss name, output dimension, held-out rows or
    # None); None: not recorded. ℓ_i(w*) and the losses hold the held-out columns last.
    examples: tuple | None = None


def _finish(run, traces, warmup_grad_evals, L0, shared: _Sampled):
    """One run's costs, λ̂ trace, summary and flags from its raw traces {name: (chains, draws)}."""
    from lambda_hat.specs import DiagnosticsSpec

    from . import RunResult
    from .llc import finite_n_reference, flag_run, llc_from_loss, summarize
    from .posterior import INIT_FGE

    target, arrays, sampler, n, rows, d, diagnostics, t_compile, t_run, hit, examples = shared
    example_loss = traces.pop("example_loss", None)
    s = run.sampler
    beta = float(run.posterior.beta(n))
    n_beta = n * beta
    gamma = float(run.posterior.gamma)
    scalars = sampler.runtime_scalars(s, n_beta)
    draws = int(s.draws)
    traces["warmup_grad_evals"] = warmup_grad_evals
    warm_fge, draw_fge = sampler.load().costs(s, traces, n, LOSS_EVAL_FGE)
    del traces["warmup_grad_evals"]
    # each chain's dispersed start (on a subset of `rows` rows past START_MAX_WORK)
    warm_fge = np.asarray(warm_fge, np.float64) + INIT_FGE * (1.0 if rows is None else rows / n)
    traces["cumulative_fge"] = warm_fge[:, None] + np.cumsum(draw_fge, axis=1)
    traces["walltime"] = _walltime_per_draw(warm_fge, draw_fge, t_run)
    fge_warmup = float(np.sum(warm_fge))
    total_fge = float(np.sum(traces["cumulative_fge"][:, -1]))

    traces["llc"] = llc_from_loss(traces["loss"], L0, n_beta)
    diag = diagnostics or DiagnosticsSpec()
    metrics = summarize(traces["llc"], diag.r_hat_max, diag.ess_bulk_min)
    metrics.update({
        "L0": L0,
        "L0_target": float(arrays.metrics.get("L0", float("nan"))),
        "beta": beta,
        "n_beta": n_beta,
        "gamma": gamma,
        "n_data": n,
        "n_params": d,
        "draws": draws,
        "chains": int(s.chains),
        "sampler": s.name,
        "step_size": float(np.mean(traces["step_size"][:, 0])) if "step_size" in traces else float("nan"),
        "total_fge": float(total_fge),
        "fge_warmup": float(fge_warmup),
        "fge_recording": 0.0,
        "walltime_sec": t_compile + t_run,
        "compile_sec": t_compile,
        "sample_sec": t_run,
        "compile_cache_hit": int(hit),
        # The thresholds this status was decided with, stored beside it: every view displays
        # the decision, none recomputes it (ARCHITECTURE.md, invariant 9).
        "r_hat_max": float(diag.r_hat_max),
        "ess_bulk_min": float(diag.ess_bulk_min),
        "divergence_max": float(diag.divergence_max),
    })
    free = run.free
    if free is None:  # the target's reference is for the whole model, not a restriction of it
        metrics.update(finite_n_reference(target, arrays, n_beta, gamma, metrics["llc_mean"]))  # llc_ref, rel_error
    else:
        metrics["restrict"] = ",".join(free)
    recorded = {}
    if examples is not None and example_loss is not None:
        from .per_example import summarize as summarize_examples

        ex_rows, at_w_star, loss_name, out_dim, held_rows = examples
        per_ex = run.record.per_example
        m = len(ex_rows)
        held = None if held_rows is None else (example_loss[..., m:], at_w_star[m:])
        example_loss, at_w_star = example_loss[..., :m], at_w_star[:m]
        found, arrays_out = summarize_examples(example_loss, at_w_star, n=n, beta=beta, loss_name=loss_name, L0=L0,
                                               out_dim=out_dim, query=per_ex.query, seed=per_ex.seed,
                                               heldout=None if held is None else held[0])
        metrics.update(found)
        recorded = {"loss": example_loss, "index": np.asarray(ex_rows, np.int64), "loss_at_wstar": at_w_star,
                    **arrays_out}
        if held is not None:
            recorded.update({"heldout_loss": held[0], "heldout_index": np.asarray(held_rows, np.int64),
                             "heldout_loss_at_wstar": held[1]})
    if sampler.report:
        sampler.load().report(s, traces, metrics, scalars, LOSS_EVAL_FGE)
    rate = metrics.get("divergence_rate")
    if rate is not None and rate > diag.divergence_max and metrics["status"] != "nonfinite":
        # The estimate is kept, but the integrator fails in a region the chains keep visiting,
        # so the number is suspect: flag the run instead of reporting it plainly.
        flag_run(metrics, [f"divergence_rate {rate:.3f} > {diag.divergence_max:g}"], "divergent")
    return RunResult(traces=traces, metrics=metrics, examples=recorded)
