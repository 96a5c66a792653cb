"""Modular addition, the grokking task: a one-layer transformer (Equinox) reads "a b =" and
predicts (a + b) mod p. The loss is the user's own: per-example cross-entropy at the last position.

    uv run lh execute examples/byo/sweep.yaml
"""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


class Transformer(eqx.Module):
    embed: eqx.nn.Embedding
    pos: jax.Array
    attn: eqx.nn.MultiheadAttention
    mlp: eqx.nn.MLP
    unembed: eqx.nn.Linear

    def __init__(self, p, d_model, heads, key):
        k = jax.random.split(key, 5)
        self.embed = eqx.nn.Embedding(p + 1, d_model, key=k[0])  # token p is "="
        self.pos = 0.1 * jax.random.normal(k[1], (3, d_model))
        self.attn = eqx.nn.MultiheadAttention(heads, d_model, key=k[2])
        self.mlp = eqx.nn.MLP(d_model, d_model, 4 * d_model, 1, activation=jax.nn.relu, key=k[3])
        self.unembed = eqx.nn.Linear(d_model, p, key=k[4])

    def __call__(self, tokens):
        h = jax.vmap(self.embed)(tokens) + self.pos
        h = h + self.attn(h, h, h)
        h = h + jax.vmap(self.mlp)(h)
        return self.unembed(h[-1])  # logits at "="


def make(seed, p=23, d_model=16, heads=2, train_fraction=0.5):
    """All p² pairs, a `train_fraction` of them (drawn with `seed`) as the training data."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    tokens = np.stack([a.ravel(), b.ravel(), np.full(p * p, p)], axis=1).astype(np.int32)
    labels = ((a + b) % p).ravel().astype(np.int32)
    keep = np.random.default_rng(seed).permutation(p * p)[: int(train_fraction * p * p)]
    model = Transformer(p, d_model, heads, jax.random.PRNGKey(seed))
    params, static = eqx.partition(model, eqx.is_array)

    def loss(params, batch):
        net = eqx.combine(params, static)
        logits = jax.vmap(net)(batch["tokens"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], axis=1)[:, 0]

    return {"params": params, "loss": loss, "data": {"tokens": tokens[keep], "label": labels[keep]}}
