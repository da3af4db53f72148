#!/usr/bin/env bash
# On the GPU machine (device tool): build kvq with CUDA for sm_90, produce the transformers
# references, run tests/gpu, and WikiText-2 PPL through kvq-eval --backend cuda.
# Data travel in .carry/shared (a copy of ../shared's models and WikiText-2).
# Usage: bash scripts/gpu/run_tests.sh   (writes logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"; git rev-parse --short=12 HEAD | tee -a "$OUT/device.txt"
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
targets="kvq_test_gpu kvq-gpubench"
[ -f tools/kvq-eval.cpp ] && targets="$targets kvq-eval"
cmake --build build-gpu --target $targets -j16 -- -k 0 > "$OUT/build.log" 2>&1 || {
  grep -E "error|FAILED" -A4 "$OUT/build.log" | head -80; }
echo "build: $(( $(date +%s) - t0 )) s"
[ -x build-gpu/tests/kvq_test_gpu ] || { echo "kvq_test_gpu did not build"; exit 1; }
python3 scripts/gpu/hf_reference.py "$KVQ_SHARED/models/kvq-testbed-llama2-23m" "$OUT/hf_ref.json" 2>&1 | grep -v Warning | tail -3
KVQ_HF_REF="$OUT/hf_ref.json" timeout 300 build-gpu/tests/kvq_test_gpu --durations yes 2>&1 | tee "$OUT/gpu_tests.log" | \
  grep -vE "^\s*$|^-+$|^\.\.\.|^=+$" | tail -120
if [ -x build-gpu/tools/kvq-eval ]; then
  timeout 120 build-gpu/tools/kvq-eval --model "$KVQ_SHARED/models/kvq-testbed-llama2-23m" \
    --dataset "$KVQ_SHARED/datasets/wikitext-2-raw/wiki.test.raw" --seqlen 1024 --backend cuda 2>&1 | tee "$OUT/eval.log" | tail -15
fi
echo "total: $(( $(date +%s) - t0 )) s"
