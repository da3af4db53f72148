// See jsonl.h.
#include "datasets/jsonl.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "datasets/text_file.h"
#include "formats/error.h"

namespace kvq::datasets {

namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

class JsonlParser {
 public:
  JsonlParser(const std::string& path, const std::string& field, int64_t max_rows, bool compressed)
      : path_(path), field_(field), max_rows_(max_rows), compressed_(compressed) {}

  bool done() const { return max_rows_ >= 0 && static_cast<int64_t>(rows_.size()) >= max_rows_; }

  // One line without its "\n"; `offset` is where it starts in the (decompressed) stream.
  void line(std::string_view text, uint64_t offset) {
    ++line_no_;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (is_blank(text) || done()) return;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      fail(offset, std::string("invalid JSON: ") + e.what());
    }
    if (!row.is_object()) fail(offset, "expected a JSON object, got " + std::string(row.type_name()));
    const auto it = row.find(field_);
    if (it == row.end()) fail(offset, "row has no \"" + field_ + "\" field");
    if (!it->is_string()) {
      fail(offset, "field \"" + field_ + "\" is " + std::string(it->type_name()) + ", expected a string");
    }
    rows_.push_back(it->get<std::string>());
  }

  std::vector<std::string> take() { return std::move(rows_); }

 private:
  [[noreturn]] void fail(uint64_t offset, const std::string& msg) const {
    // The offset is only meaningful to the user for uncompressed files.
    throw FormatError(path_, compressed_ ? -1 : static_cast<int64_t>(offset),
                      "line " + std::to_string(line_no_) + ": " + msg);
  }

  const std::string& path_;
  const std::string& field_;
  int64_t max_rows_;
  bool compressed_;
  int64_t line_no_ = 0;
  std::vector<std::string> rows_;
};

}  // namespace

std::vector<std::string> read_jsonl_texts(const std::string& path, const std::string& field,
                                          int64_t max_rows) {
  {
    // gzopen's errors do not say why; open once with stdio for a clear IoError.
    std::unique_ptr<FILE, int (*)(FILE*)> probe(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!probe) throw IoError(path, std::string("cannot open: ") + std::strerror(errno));
  }
  GzPtr gz(gzopen(path.c_str(), "rb"));
  if (!gz) throw IoError(path, "cannot open for reading");
  gzbuffer(gz.get(), 1 << 17);
  const bool compressed = gzdirect(gz.get()) == 0;

  JsonlParser parser(path, field, max_rows, compressed);
  std::string pending;     // bytes of a line not yet ended
  uint64_t pending_at = 0; // stream offset of pending[0]
  uint64_t consumed = 0;   // bytes of the stream read so far
  std::vector<char> buf(1 << 17);
  for (;;) {
    const int n = gzread(gz.get(), buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int code = 0;
      const char* msg = gzerror(gz.get(), &code);
      throw FormatError(path, std::string("corrupt gzip stream after ") + std::to_string(consumed) +
                                  " decompressed bytes: " + (msg ? msg : "unknown zlib error"));
    }
    if (n == 0) {
      int code = Z_OK;
      const char* msg = gzerror(gz.get(), &code);
      if (code == Z_BUF_ERROR) {
        // zlib reports a stream that ends before its trailer as Z_BUF_ERROR at EOF.
        throw FormatError(path, std::string("truncated gzip stream after ") + std::to_string(consumed) +
                                    " decompressed bytes: " + (msg ? msg : ""));
      }
      if (code != Z_OK) throw FormatError(path, std::string("gzip error: ") + (msg ? msg : ""));
      break;
    }
    std::string_view chunk(buf.data(), static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = chunk.find('\n', start)) != std::string_view::npos; start = nl + 1) {
      if (pending.empty()) {
        parser.line(chunk.substr(start, nl - start), consumed + start);
      } else {
        pending.append(chunk.substr(start, nl - start));
        parser.line(pending, pending_at);
        pending.clear();
      }
      if (parser.done()) return parser.take();
    }
    if (start < chunk.size()) {
      if (pending.empty()) pending_at = consumed + start;
      pending.append(chunk.substr(start));
    }
    consumed += static_cast<uint64_t>(n);
  }
  if (!pending.empty()) parser.line(pending, pending_at);
  std::vector<std::string> rows = parser.take();
  if (rows.empty()) throw FormatError(path, "empty dataset file (no JSON rows)");
  return rows;
}

}  // namespace kvq::datasets
