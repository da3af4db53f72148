// Default model and dataset locations for the tools (issue 2): arguments win, then the
// environment (KVQ_MODEL; KVQ_DATA = a dataset file or a folder of datasets), then the
// shared folder beside the checkout (../shared/models/..., ../shared/datasets/...).
#pragma once

#include <string>
#include <vector>

namespace kvq::cli {

// KVQ_MODEL, else ../shared/models/kvq-testbed-llama2-23m; "" when neither exists.
std::string default_model_path();

// Folders where dataset names (wikitext2, c4, kvq-docs-valid) are looked up: KVQ_DATA when
// it is a folder, then ../shared/datasets.
std::vector<std::string> data_roots();

// What --dataset means when it is not given: KVQ_DATA when it is a file, else "wikitext2".
std::string default_dataset_spec();

}  // namespace kvq::cli
