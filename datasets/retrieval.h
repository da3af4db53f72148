// Synthetic long-context retrieval: passkey retrieval (Mohtashami & Jaggi's landmark
// attention test, as used by LongLoRA and the KV-quantization papers) and LongEval-style
// line retrieval (LMSYS LongChat). Both are generated from a seed, so a profile and fp16
// see exactly the same prompts; accuracy = share of greedy continuations that contain the
// answer.
//
// Passkey prompt (text, tokenized whole with BOS):
//   "There is an important info hidden inside a lot of irrelevant text. Find it and memorize
//    them. I will quiz you about the important information there.\n\n"
//   filler lines ... "The pass key is 12345. Remember it. 12345 is the pass key.\n"
//   ... filler lines "\n\nWhat is the pass key? The pass key is"
// Filler: consecutive non-blank lines of a text file (e.g. kvq-docs valid.txt) from a
// seeded start line, as many as reach the context length; the key line goes in at a seeded
// depth (a line boundary). The 5-digit key is uniform in 10000..99999.
//
// Line prompt (LongEval's wording):
//   "Below is a record of lines I want you to remember. Each line begins with 'line <line
//    index>' and contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value.
//    For each line index, memorize its corresponding <REGISTER_CONTENT>. At the end of the
//    record, I will ask you to retrieve the corresponding <REGISTER_CONTENT> of a certain line
//    index. Now the record start:\n\n"
//   "line swift-river: REGISTER_CONTENT is <24175>\n" x n_lines
//   "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line swift-river? I
//    need the number.\nAnswer: The <REGISTER_CONTENT> in line swift-river is <"
// Line names are distinct adjective-noun pairs, numbers uniform in 1..50000.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/tokenizer.h"
#include "lib/backend.h"

namespace kvq::datasets {

struct RetrievalSample {
  std::vector<int32_t> prompt;  // token ids, BOS included when the tokenizer adds it
  std::string answer;           // digits the continuation must contain
  int target_tokens = 0;        // the context length asked for (passkey) / 0 (lines)
  int n_lines = 0;              // lines: how many lines; passkey: 0
  double depth = 0.0;           // where the answer sits, 0 = start .. 1 = end
};

// `trials` passkey prompts of about `context_tokens` tokens each (within the length of one
// filler line above it). InvalidArgument when context_tokens is too short for the fixed
// text, FormatError when the filler has no non-blank line.
std::vector<RetrievalSample> make_passkey_samples(const Tokenizer& tok, const std::string& filler_text,
                                                  int context_tokens, int trials, uint64_t seed);

// `trials` line-retrieval prompts of n_lines lines each (n_lines in 1..2000).
std::vector<RetrievalSample> make_line_samples(const Tokenizer& tok, int n_lines, int trials,
                                               uint64_t seed);

// Whether `generated` contains `answer` as a number: the digits must not be part of a
// longer run of digits ("12345" in "The pass key is 12345." but not in "123456").
bool retrieval_correct(const std::string& generated, const std::string& answer);

struct RetrievalOptions {
  int max_new_tokens = 10;
  ForwardObserver* observer = nullptr;
  std::function<void(int64_t done, int64_t total)> progress;
};

struct RetrievalResult {
  int64_t trials = 0;
  int64_t correct = 0;
  double accuracy = 0.0;
  double mean_prompt_tokens = 0.0;
  std::vector<std::string> outputs;  // decoded continuations, in sample order
};

// Greedy continuation of every sample (one at a time), scored with retrieval_correct.
// Throws InvalidArgument when a prompt plus max_new_tokens exceeds the model's window.
RetrievalResult evaluate_retrieval(Backend& backend, const Tokenizer& tok,
                                   const std::vector<RetrievalSample>& samples,
                                   const RetrievalOptions& opt = {});

}  // namespace kvq::datasets
