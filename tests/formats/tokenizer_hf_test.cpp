// Hugging Face tokenizer.json (BPE) against the reference ids of the `tokenizers` package
// (tests/data/tokenizer/expected-*.json, made on the GPU machine), in both families: the
// SentencePiece-style Llama 2 file and the byte-level SmolLM file. Also: the priority-queue
// BPE against a naive rescan-per-merge BPE on random text, and synthetic files for added
// token flags and merge order.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <map>
#include <random>

#include "formats/error.h"
#include "formats/tokenizer.h"
#include "tests/catch.h"
#include "tests/formats/tokenizer_test_util.h"

using namespace kvq;
using kvq_test::read_json;

namespace {

std::vector<int32_t> as_ids(const nlohmann::json& a) { return a.get<std::vector<int32_t>>(); }

void check_vectors(const std::string& name) {
  const auto tok = load_tokenizer(kvq_test::shared_path("models/tokenizers/" + name).string());
  REQUIRE(tok->kind() == "hf-bpe");
  const auto ref = read_json(kvq_test::tokenizer_data_dir() / ("expected-" + name + ".json"));
  int n = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    INFO(name << " case: \"" << text << "\"");
    CHECK(tok->encode(text, false) == as_ids(c["ids"]));
    CHECK(tok->encode(text, true) == as_ids(c["ids_with_special"]));
    CHECK(tok->decode(as_ids(c["ids"])) == c["decoded"].get<std::string>());
    ++n;
  }
  CHECK(n == 35);
  const std::string valid = kvq_test::read_text(kvq_test::shared_path("datasets/kvq-docs/valid.txt"));
  REQUIRE(valid.size() >= 20000);
  const std::string text = valid.substr(0, 20000);
  const auto ids = tok->encode(text, false);
  const auto want = as_ids(ref["texts"]["kvq-docs-valid-20k"]);
  CHECK(ids.size() == want.size());
  CHECK(ids == want);
  CHECK(tok->decode(ids) == text);
}

}  // namespace

TEST_CASE("llama2-hf tokenizer.json matches tokenizers 0.23.2", "[tokenizer][hf]") {
  check_vectors("llama2-hf");
  const auto tok = load_tokenizer(kvq_test::shared_path("models/tokenizers/llama2-hf").string());
  CHECK(tok->vocab_size() == 32000);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  CHECK(tok->add_bos_by_default());
  CHECK(tok->token_text(29871) == "\xE2\x96\x81");  // "▁"
  CHECK(tok->token_text(13) == "<0x0A>");
}

TEST_CASE("smollm-135m byte-level tokenizer.json matches tokenizers 0.23.2", "[tokenizer][hf]") {
  check_vectors("smollm-135m");
  const auto tok = load_tokenizer(kvq_test::shared_path("models/tokenizers/smollm-135m").string());
  CHECK(tok->vocab_size() == 49153);  // 49152 + the fine-tuner's [PAD] added token
  CHECK(tok->bos_id() == 0);          // <|endoftext|> from tokenizer_config.json
  CHECK(tok->eos_id() == 0);
  CHECK_FALSE(tok->add_bos_by_default());  // no post-processor, no add_bos_token
  // Added tokens are matched in the raw text; [PAD] too.
  CHECK(tok->encode("<|im_start|>hi[PAD]", false) ==
        std::vector<int32_t>{1, tok->encode("hi", false)[0], 49152});
}

TEST_CASE("byte-level decode replaces invalid UTF-8 like from_utf8_lossy", "[tokenizer][hf]") {
  const auto tok = load_tokenizer(kvq_test::shared_path("models/tokenizers/smollm-135m").string());
  // "😀" is 4 bytes; its first token alone is an incomplete sequence: one U+FFFD.
  const auto ids = tok->encode("\xF0\x9F\x98\x80", false);
  REQUIRE(ids.size() >= 2);
  CHECK(tok->decode(std::vector<int32_t>{ids[0]}) == "\xEF\xBF\xBD");
  const auto llama = load_tokenizer(kvq_test::shared_path("models/tokenizers/llama2-hf").string());
  // ByteFallback: <0xF0><0x9F> alone is invalid: one U+FFFD per byte token.
  CHECK(llama->decode(std::vector<int32_t>{3 + 0xF0, 3 + 0x9F}) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(llama->decode(std::vector<int32_t>{3 + 0xC3, 3 + 0xA9}) == "\xC3\xA9");
  CHECK_THROWS_AS(llama->decode(std::vector<int32_t>{32000}), InvalidArgument);
  CHECK_THROWS_AS(llama->decode(std::vector<int32_t>{-1}), InvalidArgument);
}

namespace {

// Naive BPE: repeatedly merge the lowest-rank adjacent pair, leftmost first, rescanning
// the whole word each time. Built straight from the JSON, independently of formats/.
struct NaiveBpe {
  std::map<std::string, int32_t> vocab;
  std::map<std::pair<std::string, std::string>, int> rank;
  explicit NaiveBpe(const nlohmann::json& model) {
    for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) vocab[it.key()] = it.value();
    int r = 0;
    for (const auto& m : model["merges"]) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      rank.emplace(std::make_pair(s.substr(0, sp), s.substr(sp + 1)), r++);
    }
  }
  std::vector<int32_t> encode(const std::string& word) const {
    std::vector<std::string> sym;
    size_t pos = 0;
    while (pos < word.size()) {
      size_t len = 1;
      while (pos + len < word.size() && (static_cast<uint8_t>(word[pos + len]) & 0xC0) == 0x80) ++len;
      const std::string ch = word.substr(pos, len);
      if (vocab.count(ch)) {
        sym.push_back(ch);
      } else {
        for (unsigned char b : ch) {
          char name[8];
          std::snprintf(name, sizeof name, "<0x%02X>", b);
          sym.push_back(name);
        }
      }
      pos += len;
    }
    while (true) {
      int best = -1;
      size_t at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        const auto it = rank.find({sym[i], sym[i + 1]});
        if (it != rank.end() && (best < 0 || it->second < best)) {
          best = it->second;
          at = i;
        }
      }
      if (best < 0) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + at + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& s : sym) ids.push_back(vocab.at(s));
    return ids;
  }
};

}  // namespace

