// Evaluation protocols: how a dataset file becomes the text that is tokenized, and how
// many tokens of it are evaluated. All three follow the reference Python code (GPTQ's
// datautils.py, which KVQuant and KIVI reuse), so numbers compare with the papers':
//   wikitext  rows of a WikiText raw file, "\n\n".join(rows) (datasets/wikitext.h);
//   c4        the first 1,100 documents of a C4 JSON-lines shard, " ".join(texts), and
//             only the first 256 * seqlen tokens of that are evaluated;
//   text      the file's bytes as they are (any plain text file; kvq-docs).
// The token stream is BOS + encode(text) in every protocol (the HF Llama tokenizer adds
// BOS in the reference code), then cut into windows (datasets/windows.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvq::datasets {

enum class Protocol : uint8_t { kWikiText, kText, kC4 };

inline constexpr int kC4Documents = 1100;        // GPTQ: valdata[:1100]
inline constexpr int64_t kC4WindowsCap = 256;    // GPTQ: input_ids[:, :256 * seqlen]

std::string_view protocol_name(Protocol p);  // "wikitext", "text", "c4"
std::optional<Protocol> parse_protocol(std::string_view name);

// wikitext for "wiki.*.raw", c4 for JSON-lines names (*.jsonl, *.json, *.json.gz,
// *.jsonl.gz), text otherwise.
Protocol infer_protocol(const std::string& path);

// The text to tokenize, per the protocol. Throws the readers' IoError / FormatError.
std::string load_protocol_text(const std::string& path, Protocol p);

// How many tokens of the stream the protocol evaluates: 256 * seqlen for c4, all (-1)
// otherwise.
int64_t protocol_token_limit(Protocol p, int seqlen);

}  // namespace kvq::datasets
