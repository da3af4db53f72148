// Manifests of the standard datasets (datasets/manifests/*.json): where to download each
// file, its size and sha256, so that a user with internet can fetch exactly the bytes the
// published numbers were measured on, and kvq can tell when a local copy differs.
//
// Format (one JSON object per file): name, description, license, archive (null or {url,
// bytes, sha256}), files: [{path (relative to a data root, as in datasets/spec.h), url or
// member (of the archive), bytes (null = not pinned), sha256 (null = not pinned)}].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvq::datasets {

struct ManifestFile {
  std::string path;                 // relative to a data root
  std::string url;                  // direct download, or "" when it comes from the archive
  std::string member;               // path inside the archive, or ""
  std::optional<uint64_t> bytes;    // nullopt: not pinned
  std::string sha256;               // "": not pinned
};

struct Manifest {
  std::string file;  // the manifest's own path
  std::string name;
  std::string description;
  std::string license;
  std::string archive_url;
  std::optional<uint64_t> archive_bytes;
  std::string archive_sha256;
  std::vector<ManifestFile> files;

  // The entry whose path is `relative`, or nullptr.
  const ManifestFile* find(const std::string& relative) const;
};

// Parses a manifest; FormatError naming the manifest on bad JSON or a missing/mistyped field.
Manifest load_manifest(const std::string& path);

// datasets/manifests of the source tree this kvq was built from (KVQ_MANIFEST_DIR
// overrides at run time).
std::string manifest_dir();

enum class CheckStatus { kOk, kUnpinned, kSizeMismatch, kDigestMismatch };

struct FileCheck {
  CheckStatus status = CheckStatus::kOk;
  uint64_t bytes = 0;       // of the local file
  std::string sha256;       // of the local file ("" when the size already differed)
  std::string message;      // one line for users: what matched or what differs
};

// Compares a local file with its manifest entry: size first (cheap), then sha256.
// IoError when the file cannot be read.
FileCheck check_file(const std::string& local_path, const ManifestFile& entry);

}  // namespace kvq::datasets
