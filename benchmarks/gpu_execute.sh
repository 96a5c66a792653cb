#!/usr/bin/env bash
# lambda-hat's real CLI end to end on a lent CUDA machine, float32 (docs/performance.md, "On a GPU"):
#   1. `lh execute` of a small float32 sweep (a dln target and the `small` mlp, samplers sgld, hmc,
#      nuts and mclmc: 8 runs) through local Parsl workers with JAX_PLATFORMS=cuda;
#   2. `lh status`, `lh verify`, `lh query` (λ̂, status, compile and sample seconds per run);
#   3. the same execute again, which must be a no-op (its wall time is printed);
#   4. pytest tests/test_dtypes.py tests/test_samplers.py on the GPU (tests/conftest.py only
#      defaults JAX_PLATFORMS to cpu, so the cuda set here holds).
# Usage: OUT=/some/dir bash benchmarks/gpu_execute.sh   (a .whl/ folder of cp312 wheels, if present,
# is installed first with pip --target, as benchmarks/gpu.sh does). LH_GPU_PLATFORM=cpu runs it on the CPU.
# Everything is written to $W, then packed into $OUT/gpu-execute.tgz (one file comes back).
set -u
OUT=${OUT:-/tmp/lh-gpu-out}
W=${LH_GPU_WORK:-/tmp/lh-gpu-exec}
SITE=${LH_GPU_SITE:-/tmp/site}
S=${LH_GPU_STORE:-/tmp/s}
WORKERS=${LH_GPU_WORKERS:-8}
rm -rf "$W" "$S"
mkdir -p "$OUT" "$W"
exec > >(tee "$OUT/gpu-execute.out") 2>&1  # all that is printed also comes back as a file
T0=$SECONDS
if [ -d .whl ]; then
  timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=$SITE
fi
# No XLA_PYTHON_CLIENT_* here: the workers (separate processes on one GPU) must turn JAX's
# 75 % preallocation off themselves (apps._share_the_gpu); step prealloc shows why.
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 JAX_PLATFORMS=${LH_GPU_PLATFORM:-cuda} COLUMNS=200
BUDGET=${LH_GPU_BUDGET:-400}  # seconds for the whole script: each step's limit is cut to what is left
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $W/NAME.log, go on whatever happens
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - (SECONDS - T0)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "=== $name: skipped, ${left}s of the budget left"; return 124; fi
  echo "=== $name ($(date +%T), limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"; tail -n "${TAIL:-14}" "$W/$name.log"
  return $rc
}
LH="env -C $W python3 -m lambda_hat.cli"  # run from $W: Parsl writes parsl_runinfo/ in the working directory
(command -v nvidia-smi >/dev/null && nvidia-smi -L) 2>&1 | tee "$W/nvidia-smi.log"
step env 60 python3 -c "
import sys, jax, blackjax, parsl, duckdb, zarr, numcodecs, pydantic, typing_extensions, importlib.metadata as md
print(sys.version.split()[0], 'jax', jax.__version__, 'blackjax', blackjax.__version__, 'parsl', parsl.__version__,
      'duckdb', duckdb.__version__, 'zarr', zarr.__version__, 'numcodecs', numcodecs.__version__,
      'pydantic', pydantic.__version__, 'typing_extensions', md.version('typing_extensions'))
print(jax.devices())"

cat > "$W/sweep_f32.yaml" <<'EOF'
# 2 float32 targets x 4 samplers = 8 runs, short settings (a smoke test of the whole path, not of accuracy).
jax_enable_x64: false
targets:
  - {model: {kind: dln, widths: [5, 3, 5]}, teacher: {rank: 1}, data: {n_data: 1000}, dtype: float32}
  - {model: small, data: small, teacher: _null, overrides: {training: {steps: 500, learning_rate: 0.01}}, dtype: float32}
samplers:
  - {name: sgld, seed: 1, chains: 4, overrides: {steps: 4000, warmup: 1000, eval_every: 10, batch_size: 64, dtype: float32}}
  - {name: hmc, seed: 1, chains: 4, overrides: {draws: 300, warmup: 200, num_integration_steps: 8, dtype: float32}}
  - {name: nuts, seed: 1, chains: 4, overrides: {draws: 300, warmup: 200, dtype: float32}}
  - {name: mclmc, seed: 1, chains: 4, overrides: {draws: 300, num_steps: 600, dtype: float32}}
EOF
EXEC=(execute "$W/sweep_f32.yaml" --store "$S" --workers "$WORKERS" --logs "$W/logs" --results "$W/llc_runs.parquet")
TAIL=40 step execute 200 $LH "${EXEC[@]}"
step status 30 $LH status --store "$S" --logs "$W/logs"
step verify 30 $LH verify --store "$S"
TAIL=20 step query 30 $LH query --store "$S" --limit 0 \
  "select sampler, target_model as model, dtype, status, round(llc_mean, 3) as llc, round(llc_sem, 3) as sem,
          llc_true, round(r_hat, 3) as r_hat, round(compile_sec, 2) as compile_s, round(sample_sec, 3) as sample_s,
          round(walltime_sec, 2) as wall_s from runs order by model, sampler"
TAIL=0 step query_csv 30 $LH query --store "$S" --format csv "select * from runs order by target_model, sampler"
t1=$EPOCHREALTIME
step execute_again 60 $LH "${EXEC[@]}"
rc=$?
echo "execute again: exit $rc, wall $(awk "BEGIN {printf \"%.2f\", $EPOCHREALTIME - $t1}") s"
grep -q "nothing to do" "$W/execute_again.log" && echo "execute again: no-op OK" || echo "execute again: NOT a no-op"
# Two processes using the GPU at once with JAX's default preallocation (what several workers did
# before apps._share_the_gpu): does the second start?
step prealloc 60 python3 -c "
import subprocess, sys
code = 'import jax, jax.numpy as jnp, time; x = jnp.ones(10).block_until_ready(); print(\"up\", flush=True); time.sleep(8)'
procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
for i, p in enumerate(procs):
    out, err = p.communicate(timeout=50)
    print(f'process {i}: exit {p.returncode}, {out.strip()!r}', (err.strip().splitlines() or [''])[-1][:300])
"
TAIL=8 step torch_cuda 100 python3 benchmarks/torch_sgld.py --device cuda --dtype float32 --steps 2000 --warmup 500 \
  --out "$W/torch_sgld-cuda.json"
TAIL=25 step pytest 240 python3 -m pytest -q tests/test_dtypes.py tests/test_samplers.py -p no:cacheprovider
echo "total $((SECONDS - T0)) s"
tar czf "$OUT/gpu-execute.tgz" -C "$W" . && ls -la "$W" "$OUT"
