// llama2.c tokenizer .bin: stories260K's documented ids (PROVENANCE.md, "Numeric oracle"),
// the priority-queue encoder against a transcription of llama2.c's rescan loop on random
// text, and the Llama 2 tokenizer.bin against SentencePiece on the shared test strings.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>

#include "formats/tokenizer.h"
#include "tests/catch.h"
#include "tests/formats/tokenizer_test_util.h"

using namespace kvq;

namespace {

const char* kStoryText =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball.";
const std::vector<int32_t> kStoryIds = {
    1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408,
    419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426};

// llama2.c run.c encode(), transcribed loop for loop (sorted-vocab bsearch replaced by a
// map that keeps the first id of a string). Quadratic; for cross-checking only.
struct NaiveLlama2c {
  std::vector<std::string> vocab;
  std::vector<float> scores;
  std::map<std::string, int> lookup;
  explicit NaiveLlama2c(const std::filesystem::path& p) {
    const auto b = kvq_test::read_bytes(p);
    size_t off = 4;
    while (off + 8 <= b.size()) {
      float s;
      int32_t len;
      std::memcpy(&s, &b[off], 4);
      std::memcpy(&len, &b[off + 4], 4);
      vocab.emplace_back(reinterpret_cast<const char*>(&b[off + 8]), len);
      scores.push_back(s);
      lookup.emplace(vocab.back(), static_cast<int>(vocab.size()) - 1);
      off += 8 + len;
    }
  }
  int find(const std::string& s) const {
    const auto it = lookup.find(s);
    return it == lookup.end() ? -1 : it->second;
  }
  std::vector<int32_t> encode(const std::string& text) const {
    std::vector<int32_t> t{1};
    if (!text.empty()) t.push_back(find(" "));
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      if ((text[i] & 0xC0) != 0x80) buf.clear();
      buf += text[i];
      if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
      const int id = find(buf);
      if (id >= 0) t.push_back(id);
      else for (unsigned char c : buf) t.push_back(c + 3);
      buf.clear();
    }
    while (true) {
      float best = -1e10f;
      int best_id = -1, best_idx = -1;
      for (size_t i = 0; i + 1 < t.size(); ++i) {
        const int id = find(vocab[t[i]] + vocab[t[i + 1]]);
        if (id != -1 && scores[id] > best) {
          best = scores[id];
          best_id = id;
          best_idx = static_cast<int>(i);
        }
      }
      if (best_idx == -1) break;
      t[best_idx] = best_id;
      t.erase(t.begin() + best_idx + 1);
    }
    return t;
  }
};

}  // namespace

TEST_CASE("stories260K tok512.bin encodes the documented oracle text", "[tokenizer][llama2c]") {
  const auto tok = load_tokenizer(kvq_test::shared_path("models/stories260K/tok512.bin").string());
  REQUIRE(tok->kind() == "llama2c");
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  CHECK(tok->add_bos_by_default());
  CHECK(tok->encode(kStoryText, true) == kStoryIds);
  CHECK(tok->decode(kStoryIds) == kStoryText);
  CHECK(tok->encode("", true) == std::vector<int32_t>{1});
  CHECK(tok->encode("", false).empty());
  // A code point outside the 512 tokens falls back to its bytes (id = byte + 3).
  const auto ids = tok->encode("\xE6\x97\xA5", false);
  CHECK(ids == std::vector<int32_t>{tok->encode(" ", false)[0], 0xE6 + 3, 0x97 + 3, 0xA5 + 3});
  CHECK(tok->decode(std::vector<int32_t>{1, ids[1], ids[2], ids[3]}) == "\xE6\x97\xA5");
}

TEST_CASE("llama2.c encoder equals llama2.c's rescan loop on random text", "[tokenizer][llama2c]") {
  const uint64_t seed = kvq_test::test_seed(777);
  std::mt19937_64 rng(seed);
  const std::vector<std::string> pool = {"the", " ", "  ", "ing", "a", "e", "\n", "1", "23", ".", ",", "é", "日本",
                                         "😀", "\t", "Zz", "q", "Once", " upon", "'s", "\xC2\xA0", "x"};
  for (const char* file : {"models/stories260K/tok512.bin", "models/llama2-tokenizer/tokenizer.bin"}) {
    const auto path = kvq_test::shared_path(file);
    const auto tok = load_tokenizer(path.string());
    const NaiveLlama2c naive(path);
    for (int trial = 0; trial < 150; ++trial) {
      std::string text;
      const int n = static_cast<int>(rng() % 50);
      for (int i = 0; i < n; ++i) text += pool[rng() % pool.size()];
      INFO(file << " seed " << seed << " trial " << trial << " text \"" << text << "\"");
      REQUIRE(tok->encode(text, true) == naive.encode(text));
    }
  }
}

TEST_CASE("llama2.c tokenizer.bin agrees with SentencePiece on the test strings", "[tokenizer][llama2c]") {
  const auto bin = load_tokenizer(kvq_test::shared_path("models/llama2-tokenizer/tokenizer.bin").string());
  CHECK(bin->vocab_size() == 32000);
  const auto ref = kvq_test::read_json(kvq_test::tokenizer_data_dir() / "expected-llama2-spm.json");
  int same = 0, differ = 0;
  for (const auto& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = bin->encode(text, false);
    if (got == want) {
      ++same;
      // No BOS before it, so llama2.c keeps the dummy-prefix space.
      CHECK(bin->decode(got) == (text.empty() ? std::string() : " " + text));
      continue;
    }
    ++differ;
    std::printf("llama2.c vs sentencepiece differ on \"%s\"\n", text.c_str());
  }
  std::printf("llama2.c tokenizer.bin vs sentencepiece: %d same, %d differ\n", same, differ);
  CHECK(differ == 0);
}

TEST_CASE("llama2.c encode throughput", "[tokenizer][llama2c][perf]") {
  const std::string wiki = kvq_test::wikitext2_test_joined();
  const auto tok = load_tokenizer(kvq_test::shared_path("models/llama2-tokenizer/tokenizer.bin").string());
  const auto t0 = std::chrono::steady_clock::now();
  const std::clock_t c0 = std::clock();
  const auto ids = tok->encode(wiki, true);
  const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("llama2.c tokenizer.bin: WikiText-2 test %zu bytes -> %zu tokens: %.3f s CPU (%.2f MB/s), %.3f s wall\n",
              wiki.size(), ids.size(), cpu, wiki.size() / cpu / 1e6, s);
  CHECK(cpu < 2.0);  // CPU time: see the HF throughput test
  // The Llama 2 vocabulary on the same text as SentencePiece: identical ids.
  const auto spm = load_tokenizer(kvq_test::shared_path("models/llama2-tokenizer/tokenizer.model").string());
  const auto want = spm->encode(wiki, true);
  CHECK(ids.size() == want.size());
  CHECK(ids == want);
}
