"""`build_target` and `sample_run`: specs in, arrays and numbers out. No file I/O.

PRNG keys: a target uses jax.random.PRNGKey(target.seed) split into (data, student init,
training) keys; the data key is split again into distribution / teacher / X / noise keys,
so the teacher's weights never share a key with the student's. A run uses
PRNGKey(run.seed). Same spec → same numbers on the same machine.

dtypes: `target.dtype` is the dtype of data, training and w*; `run.sampler.dtype` is the
dtype the sampler computes in (data and w* are cast to it, and L0 is recomputed in it with
the same loss function, so llc = nβ·(L_n(w) − L0) never mixes precisions). float64 turns
on `jax_enable_x64`.
"""

from __future__ import annotations

import time

import numpy as np


def _jnp_dtype(name: str):
    import jax
    import jax.numpy as jnp

    if name == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    if name == "float32":
        return jnp.float32
    raise NotImplementedError(f"dtype={name!r} is not implemented")


def build_target(spec):
    import jax

    from . import TargetArrays
    from .data import make_dataset
    from .losses import mean_loss
    from .models import init_mlp, mlp_apply
    from .train import train

    dtype = _jnp_dtype(spec.dtype)
    m = spec.model
    if m.kind != "mlp":
        raise NotImplementedError(f"model.kind={m.kind!r} is not implemented")
    k_data, k_init, k_train = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    X, Y, X_test, Y_test = make_dataset(k_data, spec, dtype)
    params0 = init_mlp(k_init, m.layer_dims, init=m.init, bias=m.bias, dtype=dtype)
    params, info = train(k_train, params0, X, Y, spec.training, m.activation)
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
    return TargetArrays(
        params={k: np.asarray(v) for k, v in params.items()},
        X=np.asarray(X),
        Y=np.asarray(Y),
        metrics=metrics,
    )


def _timed(fn, key):
    """jit + compile separately from execution; returns (numpy outputs, compile_sec, run_sec)."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(key).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(key))
    t2 = time.perf_counter()
    return jax.tree.map(np.asarray, out), t1 - t0, t2 - t1


def sample_run(run, target, arrays):
    import jax
    import jax.numpy as jnp

    from . import RunResult
    from .llc import llc_from_loss, summarize
    from .posterior import flat_model, make_full_loss, make_minibatch_loss
    from .samplers.hmc import build_hmc
    from .samplers.sgld import build_sgld

    s, post = run.sampler, run.posterior
    if post.loss != "mse":
        raise NotImplementedError(f"posterior.loss={post.loss!r} is not implemented")
    dtype = _jnp_dtype(s.dtype)
    n = int(arrays.X.shape[0])
    if n != target.data.n_data:
        raise ValueError(f"arrays hold {n} rows but target.data.n_data is {target.data.n_data}")
    beta = float(post.beta(n))
    n_beta = n * beta
    gamma = float(post.gamma)
    params = {k: jnp.asarray(v, dtype) for k, v in arrays.params.items()}
    X, Y = jnp.asarray(arrays.X, dtype), jnp.asarray(arrays.Y, dtype)
    w_star, predict = flat_model(params, target.model.activation)
    if int(w_star.size) != target.model.n_params:
        raise ValueError(f"params have {w_star.size} entries but the model has {target.model.n_params}")
    loss_fn = make_full_loss(predict, X, Y)
    L0 = float(jax.jit(loss_fn)(w_star))
    key = jax.random.PRNGKey(run.seed)

    if s.name == "sgld":
        eps = float(s.step_size) if s.step_size is not None else float(s.step_size_nbeta) / n_beta
        fn = build_sgld(
            loss_fn=loss_fn, stoch_loss_fn=make_minibatch_loss(predict, X, Y, s.batch_size), w_star=w_star,
            n_beta=n_beta, gamma=gamma, step_size=eps, warmup=s.warmup, draws=s.draws,
            eval_every=s.eval_every, chains=s.chains, precond=s.precond,
        )
        traces, t_compile, t_run = _timed(fn, key)
        step_size = eps
        draws = s.draws
    elif s.name == "hmc":
        fn = build_hmc(
            loss_fn=loss_fn, w_star=w_star, n_beta=n_beta, gamma=gamma, draws=s.draws, warmup=s.warmup,
            num_integration_steps=s.num_integration_steps, step_size=s.step_size,
            target_acceptance=s.target_acceptance, adapt_step_size=s.adapt_step_size,
            adapt_mass_matrix=s.adapt_mass_matrix, chains=s.chains,
        )
        traces, t_compile, t_run = _timed(fn, key)
        step_size = float(np.mean(traces["step_size"][:, 0]))
        draws = s.draws
    else:  # pragma: no cover - the spec's discriminator forbids this
        raise NotImplementedError(f"sampler.name={s.name!r} is not implemented")

    traces = {k: np.asarray(v) for k, v in traces.items()}
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
        "draws": int(draws),
        "chains": int(s.chains),
        "sampler": s.name,
        "step_size": step_size,
        "walltime_sec": t_compile + t_run,
        "compile_sec": t_compile,
        "sample_sec": t_run,
    })
    if s.name == "hmc":
        metrics["accept_rate_mean"] = float(np.nanmean(traces["accept_rate"]))
        metrics["divergences"] = int(np.sum(traces["diverging"]))
    return RunResult(traces=traces, metrics=metrics)
