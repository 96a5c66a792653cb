"""lambda-hat's own `model: small` MLP (4 -> 4 -> 4 -> 1, ReLU, teacher-student data) written as a
factory in plain JAX. Its runs give the same traces, bit for bit, as the built-in target with the
same seeds (tests/test_byo.py): the contract computes exactly what the built-in path computes."""
import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat.science.data import make_dataset
from lambda_hat.science.models import init_mlp
from lambda_hat.sweep import sweep_from_dict


def predict(params, x):
    h = x
    for i in range(3):
        h = h @ params[f"W_{i}"] + params[f"b_{i}"]
        if i < 2:
            h = jax.nn.relu(h)
    return h


def make(seed):
    # the built-in target's keys: PRNGKey(seed) split into data, init and training keys
    sweep = {"targets": [{"model": "small", "data": "small", "seed": seed}], "samplers": [{"name": "hmc"}]}
    spec = sweep_from_dict(sweep).targets[0]
    k_data, k_init, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    jdtype = jnp.asarray(0.0).dtype  # the target's dtype: lambda-hat calls make in its precision
    X, Y, _, _ = make_dataset(k_data, spec, jdtype)
    params = init_mlp(k_init, spec.model.layer_dims, init="he", bias=True, dtype=jdtype)
    return {"params": params, "predict": predict, "loss": "mse", "data": {"x": np.asarray(X), "y": np.asarray(Y)}}
