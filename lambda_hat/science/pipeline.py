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

import numpy as np


def build_target(spec):
    from .models import precision

    with precision(spec.dtype):
        return _build_target(spec)


def _build_target(spec):
    import jax

    from . import TargetArrays
    from .data import make_dataset
    from .losses import mean_loss
    from .models import init_mlp, jnp_dtype, mlp_apply, model_key
    from .train import train
    from .wstar import quality

    m = spec.model
    if m.kind == "dln":
        from .dln import build_dln_target

        return build_dln_target(spec)
    if m.kind == "polynomial":
        from .polynomial import build_polynomial_target

        return build_polynomial_target(spec)
    if m.kind != "mlp":
        raise NotImplementedError(f"model.kind={m.kind!r} is not implemented")
    dtype = jnp_dtype(spec.dtype)
    k_data, k_init, k_train = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    X, Y, X_test, Y_test, teacher = make_dataset(k_data, spec, dtype, return_teacher=True)
    if spec.w_star == "teacher":
        # A true parameter (the spec checked that the architectures match): no training.
        params, info = teacher, {"train_steps": 0, "final_train_loss": float(mean_loss(mlp_apply(teacher, X, m.activation), Y))}
    else:
        params0 = init_mlp(k_init, m.layer_dims, init=m.init, bias=m.bias, dtype=dtype)
        params, info = train(k_train, params0, X, Y, spec.training, model_key(m))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    L0 = float(mean_loss(mlp_apply(params, X, m.activation), Y))
    test_loss = float(mean_loss(mlp_apply(params, X_test, m.activation), Y_test))
    metrics = {
        "L0": L0,
        "train_steps": int(info["train_steps"]),
        "final_train_loss": float(info["final_train_loss"]),
        "test_loss": test_loss,
        "n_params": int(m.n_params),
        "n_data": int(spec.data.n_data),
        "n_test": int(spec.data.n_test),
    }
    metrics.update(quality(params, X, Y, model_key(m)))
    return TargetArrays(
        params={k: np.asarray(v) for k, v in params.items()},
        X=np.asarray(X),
        Y=np.asarray(Y),
        metrics=metrics,
    )


# In-process cache of compiled sampler executables, keyed on everything the traced
# function closes over (static config, shapes, dtypes); data and w* are arguments.
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

    t0 = time.perf_counter()
    compiled = _COMPILED.get(cache_key)
    hit = compiled is not None
    if hit:
        _COMPILED.move_to_end(cache_key)
    else:
        compiled = jax.jit(make_fn()).lower(*args).compile()
        _COMPILED[cache_key] = compiled
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t2 = time.perf_counter()
    return jax.tree.map(np.asarray, out), t1 - t0, t2 - t1, hit


def _build_sampler(s, *, predict, X, Y, w_star, n_beta: float, gamma: float, step_size):
    """The sampler's ``run(key)`` for spec `s` on data (X, Y) at w_star (arrays or tracers)."""
    from .posterior import make_full_loss, make_minibatch_loss

    loss_fn = make_full_loss(predict, X, Y)
    common = dict(loss_fn=loss_fn, w_star=w_star, n_beta=n_beta, gamma=gamma, chains=s.chains, disperse=True)
    if s.name == "sgld":
        from .samplers.sgld import build_sgld

        return loss_fn, build_sgld(
            stoch_loss_fn=make_minibatch_loss(predict, X, Y, s.batch_size), step_size=step_size,
            warmup=s.warmup, draws=s.draws, eval_every=s.eval_every, precond=s.precond, **common,
        )
    if s.name in ("hmc", "nuts"):
        adapt = dict(draws=s.draws, warmup=s.warmup, step_size=s.step_size, target_acceptance=s.target_acceptance,
                     adapt_step_size=s.adapt_step_size, adapt_mass_matrix=s.adapt_mass_matrix)
        if s.name == "hmc":
            from .samplers.hmc import build_hmc

            return loss_fn, build_hmc(num_integration_steps=s.num_integration_steps, **adapt, **common)
        from .samplers.nuts import build_nuts

        return loss_fn, build_nuts(max_num_doublings=s.max_num_doublings, **adapt, **common)
    if s.name == "mclmc":
        from .samplers.mclmc import build_mclmc

        return loss_fn, build_mclmc(
            draws=s.draws, L=s.L, step_size=s.step_size, tune=s.tune, num_steps=s.num_steps,
            frac_tune1=s.frac_tune1, frac_tune2=s.frac_tune2, frac_tune3=s.frac_tune3,
            desired_energy_var=s.desired_energy_var, trust_in_estimate=s.trust_in_estimate,
            num_effective_samples=s.num_effective_samples, diagonal_preconditioning=s.diagonal_preconditioning,
            integrator=s.integrator, **common,
        )
    raise NotImplementedError(f"sampler.name={s.name!r} is not implemented")  # pragma: no cover


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

