"""Compiling a program once when several processes want it at the same moment.

At the start of a sweep every worker asks for the same few programs (a sampler's start and
segment, the diagnostics) for targets of the same shapes. Each would compile its own copy: on
a laptop the copies compete for the same cores; on a cluster every node pays the full compile.
`compile(key, lower)` holds `guard(key)` around the compile: the worker (execute/apps.py) sets
`guard` to a lock in the store's compilation cache, so one process compiles and the others,
once it is done, load the program from JAX's persistent cache. Science does no I/O itself:
without a guard (tests, notebooks) it compiles as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, ContextManager

# key -> context manager held around one compile; None: no coordination.
guard: Callable[[str], ContextManager] | None = None


def program_key(*parts) -> str:
    """A short digest of what identifies a program (its cache key, JAX's version and backend)."""
    import jax

    text = repr((parts, jax.__version__, jax.default_backend()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compile(key_parts: tuple, lower: Callable):
    """`lower().compile()`, under `guard` when one is set."""
    held = guard(program_key(*key_parts)) if guard is not None else contextlib.nullcontext()
    with held:
        return lower().compile()
