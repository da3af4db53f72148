// See protocol.h.
#include "datasets/protocol.h"

#include <filesystem>

#include "datasets/jsonl.h"
#include "datasets/text_file.h"
#include "datasets/wikitext.h"

namespace kvq::datasets {

std::string_view protocol_name(Protocol p) {
  switch (p) {
    case Protocol::kWikiText: return "wikitext";
    case Protocol::kText: return "text";
    case Protocol::kC4: return "c4";
  }
  return "?";
}

std::optional<Protocol> parse_protocol(std::string_view name) {
  if (name == "wikitext") return Protocol::kWikiText;
  if (name == "text") return Protocol::kText;
  if (name == "c4") return Protocol::kC4;
  return std::nullopt;
}

Protocol infer_protocol(const std::string& path) {
  if (is_wikitext_raw_name(path)) return Protocol::kWikiText;
  const std::string name = std::filesystem::path(path).filename().string();
  for (const char* suffix : {".jsonl", ".json", ".json.gz", ".jsonl.gz"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      return Protocol::kC4;
    }
  }
  return Protocol::kText;
}

std::string load_protocol_text(const std::string& path, Protocol p) {
  switch (p) {
    case Protocol::kWikiText: return load_wikitext(path);
    case Protocol::kC4: return join_rows(read_jsonl_texts(path, "text", kC4Documents), " ");
    case Protocol::kText: break;
  }
  return read_text_file(path);
}

int64_t protocol_token_limit(Protocol p, int seqlen) {
  return p == Protocol::kC4 ? kC4WindowsCap * seqlen : -1;
}

}  // namespace kvq::datasets
