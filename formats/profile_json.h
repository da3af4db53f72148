// Strict JSON field access for the kvq documents stored in safetensors metadata (profile,
// calibration, fingerprint). Every missing key, wrong type or out-of-range value becomes a
// FormatError naming the file and the field path ("profile.keys.bits must be an integer in
// [1, 16], found 40"), so a hand-edited or corrupted document never reaches a codec.
// Internal to formats/profile*.cpp, calibration.cpp and fingerprint.cpp (it pulls in
// nlohmann/json, which the public headers avoid so that lib/ does not need it).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace kvq {
struct ModelFingerprint;
struct CalibrationProvenance;
}  // namespace kvq

namespace kvq::detail {

using nlohmann::json;

// A view of one JSON object with the path used in messages ("profile.keys").
class JsonObject {
 public:
  // Throws FormatError when `value` is not an object.
  JsonObject(const json& value, std::string file, std::string context);

  bool has(const char* key) const { return obj_->contains(key); }
  const json& raw(const char* key) const;  // required, any type

  int64_t get_int(const char* key, int64_t lo, int64_t hi) const;
  uint64_t get_u64(const char* key) const;
  double get_double(const char* key, double lo, double hi) const;  // finite, lo <= x <= hi
  bool get_bool(const char* key) const;
  std::string get_string(const char* key) const;
  // A string that must be one of `allowed`.
  std::string get_enum(const char* key, std::initializer_list<std::string_view> allowed) const;
  // 64 lowercase hex digits.
  std::string get_sha256(const char* key) const;
  JsonObject get_object(const char* key) const;
  const json& get_array(const char* key) const;

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
  const std::string& file() const { return file_; }
  const std::string& context() const { return context_; }
  const json& value() const { return *obj_; }

 private:
  const json* obj_;
  std::string file_;
  std::string context_;
};

// Parses a metadata string as JSON; FormatError naming the metadata key on failure.
json parse_document(const std::string& file, const std::string& key, const std::string& text);

bool is_sha256_hex(std::string_view s);

// Defined in fingerprint.cpp: the fingerprint as a JSON object and back.
json fingerprint_json(const ModelFingerprint& fp);
ModelFingerprint fingerprint_from(const JsonObject& o);

// Defined in profile_json.cpp: calibration provenance as a JSON object and back.
json provenance_json(const CalibrationProvenance& p);
CalibrationProvenance provenance_from(const JsonObject& o);

}  // namespace kvq::detail
