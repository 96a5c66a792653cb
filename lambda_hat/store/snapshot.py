"""What the store holds, as the planner sees it. Lives in the store package so that the
planner imports it from here and the store never imports the planner."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoreSnapshot:
    """IDs of complete artifacts in the store (those that check out), and a digest of their
    identity (ID, manifest size, files stamp): equal states, same artifacts."""

    target_ids: frozenset[str] = frozenset()
    run_ids: frozenset[str] = frozenset()
    state: str = field(default="", compare=False)
