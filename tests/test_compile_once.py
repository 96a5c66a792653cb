"""Workers that want the same program at the same moment compile it once (execute/apps.py
`CompileOnce`, science/compiling.py): the others wait, then load it from the store's persistent
compilation cache. Two real processes, started together on an empty cache."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

WORKER = textwrap.dedent(
    """
    import contextlib, json, sys, time
    from pathlib import Path
    import numpy as np
    import jax
    from jax import monitoring
    from lambda_hat.execute.apps import _setup_jax
    from lambda_hat.science import compiling, llc

    cache, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    _setup_jax(str(cache))
    # Only the compiles made under the guard count: summarize also runs small unguarded programs
    # (JAX's own), which both workers may compile or load in any order.
    inside, hits, misses = [], [], []
    lock = compiling.guard

    @contextlib.contextmanager
    def counted(key):
        with lock(key):
            inside.append(key)
            try:
                yield
            finally:
                inside.pop()

    compiling.guard = counted
    def listen(event, **kw):
        if inside and event.endswith("cache_hits"):
            hits.append(event)
        elif inside and event.endswith("cache_misses"):
            misses.append(event)
    monitoring.register_event_listener(listen)
    x = np.random.default_rng(0).normal(size=(4, 333))
    (cache.parent / me).touch()
    while not (cache.parent / other).exists():  # start together
        time.sleep(0.005)
    t0 = time.perf_counter()
    out = llc.summarize(x)
    print(json.dumps({"hits": len(hits), "misses": len(misses), "sec": time.perf_counter() - t0, "ess": out["ess_bulk"]}))
    """
)


def test_two_workers_compile_a_program_once(tmp_path):
    cache = tmp_path / ".jax_cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), me, other], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    # The diagnostics program was compiled by one worker (no persistent-cache hit) while the other
    # waited for it and loaded it. Without the lock both compile at once and neither hits.
    assert [o["hits"] + o["misses"] for o in outs] == [1, 1], outs
    assert sorted(o["hits"] for o in outs) == [0, 1], outs
    assert outs[0]["ess"] == outs[1]["ess"]  # the same program
    assert list((cache / "lh-compile-locks").glob("*.done")), list(cache.rglob("*"))
