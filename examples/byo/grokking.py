"""Grokking on modular addition (Power et al. 2022; Nanda et al. 2023): the one-layer transformer
of modular_addition.py, trained on a `train_fraction` of the p² pairs with AdamW and strong weight
decay, first memorises its training pairs (train loss → 0 while the test loss rises), and only
thousands of steps later generalises: the test loss falls abruptly. The held-out pairs are
`test_data`: each checkpoint's `test_loss`, never part of L_n.

    uv run lh execute examples/byo/grokking.yaml
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from modular_addition import Transformer


def make(seed, p=53, d_model=32, heads=2, train_fraction=0.4):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1).astype(np.int32)
    labels = ((a + b) % p).ravel().astype(np.int32)
    order = np.random.default_rng(seed).permutation(p * p)
    train, test = order[: int(train_fraction * p * p)], order[int(train_fraction * p * p):]
    params, static = eqx.partition(Transformer(p, d_model, heads, jax.random.PRNGKey(seed)), eqx.is_array)

    def loss(params, batch):
        logits = jax.vmap(eqx.combine(params, static))(batch["tokens"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], axis=1)[:, 0]

    return {"params": params, "loss": loss,
            "data": {"tokens": tokens[train], "label": labels[train]},
            "test_data": {"tokens": tokens[test], "label": labels[test]}}
