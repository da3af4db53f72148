// llama2.c tokenizer .bin: int32 max_token_length, then per token float32 score, int32
// byte length and the bytes (SentencePiece's "▁" already replaced by a space). The file
// does not store the vocabulary size: tokens are read to the end of the file.
//
// Encoding is llama2.c's (run.c encode()): a dummy-prefix " " token when the text is not
// empty, one token per UTF-8 code point (or its bytes as <0xNN> = id byte + 3 when the
// code point is not a token), then repeatedly merge the adjacent pair whose concatenated
// string is a token with the highest score (leftmost on ties). Here the merges come from a
// priority queue over a linked list instead of llama2.c's rescan per merge, with the same
// result. Decoding is llama2.c's decode(): the leading space of a piece after BOS is
// dropped and <0xNN> pieces become their byte; BOS and EOS themselves decode to nothing
// (their pieces are "\n<s>\n" and "\n</s>\n").
#pragma once

#include <memory>
#include <string>

#include "formats/tokenizer.h"

namespace kvq {

// expected_vocab > 0: the number of tokens the checkpoint says; a file with another count
// is a FormatError.
std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_path,
                                                  const TokenizerConfig& config,
                                                  int expected_vocab = -1);

}  // namespace kvq
