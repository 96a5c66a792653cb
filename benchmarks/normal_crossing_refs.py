"""The exact finite-n reference `llc_ref` of normal-crossing targets against their asymptotic λ
(docs/accuracy.md's table): β = 1/log n, γ = 1, σ = 0.25, data seed 0, n = 1,000 and 10,000.

    uv run python benchmarks/normal_crossing_refs.py
"""

import math
import time

from lambda_hat.science import build_target
from lambda_hat.science.polynomial import finite_n_reference
from lambda_hat.science.theory import normal_crossing_lambda
from lambda_hat.specs import TargetSpec

CASES = ([0, 1], [0, 3], [1, 2], [1, 2, 3], [1, 1], [2, 2], [3, 3], [2, 3, 3])

if __name__ == "__main__":
    for n in (1000, 10000):
        for powers in CASES:
            spec = TargetSpec(model={"kind": "polynomial", "powers": powers}, data={"n_data": n, "noise_scale": 0.25})
            arrays = build_target(spec)
            t0 = time.perf_counter()
            ref = finite_n_reference(spec, arrays, n / math.log(n), 1.0)
            ms = 1e3 * (time.perf_counter() - t0)
            lam, m = normal_crossing_lambda(powers)
            print(f"n={n} powers={powers} m={m} λ={lam:.4f} llc_ref={ref['llc_ref']:.4f} ± {ref['llc_ref_se']:.1e} "
                  f"({(lam - ref['llc_ref']) / lam:.1%} below λ) {ms:.1f} ms", flush=True)