TEST_CASE("priority-queue BPE equals naive rescan BPE on random text", "[tokenizer][hf]") {
  const auto path = kvq_test::shared_path("models/tokenizers/llama2-hf/tokenizer.json");
  const auto tok = load_tokenizer(path.string());
  const NaiveBpe naive(read_json(path)["model"]);
  const uint64_t seed = kvq_test::test_seed(4242);
  std::mt19937_64 rng(seed);
  const std::vector<std::string> pool = {"the", " ", "  ", "ing", "a", "e", "\n", "1", "23", ".", ",",
                                         "é", "日本", "😀", "\t", "Zz", "q", "ab", "'s", "@-@", "\xC2\xA0"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) text += pool[rng() % pool.size()];
    std::string norm = "\xE2\x96\x81";  // the normalizer: Prepend("▁"), Replace(" " -> "▁")
    for (char c : text) norm += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
    INFO("seed " << seed << " trial " << trial << " text \"" << text << "\"");
    REQUIRE(tok->encode(text, false) == naive.encode(norm));
  }
}

namespace {

std::string write_tokenizer_json(const std::string& name, const nlohmann::json& j) {
  const auto dir = kvq_test::scratch_dir(name);
  const auto p = dir / "tokenizer.json";
  const std::string s = j.dump();
  kvq_test::write_bytes(p, s.data(), s.size());
  return p.string();
}

nlohmann::json tiny_bpe(const std::vector<std::string>& merges) {
  nlohmann::json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5},
                          {"aa", 6}, {"aaaa", 7}, {" ", 8}, {"<x>", 9}};
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
          {"added_tokens", nlohmann::json::array()}};
}

}  // namespace

TEST_CASE("BPE merges follow rank, then leftmost position", "[tokenizer][hf]") {
  {
    // "b c" (rank 0) beats "a b" (rank 1): a + bc, then "a bc" -> abc.
    const auto t = load_tokenizer(write_tokenizer_json("tok_rank1", tiny_bpe({"b c", "a b", "a bc"})));
    CHECK(t->encode("abc", false) == std::vector<int32_t>{5});
    CHECK(t->encode("abcab", false) == std::vector<int32_t>{5, 3});
  }
  {
    // Without "a bc", the rank-0 merge leaves a + bc.
    const auto t = load_tokenizer(write_tokenizer_json("tok_rank2", tiny_bpe({"b c", "a b"})));
    CHECK(t->encode("abc", false) == std::vector<int32_t>{0, 4});
  }
  {
    // Equal ranks: leftmost first, so "aaa" -> aa + a and "aaaa" -> aa aa -> aaaa.
    const auto t = load_tokenizer(write_tokenizer_json("tok_rank3", tiny_bpe({"a a", "aa aa"})));
    CHECK(t->encode("aaa", false) == std::vector<int32_t>{6, 0});
    CHECK(t->encode("aaaa", false) == std::vector<int32_t>{7});
    CHECK(t->encode("aaaaa", false) == std::vector<int32_t>{7, 0});
    // Merges given as pairs are read the same way.
    nlohmann::json j = tiny_bpe({});
    j["model"]["merges"] = nlohmann::json::array({nlohmann::json::array({"a", "a"}),
                                                  nlohmann::json::array({"aa", "aa"})});
    CHECK(load_tokenizer(write_tokenizer_json("tok_rank4", j))->encode("aaaaa", false) ==
          std::vector<int32_t>{7, 0});
  }
}

