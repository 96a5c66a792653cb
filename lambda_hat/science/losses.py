"""The loss convention, in one place.

L_n(w) = (1/n) Σ_i ℓ(f_w(x_i), y_i), the mean of a per-example loss ℓ chosen by name:

* "mse" (every built-in model): ℓ = ‖y_i − f_w(x_i)‖², summed over output dimensions (the
  devinterp / Lau et al. convention). It is not divided by a noise variance and has no ½;
* "cross_entropy" (a user's classifier, `user_models.py`): f_w(x_i) are logits and y_i an integer
  class label (stored as a float column, (n, 1)); ℓ = −log softmax(f_w(x_i))[y_i];
* "callable" (a user's own `loss(params, batch)`, `user_models.py`): the model's forward pass
  already returns ℓ_i, one value per row of its batch, and y is an empty (n, 0) column.

The tempered posterior is exp(−nβ·L_n(w)) with β = posterior.beta(n). The name is static: every
compiled program that evaluates a loss is keyed on it.
"""

from __future__ import annotations

import jax.numpy as jnp

LOSSES = ("mse", "cross_entropy", "callable")


def per_example_loss(pred, y):
    """‖y − pred‖² per row: (n, out_dim) -> (n,)."""
    return jnp.sum((y - pred) ** 2, axis=-1)


def cross_entropy(logits, y):
    """−log softmax(logits)[label] per row: logits (n, classes), y (n, 1) labels -> (n,)."""
    import optax

    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y[..., 0].astype(jnp.int32))


def given(pred, y):
    """The per-example losses the forward pass computed itself: (n,) -> (n,)."""
    return pred


def per_example(name: str = "mse"):
    """The per-example loss `(pred, y) -> (n,)` called `name`."""
    if name == "mse":
        return per_example_loss
    if name == "cross_entropy":
        return cross_entropy
    if name == "callable":
        return given
    raise NotImplementedError(f"loss={name!r} is not implemented (known: {', '.join(LOSSES)})")


def mean_loss(pred, y, loss: str = "mse"):
    return jnp.mean(per_example(loss)(pred, y))
