// From a resolved dataset and a tokenizer to the token stream an evaluation runs on:
// protocol text (datasets/protocol.h) -> BOS + encode(text) -> the protocol's token limit.
// Also the check that a tokenizer belongs to a model, done before any forward pass so a
// wrong --tokenizer is one clear line instead of an id-out-of-range deep in the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "datasets/protocol.h"
#include "datasets/spec.h"
#include "formats/tokenizer.h"

namespace kvq::datasets {

struct EvalTokens {
  std::vector<int32_t> ids;
  size_t text_bytes = 0;        // bytes of the protocol text that was tokenized
  int64_t tokens_total = 0;     // ids before the protocol's limit
  double tokenize_seconds = 0.0;
};

// encode(text) with the tokenizer's own BOS rule, cut to protocol_token_limit(p, seqlen).
// That is `tokenizer(text)` of the reference code: BOS + ids for Llama 2 and llama2.c
// tokenizers, no BOS for tokenizers whose template adds none (SmolLM).
EvalTokens tokenize_for_eval(const std::string& text, Protocol p, const Tokenizer& tok, int seqlen);

// load_protocol_text + tokenize_for_eval.
EvalTokens load_eval_tokens(const ResolvedDataset& ds, const Tokenizer& tok, int seqlen);

// The embedding must have a row for every tokenizer id, and no more rows than padding
// explains: tokenizer_vocab <= rows <= tokenizer_vocab + max(256, tokenizer_vocab / 64).
// (Checkpoints pad embeddings for GEMM alignment: Qwen2.5 has 151,936 rows for 151,665
// ids, Phi-3 32,064 for 32,011; a 512-id tokenizer on a 32,000-row model is a mistake.)
// Throws InvalidArgument naming the tokenizer file and both sizes.
void check_tokenizer_vocab(const Tokenizer& tok, int64_t embedding_rows, const std::string& model_path);

}  // namespace kvq::datasets
