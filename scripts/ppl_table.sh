#!/usr/bin/env bash
# The issue-4 perplexity table: kvq-eval ppl (simulated KV quantization, default codec
# parameters) for every codec at 8/4/3/2 bits on one model and dataset, one process per
# spec (a --kv spec, or a .kvqp profile path), N at a time, then one markdown table (scripts/ppl_table.py).
#   scripts/ppl_table.sh OUTDIR [kvq-eval options...]
# Environment: KVQ_EVAL (binary, default build/tools/kvq-eval), KVQ_JOBS (parallel
# processes, default 4), KVQ_SPECS (space-separated specs, default: the list below).
# Example (GPU machine): KVQ_JOBS=6 scripts/ppl_table.sh out --backend cuda \
#   --model M --dataset D --seqlen 1024
set -euo pipefail
out=${1:?usage: scripts/ppl_table.sh OUTDIR [kvq-eval options...]}
shift
eval_bin=${KVQ_EVAL:-build/tools/kvq-eval}
jobs=${KVQ_JOBS:-4}
specs=${KVQ_SPECS:-"fp16 fp8:e4m3 fp8:e5m2 q8_0 int8 q4_0 int4 int4:axis=channel kivi:bits=4
kvquant:bits=4 kvquant:bits=4,outliers=0 wkvquant:bits=4 mikv:lo=int4 hadamard:bits=4
int3 int3:axis=channel kivi:bits=3 kvquant:bits=3 kvquant:bits=3,outliers=0 wkvquant:bits=3
mikv:lo=int3 hadamard:bits=3 int2 int2:axis=channel kivi:bits=2 kvquant:bits=2
kvquant:bits=2,outliers=0 wkvquant:bits=2 mikv:lo=int2 hadamard:bits=2"}
mkdir -p "$out"

run_one() {  # spec index; the kvq-eval options arrive quoted in $eval_args
  local spec=$1 i=$2 args
  eval "args=($eval_args)"
  local kv=(--kv "$spec")
  [[ $spec == *.kvqp ]] && kv=(--profile "$spec")
  [[ $spec == none ]] && kv=()
  "$eval_bin" --task ppl "${kv[@]}" --format json "${args[@]}" >"$out/ppl_$i.json" 2>"$out/ppl_$i.err" ||
    echo "kvq-eval failed for $spec: $(tail -n 1 "$out/ppl_$i.err")" >&2
}
eval_args=$(printf '%q ' "$@")
export -f run_one
export eval_bin out eval_args

i=0
for s in $specs; do
  printf '%s\0%s\0' "$s" "$i"
  i=$((i + 1))
done | xargs -0 -n 2 -P "$jobs" bash -c 'run_one "$0" "$1"'

python3 "$(dirname "$0")/ppl_table.py" "$out"/ppl_*.json
