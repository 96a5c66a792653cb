"""The localized tempered posterior on the flattened parameter vector.

    log p(w) = −nβ·L_n(w) − (γ/2)·‖w − w*‖²,   β = posterior.beta(n), n = n_data,

with L_n the loss of `losses.py`. The full-data loss is evaluated in equal chunks of at
most `CHUNK` rows (`lax.map`, the few zero-padded rows masked out) so memory stays bounded in n.

Inputs X are an (n, features) array for lambda-hat's own models, or any pytree of arrays sharing a
leading axis n (a user's data dict, `user_models.py`): rows are counted, drawn and chunked leaf by
leaf (`n_rows`, `take_rows`, `chunk_rows`), so a batch is always a slice of every leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .losses import per_example
from .models import forward

CHUNK = 4096


def flat_model(params: dict, model):
    """(w_star flat vector, predict(w_flat, X)). `model`: a `models.model_key` (an MLP
    activation name, "identity" for a deep linear network, ...) or a model spec."""
    w_star, unravel = ravel_pytree(params)
    if not isinstance(model, (str, tuple)):
        from .models import model_key

        model = model_key(model)
    apply = forward(model)

    def predict(w, X):
        return apply(unravel(w), X)

    return w_star, predict


def n_rows(X) -> int:
    """Rows of inputs X: an array's leading axis, or the one every leaf of a pytree shares."""
    return int(jax.tree.leaves(X)[0].shape[0])


def take_rows(X, idx):
    """The rows `idx` of every leaf of X."""
    return jax.tree.map(lambda a: a[idx], X)


def as_inputs(X, dtype):
    """X on the device with its floating leaves in `dtype`; integer leaves (class labels, token ids)
    keep their integer type."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, X)


def chunk_rows(X, Y, chunk: int = CHUNK):
    """(Xc, Yc, mask): X (an array or pytree) and Y cut into equal chunks of at most `chunk` rows
    (leading axis: chunk), the few zero-padded rows masked out (mask 0, in Y's dtype)."""
    n = n_rows(X)
    n_chunks = -(-n // chunk)
    chunk = -(-n // n_chunks)  # balanced chunks: n = 10,000 pads 2 rows, not 2,288
    pad = n_chunks * chunk - n

    def cut(a):
        padded = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)])
        return padded.reshape((n_chunks, chunk) + a.shape[1:])

    mask = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk).astype(Y.dtype)
    return jax.tree.map(cut, X), cut(Y), mask


def make_full_loss(predict, X, Y, chunk: int = CHUNK, loss_name: str = "mse"):
    """L_n(w) over all rows of (X, Y), in chunks of ≤ `chunk` rows, with the per-example loss
    called `loss_name` (`losses.per_example`)."""
    per_example_loss = per_example(loss_name)
    n = n_rows(X)
    if n <= chunk:
        return lambda w: jnp.mean(per_example_loss(predict(w, X), Y))
    Xc, Yc, mask = chunk_rows(X, Y, chunk)

    def loss(w):
        sums = jax.lax.map(lambda c: jnp.sum(c[2] * per_example_loss(predict(w, c[0]), c[1])), (Xc, Yc, mask))
        return jnp.sum(sums) / n

    return loss


def make_example_losses(predict, X, Y, chunk: int = CHUNK, loss_name: str = "mse"):
    """w -> (m,) the per-example losses ℓ_i(w) of every row of (X, Y), in chunks of ≤ `chunk` rows."""
    per_example_loss = per_example(loss_name)
    m = n_rows(X)
    if m <= chunk:
        return lambda w: per_example_loss(predict(w, X), Y)
    Xc, Yc, _ = chunk_rows(X, Y, chunk)
    return lambda w: jax.lax.map(lambda c: per_example_loss(predict(w, c[0]), c[1]), (Xc, Yc)).reshape(-1)[:m]


def make_minibatch_loss(predict, X, Y, batch_size: int, loss_name: str = "mse"):
    """stoch_loss(w, key): unbiased estimate of L_n(w) from `batch_size` rows drawn
    uniformly with replacement (the full data when batch_size ≥ n)."""
    per_example_loss = per_example(loss_name)
    n = n_rows(X)
    if batch_size >= n:
        full = make_full_loss(predict, X, Y, loss_name=loss_name)
        return lambda w, key: full(w)

    def loss(w, key):
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return jnp.mean(per_example_loss(predict(w, take_rows(X, idx)), Y[idx]))

    return loss


def make_logdensity(loss_fn, w_star, n_beta, gamma):
    def logdensity(w):
        return -n_beta * loss_fn(w) - 0.5 * gamma * jnp.sum((w - w_star) ** 2)

    return logdensity


def loss_from_logdensity(logdensity, w, w_star, n_beta, gamma):
    """L_n(w) from log p(w) = −nβ·L_n(w) − (γ/2)‖w − w*‖², which HMC/NUTS/MCLMC states already
    hold: recording a draw's loss then needs no pass over the data."""
    return -(logdensity + 0.5 * gamma * jnp.sum((w - w_star) ** 2)) / n_beta


