// libFuzzer target: the profile and calibration readers (formats/profile.h,
// formats/calibration.h) on arbitrary bytes. Each input is parsed four ways: profile and
// calibration, with and without the digest check. Without it the fuzzer gets past the
// SHA-256 (which a mutation almost never satisfies) into the header, shape and value
// checks. Any kvq::Error is a correct refusal; anything else escaping (a std::exception
// from nlohmann or .at(), a crash, a sanitizer report, a leak) is a bug.
#include <cstddef>
#include <cstdint>

#include "formats/calibration.h"
#include "formats/error.h"
#include "formats/profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (bool verify : {false, true}) {
    try {
      const kvq::Profile p = kvq::parse_profile("fuzz.kvqp", data, size, kvq::ProfileReadOptions{verify});
      // Touch what a codec would read: every layer's schemes and every tensor value.
      for (int i = 0; i < p.fingerprint.layers; ++i) {
        (void)p.scheme(i, kvq::KvKind::kKeys);
        (void)p.scheme(i, kvq::KvKind::kValues);
      }
      float sink = 0;
      for (const auto& [name, t] : p.tensors) {
        for (float x : t.data) sink += x;
      }
      (void)kvq::profile_document(p);
      (void)sink;
    } catch (const kvq::Error&) {
    }
    try {
      const kvq::Calibration c = kvq::parse_calibration("fuzz.kvqc", data, size, kvq::CalibrationReadOptions{verify});
      float sink = 0;
      for (const auto& [name, t] : c.tensors) {
        for (float x : t.data) sink += x;
      }
      (void)kvq::calibration_document(c);
      (void)sink;
    } catch (const kvq::Error&) {
    }
  }
  return 0;
}
