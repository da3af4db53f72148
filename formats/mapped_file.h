// A whole file mapped read-only into memory. Checkpoint readers hand out TensorViews that
// point straight into the mapping, so a 45 MB fp16 model costs no copy and no heap; the
// pages come from the page cache and are shared between processes.
//
// Goals: RAII (unmapped on destruction), movable, empty files allowed (size 0, data may be
// nullptr), errors name the file (IoError).
// Non-goals: writable mappings, partial mappings, files that change while mapped (the
// bytes are whatever the kernel shows; writers in kvq replace files by rename, which
// leaves an existing mapping on the old inode intact).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace kvq {

class MappedFile {
 public:
  // Maps `path`. Throws IoError naming the file when it cannot be opened, is not a
  // regular file, or cannot be mapped.
  explicit MappedFile(std::string path);
  ~MappedFile();

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const noexcept { return path_; }
  const uint8_t* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  std::span<const uint8_t> bytes() const noexcept { return {data_, size_}; }

 private:
  void release() noexcept;

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvq
