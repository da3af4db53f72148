#!/usr/bin/env bash
# Regenerates the golden profile and calibration files in this folder from the synthetic
# inputs of tests/formats/profile_fixtures.h, by running the golden test in write mode
# (tests/formats/profile_golden_test.cpp). Do this only for a deliberate format change
# (and bump the format version per docs/profile-format.md); commit the new files with it.
#   tests/data/profiles/regenerate.sh [BUILD_DIR]     (default: build)
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
build="${1:-$root/build}"
cmake --build "$build" --target kvq_test_formats
KVQ_REGENERATE_GOLDEN=1 KVQ_SOURCE_DIR="$root" KVQ_SHARED="${KVQ_SHARED:-$root/../shared}" \
  "$build/tests/kvq_test_formats" "[golden]"
# Check that what was written now compares equal.
KVQ_SOURCE_DIR="$root" KVQ_SHARED="${KVQ_SHARED:-$root/../shared}" "$build/tests/kvq_test_formats" "[golden]"
git -C "$root" status --short tests/data/profiles
