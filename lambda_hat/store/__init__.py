"""The content-addressed store: `targets/<tgt_id>/`, `runs/<run_id>/`, `index.duckdb`.

This package is the one way into the store: code outside `lambda_hat/store/` imports from
here, never its modules (tests/test_layering.py holds it). `Store` (store.py) is the API every
command uses; `WorkerStore` (worker.py) the narrow handle a worker job gets. Importing this
package is cheap: it pulls in neither JAX nor DuckDB, nor pydantic until a name needs it.
"""

from lambda_hat.store.layout import ARRAYS_ZIP, MANIFEST, enclosing_store, resolve_store_root
from lambda_hat.store.snapshot import StoreSnapshot

__all__ = ["ARRAYS_ZIP", "HEARTBEAT_S", "MANIFEST", "WAIT_BOUND_ENV", "Manifest", "Store", "StoreSnapshot", "WorkerStore", "compile_guard",
           "enclosing_store", "resolve_store_root", "wait_bound_s"]

_LAZY = {
    "Store": "lambda_hat.store.store",
    "WorkerStore": "lambda_hat.store.worker",
    "compile_guard": "lambda_hat.store.worker",
    "Manifest": "lambda_hat.store.manifest",
    "HEARTBEAT_S": "lambda_hat.store.claims",
    "WAIT_BOUND_ENV": "lambda_hat.store.claims",
    "wait_bound_s": "lambda_hat.store.claims",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
