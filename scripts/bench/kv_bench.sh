#!/usr/bin/env bash
# On the GPU machine (device tool): build the packed-KV targets for sm_90, run the packed
# KV GPU tests ([kv]), then kvq-kvbench (decode attention over packed caches vs fp16).
# Usage: bash scripts/bench/kv_bench.sh [kvq-kvbench args]   (logs under $OUT)
# Without args the bench is the acceptance-4 table: contexts 4K..128K, batch 1 and 8, both
# head shapes, fp16 vs int4, int2, kivi:bits=4, kivi:bits=2, median of 10 timed runs.
# Decode kernel: KVQ_KV_DECODE=mma-stream|mma|mma3|mma-hoist|fast|fast-pf|general forces one
# (default: the staged tensor-core kernel, version 4, for uniform per-token int2/int4 at
# head_dim 128, else fast, else general; mma = the version-3 build).
# Env: KV_SKIP_TESTS=1 / KV_SKIP_BENCH=1 skip a step; KV_BENCH_TIMEOUT (s, default 300)
# or KV_DEADLINE (epoch seconds by which the bench must end);
# KV_BUILD_DIR (default build-kv; a warm machine keeps it between calls, so a second call
# rebuilds only what changed); KV_COMPARE_FOLD=1 runs the bench a second time with
# KVQ_KV_FOLD=0 (version 4 with the exact LOP3 + HFMA2 code conversion instead of the folded
# one, for uniform per-token codes; kvbench_nofold.json) and counts SASS per kernel build
# (sass_counts.txt) when cuobjdump is there.
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${KV_BUILD_DIR:-build-kv}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"; git rev-parse --short=12 HEAD | tee -a "$OUT/device.txt"
git status --short kernels lib/cuda tests/gpu tools/kvq-kvbench.cpp | tee -a "$OUT/device.txt"
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target kvq_test_gpu kvq-kvbench -j16 -- -k 0 > "$OUT/build.log" 2>&1 || {
  grep -E "error|FAILED" -A4 "$OUT/build.log" | head -60; }
echo "build: $(( $(date +%s) - t0 )) s"
[ -x "$BUILD/tests/kvq_test_gpu" ] || { echo "kvq_test_gpu did not build"; exit 1; }
if [ "${KV_SKIP_TESTS:-0}" != 1 ]; then
  timeout 200 "$BUILD/tests/kvq_test_gpu" "[kv]" --durations yes 2>&1 | tee "$OUT/kv_tests.log" | \
    grep -vE "^\s*$|^-+$|^\.\.\.|^=+$" | tail -60
  echo "tests: $(( $(date +%s) - t0 )) s"
fi
[ "${KV_SKIP_BENCH:-0}" = 1 ] && exit 0
bt=${KV_BENCH_TIMEOUT:-300}
if [ -n "${KV_DEADLINE:-}" ]; then bt=$(( KV_DEADLINE - $(date +%s) )); fi
echo "bench time limit: $bt s"
[ $# -eq 0 ] && set -- --reps 10 --kv int4 --kv int2 --kv kivi:bits=4 --kv kivi:bits=2
timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench.json" "$@" 2>&1 | tee "$OUT/kvbench.txt"
if [ "${KV_COMPARE_FOLD:-0}" = 1 ]; then
  echo "== KVQ_KV_FOLD=0 (unfolded code conversion) =="
  KVQ_KV_FOLD=0 timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench_nofold.json" "$@" 2>&1 |
    tee "$OUT/kvbench_nofold.txt"
  obj=$(find "$BUILD" -name 'kv_decode_stream.cu.o' | head -1)
  if command -v cuobjdump > /dev/null && [ -n "$obj" ]; then
    # Per stream_kernel build: instructions, LOP3, HFMA2, HMMA, SHF (whole kernel).
    cuobjdump -sass "$obj" | awk '/Function :/ { f = $3 } f ~ /stream_kernel/ && /\/\*[0-9a-f]+\*\// {
        n[f]++; if ($0 ~ /LOP3/) l[f]++; if ($0 ~ /HFMA2/) h[f]++; if ($0 ~ /HMMA/) m[f]++; if ($0 ~ /SHF/) s[f]++ }
      END { for (f in n) printf "%s total %d LOP3 %d HFMA2 %d HMMA %d SHF %d\n", f, n[f], l[f], h[f], m[f], s[f] }' |
      sort > "$OUT/sass_counts.txt"
    cuobjdump -sass "$obj" | gzip > "$OUT/stream_sass.txt.gz"
  fi
fi
echo "total: $(( $(date +%s) - t0 )) s"
