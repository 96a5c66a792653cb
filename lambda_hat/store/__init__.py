"""The content-addressed store: `targets/<tgt_id>/`, `runs/<run_id>/`, `index.duckdb`."""

from lambda_hat.store.layout import StoreLayout, resolve_store_root

__all__ = ["StoreLayout", "resolve_store_root"]


def snapshot(layout: StoreLayout, target_ids, run_ids):
    """Which of these IDs are complete in the store. The filesystem is the truth: an
    artifact counts once its directory holds a manifest, whatever the index says."""
    from lambda_hat.planner import StoreSnapshot

    return StoreSnapshot(
        target_ids=frozenset(t for t in target_ids if layout.has_target(t)),
        run_ids=frozenset(r for r in run_ids if layout.has_run(r)),
    )


__all__ += ["snapshot"]
