#!/usr/bin/env bash
# On the GPU machine (device tool), one call: where a batch-1 decode of version 4
# (kernels/kv_decode_stream.cu) spends its time, and the A/B of the cut prepared for it
# (h71, session 8; written when no device was lent, so never run yet).
#  1. builds kvq-kvbench and kvq_test_gpu (sm_90), runs the long-context parity case ("kv
#     packed: tensor-core decode over long contexts ...");
#  2. when KV_AB=NAME=v1,v2 is set, a one-process A/B of it, batch 1 32K / 64K / 128K both
#     shapes, and one batch-8 128K row per shape (session 8's KVQ_KV_PRE / KVQ_KV_LAST and
#     session 9's KVQ_KV_QF were timed this way on 2026-11-23 and deleted);
#  3. rebuilds kv_decode_stream.cu with `#define KVQ_KV_TRACE 1` (only that object and the link),
#     times the same decodes with the trace build (perturbation: traced vs plain "us" column)
#     and writes one kv_trace.bin per (shape, codec, context) (last 32 calls: 3 warm-ups + reps),
#     summarised by scripts/bench/kv_trace_summary.py;
#  4. tars the traces and logs into $OUT/h71.tgz (the device returns at most 8 files).
# Usage (repo root of a clean copy, e.g. git archive HEAD, carried): bash scripts/bench/kv_trace_run.sh
# Env: KV_BUILD_DIR (default build-h71-gpu), KV_REPS (default 20 for the A/B, 10 traced),
# KV_AB (NAME=v1,v2 for step 2), KV_SKIP_AB=1 / KV_SKIP_TESTS=1 skip steps 2 / the parity case.
# Budget (estimates, H100): configure + build ~100-150 s, parity ~20 s, A/B ~60 s, trace rebuild
# ~60-100 s (kv_decode_stream.cu alone: 1m44 of nvcc on one CPU core here), traced runs ~60 s.
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${KV_BUILD_DIR:-build-h71-gpu}
REPS=${KV_REPS:-20}
mkdir -p "$OUT/h71"
L="$OUT/h71"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$L/device.txt"
date -u | tee -a "$L/device.txt"
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90-real > "$L/configure.log" 2>&1 || { tail -30 "$L/configure.log"; exit 1; }
cmake --build "$BUILD" --target kvq_test_gpu kvq-kvbench -j16 > "$L/build.log" 2>&1 || {
  grep -E "error|FAILED" -A4 "$L/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
cp "$BUILD/tools/kvq-kvbench" /tmp/kvbench-plain
if [ "${KV_SKIP_TESTS:-0}" != 1 ]; then
  timeout 200 "$BUILD/tests/kvq_test_gpu" "kv packed: tensor-core decode over long contexts*" -s 2>&1 |
    grep -E "kv packed long|passed|failed|FAILED" | tee "$L/parity.log" | tail -25
fi
if [ "${KV_SKIP_AB:-0}" != 1 ] && [ -n "${KV_AB:-}" ]; then
  AB=$KV_AB
  echo "== A/B $AB =="
  timeout 240 /tmp/kvbench-plain --reps "$REPS" --batch 1 --contexts 32768,65536,131072 --kv int4 --kv int2 \
    --ab "$AB" --json "$L/ab_b1.json" 2>&1 | tee "$L/ab_b1.txt"
  timeout 120 /tmp/kvbench-plain --reps 10 --batch 8 --contexts 131072 --kv int4 --kv int2 \
    --ab "$AB" --json "$L/ab_b8.json" 2>&1 | tee "$L/ab_b8.txt"
fi
echo "== trace build =="
t1=$(date +%s)
cp kernels/kv_decode_stream.cu /tmp/kv_decode_stream.cu.orig
sed -i '1i #define KVQ_KV_TRACE 1' kernels/kv_decode_stream.cu
cmake --build "$BUILD" --target kvq-kvbench -j16 > "$L/build_trace.log" 2>&1 || {
  grep -E "error|FAILED" -A4 "$L/build_trace.log" | head -40; cp /tmp/kv_decode_stream.cu.orig kernels/kv_decode_stream.cu; exit 1; }
cp "$BUILD/tools/kvq-kvbench" /tmp/kvbench-trace
cp /tmp/kv_decode_stream.cu.orig kernels/kv_decode_stream.cu
echo "trace build: $(( $(date +%s) - t1 )) s"
for shape in llama2-7b llama3-8b; do
  for kv in int4 int2; do
    for ctx in 32768 131072; do
      f="$L/trace_${shape}_${kv}_${ctx}.bin"
      echo "== traced $shape $kv $ctx =="
      KVQ_KV_TRACE_OUT="$f" timeout 60 /tmp/kvbench-trace --reps 10 --batch 1 --shapes "$shape" \
        --contexts "$ctx" --kv "$kv" 2>&1 | grep -vE "^\s*$" | tail -3
      python3 scripts/bench/kv_trace_summary.py "$f" --skip 3 2>&1 | tee "${f%.bin}.txt"
    done
  done
done
tar czf "$OUT/h71.tgz" -C "$OUT" h71 && rm -rf "$L"
echo "total: $(( $(date +%s) - t0 )) s"
