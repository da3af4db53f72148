// The quantization profile (.kvqp): one KV-cache quantization method at one set of bit
// widths for one model, with its scheme, calibrated tensors, model fingerprint and
// provenance. Bytes <-> this struct, with every check of docs/profile-format.md on read
// and on write. kvq-convert writes profiles; kvq-eval and the codecs (lib/codecs/) read
// them through read_profile and Profile::scheme / Profile::tensor.
//
// Goals: a portable file (safetensors), versioned (MAJOR.MINOR, newer major refused),
// digest-verified, shape-checked against its own header, deterministic bytes.
// Non-goals: choosing parameters (kvq-convert) or applying them (lib/codecs/).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/fingerprint.h"
#include "formats/profile_container.h"

namespace kvq {

enum class Method : uint8_t { kInt, kKivi, kKvquant, kWkvquant, kMikv, kQ8_0, kQ4_0, kFp8, kHadamard };
inline constexpr std::array<Method, 9> kAllMethods = {
    Method::kInt, Method::kKivi, Method::kKvquant, Method::kWkvquant, Method::kMikv,
    Method::kQ8_0, Method::kQ4_0, Method::kFp8, Method::kHadamard};
std::string_view method_name(Method m);                // "kvquant"
std::optional<Method> parse_method(std::string_view s);

enum class KvKind : uint8_t { kKeys, kValues };
inline char kind_letter(KvKind k) { return k == KvKind::kKeys ? 'k' : 'v'; }

enum class QuantAxis : uint8_t { kChannel, kToken };
enum class RangeSource : uint8_t { kDynamic, kStatic };
enum class Fp8Scale : uint8_t { kNone, kDynamic, kPerHead };
enum class Fp8Format : uint8_t { kE4M3, kE5M2 };
enum class MikvHigh : uint8_t { kFp16, kInt8 };

// Largest finite value of an FP8 format: 448 (e4m3), 57344 (e5m2).
float fp8_max_finite(Fp8Format f);

// How one kind (keys or values) of one layer is quantized; docs/profile-format.md
// describes every field.
struct KindScheme {
  int bits = 16;
  QuantAxis axis = QuantAxis::kToken;
  int group = 0;               // 0: the whole extent
  bool symmetric = false;
  bool pre_rope = false;       // keys only
  bool nuq = false;            // codes index the signposts LUT
  RangeSource range = RangeSource::kDynamic;
  double outlier_fraction = 0.0;
  bool qnorm = false;
  bool smoothing = false;
  Fp8Scale fp8_scale = Fp8Scale::kNone;
  bool operator==(const KindScheme&) const = default;
};

struct ProfileOptions {
  int sink_tokens = 0;
  int residual = 0;
  bool poq = false;
  uint64_t hadamard_seed = 0;
  Fp8Format fp8_format = Fp8Format::kE4M3;
  double mikv_high_share = 0.0;
  int mikv_recent = 0;
  MikvHigh mikv_high = MikvHigh::kFp16;
  bool balancer = false;
  bool operator==(const ProfileOptions&) const = default;
};

struct LayerSchemes {
  KindScheme keys;
  KindScheme values;
  bool operator==(const LayerSchemes&) const = default;
};

struct ProfileCalibration {
  CalibrationProvenance provenance;
  std::string file_sha256;  // of the calibration file the profile was converted from
  bool operator==(const ProfileCalibration&) const = default;
};

struct WriterInfo {
  std::string tool;          // "kvq-convert"
  std::string version;
  std::string git_revision;
  bool operator==(const WriterInfo&) const = default;
};

struct Profile {
  Method method = Method::kInt;
  KindScheme keys;
  KindScheme values;
  ProfileOptions options;
  // Empty: every layer uses keys/values. Otherwise one entry per layer holding that
  // layer's effective schemes (the file stores only the fields that differ).
  std::vector<LayerSchemes> layers;
  ModelFingerprint fingerprint;
  std::optional<ProfileCalibration> calibration;  // nullopt: made without calibration
  WriterInfo writer;
  FloatTensors tensors;

  // Filled by read_profile (write_profile computes the digest itself).
  FormatVersion version;
  std::string tensors_sha256;

  const KindScheme& scheme(int layer, KvKind kind) const;
  // nullptr when absent.
  const FloatTensor* find(const std::string& name) const;
  // Throws InvalidArgument naming the tensor when absent.
  const FloatTensor& tensor(const std::string& name) const;
};

// "layers.3.k.signposts" (kind-specific quantities) and "layers.3.balancer".
std::string profile_tensor_name(int layer, KvKind kind, std::string_view quantity);
std::string profile_balancer_name(int layer);

// The tensors `p`'s header requires, with shapes and value rules (docs/profile-format.md,
// "Tensors"); throws InvalidArgument (where = `where`) for a scheme that is inconsistent
// on its own (bits out of range, NUQ above 8 bits, layers count vs fingerprint, ...).
TensorRules profile_tensor_rules(const Profile& p, const std::string& where);

struct ProfileReadOptions {
  bool verify_digest = true;  // false: --no-verify
};

// Reads and checks a profile. FormatError / UnsupportedError / IoError naming the file.
Profile read_profile(const std::string& path, const ProfileReadOptions& opts = {});
// The same from bytes in memory (the fuzz target); `file` names them in errors.
Profile parse_profile(const std::string& file, const uint8_t* bytes, size_t size,
                      const ProfileReadOptions& opts = {});

// Checks `p` like the reader would (InvalidArgument naming `path`), then writes it
// atomically with the current format version; identical profiles give identical bytes.
void write_profile(const std::string& path, const Profile& p);

// The profile document (the `profile` metadata JSON, sorted keys) as write_profile
// stores it, with `tensors_sha256` filled in; for kvq-convert inspect --format json.
std::string profile_document(const Profile& p);

}  // namespace kvq
