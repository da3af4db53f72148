// kernels/kv_layout.h: packed code blocks (bit positions, straddling 3-bit codes,
// padding), the round-half-to-even quantizers and their ties, llama.cpp's rounding, and
// the FP8 conversions checked exhaustively against a brute-force nearest-value search.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/kv_layout.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq::kvlayout;

TEST_CASE("packed codes round-trip for every bit width and awkward length", "[codecs][layout]") {
  const uint64_t seed = kvq_test::test_seed(11);
  std::mt19937_64 rng(seed);
  for (int bits : {2, 3, 4, 8})
    for (int64_t n : {1, 3, 7, 31, 32, 33, 127, 129}) {
      std::vector<uint32_t> codes(n), words(packed_words(bits, n) + 1, 0u);
      words.back() = 0xdeadbeef;  // guard word: must not be touched
      for (auto& c : codes) c = static_cast<uint32_t>(rng() & ((1u << bits) - 1u));
      for (int64_t i = 0; i < n; ++i) put_code(words.data(), bits, i, codes[i]);
      for (int64_t i = 0; i < n; ++i) REQUIRE(get_code(words.data(), bits, i) == codes[i]);
      // Padding codes of the last block read as zero.
      for (int64_t i = n; i < (n + 31) / 32 * 32; ++i) REQUIRE(get_code(words.data(), bits, i) == 0u);
      REQUIRE(words.back() == 0xdeadbeef);
      REQUIRE(packed_bytes(bits, n) == 4 * bits * ((n + 31) / 32));
    }
}

TEST_CASE("3-bit codes 10 and 21 straddle words as documented", "[codecs][layout]") {
  uint32_t w[3] = {0, 0, 0};
  put_code(w, 3, 10, 7u);  // bits 30..32
  REQUIRE(w[0] == 0xC0000000u);
  REQUIRE(w[1] == 0x1u);
  put_code(w, 3, 21, 5u);  // bits 63..65: 5 = 0b101 -> bit 63 = 1, bit 64 = 0, bit 65 = 1
  REQUIRE(w[1] == (0x1u | 0x80000000u));
  REQUIRE(w[2] == 0x2u);
  REQUIRE(get_code(w, 3, 10) == 7u);
  REQUIRE(get_code(w, 3, 21) == 5u);
  // 4 bits: code i in nibble i of word i / 8.
  uint32_t v[4] = {0, 0, 0, 0};
  put_code(v, 4, 9, 0xAu);
  REQUIRE(v[1] == 0xA0u);
}

TEST_CASE("uniform quantizers round half to even, llama.cpp rounds half away", "[codecs][layout]") {
  // (x - z) * inv = 2.5 and 3.5 exactly: even neighbours 2 and 4.
  REQUIRE(quantize_asym(2.5f, 0.0f, 1.0f, 4) == 2u);
  REQUIRE(quantize_asym(3.5f, 0.0f, 1.0f, 4) == 4u);
  REQUIRE(quantize_asym(-3.0f, 0.0f, 1.0f, 4) == 0u);    // clamp low
  REQUIRE(quantize_asym(99.0f, 0.0f, 1.0f, 2) == 3u);    // clamp high
  REQUIRE(quantize_sym(-2.5f, 1.0f, 4) == static_cast<uint32_t>(-2 + 8));
  REQUIRE(quantize_sym(100.0f, 1.0f, 3) == static_cast<uint32_t>(3 + 4));
  REQUIRE(quantize_sym(-100.0f, 1.0f, 3) == 0u);
  REQUIRE(dequantize_sym(quantize_sym(-2.0f, 1.0f, 4), 1.0f, 4) == -2.0f);
  REQUIRE(q8_0_code(2.5f, 1.0f) == 3);   // roundf: half away from zero
  REQUIRE(q8_0_code(-2.5f, 1.0f) == -3);
  REQUIRE(q4_0_code(-8.0f, 1.0f) == 0);  // (int8)(0.5) = 0
  REQUIRE(q4_0_code(8.0f, 1.0f) == 15);  // 16.5 -> 16 -> clamped to 15
  REQUIRE(q4_0_code(0.4f, 1.0f) == 8);
  // NUQ: an exact tie between signposts goes to the lower one.
  const float lut[4] = {-1.0f, -0.5f, 0.5f, 1.0f};
  REQUIRE(quantize_lut(0.0f, lut, 4) == 1u);
  REQUIRE(quantize_lut(0.0001f, lut, 4) == 2u);
  REQUIRE(quantize_lut(-1.0f, lut, 4) == 0u);
  REQUIRE(quantize_lut(1.0f, lut, 4) == 3u);
}

namespace {

// The nearest finite FP8 value by brute force; ties to the even code (the one whose
// lowest mantissa bit is 0); magnitudes beyond the largest finite value saturate.
uint8_t brute_fp8(float x, bool e4m3) {
  const float mx = e4m3 ? kE4M3Max : kE5M2Max;
  if (std::isnan(x)) return std::signbit(x) ? 0xff : 0x7f;
  const float a = std::fabs(x);
  uint8_t best = 0;
  float best_err = INFINITY;
  const int top = e4m3 ? 0x7e : 0x7b;
  for (int c = 0; c <= top; ++c) {
    const float v = e4m3 ? e4m3_to_float(static_cast<uint8_t>(c)) : e5m2_to_float(static_cast<uint8_t>(c));
    const float err = std::fabs(std::min(a, mx) - v);
    if (err < best_err || (err == best_err && (c & 1) == 0)) {
      best_err = err;
      best = static_cast<uint8_t>(c);
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

}  // namespace

TEST_CASE("FP8 e4m3/e5m2 conversions: exact on codes, nearest-even elsewhere, saturating", "[codecs][layout]") {
  for (bool e4m3 : {true, false}) {
    INFO((e4m3 ? "e4m3" : "e5m2"));
    auto enc = [&](float x) { return e4m3 ? float_to_e4m3(x) : float_to_e5m2(x); };
    auto dec = [&](uint8_t c) { return e4m3 ? e4m3_to_float(c) : e5m2_to_float(c); };
    const int top = e4m3 ? 0x7e : 0x7b;
    for (int c = 0; c <= top; ++c) {
      REQUIRE(enc(dec(static_cast<uint8_t>(c))) == c);
      REQUIRE(enc(dec(static_cast<uint8_t>(c | 0x80))) == (c == 0 ? 0x80 : (c | 0x80)));
      // Midpoints between consecutive codes: ties go to the even code.
      if (c < top) {
        const float mid = 0.5f * (dec(static_cast<uint8_t>(c)) + dec(static_cast<uint8_t>(c + 1)));
        REQUIRE(enc(mid) == ((c & 1) ? c + 1 : c));
      }
    }
    REQUIRE(dec(static_cast<uint8_t>(top)) == (e4m3 ? 448.0f : 57344.0f));
    REQUIRE(enc(1e30f) == top);
    REQUIRE(enc(-INFINITY) == (top | 0x80));
    REQUIRE(enc(INFINITY) == top);
    REQUIRE((enc(NAN) & 0x7f) == 0x7f);
    REQUIRE(std::isnan(dec(0x7f)));
    const uint64_t seed = kvq_test::test_seed(12);
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> expo(-22.0f, 17.0f);
    for (int i = 0; i < 20000; ++i) {
      const float x = ((rng() & 1) ? -1.0f : 1.0f) * std::exp2(expo(rng));
      REQUIRE(enc(x) == brute_fp8(x, e4m3));
    }
  }
}
