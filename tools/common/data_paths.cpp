// See data_paths.h.
#include "tools/common/data_paths.h"

#include <cstdlib>
#include <filesystem>

#include "tools/common/cli.h"

namespace kvq::cli {

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

std::string default_model_path() { return default_path("KVQ_MODEL", "models/kvq-testbed-llama2-23m"); }

std::vector<std::string> data_roots() {
  std::vector<std::string> roots;
  std::error_code ec;
  if (const std::string d = env("KVQ_DATA"); !d.empty() && std::filesystem::is_directory(d, ec)) {
    roots.push_back(d);
  }
  // default_path with no environment variable: only the shared-folder fallbacks.
  if (std::string shared = default_path("", "datasets"); !shared.empty()) roots.push_back(shared);
  return roots;
}

std::string default_dataset_spec() {
  std::error_code ec;
  if (const std::string d = env("KVQ_DATA"); !d.empty() && !std::filesystem::is_directory(d, ec)) return d;
  return "wikitext2";
}

}  // namespace kvq::cli
