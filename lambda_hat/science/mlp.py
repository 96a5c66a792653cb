"""The mlp model kind's build: teacher-student regression data, the student trained to w*.

The data and the teacher come from `data.make_dataset` (the teacher is an MLP of the spec's
`teacher` architecture); the student starts from `models.init_mlp` and is trained by
`train.train`, unless `w_star: teacher` takes the teacher's own weights (a true parameter: the
spec checked that the architectures match). Metrics: L0 = L_n(w*), training and test loss,
and the w* checks of `wstar.quality`.
"""

from __future__ import annotations

import numpy as np


def build_mlp_target(spec):
    from .models import precision

    with precision(spec.dtype):
        return _build(spec)


def heldout(spec):
    """The target's test set (n_test rows), drawn from the keys its build drew it from."""
    import jax

    from .data import make_dataset
    from .models import jnp_dtype

    k_data = jax.random.split(jax.random.PRNGKey(spec.seed), 3)[0]
    _, _, X_test, Y_test = make_dataset(k_data, spec, jnp_dtype(spec.dtype))
    return np.asarray(X_test), np.asarray(Y_test)


def training_problem(spec):
    """An mlp checkpoint's training (`science/trajectory.py`): the data and student of `_build`,
    drawn from the same keys."""
    import jax

    from .data import make_dataset
    from .models import init_mlp, jnp_dtype, model_key
    from .trajectory import TrainingProblem

    m = spec.model
    dtype = jnp_dtype(spec.dtype)
    k_data, k_init, k_train = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    X, Y, X_test, Y_test = make_dataset(k_data, spec, dtype)
    params0 = init_mlp(k_init, m.layer_dims, init=m.init, bias=m.bias, dtype=dtype)
    return TrainingProblem(X=X, Y=Y, X_test=X_test, Y_test=Y_test, params0=params0, model=model_key(m),
                           k_train=k_train)


def _build(spec):
    import jax

    from . import TargetArrays
    from .data import make_dataset
    from .losses import mean_loss
    from .models import init_mlp, jnp_dtype, mlp_apply, model_key
    from .train import train
    from .wstar import quality

    m = spec.model
    dtype = jnp_dtype(spec.dtype)
    k_data, k_init, k_train = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    X, Y, X_test, Y_test, teacher = make_dataset(k_data, spec, dtype, return_teacher=True)
    if spec.w_star == "teacher":
        # A true parameter (the spec checked that the architectures match): no training.
        params, info = teacher, {"train_steps": 0, "final_train_loss": float(mean_loss(mlp_apply(teacher, X, m.activation), Y))}
    else:
        params0 = init_mlp(k_init, m.layer_dims, init=m.init, bias=m.bias, dtype=dtype)
        params, info = train(k_train, params0, X, Y, spec.training, model_key(m))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    L0 = float(mean_loss(mlp_apply(params, X, m.activation), Y))
    test_loss = float(mean_loss(mlp_apply(params, X_test, m.activation), Y_test))
    metrics = {
        "L0": L0,
        "train_steps": int(info["train_steps"]),
        "final_train_loss": float(info["final_train_loss"]),
        "test_loss": test_loss,
        "n_params": int(m.n_params),
        "n_data": int(spec.data.n_data),
        "n_test": int(spec.data.n_test),
    }
    metrics.update(quality(params, X, Y, model_key(m)))
    return TargetArrays(
        params={k: np.asarray(v) for k, v in params.items()},
        X=np.asarray(X),
        Y=np.asarray(Y),
        metrics=metrics,
    )
