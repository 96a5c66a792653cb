"""Checkpoint targets: w* is the student after exactly `step` steps of one training run.

A trajectory is a target spec trained for `training.steps` steps with no early stopping; its
checkpoint at step s (`TargetSpec.step`) holds the parameters *and* the optimizer state after s
steps, so the next checkpoint's build resumes from it instead of training from the start.

Bit-identical however the run is cut into jobs. Step k (0-based) uses the key
fold_in(training key, k), never a key split off a running chain, so the key depends on k
alone. Steps run in one compiled `lax.scan` of CHUNK steps over the step numbers
[first, first + CHUNK), steps at or past `stop` leaving the state as it was (a `where`, exact):
every step of every span runs the same compiled loop body on the same inputs, so training
0 → 300 in one job and 0 → 100, 100 → 300 in two give the same bits (tests/test_trajectory.py
checks it across processes). A learning-rate schedule, if one is added, is keyed on
`training.steps`, the declared total, never on the span.

The data and the initial student come from the model kind (`registry.ModelKind.training`):
the same keys as its ordinary build, so step 0 is the kind's initial student.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, NamedTuple

import numpy as np

# Steps per compiled span. One program serves every span length (the tail is masked), so a
# checkpoint at any step costs no compile.
CHUNK = 100
OPT_PREFIX = "optimizer/"


class TrainingProblem(NamedTuple):
    """What a model kind hands the trajectory trainer: data, the initial student (step 0), the
    forward key (`models.forward`), the training key, the per-example loss's name, and optional
    kind-specific metrics of a checkpoint, `extra_metrics(params, L0) -> dict`."""

    X: Any
    Y: Any
    X_test: Any
    Y_test: Any
    params0: dict
    model: Any
    k_train: Any
    loss_name: str = "mse"
    extra_metrics: Callable[[dict, float], dict] | None = None


class Resume(NamedTuple):
    """A stored checkpoint to continue from: its step, params and optimizer state leaves."""

    step: int
    params: dict[str, np.ndarray]
    optimizer: list[np.ndarray]


def optimizer_payload(leaves: list) -> dict[str, np.ndarray]:
    """The optimizer state's leaves by stored name, in `jax.tree.leaves` order."""
    return {f"{OPT_PREFIX}{i:04d}": np.asarray(v) for i, v in enumerate(leaves)}


def optimizer_leaves(loaded: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [loaded[k] for k in sorted(k for k in loaded if k.startswith(OPT_PREFIX))]


@lru_cache(maxsize=16)
def _span_fn(training, model, loss_name: str):
    """The jitted CHUNK-step span `(carry, key, first, stop, X, Y) -> carry` (data and step numbers
    are arguments: one compile per training config and shapes)."""
    import jax
    import jax.numpy as jnp

    from .train import make_step

    opt, _, one_step = make_step(training, model, loss_name)

    def span(carry, key, first, stop, X, Y):
        def step(carry, k):
            new = one_step(*carry, jax.random.fold_in(key, k), X, Y)
            live = k < stop
            return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, carry), None

        carry, _ = jax.lax.scan(step, carry, first + jnp.arange(CHUNK))
        return carry

    return jax.jit(span), opt


def train_span(problem: TrainingProblem, training, params, opt_state, start: int, stop: int,
               on_span: Callable[[int], None] | None = None):
    """(params, optimizer state) after steps start .. stop-1 from the given state at `start`;
    `on_span(steps done)` after each compiled span (the worker's crash point for tests)."""
    import jax
    import jax.numpy as jnp

    span, _ = _span_fn(training, problem.model, problem.loss_name)
    carry = (params, opt_state)
    for first in range(start, stop, CHUNK):
        carry = span(carry, problem.k_train, jnp.asarray(first), jnp.asarray(stop), problem.X, problem.Y)
        if on_span is not None:
            jax.block_until_ready(carry)
            on_span(min(first + CHUNK, stop))
    return carry


def build_checkpoint(spec, resume: Resume | None = None, on_span: Callable[[int], None] | None = None):
    """The target arrays of checkpoint `spec` (`spec.step` set), trained from `resume` (a stored
    earlier checkpoint of the same trajectory) or from step 0; their `optimizer` holds the state
    the next checkpoint resumes from. Metrics: those of an ordinary target, w*'s checks
    included (an early checkpoint is rarely a minimum: its `w_star_status` says so)."""
    from lambda_hat import registry

    from .models import precision

    with precision(spec.dtype):
        return _build(spec, registry.model_kind(spec.model.kind).training_problem(spec), resume, on_span)


def _build(spec, problem: TrainingProblem, resume: Resume | None, on_span: Callable[[int], None] | None):
    import jax
    import jax.numpy as jnp

    from . import TargetArrays
    from .models import jnp_dtype
    from .posterior import flat_model, make_full_loss, n_rows
    from .wstar import quality

    dtype = jnp_dtype(spec.dtype)
    _, opt = _span_fn(spec.training, problem.model, problem.loss_name)
    opt_state = opt.init(problem.params0)
    if resume is None or resume.step > spec.step:
        start, params = 0, problem.params0
    else:
        start = resume.step
        params = {k: jnp.asarray(v, dtype) for k, v in resume.params.items()}
        # In the fresh state's shapes and dtypes: the store keeps a 0-d leaf (adam's count) as
        # shape (1,), and a carry of other shapes is another program, rounding otherwise.
        fresh, treedef = jax.tree.flatten(opt_state)
        if len(fresh) != len(resume.optimizer):
            raise ValueError(f"the stored checkpoint at step {resume.step} has {len(resume.optimizer)} optimizer "
                             f"arrays, this training's optimizer {len(fresh)}")
        opt_state = jax.tree.unflatten(treedef, [jnp.asarray(v, f.dtype).reshape(f.shape)
                                                 for v, f in zip(resume.optimizer, fresh)])
    params, opt_state = train_span(problem, spec.training, params, opt_state, start, spec.step, on_span)
    w, predict = flat_model(params, problem.model)
    L0 = float(jax.jit(make_full_loss(predict, problem.X, problem.Y, loss_name=problem.loss_name))(w))
    metrics = {"L0": L0, "train_steps": int(spec.step), "final_train_loss": L0, "trained_from_step": int(start),
               "n_params": int(w.size), "n_data": int(spec.data.n_data)}
    if problem.X_test is not None:
        metrics["test_loss"] = float(jax.jit(make_full_loss(predict, problem.X_test, problem.Y_test,
                                                            loss_name=problem.loss_name))(w))
        metrics["n_test"] = int(n_rows(problem.X_test))
    if problem.extra_metrics is not None:
        metrics.update(problem.extra_metrics(params, L0))
    metrics.update(quality(params, problem.X, problem.Y, problem.model, loss_name=problem.loss_name))
    return TargetArrays(params={k: np.asarray(v) for k, v in params.items()}, X=jax.tree.map(np.asarray, problem.X),
                        Y=np.asarray(problem.Y), metrics=metrics,
                        optimizer=optimizer_payload(jax.tree.leaves(opt_state)))
