"""A user's own model as a target: `model: {kind: python, factory: "pkg.mod:make", kwargs: {...}}`.

The factory is called as `make(seed=<target seed>, **kwargs)` and returns a plain dict:

* "params": a pytree of arrays (the initial parameters; w* itself when "trained" is True);
* "data": a dict of arrays sharing a leading axis n;
* "loss": either
  - a function `loss(params, batch) -> (B,)`, the per-example loss, pure and jittable, where
    `batch` is a dict of arrays sliced from "data" along the leading axis (any keys, any dtypes:
    token ids stay integers, floating arrays take the target's dtype); or
  - "mse" or "cross_entropy" (`science/losses.py`) together with "predict": `predict(params, x)
    -> outputs` (logits for cross-entropy), over data {"x", "y"}: x (n, features), y (n,) or
    (n, k) targets for mse, (n,) integer class labels for cross-entropy;
* optional "trained" (default False): False trains params to w* with the target's `training:`
  settings; True takes them as w*. Either way w* gets the built-in targets' checks (`wstar.quality`);
* optional "test_data": held-out arrays of "data"'s names, dtypes and trailing shapes, never in
  L_n: their loss is reported (test_loss), runs may record it per example
  (`record.per_example.heldout`), and they are hashed with the data.

L_n(w) is the mean of the per-example loss over the data. The module is imported from the sweep
file's directory first, then `sys.path`, when the sweep is loaded (`resolve`, which fills in the
spec) and again in the worker (`build`, `forward`), which finds that directory in the spec's
`source_dir`. The target's ID covers the spec (factory name, kwargs, seed, training, dtype) and
two digests `resolve` writes into it, never the directory:

* code_digest: over the normalised source (the AST, `ast.dump`, docstrings removed, so comments,
  docstrings and formatting do not count) of the factory's module and of every module of the
  user's own code it imports, transitively: a module found under the sweep file's directory or
  under the factory module's top-level package. Installed packages are not hashed; their versions
  are recorded in the target's metrics ("packages"). A factory whose module imports none of the
  user's own modules has the digest of its module alone.
* data_digest: sha256 over the data arrays' names, dtypes, shapes and bytes; and, for a factory
  that hands over w* ("trained": True), params_digest, the same over the flattened params (they
  come from outside the code, e.g. a checkpoint file, so moving that file keeps the ID and editing
  it does not). Untrained params are the code's own, from kwargs and seed: not hashed.

The per-file digests are kept in the spec unhashed (`code_files`), so `lh plan` can say which file
changed. The worker recomputes both digests and refuses to build a target whose code or data
changed since the plan. Parameter trees are stored flattened, leaf names the '/'-joined key path
("layer1/W").
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import json
import os
import sys
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lambda_hat.errors import BadInput



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


class _Exited(BaseException):
    """os._exit called by the user's code while `_users_code` holds: raised instead."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _jax_config() -> dict | None:
    """JAX's global configuration now, where JAX is imported (else None: nothing to compare)."""
    jax = sys.modules.get("jax")
    values = getattr(getattr(jax, "config", None), "values", None)
    return dict(values) if isinstance(values, dict) else None


def _jax_changes(before: dict | None) -> list[str]:
    now = _jax_config()
    if before is None or now is None:
        return []
    return sorted(k for k in before if now.get(k) != before[k])


def _restore_jax_config(before: dict | None) -> None:
    for name in _jax_changes(before):
        try:
            sys.modules["jax"].config.update(name, before[name])
        except Exception:  # a setting that cannot be set back: the refusal above names it
            pass


