#!/usr/bin/env bash
# One device call for the prefill work (notes/cuda-perf.md), most important first:
#  1. the attention microbenchmark (scripts/bench/run_attn_bench.sh: ceilings, the shipped
#     FA2 kernel and its variants against the old wmma kernel, the projection GEMMs), while
#     kvq builds in parallel;
#  2. tests/gpu (kernel parity incl. the prefill cases, whole-model parity, HF reference),
#     WikiText-2 PPL through kvq-eval;
#  3. per-stage device times of a 7B prefill (KVQ_STAGE_TIMES) at 4K and 16K;
#  4. the issue-3 benchmark: kvq-gpubench vs PyTorch + transformers on the testbed and the
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
TARGETS="kvq_test_gpu kvq-gpubench kvq-eval"
( cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
    > "$OUT/configure.log" 2>&1 && \
  cmake --build build-gpu --target $TARGETS -j10 -- -k 0 > "$OUT/build.log" 2>&1 ) &
bpid=$!
OUT=$OUT bash scripts/bench/run_attn_bench.sh > /dev/null
echo "attn bench done: $(( $(date +%s) - t0 )) s"
wait $bpid || grep -E "error|FAILED" -A4 "$OUT/build.log" | head -40
echo "build done: $(( $(date +%s) - t0 )) s"
if [ -x build-gpu/tests/kvq_test_gpu ]; then
  python3 scripts/gpu/hf_reference.py "$TB" "$OUT/hf_ref.json" 2>&1 | grep -v Warning | tail -2
  KVQ_HF_REF="$OUT/hf_ref.json" timeout 240 build-gpu/tests/kvq_test_gpu --durations yes > "$OUT/gpu_tests.log" 2>&1
  echo "kvq_test_gpu exit $?"
  grep -E "^prefill|seed|relative|PPL|passed|failed|FAILED|Assert" "$OUT/gpu_tests.log" | head -60
else
  echo "kvq_test_gpu did not build (other work in progress?)"; grep -E "error" -A3 "$OUT/build.log" | head -20
fi
[ -x build-gpu/tools/kvq-gpubench ] || { echo "kvq-gpubench did not build"; exit 1; }
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
