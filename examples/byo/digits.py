"""Handwritten digits (scikit-learn's bundled 8x8 images, no download): a Flax NNX MLP with
lambda-hat's built-in cross-entropy, so the factory gives `predict` and the data {"x", "y"}."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from sklearn.datasets import load_digits


class MLP(nnx.Module):
    def __init__(self, hidden, rngs):
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def make(seed, n=500, hidden=16):
    x, y = load_digits(return_X_y=True)
    rows = np.random.default_rng(seed).permutation(len(y))[:n]
    graphdef, state = nnx.split(MLP(hidden, nnx.Rngs(seed)))

    def predict(params, x):
        s = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(s, params)
        return nnx.merge(graphdef, s)(x)

    return {"params": nnx.to_pure_dict(state), "predict": predict, "loss": "cross_entropy",
            "data": {"x": (x[rows] / 16.0).astype(np.float32), "y": y[rows].astype(np.int32)}}
