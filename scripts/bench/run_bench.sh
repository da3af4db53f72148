#!/usr/bin/env bash
# On the GPU machine: kvq-gpubench and the PyTorch + transformers baseline on the same
# shapes, then the side-by-side table (docs/results.md, "CUDA backend results", takes it).
# Usage: bash scripts/bench/run_bench.sh   (builds build-gpu if needed; logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
export PYTHONUNBUFFERED=1
if [ ! -x build-gpu/tools/kvq-gpubench ]; then
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/configure.log" 2>&1
  cmake --build build-gpu --target kvq-gpubench -j16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
TB="$KVQ_SHARED/models/kvq-testbed-llama2-23m"
CTX=${CTX:-1024,4096,16384,32768}
build-gpu/tools/kvq-gpubench --model "$TB" --contexts 512,992 --json "$OUT/kvq_testbed.json" 2>&1 | tee "$OUT/kvq_bench.log"
build-gpu/tools/kvq-gpubench --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --json "$OUT/kvq_synth.json" 2>&1 | tee -a "$OUT/kvq_bench.log"
python3 scripts/bench/hf_bench.py --model "$TB" --contexts 512,992 --out "$OUT/hf_testbed.json" 2>&1 | grep -v Warn | tee "$OUT/hf_bench.log"
python3 scripts/bench/hf_bench.py --synthetic llama2-7b --synthetic llama3-8b --contexts "$CTX" --out "$OUT/hf_synth.json" 2>&1 | grep -v Warn | tee -a "$OUT/hf_bench.log"
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
k = json.load(open(f"{o}/kvq_testbed.json")); k["rows"] += json.load(open(f"{o}/kvq_synth.json"))["rows"]
h = json.load(open(f"{o}/hf_testbed.json")); h["rows"] += json.load(open(f"{o}/hf_synth.json"))["rows"]
json.dump(k, open(f"{o}/kvq.json", "w"), indent=1); json.dump(h, open(f"{o}/hf.json", "w"), indent=1)
PY
python3 scripts/bench/compare.py "$OUT/kvq.json" "$OUT/hf.json" | tee "$OUT/table.md"
