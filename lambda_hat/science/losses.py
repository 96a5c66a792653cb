"""The loss convention, in one place.

L_n(w) = (1/n) Σ_i ‖y_i − f_w(x_i)‖²  — plain mean squared error, summed over output
dimensions and averaged over examples (the devinterp / Lau et al. convention). It is not
divided by a noise variance and has no ½; the tempered posterior is exp(−nβ·L_n(w)) with
β = posterior.beta(n). Change `per_example_loss` to change the convention everywhere.
"""

from __future__ import annotations

import jax.numpy as jnp


def per_example_loss(pred, y):
    """‖y − pred‖² per row: (n, out_dim) -> (n,)."""
    return jnp.sum((y - pred) ** 2, axis=-1)


def mean_loss(pred, y):
    return jnp.mean(per_example_loss(pred, y))
