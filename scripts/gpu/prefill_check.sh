#!/usr/bin/env bash
# One device call for the prefill-attention work (notes/cuda-perf.md): builds kvq with the
# FA2 candidate scripts/bench/attention_prefill_fa2.cu swapped in for
# kernels/attention_prefill.cu (in a copy of the tree under /tmp, never in this checkout)
# and the attention microbenchmark in parallel, then, most important first: the
# microbenchmark (ceilings, shipped vs candidate TFLOP/s), tests/gpu (kernel parity +
# whole-model parity, WikiText-2 PPL through kvq-eval), and the model benchmark on the
# synthetic Llama shapes against PyTorch + transformers in the same run.
# SWAP=0 builds the tree as it is (the shipped kernel).
# Usage: bash scripts/gpu/prefill_check.sh   (logs under $OUT; CTX=contexts for the model bench)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
export PYTHONUNBUFFERED=1
CTX=${CTX:-1024,4096,16384,32768}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"
t0=$(date +%s)
SRC=$PWD
if [ "${SWAP:-1}" = 1 ]; then
  SRC=/tmp/kvq-fa2
  mkdir -p "$SRC" && tar --exclude='./build*' --exclude='./.carry' --exclude='./.git' -cf - . | tar -xf - -C "$SRC"
  cp scripts/bench/attention_prefill_fa2.cu "$SRC/kernels/attention_prefill.cu"
  echo "candidate swapped in: $SRC/kernels/attention_prefill.cu"
fi
( cmake -S "$SRC" -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    > "$OUT/configure.log" 2>&1 && \
  cmake --build build-gpu --target kvq_test_gpu kvq-gpubench kvq-eval -j12 -- -k 0 > "$OUT/build.log" 2>&1 ) &
bpid=$!
OUT=$OUT bash scripts/bench/run_attn_bench.sh
echo "attn bench done: $(( $(date +%s) - t0 )) s"
wait $bpid || grep -E "error|FAILED" -A4 "$OUT/build.log" | head -40
echo "build done: $(( $(date +%s) - t0 )) s"
[ -x build-gpu/tests/kvq_test_gpu ] || { echo "kvq_test_gpu did not build"; exit 1; }
python3 scripts/gpu/hf_reference.py "$KVQ_SHARED/models/kvq-testbed-llama2-23m" "$OUT/hf_ref.json" 2>&1 | grep -v Warning | tail -2
KVQ_HF_REF="$OUT/hf_ref.json" timeout 200 build-gpu/tests/kvq_test_gpu --durations yes > "$OUT/gpu_tests.log" 2>&1
echo "kvq_test_gpu exit $?"
grep -E "^prefill|seed|relative|PPL|passed|failed|FAILED|Assert" "$OUT/gpu_tests.log" | head -60
timeout 60 build-gpu/tools/kvq-eval --model "$KVQ_SHARED/models/kvq-testbed-llama2-23m" \
  --dataset "$KVQ_SHARED/datasets/wikitext-2-raw/wiki.test.raw" --seqlen 1024 --backend cuda > "$OUT/eval.log" 2>&1
grep -iE "ppl|perplex" "$OUT/eval.log" | tail -3
echo "tests done: $(( $(date +%s) - t0 )) s"
build-gpu/tools/kvq-gpubench --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --json "$OUT/kvq.json" > "$OUT/kvq_bench.log" 2>&1
python3 scripts/bench/hf_bench.py --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --out "$OUT/hf.json" 2>&1 | grep -v Warn > "$OUT/hf_bench.log"
python3 scripts/bench/compare.py "$OUT/kvq.json" "$OUT/hf.json" > "$OUT/table.md" 2>&1
echo "total: $(( $(date +%s) - t0 )) s"
grep -A3 "^ceiling\|^device" "$OUT/attn_bench.txt" | head -5
cat "$OUT/kvq_bench.log" | tail -10
cat "$OUT/table.md"
grep -E "T=|chunk" "$OUT/attn_bench.txt"
