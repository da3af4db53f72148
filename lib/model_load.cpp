// load_model: picks the reader from what the path is (see model.h).
//   folder                      -> config.json + SafetensorsReader (single or sharded)
//   *.safetensors / *.index.json -> the same, config.json taken from the file's folder
//   anything else               -> a llama2.c legacy .bin
#include <filesystem>
#include <memory>
#include <string>

#include "formats/error.h"
#include "formats/hf_config.h"
#include "formats/llama2c.h"
#include "formats/safetensors.h"
#include "lib/model.h"

namespace kvq {

std::shared_ptr<const Model> load_model(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (!fs::exists(p, ec))
    throw IoError(path, "no such file or folder",
                  "--model takes a Hugging Face folder or a llama2.c .bin file");
  if (fs::is_directory(p, ec)) {
    const ModelConfig cfg = load_hf_config(path);
    auto src = std::make_shared<SafetensorsReader>(path);
    return std::make_shared<Model>(cfg, std::move(src));
  }
  const std::string ext = p.extension().string();
  if (ext == ".safetensors" || ext == ".json") {
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    const ModelConfig cfg = load_hf_config(dir.string());
    auto src = std::make_shared<SafetensorsReader>(path);
    return std::make_shared<Model>(cfg, std::move(src));
  }
  auto src = std::make_shared<Llama2cReader>(path);
  const ModelConfig cfg = src->config();
  return std::make_shared<Model>(cfg, std::move(src));
}

}  // namespace kvq
