#!/usr/bin/env bash
# Everything the GPU proof runs on the device machine, in one call (device time is scarce).
# From the repository root, with .vllm-src/ carried (python -m tests.gpu.vllm_kernels fills it)
# and OUT set to a folder that comes back:  bash benchmarks/gpu/run_device.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
OUT=${OUT:-/tmp/kvguard-gpu}
mkdir -p "$OUT" "$TRITON_CACHE_DIR"
if [ -f .vllm-src/triton-cache.tgz ]; then tar xzf .vllm-src/triton-cache.tgz -C "$TRITON_CACHE_DIR"; fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  cat .vllm-src/VERSION
  nproc; uptime
} 2>&1 | tee "$OUT/env.txt"

# Correctness: scenarios, warm-up (one dummy run per capture size) before real calls, CUDA
# graph capture and replay.
python3 -m pytest tests/gpu -v -rfEsxX -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"

# Twice: the spread between two identical runs says how far the ratios can be trusted.
for run in 1 2; do
  PYTHONPATH=. python3 benchmarks/gpu/triton_guard_overhead.py --json "$OUT/bench-$run.json" 2>&1 |
    tee "$OUT/bench-$run.log"
done
# The guard's per-call cost on this machine's host CPU (no GPU work), measured interleaved.
PYTHONPATH=. python3 benchmarks/runtime_overhead.py 2>&1 | tee "$OUT/runtime-overhead.log"
PYTHONPATH=. python3 benchmarks/gpu/scenario_errors.py 2>&1 | tee "$OUT/scenario-errors.log"
tar czf "$OUT/triton-cache.tgz" -C "$TRITON_CACHE_DIR" .
