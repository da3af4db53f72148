#!/usr/bin/env bash
# One device call for the prefill-attention work (notes/cuda-perf.md), most important first:
#  1. build kvq_kernels (the wgmma kernel compiles for sm_90a only), then the attention
#     microbenchmark (scripts/bench/run_attn_bench.sh: cuBLAS ceiling, FA2 vs the wgmma
#     kernel with 1 and 2 warpgroups per block vs the dispatcher, 4K/16K/32K, Llama-2-7B and
#     Llama-3-8B head shapes) while the test binary and tools build;
#  2. tests/gpu: the prefill parity cases through both paths, then the whole-model tests
#     (testbed, head_dim 64) with KVQ_PREFILL=sm90 and with KVQ_PREFILL=fa2, WikiText-2 PPL;
#  3. kvq-gpubench prefill of the synthetic Llama-2-7B / Llama-3-8B at CTX under each path
#     (HF=1 adds scripts/bench/hf_bench.py and the compare.py table, as session 2 did).
# Usage: bash scripts/gpu/prefill_check.sh   (logs under $OUT; BUILD = build folder)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
BUILD=${BUILD:-build-gpu}
CTX=${CTX:-4096,16384,32768}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
export PYTHONUNBUFFERED=1
TB="$KVQ_SHARED/models/kvq-testbed-llama2-23m"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"
t0=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
  > "$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" --target kvq_kernels -j16 > "$OUT/build_kernels.log" 2>&1 ||
  { grep -E "error" -A4 "$OUT/build_kernels.log" | head -40; exit 1; }
grep -E "registers|spill" -B1 "$OUT/build_kernels.log" | grep -A1 attention_prefill | head -20
echo "kernels built: $(( $(date +%s) - t0 )) s"
( cmake --build "$BUILD" --target kvq_test_gpu kvq-gpubench kvq-eval -j12 -- -k 0 > "$OUT/build.log" 2>&1 ) &
bpid=$!
OUT=$OUT BUILD=$BUILD bash scripts/bench/run_attn_bench.sh > /dev/null
echo "attn bench done: $(( $(date +%s) - t0 )) s"
wait $bpid || grep -E "error|FAILED" -A4 "$OUT/build.log" | head -40
echo "build done: $(( $(date +%s) - t0 )) s"
T="$BUILD/tests/kvq_test_gpu"
# Another engineer's test file in progress that does not compile (the whole working tree
# travels): set it aside in this copy of the tree only, say so, and build the rest.
if [ ! -x "$T" ]; then
  for f in $(grep -oE "FAILED: .*gpu/[a-z_0-9]+\.cpp\.o" "$OUT/build.log" | grep -oE "[a-z_0-9]+\.cpp" | sort -u); do
    [ "$f" = kernel_parity_test.cpp ] && continue
    echo "set aside (does not compile here): tests/gpu/$f"; mv "tests/gpu/$f" "/tmp/$f.aside"
  done
  cmake --build "$BUILD" --target kvq_test_gpu -j16 -- -k 0 >> "$OUT/build.log" 2>&1
fi
if [ -x "$T" ]; then
  timeout 240 "$T" "gpu kernels: prefill*" --durations yes > "$OUT/prefill_tests.log" 2>&1
  echo "prefill parity tests exit $?"
  grep -E "^prefill|seed|cases run|passed|failed|FAILED|REQUIRE|with expansion" "$OUT/prefill_tests.log" | head -70
  for path in sm90 fa2; do
    KVQ_PREFILL=$path timeout 240 "$T" "cuda model:*" > "$OUT/model_tests_$path.log" 2>&1
    echo "model tests KVQ_PREFILL=$path exit $?"
    grep -E "PPL|ppl|greedy|relative|passed|failed|FAILED" "$OUT/model_tests_$path.log" | head -12
  done
else
  echo "kvq_test_gpu did not build"; grep -E "error" -A3 "$OUT/build.log" | head -20
fi
echo "tests done: $(( $(date +%s) - t0 )) s"
G="$BUILD/tools/kvq-gpubench"
if [ -x "$G" ]; then
  for path in fa2 sm90; do
    KVQ_PREFILL=$path timeout 200 "$G" --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --decode-steps 2 \
      --json "$OUT/kvq_$path.json" > "$OUT/gpubench_$path.log" 2>&1
    echo "gpubench KVQ_PREFILL=$path exit $?"
    grep -iE "prefill|llama" "$OUT/gpubench_$path.log" | tail -8
  done
fi
if [ "${HF:-0}" = 1 ]; then
  python3 scripts/bench/hf_bench.py --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" \
    --out "$OUT/hf_synth.json" 2>&1 | grep -v Warn > "$OUT/hf_bench.log"
  for path in fa2 sm90; do
    python3 scripts/bench/compare.py "$OUT/kvq_$path.json" "$OUT/hf_synth.json" > "$OUT/table_$path.md" 2>&1
    echo "== KVQ_PREFILL=$path vs transformers"; cat "$OUT/table_$path.md"
  done
fi
echo "total: $(( $(date +%s) - t0 )) s"
grep -E "^ceiling|^device|T=|chunk" "$OUT/attn_bench.txt"
