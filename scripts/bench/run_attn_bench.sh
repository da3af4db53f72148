#!/usr/bin/env bash
# Builds and runs scripts/bench/attn_prefill_bench.cu (prefill attention alone: ceilings,
# then the wmma baseline scripts/bench/attention_prefill_wmma.cu against the shipped FA2
# kernel kernels/attention_prefill.cu and variants of it compiled from the same source with
# other -D choices; TFLOP/s and each one's relative L2 difference from the baseline at full
# size; then the projection GEMMs through cuBLAS).
# Usage: bash scripts/bench/run_attn_bench.sh   (build in $BUILD, default build-attn; log in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${BUILD:-build-attn}
ARCH=${ARCH:--arch=sm_90}
mkdir -p "$OUT" "$BUILD"
F="-std=c++20 -O3 $ARCH -I. --expt-relaxed-constexpr -lineinfo"
K=kernels/attention_prefill.cu
pids=()
nvcc $F -Dattention_prefill=attention_prefill_wmma -c scripts/bench/attention_prefill_wmma.cu -o "$BUILD/wmma.o" \
  > "$BUILD/wmma.log" 2>&1 & pids+=($!)
nvcc $F -Xptxas -v -c $K -o "$BUILD/shipped.o" > "$BUILD/shipped.log" 2>&1 & pids+=($!)
nvcc $F -DKVQ_FA_MIN_BLOCKS_128=3 -DKVQ_FA_MIN_BLOCKS_64=4 -Dattention_prefill=attention_prefill_fa2_b3 \
  -Xptxas -v -c $K -o "$BUILD/b3.o" > "$BUILD/b3.log" 2>&1 & pids+=($!)
nvcc $F -DKVQ_FA_WARPS=8 -DKVQ_FA_MIN_BLOCKS_128=1 -DKVQ_FA_MIN_BLOCKS_64=2 -Dattention_prefill=attention_prefill_fa2_w8 \
  -Xptxas -v -c $K -o "$BUILD/w8.o" > "$BUILD/w8.log" 2>&1 & pids+=($!)
nvcc $F -DKVQ_FA_BK=32 -DKVQ_FA_MIN_BLOCKS_128=3 -DKVQ_FA_MIN_BLOCKS_64=4 -Dattention_prefill=attention_prefill_fa2_bk32 \
  -Xptxas -v -c $K -o "$BUILD/bk32.o" > "$BUILD/bk32.log" 2>&1 & pids+=($!)
ok=1; for p in "${pids[@]}"; do wait "$p" || ok=0; done
for v in shipped b3 w8 bk32; do echo "== $v"; grep -E "registers|spill" "$BUILD/$v.log"; done > "$OUT/attn_ptxas.txt"
[ $ok = 1 ] || { cat "$BUILD"/*.log | grep -B2 -A6 error | head -60; exit 1; }
nvcc $F scripts/bench/attn_prefill_bench.cu "$BUILD"/wmma.o "$BUILD"/shipped.o "$BUILD"/b3.o "$BUILD"/w8.o \
  "$BUILD"/bk32.o -lcublas -o "$BUILD/attn_prefill_bench" || exit 1
"$BUILD/attn_prefill_bench" 2>&1 | tee "$OUT/attn_bench.txt"
