// RAII read-only mmap of a whole file (see mapped_file.h).
#include "formats/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

#include "formats/error.h"

namespace kvq {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes the descriptor on every path out of the constructor.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

MappedFile::MappedFile(std::string path) : path_(std::move(path)) {
  Fd fd{::open(path_.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) {
    const int err = errno;
    throw IoError(path_, "cannot open for reading: " + errno_text(err),
                  err == ENOENT ? "check the path; relative paths are resolved from the "
                                  "current directory"
                                : "");
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) throw IoError(path_, "cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw IoError(path_, "not a regular file");
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) return;  // mmap of length 0 is EINVAL; an empty span needs no mapping
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    size_ = 0;
    throw IoError(path_, "cannot map " + std::to_string(st.st_size) + " bytes: " + errno_text(err));
  }
  data_ = static_cast<const uint8_t*>(p);
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace kvq
