#!/usr/bin/env bash
# On the GPU machine (device tool): build the packed-KV targets for sm_90, run the packed
# KV GPU tests ([kv]), then kvq-kvbench (decode attention over packed caches vs fp16).
# Usage: bash scripts/bench/kv_bench.sh [kvq-kvbench args]   (logs under $OUT)
# Without args the bench is the acceptance-4 table: contexts 32K, 64K, 128K (the goals are
# judged from 32K up; KV_CONTEXTS overrides, e.g. 4096,8192,16384,32768,65536,131072), batch
# 1 and 8, both head shapes, fp16 vs int4, int2, kivi:bits=4, kivi:bits=2, kvquant:bits=4,
# kvquant:bits=2, median of 10 timed runs.
# Decode kernel: KVQ_KV_DECODE=mma-stream|fast|fast-pf|general|kvq-fold2|kvq-foldm
# forces one (default: the staged tensor-core kernel, version 4, for uniform per-token int2/int4
# and KIVI at head_dim 128; KVQuant's folded tensor-core kernel for KVQuant, kvq-fold2 at G = 1 and
# kvq-foldm otherwise; else fast, else general; the retired mma, mma3, mma-hoist, kvq-fast,
# kvq-fold2k, kvq-fold, kvq-mma and kvq-stream are errors: notes/kv-cuda-perf.md). KVQ_ATTN_DECODE=old|new|new-w4s2..new-w8s3 picks
# the fp16 baseline's kernel (kvq-kvbench --base-ab KVQ_ATTN_DECODE=old,new re-times it per value). KVQ_KV_STAGE=256|384|512:
# tokens per stage of version 4's 2-bit per-token builds (kernels/kv_decode_stream.cu);
# KVQ_KV_COMBINE=1 its split-K combine launched the ordinary way instead of with programmatic stream
# serialization (PDL, the default since h46), =0 replaced by the shared one; KVQ_KV_OPT=0|1|2|3 the A/B
# builds of its 4-bit G <= 4 kernel; KVQ_KV_ILP=0|2|3 its per-token G = 1 / G <= 4 key pass (default
# 3: two mma chains per key tile and two tiles per iteration; 0 the builds before, h52 session 6).
# KVQ_KV_WSM=0: the G <= 4 per-token builds with the block-wide softmax instead of the per-warp one
# (the default since h55, session 6).
# These are read per decode call, so KV_AB can compare them in one process (e.g.
# KV_AB=KVQ_KV_COMBINE=1,pdl or KV_AB=KVQ_KV_ILP=0,3).
# Env: KV_SKIP_TESTS=1 / KV_SKIP_BENCH=1 skip a step; KV_BENCH_TIMEOUT (s, default 300)
# or KV_DEADLINE (epoch seconds by which the bench must end);
# KV_BUILD_DIR (default build-kv; a warm machine keeps it between calls, so a second call
# rebuilds only what changed); KV_AB=NAME=v1,v2,... runs a second bench (int4, int2 only) that
# times each cache once per value of NAME in one process (kvq-kvbench --ab; kvbench_ab.json;
# KV_AB_ARGS adds kvq-kvbench options to that bench, e.g. "--shapes llama3-8b");
# KV_BASE_STREAM=FILE runs the int4 / int2 bench again with FILE as kernels/kv_decode_stream.cu
# (kvbench_base.json; a same-call baseline of the version-4 kernels, e.g. 558c918's);
# KV_COMPARE_FOLD=1 runs the bench a second time with KVQ_KV_FOLD=0 (version 4 with the exact
# LOP3 + HFMA2 code conversion instead of the folded one, for uniform per-token codes;
# kvbench_nofold.json). SASS counts per stream_kernel build go to sass_counts.txt when
# cuobjdump is there.
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${KV_BUILD_DIR:-build-kv}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"; git rev-parse --short=12 HEAD 2>&1 | tee -a "$OUT/device.txt"
git status --short kernels lib/cuda tests/gpu tools/kvq-kvbench.cpp 2>&1 | tee -a "$OUT/device.txt"
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target kvq_test_gpu kvq-kvbench -j16 -- -k 0 > "$OUT/build.log" 2>&1 || {
  grep -E "error|FAILED" -A4 "$OUT/build.log" | head -60; }
