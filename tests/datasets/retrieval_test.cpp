// Passkey and line retrieval: generators are deterministic for a seed, prompts have the
// asked length and hold the answer once, scoring rejects longer digit runs; and the fp16
// accuracy of the testbed model on CPU (the model was trained on such documents:
// PROVENANCE.md reports passkey 1.00 at ~700 tokens, lines 0.00).
#include <cstdio>
#include <string>

#include "datasets/retrieval.h"
#include "datasets/text_file.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;

namespace {
const std::string& model_dir() {
  static const std::string d = kvq_test::shared_path("models/kvq-testbed-llama2-23m").string();
  return d;
}
int count(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("retrieval_correct: the answer as a whole number", "[retrieval]") {
  CHECK(retrieval_correct(" 12345. Remember it.", "12345"));
  CHECK(retrieval_correct("12345", "12345"));
  CHECK_FALSE(retrieval_correct(" 123456", "12345"));
  CHECK_FALSE(retrieval_correct(" 012345", "12345"));
  CHECK(retrieval_correct(" 123456 or 12345", "12345"));  // a later whole match counts
  CHECK_FALSE(retrieval_correct(" 1234", "12345"));
  CHECK_FALSE(retrieval_correct("anything", ""));
}

TEST_CASE("passkey and line generators: seeded, sized, answer present once", "[retrieval]") {
  const auto tok = load_tokenizer(model_dir());
  const std::string filler = read_text_file(kvq_test::shared_path("datasets/kvq-docs/valid.txt").string());
  const uint64_t seed = kvq_test::test_seed(7);
  const auto a = make_passkey_samples(*tok, filler, 700, 5, seed);
  const auto b = make_passkey_samples(*tok, filler, 700, 5, seed);
  REQUIRE(a.size() == 5);
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].prompt == b[i].prompt);
    CHECK(a[i].answer.size() == 5);
    // Per-line counts approximate the joined text: within 5% of the target (measured
    // spread of the seams is a few tokens; one filler line can be ~100 tokens short).
    CHECK(a[i].prompt.size() >= 600);
    CHECK(a[i].prompt.size() <= 735);
    const std::string text = tok->decode(a[i].prompt);
    CHECK(count(text, a[i].answer) == 2);  // "The pass key is K. Remember it. K is the pass key."
    CHECK(text.size() > 1000);
  }
  CHECK(make_passkey_samples(*tok, filler, 700, 5, seed + 1)[0].prompt != a[0].prompt);
  CHECK_THROWS_AS(make_passkey_samples(*tok, filler, 40, 1, seed), InvalidArgument);
  CHECK_THROWS_AS(make_passkey_samples(*tok, "\n \n", 700, 1, seed), FormatError);
  CHECK_THROWS_AS(make_passkey_samples(*tok, filler, 700, 0, seed), InvalidArgument);

  const auto l = make_line_samples(*tok, 17, 3, seed);
  REQUIRE(l.size() == 3);
  for (const auto& s : l) {
    const std::string text = tok->decode(s.prompt);
    CHECK(count(text, "REGISTER_CONTENT is <") == 17);
    CHECK(text.find("<" + s.answer + ">") != std::string::npos);
  }
  CHECK(make_line_samples(*tok, 17, 3, seed)[2].prompt == l[2].prompt);
  CHECK_THROWS_AS(make_line_samples(*tok, 0, 1, seed), InvalidArgument);
  CHECK_THROWS_AS(make_line_samples(*tok, 901, 1, seed), InvalidArgument);
}

TEST_CASE("testbed fp16 passkey and line accuracy on CPU", "[retrieval]") {
  auto model = load_model(model_dir());
  auto be = make_cpu_backend(model);
  const auto tok = load_tokenizer(model_dir());
  const std::string filler = read_text_file(kvq_test::shared_path("datasets/kvq-docs/valid.txt").string());
  const uint64_t seed = kvq_test::test_seed(1234);
  const auto pk = evaluate_retrieval(*be, *tok, make_passkey_samples(*tok, filler, 700, 20, seed));
  std::printf("passkey fp16 testbed: %lld/%lld = %.2f (mean prompt %.0f tokens)\n",
              static_cast<long long>(pk.correct), static_cast<long long>(pk.trials), pk.accuracy,
              pk.mean_prompt_tokens);
  for (size_t i = 0; i < 3; ++i) std::printf("  output %zu: [%s]\n", i, pk.outputs[i].c_str());
  const auto ln = evaluate_retrieval(*be, *tok, make_line_samples(*tok, 17, 10, seed));
  std::printf("lines(17) fp16 testbed: %lld/%lld = %.2f\n", static_cast<long long>(ln.correct),
              static_cast<long long>(ln.trials), ln.accuracy);
  // The reference is 1.00 over 50 trials; 20 of our own prompts must be at least 0.9.
  CHECK(pk.accuracy >= 0.9);
  CHECK(ln.accuracy >= 0.0);
  // A prompt that does not fit the window (1024) with 10 new tokens is refused before any work.
  RetrievalSample big;
  big.prompt.assign(1015, 100);
  big.answer = "1";
  CHECK_THROWS_AS(evaluate_retrieval(*be, *tok, {big}), InvalidArgument);
}