@contextlib.contextmanager
def _users_code(factory: str, when: str):
    """While the user's module is imported or its factory called ("imported", "called"): what it
    prints goes to stderr (lh's stdout is JSON or CSV for other programs); a working directory it
    changes is changed back (lh's relative store, results and logs stay where they were named), and
    so are lh's own settings (`LH_*`: an LH_STORE set at import moved execute to another store);
    and an exit (sys.exit, os._exit, a script's argparse) or another BaseException but Ctrl-C is
    the factory's error, not the end of lh."""
    cwd = os.getcwd()
    # lh's settings, not the module's to change (HOME: a store path's `~`)
    ours = {k: v for k, v in os.environ.items() if k.startswith("LH_") or k == "HOME"}
    jax_config = _jax_config()
    real_exit = os._exit

    def exit_instead(code: int = 0) -> None:
        raise _Exited(code)

    os._exit = exit_instead
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        changed = _jax_changes(jax_config)
        if changed:
            # a worker builds several targets in one process: the next one would run under it
            raise FactoryError("factory", f"{factory}: changed JAX's global configuration while being {when} "
                                          f"({', '.join(changed[:3])}); lh builds several targets in one process, "
                                          "so set what the sweep can (jax_enable_x64, dtype) there, not in the module")
    except (SystemExit, _Exited) as err:
        how = "SystemExit" if isinstance(err, SystemExit) else "os._exit"
        hint = " (argparse or sys.exit at import?)" if when == "imported" else ""
        raise FactoryError("factory", f"{factory}: exited ({how} {err.code}) while being {when}; a factory "
                                      f"{'module ' if when == 'imported' else ''}must not exit{hint}") from None
    except (KeyboardInterrupt, Exception):
        raise
    except BaseException as err:  # GeneratorExit and the like: still the factory's, in one line
        raise FactoryError("factory", f"{factory}: raised {type(err).__name__} while being {when}") from None
    finally:
        os._exit = real_exit
        try:
            if os.getcwd() != cwd:
                os.chdir(cwd)
        except OSError:
            os.chdir(cwd)
        for k in [k for k in os.environ if (k.startswith("LH_") or k == "HOME") and k not in ours]:
            del os.environ[k]
        os.environ.update(ours)
        _restore_jax_config(jax_config)


def load_factory(factory: str, source_dir: str | None):
    """(module, function) that `factory` ("module:function") names."""
    module_name, sep, attr = factory.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError("factory", f"{factory!r} is not 'module:function'")
    try:
        with _users_code(factory, "imported"):
            module = _import_module(module_name, source_dir)
    except FactoryError:
        raise
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


def _normalised(tree: ast.AST) -> str:
    return ast.dump(_strip_docstrings(tree), annotate_fields=True, include_attributes=False)


