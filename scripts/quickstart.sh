#!/usr/bin/env bash
# The README's first command: installs missing packages, builds kvq (Release), and runs the
# main job on the default model and data: perplexity of the testbed model on WikiText-2
# test on the CPU, ending with the results table.
#
# To stay within a few minutes on a 2-core machine it evaluates the first
# KVQ_QUICKSTART_WINDOWS (default 8) windows of 1024 tokens; the table says so. Set
# KVQ_QUICKSTART_WINDOWS=-1 for all 333 windows (the published protocol).
#   scripts/quickstart.sh
#   KVQ_MODEL=/path/to/hf-folder KVQ_DATA=/path/to/wiki.test.raw scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
build=${KVQ_BUILD_DIR:-build}
jobs=${KVQ_JOBS:-$(nproc)}
windows=${KVQ_QUICKSTART_WINDOWS:-8}
seqlen=${KVQ_QUICKSTART_SEQLEN:-1024}

echo "kvq: building (Release) in $build" >&2
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA="${KVQ_CUDA:-AUTO}" >/dev/null
# Only the tools: the tests are built by scripts/test.sh.
cmake --build "$build" -j "$jobs" --target kvq-eval kvq-bench

model=${KVQ_MODEL:-../shared/models/kvq-testbed-llama2-23m}
if [[ ! -e $model ]]; then
  echo "kvq: no model at $model: set KVQ_MODEL to a Hugging Face folder or a llama2.c .bin" >&2
  exit 1
fi
args=(--task ppl --model "$model" --seqlen "$seqlen" --max-windows "$windows" --backend "${KVQ_BACKEND:-cpu}")
if [[ -n ${KVQ_DATA:-} ]]; then args+=(--dataset "$KVQ_DATA"); else args+=(--dataset wikitext2); fi

echo "kvq: $build/tools/kvq-eval ${args[*]}" >&2
echo
"$build/tools/kvq-eval" "${args[@]}"
if [[ $windows != -1 ]]; then
  echo
  echo "(first $windows windows of $seqlen tokens only; KVQ_QUICKSTART_WINDOWS=-1 runs the full protocol)"
fi
