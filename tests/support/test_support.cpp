#include "tests/support/test_support.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <unistd.h>

namespace fs = std::filesystem;

namespace kvq_test {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}

struct ScratchRoot {
  fs::path path;
  ScratchRoot() {
    path = fs::temp_directory_path() / ("kvq-test-" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~ScratchRoot() {
    std::error_code ec;
    if (!env("KVQ_KEEP_SCRATCH")) fs::remove_all(path, ec);
  }
};

}  // namespace

fs::path source_dir() {
  if (const char* v = env("KVQ_SOURCE_DIR")) return fs::path(v);
  return fs::current_path();
}

fs::path shared_dir() {
  fs::path p = env("KVQ_SHARED") ? fs::path(env("KVQ_SHARED")) : source_dir() / ".." / "shared";
  if (!fs::is_directory(p)) {
    throw std::runtime_error("shared data folder not found: " + p.string() +
                             " (set KVQ_SHARED)");
  }
  return fs::weakly_canonical(p);
}

fs::path shared_path(const std::string& relative) { return shared_dir() / relative; }

fs::path scratch_dir(const std::string& name) {
  static ScratchRoot root;
  static std::mutex mu;
  static int counter = 0;
  std::lock_guard<std::mutex> lock(mu);
  fs::path p = root.path / (name + "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

uint64_t test_seed(uint64_t fallback) {
  uint64_t seed = fallback;
  if (const char* v = env("KVQ_TEST_SEED")) seed = std::strtoull(v, nullptr, 0);
  std::fprintf(stderr, "[kvq-test] seed %llu (replay with KVQ_TEST_SEED=%llu)\n",
               static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  return seed;
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& path, const void* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace kvq_test
