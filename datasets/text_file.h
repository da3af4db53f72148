// Reading whole dataset files into memory: the bytes of a plain text file, with the two
// errors every dataset reader shares (a file that cannot be read, a file that is empty).
// Evaluation texts are small (WikiText-2 test is 1.3 MB, kvq-docs valid 1.5 MB), so one
// read into a std::string is simpler and no slower than streaming.
#pragma once

#include <string>

namespace kvq::datasets {

// The file's bytes. IoError naming the path when it cannot be opened or read.
std::string read_file_bytes(const std::string& path);

// A plain text dataset: the file's bytes, unchanged. FormatError "empty" when the file has
// no bytes or only whitespace (nothing to predict).
std::string read_text_file(const std::string& path);

// True when `text` holds nothing but ASCII/Unicode whitespace (Python's str.isspace set,
// UTF-8 encoded) or is empty.
bool is_blank(std::string_view text);

}  // namespace kvq::datasets
