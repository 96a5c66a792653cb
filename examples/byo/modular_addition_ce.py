"""The transformer of modular_addition.py with lambda-hat's built-in cross-entropy (`predict`
and data {"x", "y"}), so that the loss is a log-likelihood and runs report ν and WAIC, and with
the pairs not trained on as `test_data`: the held-out examples a run may record
(`record.per_example.heldout`), against which WAIC is judged (docs/per-sample.md).

    uv run lh execute examples/byo/per_sample.yaml
"""
import equinox as eqx
import jax
import numpy as np
from modular_addition import Transformer


def make(seed, p=23, d_model=16, heads=2, train_fraction=0.5):
    """All p² pairs "a b =", a `train_fraction` of them (drawn with `seed`) to train on, the rest held out."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1).astype(np.int32)
    labels = ((a + b) % p).ravel().astype(np.int32)
    order = np.random.default_rng(seed).permutation(p * p)
    train, test = order[: int(train_fraction * p * p)], order[int(train_fraction * p * p):]
    params, static = eqx.partition(Transformer(p, d_model, heads, jax.random.PRNGKey(seed)), eqx.is_array)

    def predict(params, x):
        return jax.vmap(eqx.combine(params, static))(x)  # logits (rows, p)

    return {"params": params, "loss": "cross_entropy", "predict": predict,
            "data": {"x": tokens[train], "y": labels[train]},
            "test_data": {"x": tokens[test], "y": labels[test]}}
