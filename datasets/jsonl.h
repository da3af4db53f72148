// JSON-lines datasets: one JSON object per line with a string field (default "text"), as
// in the C4 shards (en/c4-validation.00000-of-00008.json.gz: {"text", "timestamp", "url"}).
// Files may be gzip-compressed (zlib reads gzip and plain files alike, so the choice is
// made from the bytes, not the name). Reading stops after `max_rows` rows, so the C4
// protocol reads only the first 1,100 documents of a 40 MB shard.
//
// Errors: IoError when the file cannot be opened; FormatError naming the file and line for
// invalid JSON or a row without the field (with the byte offset for uncompressed files),
// for a corrupt or truncated gzip stream, and "empty" when no row was read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvq::datasets {

// The `field` strings of the first `max_rows` rows (all rows when max_rows < 0). Blank
// lines are skipped; they are not rows.
std::vector<std::string> read_jsonl_texts(const std::string& path, const std::string& field = "text",
                                          int64_t max_rows = -1);

}  // namespace kvq::datasets
