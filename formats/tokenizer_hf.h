// Hugging Face tokenizer.json with a BPE model, as the `tokenizers` package runs it:
// added tokens are cut out of the raw text first, then each remaining segment is
// normalized, pre-tokenized and BPE-encoded; the post-processor template adds BOS/EOS.
//
// Supported (everything else is an UnsupportedError naming the component):
//   normalizer     null, Sequence, Prepend, Replace (string pattern)
//   pre_tokenizer  null, Sequence, ByteLevel (GPT-2 regex or none), Digits, Split with the
//                  GPT-2 / Llama 3 / Qwen2 regex and Isolated behaviour
//   model          BPE: merges as "a b" strings or [a, b] pairs, byte_fallback, fuse_unk,
//                  ignore_merges, unk_token (no dropout, no subword prefix/suffix)
//   post_processor null, TemplateProcessing, ByteLevel (no-op for ids), Sequence
//   decoder        null, Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel
// tokenizer_config.json: a LlamaTokenizer(Fast) class rebuilds the template from
// add_bos_token / add_eos_token, as transformers does.
#pragma once

#include <memory>
#include <string>

#include "formats/tokenizer.h"

namespace kvq {

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_path,
                                             const TokenizerConfig& config);

}  // namespace kvq
