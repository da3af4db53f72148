// Strict JSON field access for kvq documents; see profile_json.h.
#include "formats/profile_json.h"

#include <cmath>

#include "formats/json_text.h"
#include "formats/profile_container.h"

namespace kvq::detail {

namespace {

std::string short_dump(const json& v) {
  // Values in messages are cut so that a megabyte of garbage does not become the message.
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

}  // namespace

JsonObject::JsonObject(const json& value, std::string file, std::string context)
    : obj_(&value), file_(std::move(file)), context_(std::move(context)) {
  if (!value.is_object()) {
    throw FormatError(file_, context_ + " must be a JSON object, found " +
                                 std::string(value.type_name()));
  }
}

void JsonObject::fail(const std::string& key, const std::string& message) const {
  throw FormatError(file_, context_ + "." + key + " " + message);
}

const json& JsonObject::raw(const char* key) const {
  auto it = obj_->find(key);
  if (it == obj_->end()) fail(key, "is missing");
  return *it;
}

int64_t JsonObject::get_int(const char* key, int64_t lo, int64_t hi) const {
  const json& v = raw(key);
  const std::string want =
      "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], found ";
  if (v.is_number_unsigned()) {
    // nlohmann stores every non-negative integer literal as unsigned, so both ends are
    // checked here too (a 0 where lo = 1 once reached a division: found by fuzz/profile).
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo))) {
      fail(key, want + short_dump(v));
    }
    return static_cast<int64_t>(u);
  }
  if (!v.is_number_integer()) fail(key, want + short_dump(v));
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi) fail(key, want + short_dump(v));
  return i;
}

uint64_t JsonObject::get_u64(const char* key) const {
  const json& v = raw(key);
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  fail(key, "must be a non-negative integer, found " + short_dump(v));
}

double JsonObject::get_double(const char* key, double lo, double hi) const {
  const json& v = raw(key);
  if (!v.is_number()) fail(key, "must be a number, found " + short_dump(v));
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) {
    fail(key, "must be a number in [" + json(lo).dump() + ", " + json(hi).dump() + "], found " +
                  short_dump(v));
  }
  return d;
}

bool JsonObject::get_bool(const char* key) const {
  const json& v = raw(key);
  if (!v.is_boolean()) fail(key, "must be true or false, found " + short_dump(v));
  return v.get<bool>();
}

std::string JsonObject::get_string(const char* key) const {
  const json& v = raw(key);
  if (!v.is_string()) fail(key, "must be a string, found " + short_dump(v));
  return v.get<std::string>();
}

std::string JsonObject::get_enum(const char* key,
                                 std::initializer_list<std::string_view> allowed) const {
  const json& v = raw(key);
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    for (std::string_view a : allowed) {
      if (s == a) return s;
    }
  }
  std::string list;
  for (std::string_view a : allowed) {
    if (!list.empty()) list += ", ";
    list += '"';
    list.append(a.data(), a.size());
    list += '"';
  }
  fail(key, "must be one of " + list + ", found " + short_dump(v));
}

std::string JsonObject::get_sha256(const char* key) const {
  const json& v = raw(key);
  if (!v.is_string() || !is_sha256_hex(v.get<std::string>())) {
    fail(key, "must be 64 lowercase hex digits (SHA-256), found " + short_dump(v));
  }
  return v.get<std::string>();
}

JsonObject JsonObject::get_object(const char* key) const {
  const json& v = raw(key);
  if (!v.is_object()) fail(key, "must be a JSON object, found " + short_dump(v));
  return JsonObject(v, file_, context_ + "." + key);
}

const json& JsonObject::get_array(const char* key) const {
  const json& v = raw(key);
  if (!v.is_array()) fail(key, "must be a JSON array, found " + short_dump(v));
  return v;
}

json parse_document(const std::string& file, const std::string& key, const std::string& text) {
  return parse_json_text(file, text, "metadata '" + key + "'", -1);
}

json provenance_json(const CalibrationProvenance& p) {
  json j = json::object();
  j["dataset"] = p.dataset;
  j["dataset_sha256"] = p.dataset_sha256;
  j["sequences"] = p.sequences;
  j["tokens"] = p.tokens;
  j["seed"] = p.seed;
  j["tool"] = p.tool;
  j["version"] = p.version;
  j["git_revision"] = p.git_revision;
  return j;
}

CalibrationProvenance provenance_from(const JsonObject& o) {
  CalibrationProvenance p;
  p.dataset = o.get_string("dataset");
  p.dataset_sha256 = o.get_sha256("dataset_sha256");
  p.sequences = o.get_int("sequences", 0, int64_t{1} << 40);
  p.tokens = o.get_int("tokens", 0, int64_t{1} << 40);
  p.seed = o.get_u64("seed");
  p.tool = o.get_string("tool");
  p.version = o.get_string("version");
  p.git_revision = o.get_string("git_revision");
  return p;
}

bool is_sha256_hex(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace kvq::detail
