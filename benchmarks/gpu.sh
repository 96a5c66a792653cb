#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (docs/performance.md, "On a GPU"):
#   1. a smoke run of every sampler in float32 on the GPU;
#   2. lambda-hat's SGLD against a PyTorch per-step loop, on the GPU and on the host's CPU;
#   3. SGLD on deep linear networks of 1.06e7 and 1.11e6 parameters at n = 1e5, float32 (benchmarks/large_dln.py);
#   4. float32 accuracy against exact λ on the GPU (benchmarks/accuracy.py --quick, DLN section),
#      with JAX's default float32 matmul precision and with "highest".
# Usage: OUT=/some/dir bash benchmarks/gpu.sh   (needs jax with CUDA, blackjax, pydantic, rfc8785,
# pyyaml, optax, scipy and, for step 2, torch; with a .whl/ folder of wheels it installs those first).
set -u
OUT=${OUT:-/tmp/lh-gpu-out}
W=/tmp/lh-gpu  # everything is written here, then packed into $OUT/gpu-results.tgz (one file comes back)
mkdir -p "$OUT" "$W"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 JAX_PLATFORMS=${LH_GPU_PLATFORM:-cuda}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, go on whatever happens
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  echo "=== $name: exit $? after $((SECONDS - t0)) s"; tail -n 14 "$W/$name.log"
}
nvidia-smi -L
python3 -c "import jax, blackjax, sys; print(sys.version.split()[0], 'jax', jax.__version__, 'blackjax', blackjax.__version__, jax.devices())"
step smoke 45 python3 - <<'EOF'
import time
from lambda_hat.science.pipeline import build_target, sample_run
from lambda_hat.specs import RunSpec, TargetSpec
t = TargetSpec(model={"kind": "dln", "widths": [5, 3, 5]}, teacher={"rank": 1}, data={"n_data": 1000}, dtype="float32")
a = build_target(t)
for s in ({"name": "sgld", "steps": 2000, "warmup": 500}, {"name": "hmc", "draws": 100, "warmup": 100},
          {"name": "nuts", "draws": 100, "warmup": 100}, {"name": "mclmc", "draws": 200}):
    t0 = time.perf_counter()
    m = sample_run(RunSpec(target_id="tgt_x", sampler={**s, "dtype": "float32"}), t, a).metrics
    print(s["name"], f"llc {m['llc_mean']:.3f} (exact {a.metrics['llc_true']}) {m['status']} "
          f"compile {m['compile_sec']:.1f}s sample {m['sample_sec']:.2f}s wall {time.perf_counter() - t0:.1f}s", flush=True)
EOF
step torch_cuda 60 python3 benchmarks/torch_sgld.py --device cuda --dtype float32 --steps 3000 --out "$W/torch_sgld-cuda.json"
step torch_cpu 60 python3 benchmarks/torch_sgld.py --device cpu --steps 3000 --out "$W/torch_sgld-cpu.json"
step large_dln_1e7 150 python3 benchmarks/large_dln.py --widths 100,3200,3200,10 --ns 100000 --steps 10000 --warmup 2000 \
  --out "$W/large_dln-cuda-1e7.json"
step large_dln_1e6 50 python3 benchmarks/large_dln.py --ns 100000 --out "$W/large_dln-cuda-1e6.json"
step accuracy_f32 120 python3 benchmarks/accuracy.py --quick --sections dln --dtypes float32 \
  --out "$W/accuracy-cuda-f32.json" --doc "$W/accuracy-cuda-f32.md"
step accuracy_f32_highest 60 env JAX_DEFAULT_MATMUL_PRECISION=highest python3 benchmarks/accuracy.py --quick \
  --sections dln --dtypes float32 --out "$W/accuracy-cuda-f32-highest.json" --doc "$W/accuracy-cuda-f32-highest.md"
tar czf "$OUT/gpu-results.tgz" -C "$W" . && ls -la "$W"
