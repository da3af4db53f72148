// Dataset "specs" as users type them after --dataset: a path to a file, or a short name
// of a standard dataset looked up under data roots (KVQ_DATA when it is a folder, then
// ../shared/datasets; the tool decides the roots). Names and where they live under a root:
//   wikitext2, wikitext2-test   wikitext-2-raw/wiki.test.raw     (protocol wikitext)
//   wikitext2-valid             wikitext-2-raw/wiki.valid.raw    (wikitext)
//   wikitext2-train             wikitext-2-raw/wiki.train.raw    (wikitext)
//   c4, c4-validation           c4/en/c4-validation.00000-of-00008.json.gz  (c4)
//   kvq-docs-valid              kvq-docs/valid.txt               (text)
//   kvq-docs-calib              kvq-docs/calib.txt               (text)
// The layouts are those of the upstream archives, so an unpacked download is a root.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "datasets/protocol.h"

namespace kvq::datasets {

struct DatasetName {
  const char* name;
  const char* relative_path;  // under a data root
  Protocol protocol;
  const char* manifest;       // manifest file name in datasets/manifests, or nullptr
};

// The table above.
const std::vector<DatasetName>& dataset_names();

struct ResolvedDataset {
  std::string spec;       // as given
  std::string name;       // the standard name, or "" for a plain path
  std::string path;       // the file to read
  Protocol protocol;      // explicit, else the name's, else inferred from the file name
  std::string manifest;   // manifest file name for standard names, else ""
};

// A spec that names an existing file is that file; otherwise a standard name is looked up
// under each root in turn. IoError when neither works (naming every path tried, with a
// hint to the manifest's download URL for standard names).
ResolvedDataset resolve_dataset(const std::string& spec, const std::vector<std::string>& roots,
                                std::optional<Protocol> protocol = std::nullopt);

}  // namespace kvq::datasets
