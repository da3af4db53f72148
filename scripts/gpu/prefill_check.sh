#!/usr/bin/env bash
# One device call for the prefill-attention work (notes/cuda-perf.md), most important first:
#  1. build kvq_kernels (the *_sm90*.cu kernels compile for sm_90a only), then the attention
#     microbenchmark (scripts/bench/attn_prefill_bench.cu linked against that library alone:
#     the kernels named in KERNELS side by side at 4K/16K/32K, Llama-2-7B and Llama-3-8B head
#     shapes, median of 7, exact causal FLOPs) while the test binary and tools build;
#     FA3_SWEEP=1 adds the FA3-style kernel under each KVQ_FA3_ORDER x KVQ_FA3_STAGES choice;
#  2. tests/gpu: the prefill parity cases (TESTS, a Catch2 filter) through every path (FA2,
#     plain wgmma, FA3-style), with PARITY_ENV (e.g. "KVQ_FA3_STAGES=3") in the environment;
#     PARITY_ONLY=1 stops here (BENCH_ONLY=1 already after step 1);
#  3. kvq-gpubench prefill of the synthetic Llama-2-7B (and Llama-3-8B with BOTH=1) at CTX,
#     one run per entry of GB_RUNS ("label:VAR=x,VAR=y ..."), only when the parity cases passed;
#  4. MODEL=1: the whole-model GPU tests (testbed, needs .carry/shared) under each path.
# PARITY=0 skips step 2 (for changes outside the kernels, e.g. KVQ_MAX_STEP_TOKENS sweeps);
# SMI=1 samples SM clock, power and temperature every 100 ms during step 3 (smi_LABEL.csv), to
# tell throttling from kernel effects; GB_REPS = kvq-gpubench --reps (default 3); GEMM_BENCH=1
# runs scripts/bench/gemm_algo_bench.cu (cuBLAS's default vs timed cuBLASLt candidates) after step 1;
# EXP_AB=1 repeats the microbenchmark with KVQ_FA3_EXP=exact; SASS=1 counts the FA3-style
# kernels' SASS instructions (all, MUFU.EX2, FSETP, FMUL) with cuobjdump.
# Usage: bash scripts/gpu/prefill_check.sh [SRC]   (SRC: source tree, default .; logs under
# $OUT; BUILD = build folder; a clean source copy avoids other engineers' work in progress:
# `git archive HEAD | tar -x -C .carry/NAME-src`, then pass .carry/NAME-src).
set -uo pipefail
SRC=${1:-.}
OUT=${OUT:-/tmp/kvq-out}
BUILD=${BUILD:-build-gpu}
CTX=${CTX:-16384,32768}
KERNELS=${KERNELS:-sm90 fa3}
PATHS=${PATHS:-sm90 fa3}
TESTS=${TESTS:-gpu kernels: prefill*}
PARITY_ENV=${PARITY_ENV:-}
GB_RUNS=${GB_RUNS:-sm90:KVQ_PREFILL=sm90 fa3:KVQ_PREFILL=fa3}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"
t0=$(date +%s)
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
  > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target kvq_kernels -j16 > "$OUT/build_kernels.log" 2>&1 ||
  { grep -E "error" -A4 "$OUT/build_kernels.log" | head -40; exit 1; }
echo "kernels built: $(( $(date +%s) - t0 )) s"
bpid=
if [ "${BENCH_ONLY:-0}" != 1 ]; then
  targets="kvq_test_gpu kvq-gpubench"
  [ "${PARITY:-1}" = 0 ] && targets=kvq-gpubench
  # shellcheck disable=SC2086
  ( cmake --build "$BUILD" --target $targets -j12 -- -k 0 > "$OUT/build.log" 2>&1 ) &
  bpid=$!
fi
nvcc -std=c++17 -O3 -I"$SRC" -arch=sm_90 "$SRC/scripts/bench/attn_prefill_bench.cu" "$BUILD/kernels/libkvq_kernels.a" \
  -lcublas -o "$BUILD/attn_prefill_bench" > "$OUT/bench_build.log" 2>&1 || cat "$OUT/bench_build.log"
if [ -x "$BUILD/attn_prefill_bench" ]; then
  # shellcheck disable=SC2086
  timeout 300 "$BUILD/attn_prefill_bench" $KERNELS > "$OUT/attn_bench.txt" 2>&1
  echo "attn bench exit $? after $(( $(date +%s) - t0 )) s"
  grep -E "^ceiling|^device|T=|chunk" "$OUT/attn_bench.txt"
  if [ "${EXP_AB:-0}" = 1 ]; then
    # The same kernels with exp2f in the FA3-style softmax instead of ex2.approx.ftz.
    echo "== KVQ_FA3_EXP=exact" | tee "$OUT/attn_bench_exact.txt"
    # shellcheck disable=SC2086
    KVQ_FA3_EXP=exact timeout 120 "$BUILD/attn_prefill_bench" $KERNELS 2>&1 | tee -a "$OUT/attn_bench_exact.txt" |
      grep -E "T=|chunk"
  fi
  if [ "${SASS:-0}" = 1 ]; then
    # Per FA3-style kernel: all SASS instructions, MUFU.EX2, FSETP, FMUL (the subnormal guard
    # of the non-ftz exp2 is FSETP + 2 FMUL per MUFU.EX2).
    obj=$(find "$BUILD" -name 'attention_prefill_sm90_fa3.cu.o' | head -1)
    cuobjdump -sass "$obj" 2>/dev/null | awk '
      /Function :/ {name=$3}
      /^ +\/\*[0-9a-f]+\*\// {n[name]++; if ($0 ~ /MUFU\.EX2/) e[name]++; if ($0 ~ /FSETP/) f[name]++;
                                if ($0 ~ / FMUL /) m[name]++}
      END {for (k in n) printf "sass %-120s all %6d ex2 %5d fsetp %5d fmul %5d\n", k, n[k], e[k], f[k], m[k]}' |
      sort | tee "$OUT/sass_counts.txt"
  fi
  if [ "${FA3_SWEEP:-0}" = 1 ]; then
    for order in head qtile; do
      for stages in 2 3; do
        echo "== KVQ_FA3_ORDER=$order KVQ_FA3_STAGES=$stages" | tee -a "$OUT/attn_sweep.txt"
        KVQ_FA3_ORDER=$order KVQ_FA3_STAGES=$stages timeout 120 "$BUILD/attn_prefill_bench" fa3 2>&1 |
          grep -E "T=|chunk" | tee -a "$OUT/attn_sweep.txt"
      done
    done
    echo "sweep done: $(( $(date +%s) - t0 )) s"
  fi
