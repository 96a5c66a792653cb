"""A regular model for lambda-hat: multinomial logistic regression with class 0's logits pinned at
zero (so the parameters are identifiable), on data drawn from the model itself. Its learning
coefficient is d/2 = 3 (d = 2 features x 2 free classes + 2 biases)."""

import jax.numpy as jnp
import numpy as np


def predict(params, x):
    z = x @ params["W"] + params["b"]  # logits of classes 1..K-1; class 0 fixed at 0 (identifiable)
    return jnp.concatenate([jnp.zeros((x.shape[0], 1), z.dtype), z], axis=1)


def make(seed, n=1000, classes=3, features=2):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(features, classes - 1))
    x = rng.normal(size=(n, features))
    logits = np.concatenate([np.zeros((n, 1)), x @ W], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p], dtype=np.int32)
    return {"params": {"W": np.zeros((features, classes - 1)), "b": np.zeros(classes - 1)},
            "predict": predict, "loss": "cross_entropy", "data": {"x": x, "y": y}}
