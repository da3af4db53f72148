// WikiText raw files (wiki.train.raw / wiki.valid.raw / wiki.test.raw of
// wikitext-2-raw-v1 and wikitext-103-raw-v1) read the way the reference Python code reads
// them, so that perplexities are comparable with the papers':
//   rows = Hugging Face `datasets` rows: the file's lines with line ends kept, and every
//          whitespace-only line replaced by "" (the HF wikitext builder yields
//          `line if line.strip() else ""`; Python text mode turns \r\n and \r into \n);
//   text = "\n\n".join(rows)  (GPTQ, KVQuant, KIVI, llama.cpp's HF-style scripts).
// For the test split this gives 4,358 rows and 1,296,370 bytes with sha256
// 696cca6b...dfae83 (shared/datasets/wikitext-2-raw/PROVENANCE.md); tests check both.
//
// Non-goals: the tokenized (<unk>) WikiText release, and llama-perplexity's protocol
// (raw file bytes): use the text protocol for that.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvq::datasets {

// Rows as described above. FormatError "empty" for an empty or blank file, IoError when
// it cannot be read.
std::vector<std::string> wikitext_rows(const std::string& path);
// Rows from text already in memory.
std::vector<std::string> wikitext_rows_from_text(std::string_view text);

// "\n\n".join(rows).
std::string join_rows(const std::vector<std::string>& rows, std::string_view sep = "\n\n");

// The evaluation text of a WikiText raw file: join_rows(wikitext_rows(path)).
std::string load_wikitext(const std::string& path);

// True when the file name looks like a WikiText raw split ("wiki.test.raw",
// "wiki.valid.raw", "wiki.train.raw", or any "wiki.*.raw").
bool is_wikitext_raw_name(const std::string& path);

}  // namespace kvq::datasets
