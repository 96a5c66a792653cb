"""The index holds exactly what the manifests and traces say (values go to DuckDB as text and
are cast there, so this is checked bit for bit), and writing it loads no pandas: pyarrow's
`pa.array` imports pandas on its first call, ~1 s of CPU in a driver that shares the cores
with its workers."""

from __future__ import annotations

import datetime
import math
import subprocess
import sys

import duckdb
import numpy as np

from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.store.artifacts import write_artifact
from lambda_hat.store.layout import StoreLayout
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict
from test_store import SWEEP, fake_manifest

# Awkward doubles: not exactly decimal, subnormal, huge, negative zero, many digits.
CREATED = "2026-11-26T09:42:11.123456+00:00"
AWKWARD = [0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0, 1 / 3, 2.0**-1074 * 3, 123456789.123456789]


def awkward_store(root):
    layout = StoreLayout(root)
    ex = expand(sweep_from_dict(SWEEP))
    rng = np.random.default_rng(7)
    traces = {}
    for t in ex.targets:
        write_artifact(layout.target_dir(t.target_id), {"X": np.arange(1.0, 3.0)}, fake_manifest("target", t.target_id, resolved_spec(t.spec)))
    for i, r in enumerate(ex.runs):
        llc = rng.normal(size=(2, 5)) * 10.0 ** rng.integers(-300, 300, size=(2, 5))
        llc[0, 1] = np.nan  # a non-finite draw is NULL
        diverging = rng.random((2, 5)) < 0.5
        traces[r.run_id] = (llc, diverging)
        m = fake_manifest("run", r.run_id, resolved_spec(r.spec), llc_mean=AWKWARD[i % len(AWKWARD)],
                          r_hat=AWKWARD[(i + 1) % len(AWKWARD)], draws=2**40 + i, converged=bool(i % 2))
        m = m.model_copy(update={"created_at": CREATED})
        write_artifact(layout.run_dir(r.run_id), {"traces/llc": llc, "traces/diverging": diverging}, m)
    return ex, traces


def test_index_rows_equal_manifests_bit_for_bit_and_load_no_pandas(tmp_path):
    root = tmp_path / "store"
    ex, traces = awkward_store(root)
    code = ("import sys; from lambda_hat.store.store import Store; Store(sys.argv[1]).rebuild_index(); "
            "print('pandas' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"

    con = duckdb.connect(str(Store(root).layout.index_path), read_only=True)
    for i, r in enumerate(ex.runs):
        row = con.execute("SELECT llc_mean, r_hat, draws, seed, target_id, created_at FROM runs WHERE run_id = ?",
                          [r.run_id]).fetchone()
        assert math.copysign(1, row[0]) == math.copysign(1, AWKWARD[i % len(AWKWARD)])
        assert row[0] == AWKWARD[i % len(AWKWARD)] and row[1] == AWKWARD[(i + 1) % len(AWKWARD)]
        assert row[2] == 2**40 + i and row[3] == r.spec.seed and row[4] == r.spec.target_id
        assert row[5] == datetime.datetime.fromisoformat(CREATED)
        rows = con.execute("SELECT chain, draw, llc, diverging FROM traces WHERE run_id = ? ORDER BY chain, draw",
                           [r.run_id]).fetchall()
        llc, diverging = traces[r.run_id]
        assert [(c, d) for c, d, _, _ in rows] == [(c, d) for c in range(2) for d in range(5)]
        for c, d, value, div in rows:
            expect = llc[c, d]
            assert (value is None) if not np.isfinite(expect) else (value == expect)
            assert div == bool(diverging[c, d])
    widths = con.execute("SELECT widths FROM targets").fetchall()
    assert widths and all(w[0] is None or all(isinstance(x, int) for x in w[0]) for w in widths)
