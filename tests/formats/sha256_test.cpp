// SHA-256: the FIPS 180 example vectors, every padding boundary (55/56/63/64/65 ... bytes;
// digests from Python's hashlib), random chunkings of random data against the one-shot
// digest, and the shared files whose digests their PROVENANCE.md / reference.json give.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/sha256.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;

TEST_CASE("sha256: FIPS 180 example vectors", "[sha256]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnop"
                   "qklmnopqrlmnopqrsmnopqrstnopqrstu") ==
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  // One million 'a', fed in pieces of 1000.
  Sha256 h;
  const std::string k(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.update(k);
  CHECK(h.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // finish() resets: the object is reusable.
  h.update("abc");
  CHECK(h.hex_digest() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("sha256: padding boundaries", "[sha256]") {
  const std::pair<int, const char*> cases[] = {
      {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
      {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
      {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
      {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
      {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
      {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
      {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
      {127, "c57e9278af78fa3cab38667bef4ce29d783787a2f731d4e12200270f0c32320a"},
      {128, "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e"},
  };
  for (const auto& [n, hex] : cases) {
    INFO("length " << n);
    CHECK(sha256_hex(std::string(static_cast<size_t>(n), 'a')) == hex);
  }
}

TEST_CASE("sha256: any chunking gives the one-shot digest", "[sha256]") {
  std::mt19937_64 rng(kvq_test::test_seed(180));
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<uint8_t> data(rng() % 4097);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    const std::string whole = sha256_hex(data.data(), data.size());
    Sha256 h;
    size_t pos = 0;
    while (pos < data.size()) {
      const size_t n = std::min<size_t>(rng() % 130, data.size() - pos);  // 0 included
      h.update(data.data() + pos, n);
      pos += n;
    }
    REQUIRE(h.hex_digest() == whole);
  }
}

TEST_CASE("sha256: shared files match their published digests", "[sha256]") {
  CHECK(sha256_file_hex(kvq_test::shared_path("models/stories260K/stories260K.bin").string()) ==
        "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
  CHECK(sha256_file_hex(kvq_test::shared_path("models/stories260K/tok512.bin").string()) ==
        "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312");
  const auto dir = kvq_test::shared_path("models/kvq-testbed-llama2-23m");
  const auto ref = nlohmann::json::parse(kvq_test::read_bytes(dir / "reference.json"));
  const auto t0 = std::chrono::steady_clock::now();
  const std::string got = sha256_file_hex((dir / "wikitext2_test.ids.u32").string());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(got == ref.at("wikitext2_test_ids_sha256").get<std::string>());
  std::fprintf(stderr, "[kvq-test] sha256 of 1365876 bytes in %.4f s (%.0f MB/s)\n", s,
               1365876 / 1e6 / s);
}

TEST_CASE("sha256: a missing file is an IoError naming it", "[sha256]") {
  const auto p = (kvq_test::scratch_dir("sha") / "absent.bin").string();
  const auto e = kvq_test::expect_error<IoError>([&] { (void)sha256_file_hex(p); });
  CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr(p));
}
