// See eval_tokens.h.
#include "datasets/eval_tokens.h"

#include <algorithm>
#include <chrono>

#include "formats/error.h"

namespace kvq::datasets {

EvalTokens tokenize_for_eval(const std::string& text, Protocol p, const Tokenizer& tok, int seqlen) {
  const auto t0 = std::chrono::steady_clock::now();
  EvalTokens out;
  out.text_bytes = text.size();
  // tokenizer(text) in the reference code: the tokenizer's own template decides BOS.
  out.ids = tok.encode(text, tok.add_bos_by_default());
  out.tokens_total = static_cast<int64_t>(out.ids.size());
  const int64_t limit = protocol_token_limit(p, seqlen);
  if (limit >= 0 && static_cast<int64_t>(out.ids.size()) > limit) out.ids.resize(static_cast<size_t>(limit));
  out.tokenize_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

EvalTokens load_eval_tokens(const ResolvedDataset& ds, const Tokenizer& tok, int seqlen) {
  return tokenize_for_eval(load_protocol_text(ds.path, ds.protocol), ds.protocol, tok, seqlen);
}

void check_tokenizer_vocab(const Tokenizer& tok, int64_t embedding_rows, const std::string& model_path) {
  const int64_t v = tok.vocab_size();
  const int64_t slack = std::max<int64_t>(256, v / 64);
  if (v <= embedding_rows && embedding_rows <= v + slack) return;
  throw InvalidArgument(tok.path(),
                        "tokenizer has " + std::to_string(v) + " ids but the model's embedding has " +
                            std::to_string(embedding_rows) + " rows (" + model_path + ")",
                        "pass the tokenizer this model was trained with (--tokenizer)");
}

}  // namespace kvq::datasets
