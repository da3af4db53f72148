#!/usr/bin/env bash
# Builds and runs scripts/bench/attn_prefill_bench.cu (prefill attention alone: the cuBLAS
# and mma.sync ceilings, then the FA2 kernel, the wgmma kernel as shipped (plain form, 1
# warpgroup per block), its pipelined form and its 2-warpgroup form and the dispatcher side
# by side; TFLOP/s and each output's relative L2 difference from the FA2 kernel's). Links
# the kvq_kernels library of $BUILD (built first if missing); the two other forms are
# compiled here from the same source under renamed entry points.
# Usage: bash scripts/bench/run_attn_bench.sh   (BUILD: CMake build folder, default
# build-gpu; log in $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT" "$BUILD/attn_bench"
LIB="$BUILD/kernels/libkvq_kernels.a"
if [ ! -f "$LIB" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    > /dev/null && cmake --build "$BUILD" --target kvq_kernels -j16 > /dev/null || exit 1
fi
F="-std=c++17 -O3 -I. --expt-relaxed-constexpr -lineinfo"
W="$BUILD/attn_bench"
for v in pipe:1:1 wg2:0:2; do
  name=${v%%:*}; rest=${v#*:}; pipe=${rest%%:*}; wg=${rest##*:}
  nvcc $F -gencode arch=compute_90a,code=sm_90a -DKVQ_SM90_PIPE=$pipe -DKVQ_SM90_WG=$wg \
    -Dattention_prefill_sm90=attention_prefill_sm90_$name -Dattention_prefill_sm90_usable=attention_prefill_sm90_usable_$name \
    -Xptxas -v -c kernels/attention_prefill_sm90.cu -o "$W/$name.o" > "$W/$name.log" 2>&1 || { cat "$W/$name.log"; exit 1; } &
done
nvcc $F -gencode arch=compute_90a,code=sm_90a -Xptxas -v -c kernels/attention_prefill_sm90.cu -o "$W/shipped.o" \
  > "$W/shipped.log" 2>&1
wait
grep -E "Compiling|registers|spill|C75" "$W/shipped.log" "$W/pipe.log" "$W/wg2.log" > "$OUT/attn_ptxas.txt"
nvcc $F -arch=sm_90 scripts/bench/attn_prefill_bench.cu "$W/pipe.o" "$W/wg2.o" "$LIB" -lcublas \
  -o "$W/attn_prefill_bench" || exit 1
"$W/attn_prefill_bench" 2>&1 | tee "$OUT/attn_bench.txt"