TEST_CASE("added tokens: leftmost-longest, lstrip/rstrip, template", "[tokenizer][hf]") {
  nlohmann::json j = tiny_bpe({"a b"});
  j["model"]["vocab"]["<x><x>"] = 10;
  j["added_tokens"] = {
      {{"id", 9}, {"content", "<x>"}, {"special", true}, {"normalized", false}, {"lstrip", true}},
      {{"id", 10}, {"content", "<x><x>"}, {"special", true}, {"normalized", false}, {"rstrip", true}},
  };
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", {{{"SpecialToken", {{"id", "<x>"}, {"type_id", 0}}}},
                                     {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                     {{"SpecialToken", {{"id", "<x><x>"}, {"type_id", 0}}}}}},
                         {"special_tokens", {{"<x>", {{"id", "<x>"}, {"ids", {9}}, {"tokens", {"<x>"}}}},
                                             {"<x><x>", {{"id", "<x><x>"}, {"ids", {10}}, {"tokens", {"<x><x>"}}}}}}};
  const auto t = load_tokenizer(write_tokenizer_json("tok_added", j));
  // "<x><x>" is longer than "<x>" at the same position; rstrip eats the spaces after it;
  // lstrip of "<x>" eats the spaces before it.
  CHECK(t->encode("ab<x><x>  c  <x>b", false) == std::vector<int32_t>{3, 10, 2, 9, 1});
  CHECK(t->encode("ab", true) == std::vector<int32_t>{9, 3, 10});
  CHECK(t->add_bos_by_default());
  CHECK(t->bos_id() == 9);
  CHECK(t->eos_id() == 10);
  // No decoder: tokenizers joins the tokens with spaces.
  CHECK(t->decode(std::vector<int32_t>{3, 10, 2}) == "ab <x><x> c");
}

TEST_CASE("HF encode throughput", "[tokenizer][hf][perf]") {
  const std::string wiki = kvq_test::wikitext2_test_joined();
  for (const char* name : {"llama2-hf", "smollm-135m"}) {
    const auto tok = load_tokenizer(kvq_test::shared_path(std::string("models/tokenizers/") + name).string());
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();
    const auto ids = tok->encode(wiki, false);
    const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: WikiText-2 test %zu bytes -> %zu tokens: %.3f s CPU (%.2f MB/s), %.3f s wall\n", name,
                wiki.size(), ids.size(), cpu, wiki.size() / cpu / 1e6, s);
    // The issue asks for well under a few seconds on the 1.3 MB text. CPU time, not wall
    // time: the test machines are shared and wall time there measured 3x the CPU time.
    CHECK(cpu < 2.0);
    CHECK(tok->decode(ids) == wiki);
  }
}

namespace {

// The Llama 3 / Qwen2 layout on the SmolLM vocabulary, built exactly as
// tests/data/tokenizer/gen_variant_vectors.py builds it for the `tokenizers` oracle.
std::string write_split_variant(const std::string& name, const std::string& regex, bool ignore_merges) {
  nlohmann::json j = read_json(kvq_test::shared_path("models/tokenizers/smollm-135m/tokenizer.json"));
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  j["model"]["ignore_merges"] = ignore_merges;
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
        {{"type", "TemplateProcessing"},
         {"single", {{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
         {"special_tokens",
          {{"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {0}}, {"tokens", {"<|endoftext|>"}}}}}}}}}};
  return write_tokenizer_json(name, j);  // no tokenizer_config.json beside it
}

}  // namespace

TEST_CASE("Llama 3 and Qwen2 Split pre-tokenizers match tokenizers 0.23.2", "[tokenizer][hf]") {
  const struct {
    const char* name;
    const char* regex;
    bool ignore_merges;
  } variants[] = {
      {"smollm-llama3split",
       R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
       true},
      {"smollm-qwen2split",
       R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
       false},
  };
  const std::string text =
      kvq_test::read_text(kvq_test::shared_path("datasets/kvq-docs/valid.txt")).substr(0, 20000);
  for (const auto& v : variants) {
    const auto tok = load_tokenizer(write_split_variant(std::string("tok_") + v.name, v.regex, v.ignore_merges));
    CHECK(tok->bos_id() == 0);
    CHECK(tok->add_bos_by_default());
    const auto ref = read_json(kvq_test::tokenizer_data_dir() / (std::string("expected-") + v.name + ".json"));
    for (const auto& c : ref["cases"]) {
      const std::string t = c["text"].get<std::string>();
      INFO(v.name << " case: \"" << t << "\"");
      CHECK(tok->encode(t, false) == as_ids(c["ids"]));
      CHECK(tok->encode(t, true) == as_ids(c["ids_with_special"]));
      CHECK(tok->decode(as_ids(c["ids"])) == c["decoded"].get<std::string>());
    }
    CHECK(tok->encode(text, false) == as_ids(ref["texts"]["kvq-docs-valid-20k"]));
  }
}
