// Helpers every test shares: where the shared models and datasets are, scratch folders,
// and printed seeds so that a failing random test can be replayed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvq_test {

// ../shared (KVQ_SHARED overrides). Tests that need it fail when it is missing: CI has it.
std::filesystem::path shared_dir();
std::filesystem::path shared_path(const std::string& relative);

// The repository root (KVQ_SOURCE_DIR), for golden files under tests/data.
std::filesystem::path source_dir();

// A fresh empty folder under the system temp dir, removed when the process exits.
std::filesystem::path scratch_dir(const std::string& name);

// A seed for random test inputs: KVQ_TEST_SEED if set, otherwise `fallback`. It is
// printed (Catch2 INFO is not enough: it is only shown on failure of the same scope).
uint64_t test_seed(uint64_t fallback);

std::vector<uint8_t> read_bytes(const std::filesystem::path& path);
void write_bytes(const std::filesystem::path& path, const void* data, size_t size);

}  // namespace kvq_test
