// See manifest.h.
#include "datasets/manifest.h"

#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "datasets/text_file.h"
#include "formats/error.h"
#include "formats/sha256.h"

#ifndef KVQ_MANIFEST_DIR
#define KVQ_MANIFEST_DIR "datasets/manifests"
#endif

namespace kvq::datasets {

namespace {

using nlohmann::json;

std::string str_field(const json& j, const char* key, const std::string& path, bool required) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw FormatError(path, std::string("manifest: missing field \"") + key + "\"");
    return "";
  }
  if (!it->is_string()) throw FormatError(path, std::string("manifest: field \"") + key + "\" must be a string");
  return it->get<std::string>();
}

std::optional<uint64_t> size_field(const json& j, const char* key, const std::string& path) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_unsigned()) {
    throw FormatError(path, std::string("manifest: field \"") + key + "\" must be a non-negative integer or null");
  }
  return it->get<uint64_t>();
}

std::string digest_field(const json& j, const std::string& path) {
  std::string d = str_field(j, "sha256", path, false);
  if (!d.empty() && (d.size() != 64 || d.find_first_not_of("0123456789abcdef") != std::string::npos)) {
    throw FormatError(path, "manifest: sha256 \"" + d + "\" is not 64 lowercase hex digits");
  }
  return d;
}

}  // namespace

const ManifestFile* Manifest::find(const std::string& relative) const {
  for (const auto& f : files) {
    if (f.path == relative) return &f;
  }
  return nullptr;
}

Manifest load_manifest(const std::string& path) {
  const std::string bytes = read_file_bytes(path);
  json j;
  try {
    j = json::parse(bytes);
  } catch (const json::parse_error& e) {
    throw FormatError(path, static_cast<int64_t>(e.byte), std::string("manifest: invalid JSON: ") + e.what());
  }
  if (!j.is_object()) throw FormatError(path, "manifest: expected a JSON object");
  Manifest m;
  m.file = path;
  m.name = str_field(j, "name", path, true);
  m.description = str_field(j, "description", path, false);
  m.license = str_field(j, "license", path, false);
  if (const auto a = j.find("archive"); a != j.end() && !a->is_null()) {
    if (!a->is_object()) throw FormatError(path, "manifest: \"archive\" must be an object or null");
    m.archive_url = str_field(*a, "url", path, true);
    m.archive_bytes = size_field(*a, "bytes", path);
    m.archive_sha256 = digest_field(*a, path);
  }
  const auto files = j.find("files");
  if (files == j.end() || !files->is_array() || files->empty()) {
    throw FormatError(path, "manifest: \"files\" must be a non-empty array");
  }
  for (const auto& f : *files) {
    if (!f.is_object()) throw FormatError(path, "manifest: every entry of \"files\" must be an object");
    ManifestFile e;
    e.path = str_field(f, "path", path, true);
    e.url = str_field(f, "url", path, false);
    e.member = str_field(f, "member", path, false);
    if (e.url.empty() && (e.member.empty() || m.archive_url.empty())) {
      throw FormatError(path, "manifest: file \"" + e.path + "\" has neither a url nor an archive member");
    }
    e.bytes = size_field(f, "bytes", path);
    e.sha256 = digest_field(f, path);
    m.files.push_back(std::move(e));
  }
  return m;
}

std::string manifest_dir() {
  if (const char* v = std::getenv("KVQ_MANIFEST_DIR"); v != nullptr && *v != '\0') return v;
  return KVQ_MANIFEST_DIR;
}

FileCheck check_file(const std::string& local_path, const ManifestFile& entry) {
  FileCheck c;
  std::error_code ec;
  const auto size = std::filesystem::file_size(local_path, ec);
  if (ec) throw IoError(local_path, "cannot read size: " + ec.message());
  c.bytes = size;
  if (entry.bytes && *entry.bytes != size) {
    c.status = CheckStatus::kSizeMismatch;
    c.message = "size " + std::to_string(size) + " bytes, manifest says " + std::to_string(*entry.bytes);
    return c;
  }
  if (entry.sha256.empty()) {
    c.status = CheckStatus::kUnpinned;
    c.message = "no digest pinned in the manifest for " + entry.path + "; not verified";
    return c;
  }
  c.sha256 = sha256_file_hex(local_path);
  if (c.sha256 != entry.sha256) {
    c.status = CheckStatus::kDigestMismatch;
    c.message = "sha256 " + c.sha256 + ", manifest says " + entry.sha256;
    return c;
  }
  c.message = "size and sha256 match the manifest";
  return c;
}

}  // namespace kvq::datasets
