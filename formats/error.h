// The exceptions kvq's libraries throw. Tools catch kvq::Error and print its what() as one
// line, `TOOL: error: WHERE: MESSAGE`, plus `hint: ...` when there is one (STYLE.md,
// "Errors"). Every error names the file it is about, and the byte offset where one helps.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kvq {

class Error : public std::runtime_error {
 public:
  // `where` is a file path, optionally with an offset ("model.kvqp: offset 4096"), or
  // another short locator ("--kv"); it may be empty.
  Error(std::string where, const std::string& message, std::string hint = {});

  const std::string& where() const noexcept { return where_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& hint() const noexcept { return hint_; }

 private:
  std::string where_;
  std::string message_;
  std::string hint_;
};

// The bytes of a file are not what its format says: truncation, bad JSON, overlaps, a
// size that does not match dtype x shape, a digest mismatch. offset < 0 means "no offset".
class FormatError : public Error {
 public:
  FormatError(const std::string& path, int64_t offset, const std::string& message,
              std::string hint = {});
  FormatError(const std::string& path, const std::string& message, std::string hint = {})
      : FormatError(path, -1, message, std::move(hint)) {}
  int64_t offset() const noexcept { return offset_; }

 private:
  int64_t offset_;
};

// A file or folder cannot be opened, read or written.
class IoError : public Error {
 public:
  using Error::Error;
};

// Well-formed input that kvq does not support: an architecture, a dtype, a newer format
// version, a GPU generation.
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// Inputs that do not belong together or values out of range: a profile for another model,
// a tokenizer whose vocabulary does not match the embedding, --bits 5.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// Resources: out of memory (host or device), with the bytes asked and free.
class ResourceError : public Error {
 public:
  using Error::Error;
};

}  // namespace kvq
