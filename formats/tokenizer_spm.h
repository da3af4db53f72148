// SentencePiece tokenizer.model through libsentencepiece: encode, decode, BOS/EOS and the
// vocabulary size from the model proto. The library does the normalization and the BPE or
// unigram segmentation exactly as Python's `sentencepiece` does (same C++ code).
#pragma once

#include <memory>
#include <string>

#include "formats/tokenizer.h"

namespace kvq {

std::unique_ptr<Tokenizer> load_spm_tokenizer(const std::string& model_path,
                                              const TokenizerConfig& config);

}  // namespace kvq