echo "build: $(( $(date +%s) - t0 )) s"
[ -x "$BUILD/tests/kvq_test_gpu" ] || { echo "kvq_test_gpu did not build"; exit 1; }
if [ "${KV_SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 "$BUILD/tests/kvq_test_gpu" "[kv]" --durations yes 2>&1 | tee "$OUT/kv_tests.log" | \
    grep -vE "^\s*$|^-+$|^\.\.\.|^=+$" | tail -60
  echo "tests: $(( $(date +%s) - t0 )) s"
fi
obj=$(find "$BUILD" -name 'kv_decode_stream.cu.o' | head -1)
if command -v cuobjdump > /dev/null && [ -n "$obj" ]; then
  # Per stream_kernel build: instructions, LOP3, HFMA2, HMMA, SHF, SHFL, LDGSTS (whole kernel).
  cuobjdump -sass "$obj" | awk '/Function :/ { f = $3 } f ~ /stream_kernel/ && /\/\*[0-9a-f]+\*\// {
      n[f]++; if ($0 ~ /LOP3/) l[f]++; if ($0 ~ /HFMA2/) h[f]++; if ($0 ~ /HMMA/) m[f]++; if ($0 ~ /SHF\./) s[f]++;
      if ($0 ~ /SHFL/) x[f]++; if ($0 ~ /LDGSTS/) g[f]++ }
    END { for (f in n) printf "%s total %d LOP3 %d HFMA2 %d HMMA %d SHF %d SHFL %d LDGSTS %d\n", f, n[f], l[f], h[f], m[f], s[f], x[f], g[f] }' |
    sort > "$OUT/sass_counts.txt"
  cuobjdump -sass "$obj" | gzip > "$OUT/stream_sass.txt.gz"
fi
[ "${KV_SKIP_BENCH:-0}" = 1 ] && exit 0
bt=${KV_BENCH_TIMEOUT:-300}
if [ -n "${KV_DEADLINE:-}" ]; then bt=$(( KV_DEADLINE - $(date +%s) )); fi
echo "bench time limit: $bt s"
ctx=${KV_CONTEXTS:-32768,65536,131072}
[ $# -eq 0 ] && set -- --reps 10 --contexts "$ctx" --kv int4 --kv int2 --kv kivi:bits=4 --kv kivi:bits=2 \
  --kv kvquant:bits=4 --kv kvquant:bits=2
timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench.json" "$@" 2>&1 | tee "$OUT/kvbench.txt"
if [ -n "${KV_AB:-}" ]; then
  echo "== A/B: $KV_AB (int4, int2) =="
  timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench_ab.json" --reps 10 --contexts "$ctx" \
    --kv int4 --kv int2 --ab "$KV_AB" ${KV_AB_ARGS:-} 2>&1 | tee "$OUT/kvbench_ab.txt"
fi
if [ "${KV_COMPARE_FOLD:-0}" = 1 ]; then
  echo "== KVQ_KV_FOLD=0 (unfolded code conversion) =="
  KVQ_KV_FOLD=0 timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench_nofold.json" "$@" 2>&1 |
    tee "$OUT/kvbench_nofold.txt"
fi
if [ -n "${KV_BASE_STREAM:-}" ]; then
  # Same-call baseline of the version-4 kernels: another kernels/kv_decode_stream.cu (a file,
  # e.g. `git show 558c918:kernels/kv_decode_stream.cu > .carry/x/base_stream.cu` beforehand:
  # a git archive on the device has no history) swapped in, kvq-kvbench rebuilt and the int4 /
  # int2 bench run again on fresh caches; the file is put back (and rebuilt) afterwards.
  echo "== baseline kv_decode_stream.cu: $KV_BASE_STREAM (int4, int2) =="
  cp kernels/kv_decode_stream.cu /tmp/kv_decode_stream.cu.mine
  cp "$KV_BASE_STREAM" kernels/kv_decode_stream.cu
  if cmake --build "$BUILD" --target kvq-kvbench -j16 > "$OUT/build_base.log" 2>&1; then
    timeout "$bt" "$BUILD/tools/kvq-kvbench" --json "$OUT/kvbench_base.json" --reps 10 --contexts "$ctx" \
      --kv int4 --kv int2 ${KV_AB_ARGS:-} 2>&1 | tee "$OUT/kvbench_base.txt"
  else
    grep -E "error|FAILED" -A4 "$OUT/build_base.log" | head -30
  fi
  cp /tmp/kv_decode_stream.cu.mine kernels/kv_decode_stream.cu && rm -f /tmp/kv_decode_stream.cu.mine
  touch kernels/kv_decode_stream.cu
  cmake --build "$BUILD" --target kvq-kvbench -j16 > /dev/null 2>&1
fi
echo "total: $(( $(date +%s) - t0 )) s"
