"""A user's own model as a target: `model: {kind: python, factory: "pkg.mod:make", kwargs: {...}}`.

The factory is called as `make(seed=<target seed>, **kwargs)` and returns a plain dict:

* "params": a pytree of arrays (the initial parameters; w* itself when "trained" is True);
* "predict": `predict(params, x) -> outputs` (logits for cross-entropy), pure and jittable;
* "loss": "mse" or "cross_entropy" (`science/losses.py`), over data {"x", "y"}: x (n, features),
  y (n,) or (n, k) targets for mse, (n,) integer class labels for cross-entropy;
* "data": a dict of arrays sharing a leading axis n (at least "x" and "y");
* optional "trained" (default False): False trains params to w* with the target's `training:`
  settings; True takes them as w*. Either way w* gets the built-in targets' checks (`wstar.quality`).

The module is imported from the sweep file's directory first, then `sys.path`, when the sweep is
loaded (`resolve`, which fills in the spec) and again in the worker (`build`, `forward`), which
finds that directory in the spec's `source_dir`. The target's ID covers the spec (factory name,
kwargs, seed, training, dtype) and two digests `resolve` writes into it, never the directory:

* code_digest: sha256 of the factory module's normalised source, its AST (`ast.dump`) with
  docstrings removed, so comments, docstrings and formatting do not count. Only the factory's own
  module is hashed, not modules it imports (out of scope for now: a helper in another module of
  the user's package can change without changing the ID).
* data_digest: sha256 over the data arrays' names, dtypes, shapes and bytes.

The worker recomputes both and refuses to build a target whose code or data changed since the plan.
Parameter trees are stored flattened, leaf names the '/'-joined key path ("layer1/W").
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lambda_hat.errors import BadInput

LOSSES = ("mse", "cross_entropy")


class FactoryError(ValueError):
    """What is wrong with a factory; `field` is the spec field at fault (under `model.`)."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field


def _import_module(name: str, source_dir: str | None):
    """The module `name`, looked up in `source_dir` first, then on sys.path."""
    if source_dir is None:
        return importlib.import_module(name)
    top = name.split(".")[0]
    if (Path(source_dir) / f"{top}.py").is_file() or (Path(source_dir) / top).is_dir():
        # This directory's module, not one of the same name a previous sweep imported from elsewhere.
        for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[loaded]
        importlib.invalidate_caches()
    sys.path.insert(0, source_dir)
    try:
        return importlib.import_module(name)
    finally:
        try:
            sys.path.remove(source_dir)
        except ValueError:
            pass