def _file_of(name: str, roots: list[tuple[Path, str | None]]) -> Path | None:
    """The source file of module `name` under one of `roots` ((directory, required top-level name
    or None)), found on disk without importing anything; None when it is not the user's own."""
    parts = name.split(".")
    for root, top in roots:
        if top is not None and parts[0] != top:
            continue
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Absolute names of the modules (and maybe-submodules) a module's source imports."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = ".".join(p for p in (package, node.module) if p)
            else:
                base = node.module or ""
            if base:
                out.add(base)
            out.update(f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*")
    return out


def own_modules(module, source_dir: str | None) -> dict[str, Path]:
    """{module name: source file} of the factory's module and the user's own modules it imports,
    transitively: those found under `source_dir` (the sweep file's directory) or under the
    factory module's top-level package. Installed packages are left out."""
    path = getattr(module, "__file__", None)
    if not path:
        raise FactoryError("factory", f"module {module.__name__!r} has no source file to hash")
    name = module.__name__
    top_dir = Path(path).resolve().parents[name.count(".") + (Path(path).name == "__init__.py")]
    roots = [(Path(source_dir), None)] if source_dir else []
    roots.append((top_dir, name.split(".")[0]))
    found: dict[str, Path] = {}
    todo = [(name, Path(path))]
    while todo:
        mod, file = todo.pop()
        if mod in found:
            continue
        found[mod] = file
        try:
            tree = ast.parse(file.read_text())
        except (OSError, SyntaxError, ValueError) as err:
            raise FactoryError("factory", f"cannot read {file}: {err}") from None
        for imported in sorted(_imported_names(tree, mod, file.name == "__init__.py")):
            if imported not in found:
                other = _file_of(imported, roots)
                if other is not None:
                    todo.append((imported, other))
    return found


def file_digest(path: Path) -> str:
    """sha256 of one source file's normalised AST (docstrings removed)."""
    try:
        return hashlib.sha256(_normalised(ast.parse(Path(path).read_text())).encode()).hexdigest()
    except (OSError, SyntaxError, ValueError) as err:
        raise FactoryError("factory", f"cannot read {path}: {err}") from None


def code_digests(module, source_dir: str | None = None) -> tuple[str, dict[str, str]]:
    """(code digest, {module name: its file's digest}) of the factory's module and the user's
    modules it imports (`own_modules`). A module that imports none of them has its own file's
    digest, as before transitive hashing existed."""
    files = {name: file_digest(path) for name, path in own_modules(module, source_dir).items()}
    if len(files) == 1:
        return next(iter(files.values())), files
    joined = json.dumps(sorted(files.items()), separators=(",", ":"))
    return hashlib.sha256(joined.encode()).hexdigest(), files


def code_digest(module, source_dir: str | None = None) -> str:
    """The code digest of `code_digests`."""
    return code_digests(module, source_dir)[0]


def third_party_versions(modules) -> str:
    """"name==version, ..." of the installed distributions the user's modules import at top level
    (recorded, not hashed: an upgrade does not change the ID)."""
    from importlib import metadata

    tops: set[str] = set()
    for file in modules.values():
        try:
            tree = ast.parse(Path(file).read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops.add(node.module.split(".")[0])
    dists = metadata.packages_distributions()
    out = set()
    for top in tops - {m.split(".")[0] for m in modules}:
        for dist in dists.get(top, []):
            try:
                out.add(f"{dist}=={metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                pass
    return ", ".join(sorted(out))


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


def _check_data(data) -> dict[str, np.ndarray]:
    if not isinstance(data, dict) or not data:
        raise FactoryError("factory", "'data' must be a non-empty dict of arrays")
    out = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise FactoryError("factory", f"'data' keys must be non-empty strings without '/', got {k!r}")
        try:
            a = np.asarray(v)
        except Exception as err:
            raise FactoryError("factory", f"data {k!r} is not an array: {err}") from None
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise FactoryError("factory", f"data {k!r} is not a numeric array (dtype {a.dtype})")
        out[k] = a
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in out.items()}
    if len(set(lengths.values())) != 1 or None in lengths.values():
        raise FactoryError("factory", f"'data' arrays must share a leading axis n, got {lengths}")
    if next(iter(lengths.values())) < 2:
        raise FactoryError("factory", "data needs at least 2 rows")
    return out


def _check_params(params):
    try:
        flat, treedef, names = flatten_params(params)
    except FactoryError:
        raise
    except Exception as err:
        raise FactoryError("factory", f"'params' is not a pytree of arrays: {err}") from None
    if not flat or not all(np.issubdtype(v.dtype, np.floating) for v in flat.values()):
        raise FactoryError("factory", "'params' must be a non-empty pytree of floating-point arrays")
    return flat, treedef, names


def _check_callable_loss(loss, params, data) -> None:
    """loss(params, batch) gives one finite value per row: on a 2-row batch and over all the data
    at the initial params (in chunks, as L_n is computed)."""
    import jax
    import jax.numpy as jnp

    from lambda_hat.science.posterior import chunk_rows

    try:
        out = jax.eval_shape(loss, params, {k: v[:2] for k, v in data.items()})
    except Exception as err:
        raise FactoryError("factory", f"loss(params, batch) raised {type(err).__name__}: {err}") from None
    if not hasattr(out, "shape") or tuple(out.shape) != (2,):
        shape = getattr(out, "shape", type(out).__name__)
        raise FactoryError("factory", f"loss(params, batch) must return one value per row, shape (B,); on a batch "
                                      f"of 2 rows it returned {shape}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise FactoryError("factory", f"loss(params, batch) must return floats, got {out.dtype}")
    X = {k: jnp.asarray(v) for k, v in data.items()}
    Xc, _, mask = chunk_rows(X, jnp.zeros((len(next(iter(data.values()))), 0), out.dtype))
    total = jax.jit(lambda p: jnp.sum(jax.lax.map(lambda c: jnp.sum(c[1] * loss(p, c[0])), (Xc, mask))))(params)
    if not bool(jnp.isfinite(total)):
        raise FactoryError("factory", f"the loss at the initial params is not finite ({float(total)})")


def call_factory(factory: str, kwargs: dict, seed: int, source_dir: str | None) -> dict:
    """Call the factory and check what it returns; FactoryError names what is wrong. Returns
    {"module", "params" (flat dict), "treedef", "names", "predict", "loss" (a name: "mse",
    "cross_entropy" or "callable"), "loss_fn" (the callable or None), "X", "Y", "data", "trained"}:
    X (n, features) and Y (n, k) for a named loss; X the data dict and Y an empty (n, 0) column for
    a callable one."""
    module, make = load_factory(factory, source_dir)
    with _users_code(factory, "called"):
        try:
            out = make(seed=seed, **kwargs)
        except Exception as err:
            raise FactoryError("factory", f"make(seed={seed}, **kwargs) raised {type(err).__name__}: {err}") from None
        return _checked_factory_output(module, out)


def _checked_factory_output(module, out) -> dict:
    if not isinstance(out, dict):
        raise FactoryError("factory", f"must return a dict, got {type(out).__name__}")
    missing = [k for k in ("params", "loss", "data") if k not in out]
    if missing:
        raise FactoryError("factory", f"returned dict lacks {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(out) - {"params", "loss", "data", "predict", "trained", "test_data"})
    if unknown:
        raise FactoryError("factory", f"returned dict has unknown keys {', '.join(map(repr, unknown))} (known: "
                                      "params, loss, data, predict, trained, test_data)")
    trained = out.get("trained", False)
    if not isinstance(trained, bool):
        raise FactoryError("factory", "'trained' must be true or false")
    data = _check_data(out["data"])
    test = None if out.get("test_data") is None else _check_test_data(out["test_data"], data)
    flat, treedef, names = _check_params(out["params"])
    loss = out["loss"]
    n = len(next(iter(data.values())))
    common = {"module": module, "params": flat, "treedef": treedef, "names": names, "data": data, "trained": trained,
              "test_data": test}
    if callable(loss):
        if out.get("predict") is not None:
            raise FactoryError("factory", "'predict' goes with a named loss (\"mse\" or \"cross_entropy\"); a loss "
                                          "function computes everything itself")
        _check_callable_loss(loss, out["params"], data)
        empty = lambda d: np.zeros((len(next(iter(d.values()))), 0), np.float32)  # noqa: E731
        return {**common, "predict": None, "loss": "callable", "loss_fn": loss, "X": data, "Y": empty(data),
                "X_test": test, "Y_test": None if test is None else empty(test)}
    if not isinstance(loss, str) or loss not in ("mse", "cross_entropy"):
        raise FactoryError("factory", f"'loss' must be a function loss(params, batch) -> (B,), \"mse\" or "
                                      f"\"cross_entropy\"; got {loss!r}")
    if not callable(out.get("predict")):
        raise FactoryError("factory", f"'loss': {loss!r} needs 'predict', a function predict(params, x)")
    if "x" not in data or "y" not in data:
        raise FactoryError("factory", f"'loss': {loss!r} needs data arrays 'x' and 'y' (a loss function takes "
                                      "any data)")
    X, Y = _xy(data, loss)
    X_test, Y_test = (None, None) if test is None else _xy(test, loss)
    return {**common, "predict": out["predict"], "loss": loss, "loss_fn": None, "X": X, "Y": Y,
            "X_test": X_test, "Y_test": Y_test}


def _check_test_data(test: Any, data: dict) -> dict:
    """Held-out data (`test_data`): the arrays of `data`, by the same names, dtypes and trailing
    shapes; only its loss is reported (test_loss), it never enters L_n."""
    try:
        test = _check_data(test)
    except FactoryError as err:
        raise FactoryError("factory", f"'test_data': {err}") from None
    for k in sorted(set(data) | set(test)):
        a, b = data.get(k), test.get(k)
        if a is None or b is None or a.dtype != b.dtype or a.shape[1:] != b.shape[1:]:
            raise FactoryError("factory", f"'test_data' must hold the arrays of 'data' (same names, dtypes and "
                                          f"shapes after the first axis); {k!r} differs")
    return test


def _xy(data: dict, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """X (n, features) and Y (n, k) of a named loss's data {"x", "y"}."""
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
    return X, Y


def digest_of_data(got: dict) -> str:
    """The data_digest of a factory's output: its data, and its test data when it has any (a
    factory without test data keeps the digest, and the IDs, it had before test_data existed)."""
    if got.get("test_data") is None:
        return data_digest(got["data"])
    return data_digest({**got["data"], **{f"test_data/{k}": v for k, v in got["test_data"].items()}})


def resolve(target, source_dir: str | Path | None):
    """The target with its python model spec filled in from the factory (digests, shapes, loss,
    where the module lives) and data.n_data set to the factory's n. Raises FactoryError."""
    m = target.model
    where = None if source_dir is None else str(Path(source_dir).resolve())
    from lambda_hat.science.models import precision

    with precision(target.dtype):  # as the worker calls it: the factory's arrays in the target's dtype
        got = call_factory(m.factory, m.kwargs, target.seed, where)
    try:
        json.dumps(m.kwargs, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise FactoryError("kwargs", f"must be JSON-able: {err}") from None
    X, Y = got["X"], got["Y"]
    if got["loss"] == "callable":
        in_dim = out_dim = 0
    else:
        in_dim, out_dim = int(X.shape[1]), int(Y.shape[1]) if got["loss"] == "mse" else int(Y.max()) + 1
    digest, files = code_digests(got["module"], where)
    model = m.model_copy(update={
        "loss": got["loss"], "trained": got["trained"], "code_digest": digest, "code_files": files,
        "data_digest": digest_of_data(got), "factory_seed": target.seed,
        "params_digest": data_digest(got["params"]) if got["trained"] else "",
        "n_params": int(sum(v.size for v in got["params"].values())), "in_dim": in_dim,
        "params": {k: list(v.shape) for k, v in got["params"].items()},
        "out_dim": out_dim, "source_dir": where})
    data = target.data.model_copy(update={"n_data": len(next(iter(got["data"].values())))})
    return target.model_copy(update={"model": model, "data": data})


def differences(planned, stored) -> list[str]:
    """What makes a planned python target differ from a stored one of the same factory: kwargs,
    seed, each changed, added or removed code module, the data; other settings as one item."""
    a, b = planned.model, stored.model
    out = []
    if a.kwargs != b.kwargs:
        keys = sorted(k for k in set(a.kwargs) | set(b.kwargs) if a.kwargs.get(k, ...) != b.kwargs.get(k, ...))
        out.append("kwargs " + ", ".join(keys))
    if planned.seed != stored.seed:
        out.append("seed")
    if a.code_digest != b.code_digest:
        fa, fb = a.code_files or {}, b.code_files or {}
        changed = [f"code {name}" for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)]
        out.extend(changed or ["code"])
    if a.data_digest != b.data_digest:
        same = a.kwargs == b.kwargs and planned.seed == stored.seed and a.code_digest == b.code_digest
        # Same code, kwargs and seed: the factory draws unseeded randomness (or reads a changed file).
        out.append("data (same code, kwargs and seed: is the factory deterministic?)" if same else "data")
    if a.params_digest != b.params_digest:
        out.append("trained params")
    out.extend(name for name in ("training", "dtype") if getattr(planned, name) != getattr(stored, name))
    out.extend(name for name in ("trained", "loss") if getattr(a, name) != getattr(b, name))
    return out


def explain_new(to_build, stored) -> list[str]:
    """For each python target to build ((id, spec) pairs) whose factory a stored target shares,
    one line saying what differs from the closest stored one: why this is a new target."""
    lines = []
    for tid, spec in to_build:
        same = [(sid, old) for sid, old in stored
                if getattr(old.model, "kind", None) == "python" and old.model.factory == spec.model.factory]
        if not same:
            continue
        sid, diff = min(((sid, differences(spec, old)) for sid, old in same), key=lambda x: len(x[1]))
        lines.append(f"{tid} ({spec.model.factory}): new, differs from stored {sid} in {', '.join(diff) or 'nothing'}")
    return lines


@lru_cache(maxsize=16)
def _factory_output(factory: str, kwargs_json: str, seed: int, source_dir: str | None, code: str,
                    dtype: str | None = None) -> dict:
    """The factory's checked output, called in `dtype`'s precision (None: the caller's, for its
    functions only). `code` (the planned code digest) only keys the cache: a re-planned, edited
    factory is called again."""
    if dtype is None:
        return call_factory(factory, json.loads(kwargs_json), seed, source_dir)
    from lambda_hat.science.models import precision

    with precision(dtype):
        return call_factory(factory, json.loads(kwargs_json), seed, source_dir)


def _output_of(m, dtype: str) -> dict:
    try:
        return _factory_output(m.factory, json.dumps(m.kwargs, sort_keys=True), m.factory_seed, m.source_dir,
                               m.code_digest, dtype)
    except FactoryError as err:
        raise BadInput(f"model.{err.field}: {err}") from None


def forward(key):
    """`apply(flat params, X)` for a python model's forward key: the params rebuilt from their
    '/'-joined names, then the factory's predict (mse outputs as (rows, outputs) like Y) or, for
    a loss function, its per-example losses (rows,) (`losses.given`)."""
    import jax

    _, factory, kwargs_json, seed, loss, code, source_dir = key
    got = _factory_output(factory, kwargs_json, seed, source_dir, code)
    treedef, names = got["treedef"], got["names"]
    fn = got["loss_fn"] if loss == "callable" else got["predict"]

    def apply(params, x):
        out = fn(jax.tree_util.tree_unflatten(treedef, [params[n] for n in names]), x)
        return out.reshape(out.shape[0], -1) if loss == "mse" else out

    return apply


def build(target):
    """The target's arrays: the factory's data and params, trained to w* unless "trained"."""
    from lambda_hat.science.models import precision

    with precision(target.dtype):
        return _build(target)


class NotACheckpoint(ValueError):
    """What a checkpoint glob matched that is no file to read (a FIFO, a device, a dangling link)."""


class NotParams(ValueError):
    """A checkpoint file whose arrays are not the factory's params (names or shapes)."""


def _load_npz(path: Path, want: dict[str, tuple]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refused (NotParams) unless they are `want`'s names and shapes.
    Names, then each member's .npy header, are checked before any array is decompressed: a file
    that also holds, say, an optimizer state of gigabytes is refused without reading it."""
    with zipfile.ZipFile(path) as z:
        members = {(n[:-4] if n.endswith(".npy") else n): n for n in z.namelist()}
        missing, extra = sorted(set(want) - set(members)), sorted(set(members) - set(want))
        if missing or extra:
            raise NotParams("; ".join(x for x in (missing and f"missing {', '.join(missing[:5])}",
                                                   extra and f"not params {', '.join(extra[:5])}") if x))
        wrong = []
        for k in sorted(want):
            with z.open(members[k]) as f:  # reads (decompresses) only as far as the header
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise NotParams(f"{k} is a .npy of version {version}, not 1.0 or 2.0")
                shape, _, dtype = read_header(f)
                header = f.tell()
            if dtype.kind not in "biuf":
                raise NotParams(f"{k} is {dtype}, not an array of numbers")
            if tuple(shape) != want[k]:
                wrong.append(k)
            elif z.getinfo(members[k]).file_size > header + int(np.prod(shape)) * dtype.itemsize:
                raise NotParams(f"{k} holds more bytes than its header's {dtype} {tuple(shape)}")
        if wrong:
            raise NotParams(f"other shapes {', '.join(wrong[:5])}")
    with np.load(path, allow_pickle=False) as f:
        return {k: np.asarray(f[k]) for k in want}


def read_checkpoint(path: str, m) -> dict[str, np.ndarray]:
    """The params in a checkpoint file, refused unless they are what the sweep was planned with."""
    try:
        params = _load_npz(Path(path), {k: tuple(v) for k, v in m.params.items()})
    except Exception as err:  # replaced since the plan by something else
        raise RuntimeError(f"{path}: the checkpoint file changed since the sweep was planned "
                           f"({type(err).__name__}: {err}); plan again") from None
    if data_digest(params) != m.params_digest:
        raise RuntimeError(f"{path}: the checkpoint file changed since the sweep was planned; plan again")
    return params


def _step_of(path: Path) -> int | None:
    import re

    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else None


# More checkpoint files than this from one `from:` glob is a pattern gone wide, refused.
MAX_CHECKPOINT_FILES = 10_000


def checkpoint_files(root: Path, pattern: str) -> list[Path]:
    """The regular files `pattern` (relative to `root`, or absolute) matches, sorted, each file
    once however many links reach it under names of one step. Names of one file with two steps
    (`step_2.npz -> step_20.npz`) are refused: the step is read from the name, so one file would
    be measured at two steps. `**` does not descend into linked directories (pathlib's glob), so
    a link loop cannot make the search endless."""
    pure = Path(pattern)
    base, rel = (Path(pure.anchor), pure.relative_to(pure.anchor)) if pure.is_absolute() else (root, pure)
    if rel.parts and rel.parts[-1] == "**":  # glob.glob's "every file below"; pathlib's "**" matches folders only
        rel = rel / "*"
    # As glob.glob (and a shell): a name starting with "." is matched only by a pattern part that does.
    hidden_ok = any(part.startswith(".") and part not in (".", "..") for part in rel.parts)
    found: dict[tuple[int, int], list[Path]] = {}
    seen = 0
    try:
        for path in base.glob(str(rel)):
            seen += 1
            if seen > 10 * MAX_CHECKPOINT_FILES:
                raise ValueError(f"{pattern!r} reaches more than {10 * MAX_CHECKPOINT_FILES:,} entries under {root}; "
                                 "narrow it")
            parts = path.relative_to(base).parts
            if not hidden_ok and any(p.startswith(".") and p not in (".", "..") for p in parts):
                continue
            if path.is_file():
                st = os.stat(path)  # one file however it is reached: a symbolic or a hard link
                found.setdefault((st.st_dev, st.st_ino), []).append(path)
            elif not path.is_dir():  # a FIFO, device or dangling link the pattern names: not skipped in silence
                from lambda_hat.files import file_type

                try:
                    what = file_type(os.stat(path))
                except OSError:
                    what = "a symbolic link to nothing"
                raise NotACheckpoint(f"{path}: is {what}, not a checkpoint file")
    except ValueError as err:
        if "narrow it" in str(err) or isinstance(err, NotACheckpoint):
            raise
        raise ValueError(f"{pattern!r}: not a glob pathlib reads ({err})") from None
    if len(found) > MAX_CHECKPOINT_FILES:
        raise ValueError(f"{pattern!r} matches more than {MAX_CHECKPOINT_FILES:,} files under {root}; narrow it")
    for names in found.values():
        names.sort(key=lambda p: (p.is_symlink(), p))  # the file's own name first, if the pattern reaches it
        other = next((p for p in names if _step_of(p) != _step_of(names[0])), None)
        if other is not None:
            shown = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in (names[0], other)]
            raise ValueError(f"{shown[0]} and {shown[1]} are one file (a link) with two step numbers in their names; "
                             "a checkpoint's step is read from its name: keep one name per file")
    return sorted(names[0] for names in found.values())


def import_checkpoints(target, pattern: str, base_dir: str | None) -> list[tuple[int, Any]]:
    """(step, target) per checkpoint file `pattern` (a glob relative to `base_dir`) matches: the
    python target with the file's params as w* (`params_file`, hashed by content as
    `params_digest`) and the step the last number in the file's name. ValueError names the problem."""
    m = target.model
    root = Path(base_dir or ".")
    files = checkpoint_files(root, pattern)
    if not files:
        raise ValueError(f"{pattern!r} matches no file under {root}")

    def shown(path: Path) -> str:  # as the user's pattern names it
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    want = {k: tuple(v) for k, v in m.params.items()}
    out: dict[int, tuple[Path, Any]] = {}
    for path in files:
        step = _step_of(path)
        if step is None:
            raise ValueError(f"{shown(path)}: no step number in the file's name (e.g. step_1000.npz)")
        if step in out:
            raise ValueError(f"{shown(out[step][0])} and {shown(path)} are both step {step}")
        try:
            params = _load_npz(path, want)
        except NotParams as err:
            raise ValueError(f"{path.name}: its arrays are not the factory's params ({err})") from None
        except Exception as err:  # a user's file: whatever numpy raises (zipfile, pickle, .npy) is one line
            raise ValueError(f"{shown(path)}: not a readable .npz file ({type(err).__name__}: {err})") from None
        model = m.model_copy(update={"trained": True, "params_digest": data_digest(params),
                                     "params_file": str(path.resolve())})
        out[step] = (path, target.model_copy(update={"model": model}))
    return [(step, spec) for step, (_, spec) in sorted(out.items())]


def heldout(target):
    """The factory's `test_data` as (X_test, Y_test) like its data (None: it returns none)."""
    got = _checked_output(target.model, target.dtype)
    return None if got["X_test"] is None else (got["X_test"], got["Y_test"])


def training_problem(target):
    """A python model's checkpoint training (`science/trajectory.py`): the factory's data and
    initial params, the training key of `_build`. A factory that hands over trained params has
    no training to take checkpoints of."""
    import jax
    import jax.numpy as jnp

    from lambda_hat.science.models import jnp_dtype, model_key
    from lambda_hat.science.posterior import as_inputs
    from lambda_hat.science.trajectory import TrainingProblem

    m = target.model
    got = _checked_output(m, target.dtype)
    if got["trained"]:
        raise BadInput(f"{m.factory}: the factory hands over trained params; checkpoints need its training "
                       "(return untrained params, or drop checkpoints)")
    dtype = jnp_dtype(target.dtype)
    test = got["X_test"] is not None
    return TrainingProblem(X=as_inputs(got["X"], dtype), Y=jnp.asarray(got["Y"], dtype),
                           X_test=as_inputs(got["X_test"], dtype) if test else None,
                           Y_test=jnp.asarray(got["Y_test"], dtype) if test else None,
                           params0={k: jnp.asarray(v, dtype) for k, v in got["params"].items()}, model=model_key(m),
                           k_train=jax.random.split(jax.random.PRNGKey(target.seed), 3)[2], loss_name=m.loss,
                           extra_metrics=lambda params, L0: {
                               "packages": third_party_versions(own_modules(got["module"], m.source_dir))})


def _checked_output(m, dtype: str) -> dict:
    """The factory's output, refused unless it is what the sweep was planned with."""
    got = _output_of(m, dtype)
    # The plan's digests are the ID's promise: never build something else under it.
    if code_digest(got["module"], m.source_dir) != m.code_digest:
        raise RuntimeError(f"{m.factory}: the factory's code changed since the sweep was planned; plan again")
    if digest_of_data(got) != m.data_digest:
        # The code is unchanged (checked above), so planning again cannot help a random factory.
        raise RuntimeError(f"{m.factory}: the factory returned other data for seed {m.factory_seed} and the same "
                           "kwargs and code than when the sweep was planned: it is not deterministic (seed every "
                           "random draw from its `seed` argument), or a data file it reads changed (then plan again)")
    if got["trained"] and m.params_file is None and data_digest(got["params"]) != m.params_digest:
        raise RuntimeError(f"{m.factory}: the factory's trained params changed since the sweep was planned; plan again")
    return got


def _build(target):
    import jax
    import jax.numpy as jnp

    from lambda_hat.science import TargetArrays
    from lambda_hat.science.models import jnp_dtype, model_key
    from lambda_hat.science.posterior import as_inputs, flat_model, make_full_loss
    from lambda_hat.science.train import train
    from lambda_hat.science.wstar import quality

    m = target.model
    got = _checked_output(m, target.dtype)
    if m.params_file is not None:  # a checkpoint trained elsewhere: w* is the file's
        got = {**got, "params": read_checkpoint(m.params_file, m), "trained": True}
    dtype = jnp_dtype(target.dtype)
    key = model_key(m)
    X, Y = as_inputs(got["X"], dtype), jnp.asarray(got["Y"], dtype)
    params = {k: jnp.asarray(v, dtype) for k, v in got["params"].items()}
    if got["trained"]:
        info = {"train_steps": 0, "final_train_loss": float("nan")}
    else:
        k_train = jax.random.split(jax.random.PRNGKey(target.seed), 3)[2]  # as the built-in kinds' training key
        params, info = train(k_train, params, X, Y, target.training, key, loss_name=m.loss)
        params = {k: v.astype(dtype) for k, v in params.items()}
    w, predict = flat_model(params, key)
    L0 = float(jax.jit(make_full_loss(predict, X, Y, loss_name=m.loss))(w))
    if got["trained"]:
        info["final_train_loss"] = L0
    metrics = {"L0": L0, "train_steps": int(info["train_steps"]), "final_train_loss": float(info["final_train_loss"]),
               "n_params": int(m.n_params), "n_data": int(target.data.n_data),
               "packages": third_party_versions(own_modules(got["module"], m.source_dir))}
    if got["X_test"] is not None:
        X_test, Y_test = as_inputs(got["X_test"], dtype), jnp.asarray(got["Y_test"], dtype)
        metrics["test_loss"] = float(jax.jit(make_full_loss(predict, X_test, Y_test, loss_name=m.loss))(w))
    metrics.update(quality(params, X, Y, key, loss_name=m.loss))
    return TargetArrays(params={k: np.asarray(v) for k, v in params.items()}, X=jax.tree.map(np.asarray, X),
                        Y=np.asarray(Y), metrics=metrics)
