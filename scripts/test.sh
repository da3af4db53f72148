#!/usr/bin/env bash
# Installs what is missing, builds (Release, CUDA when nvcc is present) and runs ctest.
# GPU tests are compiled everywhere and reported as skipped on machines without a GPU.
#   scripts/test.sh                 # everything
#   scripts/test.sh -L formats      # extra arguments go to ctest
# Before ctest, the libFuzzer targets of the file readers (profile/calibration, safetensors)
# run for KVQ_FUZZ_SECONDS each (default 30) in their own clang build (scripts/fuzz.sh);
# KVQ_FUZZ_SECONDS=0 skips them.
# python3 (stdlib only) is installed because tests/cli/*.sh craft bad files with it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh python3
build=${KVQ_BUILD_DIR:-build}
jobs=${KVQ_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA="${KVQ_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j "$jobs"

fuzz_seconds=${KVQ_FUZZ_SECONDS:-30}
if [[ $fuzz_seconds != 0 ]]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi

# Every test is bounded so that a hang fails CI instead of stalling it.
ctest --test-dir "$build" --output-on-failure -j "$jobs" --timeout "${KVQ_TEST_TIMEOUT:-900}" "$@"
