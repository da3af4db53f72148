// See spec.h.
#include "datasets/spec.h"

#include <filesystem>

#include "formats/error.h"

namespace kvq::datasets {

namespace fs = std::filesystem;

const std::vector<DatasetName>& dataset_names() {
  static const std::vector<DatasetName> names = {
      {"wikitext2", "wikitext-2-raw/wiki.test.raw", Protocol::kWikiText, "wikitext-2-raw-v1.json"},
      {"wikitext2-test", "wikitext-2-raw/wiki.test.raw", Protocol::kWikiText, "wikitext-2-raw-v1.json"},
      {"wikitext2-valid", "wikitext-2-raw/wiki.valid.raw", Protocol::kWikiText, "wikitext-2-raw-v1.json"},
      {"wikitext2-train", "wikitext-2-raw/wiki.train.raw", Protocol::kWikiText, "wikitext-2-raw-v1.json"},
      {"c4", "c4/en/c4-validation.00000-of-00008.json.gz", Protocol::kC4, "c4-en-validation-00000.json"},
      {"c4-validation", "c4/en/c4-validation.00000-of-00008.json.gz", Protocol::kC4,
       "c4-en-validation-00000.json"},
      {"kvq-docs-valid", "kvq-docs/valid.txt", Protocol::kText, nullptr},
      {"kvq-docs-calib", "kvq-docs/calib.txt", Protocol::kText, nullptr},
  };
  return names;
}

ResolvedDataset resolve_dataset(const std::string& spec, const std::vector<std::string>& roots,
                                std::optional<Protocol> protocol) {
  std::error_code ec;
  if (fs::exists(spec, ec)) {
    if (fs::is_directory(spec, ec)) {
      throw IoError(spec, "is a folder, expected a dataset file",
                    "name the file, e.g. .../wikitext-2-raw/wiki.test.raw");
    }
    return {spec, "", spec, protocol.value_or(infer_protocol(spec)), ""};
  }
  const DatasetName* known = nullptr;
  for (const auto& n : dataset_names()) {
    if (spec == n.name) known = &n;
  }
  if (known == nullptr) {
    std::string names;
    for (const auto& n : dataset_names()) names += std::string(names.empty() ? "" : ", ") + n.name;
    throw IoError(spec, "no such file, and not a dataset name", "dataset names: " + names);
  }
  std::string tried;
  for (const auto& root : roots) {
    if (root.empty()) continue;
    const fs::path p = fs::path(root) / known->relative_path;
    if (fs::is_regular_file(p, ec)) {
      return {spec, known->name, p.string(), protocol.value_or(known->protocol),
              known->manifest ? known->manifest : ""};
    }
    tried += std::string(tried.empty() ? "" : ", ") + p.string();
  }
  std::string hint = "set KVQ_DATA to a folder holding " + std::string(known->relative_path);
  if (known->manifest) hint += " (download: see datasets/manifests/" + std::string(known->manifest) + ")";
  throw IoError(spec, "dataset file not found (tried: " + (tried.empty() ? "no data roots" : tried) + ")",
                hint);
}

}  // namespace kvq::datasets
