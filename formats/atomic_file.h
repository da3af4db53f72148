// Writing an output file atomically: the bytes go to a temporary file in the destination's
// folder, which is fsync'ed and renamed over the destination only when everything was
// written. A failure at any point (disk full, an exception in the caller, a crash) leaves
// the destination as it was, never half-written (STYLE.md, "Errors"); the temporary is
// removed on every failure path that returns control to us.
//
// Goals: one way for every kvq tool to write profiles, checkpoints, reports.
// Non-goals: concurrent writers to one destination (the last rename wins), preserving the
// old file's owner or mode (the new file gets 0666 & ~umask, like a plain create).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kvq {

class AtomicFile {
 public:
  // Creates the temporary "<path>.tmp.<pid>.<n>" in the destination's folder. Throws
  // IoError naming the destination when the folder does not exist or is not writable.
  explicit AtomicFile(std::string path);
  // Removes the temporary when commit() was not reached.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes (buffered). Throws IoError (e.g. "No space left on device").
  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // Flushes, fsyncs, renames over the destination and fsyncs the folder. After a throw
  // the temporary is gone and the destination untouched.
  void commit();
  // Drops the temporary now (the destructor does this too).
  void discard() noexcept;

  const std::string& path() const noexcept { return path_; }
  const std::string& temp_path() const noexcept { return temp_path_; }
  uint64_t bytes_written() const noexcept { return written_; }

 private:
  void flush();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;
  uint64_t written_ = 0;
  bool done_ = false;
};

// Writes `n` bytes to `path` atomically.
void write_file_atomic(const std::string& path, const void* data, size_t n);
void write_file_atomic(const std::string& path, std::string_view data);
// Calls `fill` with an open AtomicFile and commits when it returns; when it throws, the
// temporary is removed and the exception propagates.
void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& fill);

}  // namespace kvq
