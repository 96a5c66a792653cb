"""Samplers, one module each; each is registered with its spec class and its declared
capabilities in `lambda_hat.registry` (the built-ins by `lambda_hat.specs`).

A sampler module provides (see sgld.py, hmc.py, nuts.py, mclmc.py):

* ``from_spec(spec) -> engine.Algorithm``: keys / init / warmup / step, static settings closed over;
* ``costs(spec, traces, n, loss_eval_fge) -> (warmup fge (chains,), fge per draw (chains, draws))``;
* where its registration declares `scalars`: ``scalars(spec, n_beta) -> {name: float}``, the
  runtime scalars the algorithm reads from `problem.scalars` (arguments of the compiled function,
  so a sweep over them reuses it), from the spec fields its registration names `scalar_fields`;
* where its registration declares `report`: ``report(spec, traces, metrics, scalars,
  loss_eval_fge)``, adding its own traces and metrics (step_size, acceptance, divergences, ...)
  in place.
"""
