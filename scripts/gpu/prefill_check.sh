#!/usr/bin/env bash
# One device call for the prefill work (notes/cuda-perf.md), most important first:
#  1. the attention microbenchmark (scripts/bench/run_attn_bench.sh: ceilings, the shipped
#     kernel against the FA2 variants, the projection GEMMs), while kvq builds in parallel;
#  2. with SWAP=1 (default) the fastest FA2 variant at llama2-7b T=16384 fp16 is swapped in
#     for kernels/attention_prefill.cu in a copy of the tree under /tmp (never this checkout);
#     SWAP=0 builds the tree as it is;
#  3. tests/gpu (kernel parity incl. the prefill cases, whole-model parity, HF reference),
#     WikiText-2 PPL through kvq-eval;
#  4. per-stage device times of a 7B prefill (KVQ_STAGE_TIMES) at 4K and 16K;
#  5. the issue-3 benchmark: kvq-gpubench vs PyTorch + transformers on the testbed and the
#     synthetic Llama-2-7B / Llama-3-8B shapes, same run, side-by-side table.
# Usage: bash scripts/gpu/prefill_check.sh   (logs under $OUT; CTX = contexts of the model bench)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
export PYTHONUNBUFFERED=1
CTX=${CTX:-1024,4096,16384,32768}
TB="$KVQ_SHARED/models/kvq-testbed-llama2-23m"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"
t0=$(date +%s)
SRC=$PWD
if [ "${SWAP:-1}" = 1 ]; then
  SRC=/tmp/kvq-fa2
  mkdir -p "$SRC" && tar --exclude='./build*' --exclude='./.carry' --exclude='./.git' -cf - . | tar -xf - -C "$SRC"
  cp scripts/bench/attention_prefill_fa2.cu "$SRC/kernels/attention_prefill.cu"
fi
TARGETS="kvq_test_gpu kvq-gpubench kvq-eval"
( cmake -S "$SRC" -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    > "$OUT/configure.log" 2>&1 && \
  cmake --build build-gpu --target $TARGETS -j10 -- -k 0 > "$OUT/build.log" 2>&1 ) &
bpid=$!
OUT=$OUT bash scripts/bench/run_attn_bench.sh > /dev/null
echo "attn bench done: $(( $(date +%s) - t0 )) s"
wait $bpid || grep -E "error|FAILED" -A4 "$OUT/build.log" | head -40
if [ "${SWAP:-1}" = 1 ]; then
  # The variant with the shortest time at llama2-7b T=16384 fp16 (finite output) wins.
  best=$(awk '/^llama2-7b T=16384 +fp16 +fa2/ && !/NON-FINITE/ {n=split($0,f," +"); print f[n-2], $0}' \
           "$OUT/attn_bench.txt" | sort -g | head -1)
  echo "fastest FA2 variant: $best"
  D=()
  case "$best" in
    *"8 warps"*) D=(-e 's/^#define KVQ_FA_WARPS 4$/#define KVQ_FA_WARPS 8/'
                    -e 's/^#define KVQ_FA_MIN_BLOCKS_128 3$/#define KVQ_FA_MIN_BLOCKS_128 1/'
                    -e 's/^#define KVQ_FA_MIN_BLOCKS_64 4$/#define KVQ_FA_MIN_BLOCKS_64 2/') ;;
    *"2 blocks"*) D=(-e 's/^#define KVQ_FA_MIN_BLOCKS_128 3$/#define KVQ_FA_MIN_BLOCKS_128 2/'
                     -e 's/^#define KVQ_FA_MIN_BLOCKS_64 4$/#define KVQ_FA_MIN_BLOCKS_64 3/') ;;
  esac
  if [ ${#D[@]} -gt 0 ]; then
    sed "${D[@]}" scripts/bench/attention_prefill_fa2.cu > "$SRC/kernels/attention_prefill.cu"
    cmake --build build-gpu --target $TARGETS -j10 >> "$OUT/build.log" 2>&1 || grep -E "error" -A4 "$OUT/build.log" | head
  fi
  grep -E "^#define KVQ_FA" "$SRC/kernels/attention_prefill.cu"
  cp "$SRC/kernels/attention_prefill.cu" "$OUT/attention_prefill_used.cu"
fi
echo "build done: $(( $(date +%s) - t0 )) s"
[ -x build-gpu/tests/kvq_test_gpu ] || { echo "kvq_test_gpu did not build"; tail -30 "$OUT/build.log"; exit 1; }
python3 scripts/gpu/hf_reference.py "$TB" "$OUT/hf_ref.json" 2>&1 | grep -v Warning | tail -2
KVQ_HF_REF="$OUT/hf_ref.json" timeout 240 build-gpu/tests/kvq_test_gpu --durations yes > "$OUT/gpu_tests.log" 2>&1
echo "kvq_test_gpu exit $?"
grep -E "^prefill|seed|relative|PPL|passed|failed|FAILED|Assert" "$OUT/gpu_tests.log" | head -60
timeout 60 build-gpu/tools/kvq-eval --model "$TB" \
  --dataset "$KVQ_SHARED/datasets/wikitext-2-raw/wiki.test.raw" --seqlen 1024 --backend cuda > "$OUT/eval.log" 2>&1
grep -iE "ppl|perplex" "$OUT/eval.log" | tail -3
echo "tests done: $(( $(date +%s) - t0 )) s"
KVQ_STAGE_TIMES=1 build-gpu/tools/kvq-gpubench --synthetic llama2-7b --contexts 4096,16384 --reps 1 --decode-steps 2 \
  > "$OUT/stages.log" 2>&1
grep -E "stage times" "$OUT/stages.log" | tail -2
build-gpu/tools/kvq-gpubench --model "$TB" --contexts 512,992 --json "$OUT/kvq_testbed.json" > "$OUT/kvq_bench.log" 2>&1
build-gpu/tools/kvq-gpubench --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --json "$OUT/kvq_synth.json" \
  >> "$OUT/kvq_bench.log" 2>&1
echo "kvq bench done: $(( $(date +%s) - t0 )) s"
python3 scripts/bench/hf_bench.py --model "$TB" --contexts 512,992 --out "$OUT/hf_testbed.json" 2>&1 | grep -v Warn > "$OUT/hf_bench.log"
python3 scripts/bench/hf_bench.py --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --out "$OUT/hf_synth.json" 2>&1 \
  | grep -v Warn >> "$OUT/hf_bench.log"
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
k = json.load(open(f"{o}/kvq_testbed.json")); k["rows"] += json.load(open(f"{o}/kvq_synth.json"))["rows"]
h = json.load(open(f"{o}/hf_testbed.json")); h["rows"] += json.load(open(f"{o}/hf_synth.json"))["rows"]
json.dump(k, open(f"{o}/kvq.json", "w"), indent=1); json.dump(h, open(f"{o}/hf.json", "w"), indent=1)
PY
python3 scripts/bench/compare.py "$OUT/kvq.json" "$OUT/hf.json" > "$OUT/table.md" 2>&1
echo "total: $(( $(date +%s) - t0 )) s"
grep -E "^ceiling|^device" "$OUT/attn_bench.txt"
grep -E "T=|chunk" "$OUT/attn_bench.txt"
grep -A16 "^gemm" "$OUT/attn_bench.txt"
cat "$OUT/table.md"
