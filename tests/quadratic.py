"""An exactly quadratic loss, shared by the sampler tests: there E[λ̂] is known at finite n."""

import numpy as np

from lambda_hat.science.theory import quadratic_expected_llc

D = 8
N_BETA = 50.0
GAMMA = 1.0
L0 = 0.3


def _quadratic(jax64):
    jnp = jax64.numpy
    h = jnp.asarray(np.logspace(np.log10(0.05), np.log10(5.0), D))
    w_star = jnp.linspace(-1.0, 1.0, D)

    def loss(w):
        return 0.5 * jnp.sum(h * (w - w_star) ** 2) + L0

    return h, w_star, loss


def _theory(h):
    return quadratic_expected_llc(np.asarray(h), N_BETA, GAMMA)


def _run(jax64, fn):
    from lambda_hat.science.llc import llc_from_loss, summarize

    traces = jax64.tree.map(np.asarray, jax64.jit(fn)(jax64.random.PRNGKey(0)))
    return traces, summarize(llc_from_loss(traces["loss"], L0, N_BETA))
