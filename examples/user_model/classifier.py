"""A user's model for lambda-hat: a two-layer MLP classifier (softmax logits) in plain JAX, on a
synthetic three-class problem generated with numpy. No import of lambda_hat is needed."""

import jax
import jax.numpy as jnp
import numpy as np


def predict(params, x):
    h = jnp.tanh(x @ params["layer1"]["W"] + params["layer1"]["b"])
    return h @ params["layer2"]["W"] + params["layer2"]["b"]  # logits


def make(seed, n=200, hidden=4, classes=3):
    rng = np.random.default_rng(1000 + seed)
    centers = rng.normal(size=(classes, 2)) * 2.0
    y = rng.integers(0, classes, size=n)
    x = centers[y] + rng.normal(size=(n, 2))
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "layer1": {"W": jax.random.normal(k1, (2, hidden)) * 0.5, "b": jnp.zeros(hidden)},
        "layer2": {"W": jax.random.normal(k2, (hidden, classes)) * 0.5, "b": jnp.zeros(classes)},
    }
    return {"params": params, "predict": predict, "loss": "cross_entropy",
            "data": {"x": x.astype(np.float64), "y": y.astype(np.int32)}}