# Share of post-warmup HMC/NUTS transitions that may diverge before a run is flagged. Isolated
# divergences are routine on these near-singular posteriors: NUTS on the deep narrow [2,2,2,2]
# network diverges on 1-2.5 % of draws even at target_acceptance 0.95 and still comes within
# 3.3 % of the exact λ. The count is always stored; a higher rate marks the run "divergent".
MAX_DIVERGENCE_RATE = 0.01


def sample_run(run, target, arrays):
    """Sample the localized tempered posterior; see the module doc and `RunResult`.

    Metrics beyond `llc.summarize`'s: L0 (recomputed in the sampler's dtype), beta, n_beta,
    gamma, step_size (mean over chains of the step size used), total_fge (full-gradient
    evaluations summed over chains, warmup/tuning included: SGLD counts a minibatch
    gradient as min(batch_size, n)/n and each recorded draw's full-data loss as LOSS_EVAL_FGE,
    HMC/NUTS the integrator steps, MCLMC the integrator's gradients per step (both read the
    recorded loss off their state's log density), and every chain's dispersed start
    `posterior.INIT_FGE`), fge_recording (the recorded draws' share of total_fge), fge_warmup,
    accept_rate_mean / divergences (HMC, NUTS), L (MCLMC), compile_sec (lower + compile, ~0 on
    an in-process cache hit), sample_sec (the compiled call), walltime_sec (their sum),
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
        return _sample_run(run, target, arrays)


def _sample_run(run, target, arrays):
    import jax
    import jax.numpy as jnp

    from . import RunResult
    from .llc import flag_run, llc_from_loss, summarize
    from .models import jnp_dtype, model_key
    from .posterior import INIT_FGE, flat_model

    s, post = run.sampler, run.posterior
    if post.loss != "mse":
        raise NotImplementedError(f"posterior.loss={post.loss!r} is not implemented")
    dtype = jnp_dtype(s.dtype)
    n = int(arrays.X.shape[0])
    if n != target.data.n_data:
        raise ValueError(f"arrays hold {n} rows but target.data.n_data is {target.data.n_data}")
    beta = float(post.beta(n))
    n_beta = n * beta
    gamma = float(post.gamma)
    params = {k: jnp.asarray(v, dtype) for k, v in arrays.params.items()}
    X, Y = jnp.asarray(arrays.X, dtype), jnp.asarray(arrays.Y, dtype)
    # the forward pass's key: an MLP's activation; "identity" for a deep linear network (no
    # biases); ("polynomial", powers) for a normal-crossing model
    activation = model_key(target.model)
    w_star, predict = flat_model(params, activation)  # predict closes over shapes only
    if int(w_star.size) != target.model.n_params:
        raise ValueError(f"params have {w_star.size} entries but the model has {target.model.n_params}")
    key = jax.random.PRNGKey(run.seed)
    eps = None
    if s.name == "sgld":
        eps = float(s.step_size) if s.step_size is not None else float(s.step_size_nbeta) / n_beta

    def make_fn():
        # nβ, γ and the SGLD step size are arguments too: a β or γ sweep reuses one executable.
        def fn(key, w_star, X, Y, n_beta, gamma, eps):
            loss_fn, sampler = _build_sampler(s, predict=predict, X=X, Y=Y, w_star=w_star, n_beta=n_beta,
                                              gamma=gamma, step_size=eps)
            return {"traces": sampler(key), "L0": loss_fn(w_star)}

        return fn

    cache_key = (
        s.model_dump_json(exclude={"step_size", "step_size_nbeta"} if s.name == "sgld" else None), activation,
        bool(jax.config.jax_enable_x64), tuple((k, v.shape, str(v.dtype)) for k, v in sorted(params.items())),
        X.shape, Y.shape, str(X.dtype),
    )
    scalars = [jnp.asarray(v, dtype) for v in (n_beta, gamma, eps if eps is not None else 0.0)]
    out, t_compile, t_run, hit = _timed(cache_key, make_fn, key, w_star, X, Y, *scalars)
    traces = {k: np.asarray(v) for k, v in out["traces"].items()}
    L0 = float(out["L0"])
    warm_fge = traces.pop("warmup_grad_evals", np.zeros(s.chains)).astype(np.float64)

    chains, draws = traces["loss"].shape
    warm_fge = warm_fge + INIT_FGE  # each chain's dispersed start (`posterior.dispersed_start`)
    if s.name == "sgld":
        step_size = eps
        per_step = min(s.batch_size, n) / n
        warm_fge = np.full(chains, s.warmup * per_step + INIT_FGE)
        # each draw: eval_every minibatch steps, then the full-data loss it records
        draw_fge = np.full((chains, draws), s.eval_every * per_step + LOSS_EVAL_FGE)
        traces["step_size"] = np.full((chains, draws), eps, dtype=traces["loss"].dtype)
    elif s.name == "mclmc":
        from .samplers.mclmc import grads_per_step

        step_size = float(np.mean(traces["step_size"][:, 0]))
        draw_fge = np.full((chains, draws), float(grads_per_step(s.integrator)))
    else:
        step_size = float(np.mean(traces["step_size"][:, 0]))
        draw_fge = traces["num_grad_evals"].astype(np.float64)
    traces["cumulative_fge"] = warm_fge[:, None] + np.cumsum(draw_fge, axis=1)
    traces["walltime"] = _walltime_per_draw(warm_fge, draw_fge, t_run)
    fge_warmup = float(np.sum(warm_fge))
    total_fge = float(np.sum(traces["cumulative_fge"][:, -1]))

    traces["llc"] = llc_from_loss(traces["loss"], L0, n_beta)
    metrics = summarize(traces["llc"])
    metrics.update({
        "L0": L0,
        "L0_target": float(arrays.metrics.get("L0", float("nan"))),
        "beta": beta,
        "n_beta": n_beta,
        "gamma": gamma,
        "n_data": n,
        "n_params": int(w_star.size),
        "draws": int(s.draws),
        "chains": int(s.chains),
        "sampler": s.name,
        "step_size": step_size,
        "total_fge": float(total_fge),
        "fge_warmup": float(fge_warmup),
        "fge_recording": float(chains * draws * LOSS_EVAL_FGE) if s.name == "sgld" else 0.0,
        "walltime_sec": t_compile + t_run,
        "compile_sec": t_compile,
        "sample_sec": t_run,
        "compile_cache_hit": int(hit),
    })
    if s.name in ("hmc", "nuts"):
        metrics["accept_rate_mean"] = float(np.nanmean(traces["accept_rate"]))
        metrics["divergences"] = int(np.sum(traces["diverging"]))
        metrics["divergence_rate"] = metrics["divergences"] / traces["diverging"].size
        if metrics["divergence_rate"] > MAX_DIVERGENCE_RATE and metrics["status"] != "nonfinite":
            # The estimate is kept, but the integrator fails in a region the chains keep
            # visiting, so the number is suspect: flag the run instead of reporting it plainly.
            flag_run(metrics, [f"divergence_rate {metrics['divergence_rate']:.3f} > {MAX_DIVERGENCE_RATE}"], "divergent")
    if s.name == "mclmc":
        metrics["L"] = float(np.mean(traces["L"][:, 0]))
    return RunResult(traces=traces, metrics=metrics)