def load_factory(factory: str, source_dir: str | None):
    """(module, function) that `factory` ("module:function") names."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError("factory", f"{factory!r} is not 'module:function'")
    try:
        module = _import_module(module_name, source_dir)
    except Exception as err:
        raise FactoryError("factory", f"cannot import {module_name!r}: {type(err).__name__}: {err}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise FactoryError("factory", f"module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise FactoryError("factory", f"{factory!r} is not callable")
    return module, obj


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_digest(module) -> str:
    """sha256 of the module's source, normalised: its AST without docstrings (so comments,
    docstrings and formatting do not count)."""
    path = getattr(module, "__file__", None)
    if not path:
        raise FactoryError("factory", f"module {module.__name__!r} has no source file to hash")
    source = Path(path).read_text()
    normalised = ast.dump(_strip_docstrings(ast.parse(source)), annotate_fields=True, include_attributes=False)
    return hashlib.sha256(normalised.encode()).hexdigest()


def data_digest(data: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(data):
        a = np.ascontiguousarray(data[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def flatten_params(params) -> tuple[dict[str, np.ndarray], Any, list[str]]:
    """({'/'-joined key path: array}, treedef, names in the tree's leaf order)."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = []
    for path, _ in leaves:
        parts = []
        for k in path:
            parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
        names.append("/".join(parts) or "w")
    if len(set(names)) != len(names):
        raise FactoryError("factory", "params: two leaves have the same path name")
    return {n: np.asarray(v) for n, (_, v) in zip(names, leaves)}, treedef, names


def call_factory(factory: str, kwargs: dict, seed: int, source_dir: str | None) -> dict:
    """Call the factory and check what it returns; FactoryError names what is wrong. Returns
    {"module", "params" (flat dict), "treedef", "names", "predict", "loss", "X", "Y", "data", "trained"}."""
    module, make = load_factory(factory, source_dir)
    try:
        out = make(seed=seed, **kwargs)
    except Exception as err:
        raise FactoryError("factory", f"make(seed={seed}, **kwargs) raised {type(err).__name__}: {err}") from None
    if not isinstance(out, dict):
        raise FactoryError("factory", f"must return a dict, got {type(out).__name__}")
    missing = [k for k in ("params", "predict", "loss", "data") if k not in out]
    if missing:
        raise FactoryError("factory", f"returned dict lacks {', '.join(repr(k) for k in missing)}")
    loss = out["loss"]
    if not isinstance(loss, str):
        raise FactoryError("factory", "'loss' must be \"mse\" or \"cross_entropy\" (a custom loss callable is not "
                                      "supported yet)")
    if loss not in LOSSES:
        raise FactoryError("factory", f"'loss' must be \"mse\" or \"cross_entropy\", got {loss!r}")
    if not callable(out["predict"]):
        raise FactoryError("factory", "'predict' must be a function predict(params, x)")
    trained = out.get("trained", False)
    if not isinstance(trained, bool):
        raise FactoryError("factory", "'trained' must be true or false")
    data = out["data"]
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise FactoryError("factory", "'data' must be a dict with arrays 'x' and 'y'")
    try:
        data = {str(k): np.asarray(v) for k, v in data.items()}
    except Exception as err:
        raise FactoryError("factory", f"'data' holds a value that is not an array: {err}") from None
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in data.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise FactoryError("factory", f"'data' arrays must share a leading axis n, got {lengths}")
    X, Y = data["x"], data["y"]
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise FactoryError("factory", f"data 'x' must be (n, features), got shape {X.shape}")
    if loss == "cross_entropy":
        if Y.ndim != 1 or not np.issubdtype(Y.dtype, np.integer) or (Y.size and Y.min() < 0):
            raise FactoryError("factory", f"cross_entropy needs data 'y' of non-negative integer labels, shape (n,); "
                                          f"got {Y.dtype} {Y.shape}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise FactoryError("factory", f"data 'y' must be (n,) or (n, k), got shape {Y.shape}")
    if X.shape[0] < 2:
        raise FactoryError("factory", "data needs at least 2 rows")
    try:
        flat, treedef, names = flatten_params(out["params"])
    except FactoryError:
        raise
    except Exception as err:
        raise FactoryError("factory", f"'params' is not a pytree of arrays: {err}") from None
    if not flat or not all(np.issubdtype(v.dtype, np.floating) for v in flat.values()):
        raise FactoryError("factory", "'params' must be a non-empty pytree of floating-point arrays")
    return {"module": module, "params": flat, "treedef": treedef, "names": names, "predict": out["predict"],
            "loss": loss, "X": X, "Y": Y, "data": data, "trained": trained}


def resolve(target, source_dir: str | Path | None):
    """The target with its python model spec filled in from the factory (digests, shapes, loss,
    where the module lives) and data.n_data set to the factory's n. Raises FactoryError."""
    m = target.model
    where = None if source_dir is None else str(Path(source_dir).resolve())
    got = call_factory(m.factory, m.kwargs, target.seed, where)
    try:
        json.dumps(m.kwargs, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise FactoryError("kwargs", f"must be JSON-able: {err}") from None
    X, Y = got["X"], got["Y"]
    out_dim = int(Y.shape[1]) if got["loss"] == "mse" else int(Y.max()) + 1
    model = m.model_copy(update={
        "loss": got["loss"], "trained": got["trained"], "code_digest": code_digest(got["module"]),
        "data_digest": data_digest(got["data"]), "factory_seed": target.seed,
        "n_params": int(sum(v.size for v in got["params"].values())), "in_dim": int(X.shape[1]),
        "out_dim": out_dim, "source_dir": where})
    data = target.data.model_copy(update={"n_data": int(X.shape[0])})
    return target.model_copy(update={"model": model, "data": data})


@lru_cache(maxsize=16)
def _factory_output(factory: str, kwargs_json: str, seed: int, source_dir: str | None, code: str) -> dict:
    # `code` (the planned code digest) only keys the cache: a re-planned, edited factory is called again
    return call_factory(factory, json.loads(kwargs_json), seed, source_dir)


def _output_of(m) -> dict:
    try:
        return _factory_output(m.factory, json.dumps(m.kwargs, sort_keys=True), m.factory_seed, m.source_dir,
                               m.code_digest)
    except FactoryError as err:
        raise BadInput(f"model.{err.field}: {err}") from None


def forward(key):
    """`apply(flat params, X)` for a python model's forward key: the factory's predict on the
    params rebuilt from their '/'-joined names; mse outputs as (rows, outputs) like Y."""
    import jax

    _, factory, kwargs_json, seed, loss, code, source_dir = key
    got = _factory_output(factory, kwargs_json, seed, source_dir, code)
    treedef, names, predict = got["treedef"], got["names"], got["predict"]

    def apply(params, x):
        out = predict(jax.tree_util.tree_unflatten(treedef, [params[n] for n in names]), x)
        return out.reshape(out.shape[0], -1) if loss == "mse" else out

    return apply


def build(target):
    """The target's arrays: the factory's data and params, trained to w* unless "trained"."""
    from lambda_hat.science.models import precision

    with precision(target.dtype):
        return _build(target)


def _build(target):
    import jax
    import jax.numpy as jnp

    from lambda_hat.science import TargetArrays
    from lambda_hat.science.losses import mean_loss
    from lambda_hat.science.models import forward as model_forward
    from lambda_hat.science.models import jnp_dtype, model_key
    from lambda_hat.science.train import train
    from lambda_hat.science.wstar import quality

    m = target.model
    got = _output_of(m)
    # The plan's digests are the ID's promise: never build something else under it.
    if code_digest(got["module"]) != m.code_digest:
        raise RuntimeError(f"{m.factory}: the factory's code changed since the sweep was planned; plan again")
    if data_digest(got["data"]) != m.data_digest:
        raise RuntimeError(f"{m.factory}: the factory's data changed since the sweep was planned; plan again")
    dtype = jnp_dtype(target.dtype)
    key = model_key(m)
    X, Y = jnp.asarray(got["X"], dtype), jnp.asarray(got["Y"], dtype)
    params = {k: jnp.asarray(v, dtype) for k, v in got["params"].items()}
    if got["trained"]:
        info = {"train_steps": 0, "final_train_loss": float("nan")}
    else:
        k_train = jax.random.split(jax.random.PRNGKey(target.seed), 3)[2]  # as the built-in kinds' training key
        params, info = train(k_train, params, X, Y, target.training, key, loss_name=m.loss)
        params = {k: v.astype(dtype) for k, v in params.items()}
    L0 = float(mean_loss(model_forward(key)(params, X), Y, m.loss))
    if got["trained"]:
        info["final_train_loss"] = L0
    metrics = {"L0": L0, "train_steps": int(info["train_steps"]), "final_train_loss": float(info["final_train_loss"]),
               "n_params": int(m.n_params), "n_data": int(X.shape[0])}
    metrics.update(quality(params, X, Y, key, loss_name=m.loss))
    return TargetArrays(params={k: np.asarray(v) for k, v in params.items()}, X=np.asarray(X), Y=np.asarray(Y),
                        metrics=metrics)
