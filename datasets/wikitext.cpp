// See wikitext.h.
#include "datasets/wikitext.h"

#include <filesystem>

#include "datasets/text_file.h"
#include "formats/error.h"

namespace kvq::datasets {

std::vector<std::string> wikitext_rows_from_text(std::string_view text) {
  std::vector<std::string> rows;
  size_t i = 0;
  while (i < text.size()) {
    // Python universal newlines: a line ends at \n, \r\n or a lone \r, and is read with
    // that end turned into "\n". The last line may have no end at all.
    size_t j = i;
    while (j < text.size() && text[j] != '\n' && text[j] != '\r') ++j;
    std::string line(text.substr(i, j - i));
    if (j < text.size()) {
      line.push_back('\n');
      j += (text[j] == '\r' && j + 1 < text.size() && text[j + 1] == '\n') ? 2 : 1;
    }
    if (is_blank(line)) line.clear();
    rows.push_back(std::move(line));
    i = j;
  }
  return rows;
}

std::vector<std::string> wikitext_rows(const std::string& path) {
  // read_text_file rejects empty and blank files, so at least one row has text.
  return wikitext_rows_from_text(read_text_file(path));
}

std::string join_rows(const std::vector<std::string>& rows, std::string_view sep) {
  size_t total = rows.empty() ? 0 : sep.size() * (rows.size() - 1);
  for (const auto& r : rows) total += r.size();
  std::string out;
  out.reserve(total);
  for (size_t k = 0; k < rows.size(); ++k) {
    if (k > 0) out.append(sep);
    out.append(rows[k]);
  }
  return out;
}

std::string load_wikitext(const std::string& path) { return join_rows(wikitext_rows(path)); }

bool is_wikitext_raw_name(const std::string& path) {
  const std::string name = std::filesystem::path(path).filename().string();
  return name.size() > 9 && name.rfind("wiki.", 0) == 0 &&
         name.compare(name.size() - 4, 4, ".raw") == 0;
}

}  // namespace kvq::datasets
