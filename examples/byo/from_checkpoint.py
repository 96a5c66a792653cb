"""A model trained elsewhere: linear regression whose least-squares fit w* sits in
`w_star.npz` beside this file ("trained": True, so lambda-hat samples at these params without
training; the w* checks still run). The params' bytes are hashed into the target's ID, not the
file's path: a copy of this directory elsewhere plans the same target. Regular, so λ = d/2 = 2
for d = 3 weights and a bias.

w_star.npz was written by `python from_checkpoint.py` (the fit of `data()` below)."""
from pathlib import Path

import jax.numpy as jnp
import numpy as np

CHECKPOINT = Path(__file__).with_name("w_star.npz")


def data(n=400):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.5 * rng.normal(size=n)
    return x, y


def loss(params, batch):
    return (batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2


def make(seed):
    x, y = data()
    saved = np.load(CHECKPOINT)
    params = {"w": jnp.asarray(saved["w"]), "b": jnp.asarray(saved["b"])}
    return {"params": params, "loss": loss, "data": {"x": x, "y": y}, "trained": True}


if __name__ == "__main__":
    x, y = data()
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(y))], y, rcond=None)
    np.savez(CHECKPOINT, w=coef[:3], b=coef[3])
