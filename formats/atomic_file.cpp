// Atomic file replacement: temp file + fsync + rename (see atomic_file.h).
#include "formats/atomic_file.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/error.h"

namespace kvq {

namespace {

// Large enough that writing a 45 MB checkpoint is a few hundred syscalls, small enough to
// not matter next to the tensors themselves.
constexpr size_t kBufferSize = size_t{1} << 20;

std::string errno_text(int err) { return std::strerror(err); }

std::string parent_folder(const std::string& path) {
  std::filesystem::path p(path);
  std::filesystem::path parent = p.parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

void write_all(int fd, const uint8_t* p, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(path, "write failed: " + errno_text(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  if (path_.empty()) throw IoError("", "cannot write a file with an empty path");
  static std::atomic<uint64_t> counter{0};
  // O_EXCL with a fresh name rather than mkstemp: mkstemp creates mode 0600, and the
  // output should get the usual 0666 & ~umask, which open() applies for us.
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path_ = path_ + ".tmp." + std::to_string(::getpid()) + "." +
                 std::to_string(counter.fetch_add(1));
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ >= 0) break;
    if (errno != EEXIST) {
      const int err = errno;
      temp_path_.clear();
      throw IoError(path_, "cannot create a temporary file in " + parent_folder(path_) + ": " +
                               errno_text(err));
    }
  }
  if (fd_ < 0) {
    temp_path_.clear();
    throw IoError(path_, "cannot create a temporary file: 100 names taken");
  }
  buffer_.reserve(kBufferSize);
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (done_) return;
  done_ = true;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (done_) throw IoError(path_, "write after commit or discard");
  const auto* p = static_cast<const uint8_t*>(data);
  written_ += n;
  if (buffer_.size() + n <= kBufferSize) {
    buffer_.insert(buffer_.end(), p, p + n);
    return;
  }
  flush();
  if (n >= kBufferSize) {
    write_all(fd_, p, n, path_);  // large tensors go straight through
  } else {
    buffer_.assign(p, p + n);
  }
}

void AtomicFile::flush() {
  if (buffer_.empty()) return;
  write_all(fd_, buffer_.data(), buffer_.size(), path_);
  buffer_.clear();
}

void AtomicFile::commit() {
  if (done_) throw IoError(path_, "commit after commit or discard");
  try {
    flush();
    if (::fsync(fd_) != 0) throw IoError(path_, "fsync failed: " + errno_text(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw IoError(path_, "close failed: " + errno_text(errno));
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      throw IoError(path_, "cannot rename the temporary file over it: " + errno_text(errno));
    }
  } catch (...) {
    discard();
    throw;
  }
  done_ = true;
  // Make the rename itself durable. Some filesystems refuse fsync on a folder (EINVAL);
  // the file is already in place then, so that is not an error.
  const int dir = ::open(parent_folder(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    const int rc = ::fsync(dir);
    const int err = errno;
    ::close(dir);
    if (rc != 0 && err != EINVAL && err != EROFS) {
      throw IoError(path_, "fsync of the folder failed: " + errno_text(err));
    }
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

void write_file_atomic(const std::string& path, std::string_view data) {
  write_file_atomic(path, data.data(), data.size());
}

void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& fill) {
  AtomicFile f(path);
  fill(f);
  f.commit();
}

}  // namespace kvq
