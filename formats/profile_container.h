// What the profile (docs/profile-format.md) and the calibration file
// (docs/calibration-format.md) share: a safetensors file whose `__metadata__` names the
// format, a MAJOR.MINOR version, the byte order and a JSON document; F32 tensors owned in
// memory; the SHA-256 digest over all tensor bytes; the checks on dtype, shape and values
// that each format derives from its header.
//
// Goals: one implementation of the version rules, the digest and the value checks for
// both formats, so that they cannot drift apart.
// Non-goals: the documents' contents (profile.cpp and calibration.cpp own those).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "formats/tensor.h"

namespace kvq {

// An owned row-major F32 tensor.
struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  bool operator==(const FloatTensor&) const = default;
};
using FloatTensors = std::map<std::string, FloatTensor>;  // sorted by name

struct FormatVersion {
  int major = 1;
  int minor = 0;
  std::string str() const { return std::to_string(major) + "." + std::to_string(minor); }
};

// Where a profile's numbers came from (docs/calibration-format.md, "provenance").
struct CalibrationProvenance {
  std::string dataset;          // a name, e.g. "kvq-docs/calib.txt"
  std::string dataset_sha256;   // of the dataset file's bytes
  int64_t sequences = 0;
  int64_t tokens = 0;           // per sequence
  uint64_t seed = 0;
  std::string tool;             // "kvq-calibrate"
  std::string version;
  std::string git_revision;
  bool operator==(const CalibrationProvenance&) const = default;
};

// "[2, 384]"
std::string shape_text(const std::vector<int64_t>& shape);

// SHA-256 over the tensors (sorted by name) as docs/profile-format.md, "The tensor digest",
// defines; 64 lowercase hex digits.
std::string tensors_sha256(const std::vector<TensorView>& tensors);
std::string tensors_sha256(const FloatTensors& tensors);

// Views of owned tensors, for the writer and the digest.
std::vector<TensorView> tensor_views(const FloatTensors& tensors);

// A kvq container after the structural and header checks, before the document is read.
struct KvqContainer {
  std::string file;
  FormatVersion version;
  std::string document;                        // the JSON text under `doc_key`
  std::map<std::string, std::string> metadata;
  std::vector<TensorView> tensors;             // views into the caller's bytes
  std::map<std::string, int64_t> data_offset;  // name -> absolute byte offset of its data
};

// The identity of one kvq format.
struct KvqFormat {
  std::string_view name;     // "kvq-profile"
  std::string_view doc_key;  // "profile"
  std::string_view what;     // "profile", for messages
  int major = 1;             // the major version this build reads and writes
  int minor = 0;
};
extern const KvqFormat kProfileFormat;
extern const KvqFormat kCalibrationFormat;

// Parses the safetensors structure, then checks format name, byte order and version
// (UnsupportedError for a newer or older major, naming both versions). The views point
// into `bytes`.
KvqContainer parse_kvq_container(const std::string& file, const uint8_t* bytes, size_t size,
                                 const KvqFormat& format);

// Writes format/version/byte order plus `document` under the format's key, and `tensors`,
// atomically and deterministically (formats/safetensors.h).
void write_kvq_container(const std::string& path, const KvqFormat& format,
                         const std::string& document, const FloatTensors& tensors);

// The value rule each tensor of a kvq format obeys, beyond being finite.
enum class ValueRule : uint8_t {
  kFinite,          // every value finite
  kIncreasingUnit,  // strictly increasing, within [-1, 1] (NUQ signposts)
  kRowsOrdered,     // shape [..., 2, D]: row 0 <= row 1 element-wise (min/max, thresholds)
  kPositive,        // every value > 0 (scales, balancers)
  kNonNegative,     // every value >= 0 (absmax)
  kScaleOffset,     // [2]: a scale > 0 and an offset (Q-Norm)
  kMeanStd,         // [2]: a mean and a standard deviation >= 0
};

struct TensorRule {
  std::vector<int64_t> shape;
  ValueRule rule = ValueRule::kFinite;
  std::string why;  // "keys, 3 bits": appended to shape errors
};
using TensorRules = std::map<std::string, TensorRule>;

// Checks `tensors` against `rules`: each rule's tensor present, F32, the shape, the values.
// Then every other tensor named "layers.{i}...": `i` must be a canonical decimal below
// `n_layers`, and a name that `is_known` recognises (a quantity of this format version) but
// no rule requires is refused as unused. Unknown names are ignored (minor versions add).
// `fail(name, message)` reports the first problem and must throw.
using TensorFail = std::function<void(const std::string& name, const std::string& message)>;
void check_tensors(const FloatTensors& tensors, const TensorRules& rules, int64_t n_layers,
                   const std::function<bool(std::string_view quantity)>& is_known,
                   const TensorFail& fail);

// Copies the F32 tensors of `c` into owned tensors; a tensor whose dtype is not F32 and
// whose name `keep` accepts is a FormatError at its offset. Tensors `keep` rejects are
// skipped (unknown to this version).
FloatTensors own_f32_tensors(const KvqContainer& c,
                             const std::function<bool(const std::string& name)>& keep);

// "layers.12.k.signposts" -> layer 12, quantity "k.signposts"; false when the name is not
// of that form or the index is not canonical ("layers.01.x").
bool split_layer_name(std::string_view name, int64_t* layer, std::string_view* quantity);

}  // namespace kvq
