#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, ASan and UBSan in build-fuzz/ and runs
# each for SECONDS (default 60). A crash leaves crash-*/leak-*/timeout-* files in the
# current folder and a non-zero exit; reproduce with build-fuzz/fuzz/fuzz_NAME FILE.
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 3600       # an hour per target
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build="${KVQ_FUZZ_BUILD_DIR:-build-fuzz}"
KVQ_FUZZ=1 scripts/deps.sh
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVQ_FUZZ=ON -DKVQ_TESTS=OFF -DKVQ_CUDA=OFF -DKVQ_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$build" --target fuzz_profile fuzz_safetensors -j "${KVQ_JOBS:-$(nproc)}"
ctest --test-dir "$build" -L fuzz --output-on-failure