fi
if [ "${GEMM_BENCH:-0}" = 1 ]; then
  # cublasGemmEx (as kern::gemm) against cuBLASLt's heuristic candidates, 7B projection shapes.
  nvcc -std=c++17 -O3 -arch=sm_90 "$SRC/scripts/bench/gemm_algo_bench.cu" -lcublasLt -lcublas \
    -o "$BUILD/gemm_algo_bench" > "$OUT/gemm_bench_build.log" 2>&1 || cat "$OUT/gemm_bench_build.log"
  [ -x "$BUILD/gemm_algo_bench" ] && timeout 200 "$BUILD/gemm_algo_bench" 2>&1 | tee "$OUT/gemm_bench.txt"
  echo "gemm bench done: $(( $(date +%s) - t0 )) s"
fi
[ "${BENCH_ONLY:-0}" = 1 ] && exit 0
wait $bpid || grep -E "error|FAILED" -A4 "$OUT/build.log" | head -40
echo "build done: $(( $(date +%s) - t0 )) s"
T="$BUILD/tests/kvq_test_gpu"
parity=1
if [ "${PARITY:-1}" = 0 ]; then
  parity=0; echo "parity tests skipped (PARITY=0)"
elif [ -x "$T" ]; then
  # shellcheck disable=SC2086
  env $PARITY_ENV timeout 240 "$T" "$TESTS" --durations yes > "$OUT/prefill_tests.log" 2>&1
  parity=$?
  echo "prefill parity tests ($PARITY_ENV) exit $parity"
  grep -E "seed|cases run|passed|failed|FAILED|REQUIRE|with expansion|got .* ref" "$OUT/prefill_tests.log" | head -40
  grep -E "^prefill (fa3|sm90)" "$OUT/prefill_tests.log" | head -60
else
  echo "kvq_test_gpu did not build"; grep -E "error" -A3 "$OUT/build.log" | head -20
fi
echo "tests done: $(( $(date +%s) - t0 )) s"
[ "${PARITY_ONLY:-0}" = 1 ] && exit 0
G="$BUILD/tools/kvq-gpubench"
if [ "$parity" = 0 ] && [ -x "$G" ]; then
  models="--synthetic llama2-7b"
  [ "${BOTH:-0}" = 1 ] && models="$models --synthetic llama3-8b"
  for run in $GB_RUNS; do
    label=${run%%:*}; vars=${run#*:}
    spid=
    if [ "${SMI:-0}" = 1 ]; then
      nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv,noheader -lms 100 > "$OUT/smi_$label.csv" 2>/dev/null &
      spid=$!
    fi
    # shellcheck disable=SC2086
    env ${vars//,/ } timeout 200 "$G" $models --contexts "$CTX" --decode-steps 2 --reps "${GB_REPS:-3}" \
      --json "$OUT/kvq_$label.json" > "$OUT/gpubench_$label.log" 2>&1
    echo "gpubench $label (${vars//,/ }) exit $?"
    [ -n "$spid" ] && kill "$spid"
    grep -iE "prefill|llama|stage times" "$OUT/gpubench_$label.log" | tail -12
    if [ -n "$spid" ]; then
      # SM clock (MHz) and power (W) over the run: min / median / max.
      for col in 2 4; do  # SM clock (MHz), power (W): min / median / max over the run
        awk -F', ' -v c=$col '{print $c+0}' "$OUT/smi_$label.csv" | sort -n |
          awk -v c=$col '{v[NR]=$1} END {printf "  smi %s (%d samples): min %d med %d max %d\n",
            c == 2 ? "sm MHz" : "power W", NR, v[1], v[int((NR+1)/2)], v[NR]}'
      done
    fi
  done
fi
if [ "${MODEL:-0}" = 1 ] && [ -x "$T" ]; then
  for path in $PATHS; do
    KVQ_PREFILL=$path timeout 240 "$T" "cuda model:*" > "$OUT/model_tests_$path.log" 2>&1
    echo "model tests KVQ_PREFILL=$path exit $?"
    grep -E "PPL|ppl|greedy|relative|passed|failed|FAILED" "$OUT/model_tests_$path.log" | head -12
  done
fi
echo "total: $(( $(date +%s) - t0 )) s"
