// safetensors checkpoints: reading (memory-mapped, single file or sharded through
// model.safetensors.index.json) and writing (deterministic bytes, atomic).
//
// File layout (https://huggingface.co/docs/safetensors): u64 little-endian header length
// N, then N bytes of JSON {"__metadata__": {str: str}, NAME: {"dtype": "F16", "shape":
// [..], "data_offsets": [begin, end]}, ...}, then the data section; offsets are relative
// to the start of the data section.
//
// Goals: every tensor of a file we accept is inside the file, does not overlap another,
// and has exactly dtype_size x product(shape) bytes, so lib/ can read a TensorView without
// further checks. Every rejection is a FormatError naming the file and a byte offset: the
// offset of the tensor's key in the header for header problems, of its data otherwise.
// Non-goals: writing sharded checkpoints; alignment guarantees for files from other
// writers (the format allows any offset; the ones we write are aligned, see below).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/mapped_file.h"
#include "formats/tensor.h"

namespace kvq {

class SafetensorsReader final : public TensorSource {
 public:
  // `path` is a .safetensors file, a model.safetensors.index.json (or any *.json index),
  // or a folder holding model.safetensors or, failing that, model.safetensors.index.json.
  // Throws IoError when nothing can be opened, FormatError for malformed contents.
  explicit SafetensorsReader(const std::string& path);
  ~SafetensorsReader() override;

  const TensorView* find(const std::string& name) const override;
  // Sorted by name.
  std::vector<std::string> names() const override;
  // The path given to the constructor.
  const std::string& path() const override { return path_; }

  // The "__metadata__" map. Sharded: the union over the shards in index order (the first
  // shard that sets a key wins).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The .safetensors files opened, in the order of first appearance in the index.
  std::vector<std::string> files() const;
  // The index file when sharded, else empty.
  const std::string& index_path() const { return index_path_; }
  size_t size() const { return tensors_.size(); }

 private:
  void open_single(const std::string& file);
  void open_index(const std::string& index);

  std::string path_;
  std::string index_path_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Parses one safetensors file already in memory (e.g. a mapping). `file` names it in
// errors and is stored in TensorView::file. Views point into `bytes`.
struct SafetensorsFile {
  std::vector<TensorView> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t header_size = 0;  // N
};
SafetensorsFile parse_safetensors(const std::string& file, const uint8_t* bytes, size_t size);

// Writes `tensors` (their name, dtype, shape, data, nbytes; `file` is ignored) and
// `metadata` as one safetensors file via AtomicFile. Deterministic: the header JSON has
// sorted keys and is padded with spaces to a multiple of 8 bytes, as the reference
// implementation does; the data section holds the tensors ordered by element size (largest
// first), then by name, packed with no gaps. The size order is the reference
// implementation's and keeps every tensor aligned to its element size (the data section
// starts at a multiple of 8), so readers may use the mapped data as float*/uint16_t*.
// Same inputs, identical bytes. Throws InvalidArgument for duplicate names, empty names,
// "__metadata__" as a name, negative dims or nbytes != dtype_size x numel; IoError when
// the file cannot be written.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Largest header we accept: the reference implementation's limit (100 MB); larger values
// are corruption, not checkpoints.
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

}  // namespace kvq