# Chains start dispersed around w*, so that R-hat compares chains that began apart.
# Each chain starts at w* + δ, δ = s·ξ, ξ ~ N(0, I), with
#     s = INIT_JITTER / √(γ + nβ·κ),   κ = max(tr H / d, 0),
# H the Hessian of L_n at w*, tr H estimated with INIT_PROBES Rademacher probes (Hutchinson;
# exact for a diagonal H). 1/√(γ + nβ·κ) is the localized posterior's width along a direction of
# average curvature, so the start is wider than the posterior along steep directions (which relax
# within a few steps) and narrower along flat ones (where no relaxation is needed). To second
# order the starting λ̂ = nβ·(L_n(w*+δ) − L0) has mean ½·INIT_JITTER²·nβ·tr H/(γ + nβ·κ) ≈ d/2
# when nβκ ≫ γ: the regular value, an upper bound on the LLC, so chains start above the bulk of
# the posterior's λ̂ and must come down to it.
#
# Where the second-order picture fails the start can be far out: at a degenerate w* (a rank-0 deep
# linear network's w* = 0 has tr H = 0, the loss is quartic) s falls back to the prior width
# 1/√γ and the starting λ̂ is ~1e5 for d = 36; samplers that adapt there (RMSProp moments, MCLMC's
# tuning) never recover. So s is halved, up to START_HALVINGS times, until the chain's own start
# has λ̂ ≤ START_LLC_CAP·d (20× the regular value; a quadratic loss exceeds it with probability
# ~1e-5 even for d = 1, so starts at non-degenerate w* are left exactly as they were).
#
# With γ = 0 (no localization, allowed: a proper posterior needs none) at such a w*, γ + nβ·κ is 0
# and there is no width at all: s is then FLAT_START_SCALE, the width the default γ = 1 would give,
# and the halvings narrow it as above. Every other start is exactly as it was.
INIT_JITTER = 1.0
FLAT_START_SCALE = INIT_JITTER
# A γ that is tiny but not 0 (γ = 1e-12 at a flat w*: s = 1e6) would start past what the
# START_HALVINGS can narrow (1e6 / 4096 = 244: every draw non-finite). So s is at most this, whose
# last halving is 0.24; only starts with γ + nβκ < 1e-6 change.
MAX_START_SCALE = 1e3
INIT_PROBES = 8
START_HALVINGS = 12
START_LLC_CAP = 10.0
# Past START_LARGE_D parameters the cap is START_LLC_CAP_LARGE·d (2× the regular value): a quadratic
# start's λ̂ then concentrates within a few % of d/2, while the wide start of a large singular model
# (a 1e6-parameter deep linear network: tr H/d ~ 1e-4, s ≈ 0.1, higher-order terms give λ̂ = 3.6·d/2)
# passes 10·d and puts SGLD where its fixed step is unstable (NaN within 20 steps).
START_LARGE_D = 100_000
START_LLC_CAP_LARGE = 1.0
# a Hessian-vector product (forward over reverse) costs about two gradients; one loss per candidate scale
INIT_FGE = 2 * INIT_PROBES + START_HALVINGS + 2  # + L0 at w*
START_STREAM = 7  # `fold_in` tag of a chain's start key: its other random streams stay as they were
# The start's probes and scale checks (INIT_FGE full-data passes per chain) read every row while
# n·d ≤ START_MAX_WORK; past it they read a random subset of `start_rows` rows instead (drawn with
# replacement, per chain: an unbiased estimate of L_n and of tr H), so a chain's start costs a
# bounded amount whatever n: at n = 1e5, d = 1e6 the full passes took ~7 min per chain on 2 cores.
START_MAX_WORK = 2**30
START_MIN_ROWS = 1024
START_SUBSET_STREAM = 8  # `fold_in` tag of the subset's key


def start_rows(n: int, d: int) -> int | None:
    """Rows the start reads when n·d > START_MAX_WORK (None: all of them)."""
    if n * d <= START_MAX_WORK:
        return None
    return min(n, max(START_MIN_ROWS, START_MAX_WORK // d))


def init_scale(key, loss_fn, w_star, n_beta, gamma):
    """s = INIT_JITTER / √(γ + nβ·max(tr H / d, 0)) at w*, FLAT_START_SCALE where that is
    infinite (γ = 0, no curvature; see above)."""
    grad = jax.grad(loss_fn)

    def quad_form(v):  # vᵀHv
        return jnp.vdot(v, jax.jvp(grad, (w_star,), (v,))[1])

    probes = jax.random.rademacher(key, (INIT_PROBES, w_star.size), w_star.dtype)
    kappa = jnp.mean(jax.lax.map(quad_form, probes)) / w_star.size
    kappa = jnp.where(jnp.isfinite(kappa), jnp.maximum(kappa, 0.0), 0.0)
    width_inv2 = gamma + n_beta * kappa  # 1 / s² before INIT_JITTER
    scale = jnp.where(width_inv2 > 0, INIT_JITTER / jnp.sqrt(width_inv2), FLAT_START_SCALE)
    return jnp.minimum(scale, MAX_START_SCALE)


def dispersed_start(chain_key, loss_fn, w_star, n_beta, gamma):
    """One chain's start w* + s·ξ, ξ ~ N(0, I), with its own curvature estimate and scale check
    (cost INIT_FGE), from the chain's key folded with START_STREAM."""
    k_scale, k_jitter = jax.random.split(jax.random.fold_in(chain_key, START_STREAM))
    s = init_scale(k_scale, loss_fn, w_star, n_beta, gamma)
    xi = jax.random.normal(k_jitter, w_star.shape, w_star.dtype)
    scales = s * 0.5 ** jnp.arange(START_HALVINGS + 1, dtype=w_star.dtype)
    l0 = loss_fn(w_star)
    start_llc = jax.lax.map(lambda c: n_beta * (loss_fn(w_star + c * xi) - l0), scales)
    cap = (START_LLC_CAP if w_star.size <= START_LARGE_D else START_LLC_CAP_LARGE) * w_star.size
    ok = jnp.isfinite(start_llc) & (start_llc <= cap)
    # the widest scale that passes; the narrowest candidate when none does
    pick = jnp.where(jnp.any(ok), jnp.argmax(ok), START_HALVINGS)
    return w_star + scales[pick] * xi
