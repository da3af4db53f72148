#!/usr/bin/env bash
# Installs what is missing, builds (Release, CUDA when nvcc is present) and runs ctest.
# GPU tests are compiled everywhere and reported as skipped on machines without a GPU.
#   scripts/test.sh                 # everything
#   scripts/test.sh -L formats      # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
build=${KVQ_BUILD_DIR:-build}
jobs=${KVQ_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA="${KVQ_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
