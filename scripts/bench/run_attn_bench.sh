#!/usr/bin/env bash
# Builds and runs scripts/bench/attn_prefill_bench.cu (prefill attention alone: ceilings,
# then the shipped kernels/attention_prefill.cu against the FA2 candidate
# scripts/bench/attention_prefill_fa2.cu at two __launch_bounds__ choices and 8 warps; TFLOP/s and
# the candidate's relative L2 difference from the shipped kernel at full size).
# Usage: bash scripts/bench/run_attn_bench.sh   (build in $BUILD, default build-attn; log in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${BUILD:-build-attn}
ARCH=${ARCH:--arch=sm_90}
mkdir -p "$OUT" "$BUILD"
F="-std=c++20 -O3 $ARCH -I. --expt-relaxed-constexpr -lineinfo"
C=scripts/bench/attention_prefill_fa2.cu
pids=()
nvcc $F -c kernels/attention_prefill.cu -o "$BUILD/shipped.o" > "$BUILD/shipped.log" 2>&1 & pids+=($!)
nvcc $F -Dattention_prefill=attention_prefill_fa2_b3 -Xptxas -v -c $C -o "$BUILD/b3.o" > "$BUILD/b3.log" 2>&1 & pids+=($!)
nvcc $F -DKVQ_FA_MIN_BLOCKS_128=2 -DKVQ_FA_MIN_BLOCKS_64=3 -Dattention_prefill=attention_prefill_fa2_b2 \
  -Xptxas -v -c $C -o "$BUILD/b2.o" > "$BUILD/b2.log" 2>&1 & pids+=($!)
nvcc $F -DKVQ_FA_WARPS=8 -DKVQ_FA_MIN_BLOCKS_128=1 -DKVQ_FA_MIN_BLOCKS_64=2 -Dattention_prefill=attention_prefill_fa2_w8 \
  -Xptxas -v -c $C -o "$BUILD/w8.o" > "$BUILD/w8.log" 2>&1 & pids+=($!)
ok=1; for p in "${pids[@]}"; do wait "$p" || ok=0; done
cat "$BUILD"/b3.log "$BUILD"/b2.log "$BUILD"/w8.log | grep -E "registers|spill" > "$OUT/attn_ptxas.txt"
[ $ok = 1 ] || { cat "$BUILD"/*.log | grep -B2 -A6 error | head -60; exit 1; }
nvcc $F scripts/bench/attn_prefill_bench.cu "$BUILD"/shipped.o "$BUILD"/b3.o "$BUILD"/b2.o "$BUILD"/w8.o -lcublas \
  -o "$BUILD/attn_prefill_bench" || exit 1
"$BUILD/attn_prefill_bench" 2>&1 | tee "$OUT/attn_bench.txt"
