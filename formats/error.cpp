#include "formats/error.h"

#include <utility>

namespace kvq {

namespace {

std::string join(const std::string& where, const std::string& message) {
  return where.empty() ? message : where + ": " + message;
}

std::string locate(const std::string& path, int64_t offset) {
  return offset < 0 ? path : path + ": offset " + std::to_string(offset);
}

}  // namespace

Error::Error(std::string where, const std::string& message, std::string hint)
    : std::runtime_error(join(where, message)),
      where_(std::move(where)),
      message_(message),
      hint_(std::move(hint)) {}

FormatError::FormatError(const std::string& path, int64_t offset, const std::string& message,
                         std::string hint)
    : Error(locate(path, offset), message, std::move(hint)), offset_(offset) {}

}  // namespace kvq
