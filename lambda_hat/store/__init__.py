"""The content-addressed store: `targets/<tgt_id>/`, `runs/<run_id>/`, `index.duckdb`.

`Store` (store.py) is the one API every command uses. Importing this package is cheap: it
pulls in neither JAX nor DuckDB (they load when a method needs them).
"""

from lambda_hat.store.layout import StoreLayout, resolve_store_root
from lambda_hat.store.snapshot import StoreSnapshot

__all__ = ["Store", "StoreLayout", "StoreSnapshot", "resolve_store_root"]


def __getattr__(name):
    if name == "Store":
        from lambda_hat.store.store import Store

        return Store
    raise AttributeError(name)
