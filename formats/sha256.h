// SHA-256 (FIPS 180-4), streaming, for fingerprints of models and profiles, digests of
// token-id files (reference.json's wikitext2_test_ids_sha256) and dataset manifests.
// Our own implementation: no crypto library is among the allowed dependencies, and
// SHA-256 is small. Tested against the FIPS 180 example vectors (tests/formats/sha256_test).
//
// Goals: correct digests for any chunking of the input, lowercase hex output.
// Non-goals: speed (plain C++, no SHA-NI: ~100 MB/s measured on the 2-core dev machine,
// wikitext2_test.ids.u32, 1.37 MB in 14 ms, Release), HMAC, other SHA variants.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvq {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256() { reset(); }
  void reset();
  // Appends bytes; any split of the input gives the same digest.
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Pads and returns the digest; the object is then reset for reuse.
  Digest finish();
  // finish() as 64 lowercase hex characters.
  std::string hex_digest();

 private:
  void block(const uint8_t* p);

  std::array<uint32_t, 8> h_{};
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes
};

std::string to_hex(const uint8_t* data, size_t n);
// One-shot digests.
std::string sha256_hex(const void* data, size_t n);
inline std::string sha256_hex(std::string_view s) { return sha256_hex(s.data(), s.size()); }
// Digest of a whole file (memory-mapped); IoError naming the file when it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace kvq
