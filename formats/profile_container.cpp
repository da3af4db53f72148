// The container shared by profiles and calibration files; see profile_container.h.
#include "formats/profile_container.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "formats/error.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"

namespace kvq {

static_assert(std::endian::native == std::endian::little,
              "kvq files are little-endian and are read without byte swapping");

const KvqFormat kProfileFormat{"kvq-profile", "profile", "profile", 1, 0};
const KvqFormat kCalibrationFormat{"kvq-calibration", "calibration", "calibration file", 1, 0};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {

void put_u64(Sha256& h, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(v >> (8 * i));
  h.update(b, 8);
}

// "1.0" -> {1, 0}; false unless two runs of 1..9 decimal digits around one '.'.
bool parse_version(std::string_view s, FormatVersion* v) {
  const size_t dot = s.find('.');
  if (dot == std::string_view::npos) return false;
  const std::string_view a = s.substr(0, dot), b = s.substr(dot + 1);
  auto digits = [](std::string_view d, int* out) {
    if (d.empty() || d.size() > 9) return false;
    int x = 0;
    for (char c : d) {
      if (c < '0' || c > '9') return false;
      x = x * 10 + (c - '0');
    }
    *out = x;
    return true;
  };
  return digits(a, &v->major) && digits(b, &v->minor);
}

}  // namespace

std::string tensors_sha256(const std::vector<TensorView>& tensors) {
  std::vector<const TensorView*> sorted;
  sorted.reserve(tensors.size());
  for (const auto& t : tensors) sorted.push_back(&t);
  // Byte-wise name order: std::string's operator< compares char_traits<char>, which is
  // unsigned-byte order (memcmp), as the spec requires.
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorView* a, const TensorView* b) { return a->name < b->name; });
  Sha256 h;
  const uint8_t zero = 0;
  for (const TensorView* t : sorted) {
    h.update(t->name.data(), t->name.size());
    h.update(&zero, 1);
    const std::string_view dt = dtype_name(t->dtype);
    h.update(dt.data(), dt.size());
    h.update(&zero, 1);
    put_u64(h, t->shape.size());
    for (int64_t d : t->shape) put_u64(h, static_cast<uint64_t>(d));
    put_u64(h, t->nbytes);
    if (t->nbytes > 0) h.update(t->data, t->nbytes);
  }
  return h.hex_digest();
}

std::vector<TensorView> tensor_views(const FloatTensors& tensors) {
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    TensorView v;
    v.name = name;
    v.dtype = DType::kF32;
    v.shape = t.shape;
    v.data = t.data.data();
    v.nbytes = t.data.size() * sizeof(float);
    views.push_back(std::move(v));
  }
  return views;
}

std::string tensors_sha256(const FloatTensors& tensors) {
  return tensors_sha256(tensor_views(tensors));
}

KvqContainer parse_kvq_container(const std::string& file, const uint8_t* bytes, size_t size,
                                 const KvqFormat& format) {
  SafetensorsFile st = parse_safetensors(file, bytes, size);
  KvqContainer c;
  c.file = file;
  c.metadata = std::move(st.metadata);
  const std::string hint_tool = "kvq-convert inspect FILE shows what a kvq file holds";

  auto meta = [&](const char* key) -> const std::string* {
    auto it = c.metadata.find(key);
    return it == c.metadata.end() ? nullptr : &it->second;
  };
  const std::string* name = meta("format");
  if (name == nullptr) {
    throw FormatError(file, "not a kvq " + std::string(format.what) +
                                ": safetensors metadata has no 'format' entry",
                      hint_tool);
  }
  if (*name != format.name) {
    std::string msg = "not a kvq " + std::string(format.what) + ": metadata format is '" +
                      name->substr(0, 64) + "', expected '" + std::string(format.name) + "'";
    std::string hint;
    if (*name == kCalibrationFormat.name) hint = "a calibration file: turn it into profiles with kvq-convert --calib";
    if (*name == kProfileFormat.name) hint = "this is a profile; kvq-convert needs the calibration file it came from";
    throw FormatError(file, msg, hint);
  }
  const std::string* ver = meta("format_version");
  if (ver == nullptr) throw FormatError(file, "metadata has no 'format_version'");
  if (!parse_version(*ver, &c.version)) {
    throw FormatError(file, "metadata format_version '" + ver->substr(0, 32) +
                                "' is not MAJOR.MINOR");
  }
  const std::string reads = std::to_string(format.major) + ".x";
  if (c.version.major > format.major) {
    throw UnsupportedError(file, "format version " + c.version.str() +
                                     " is newer than this kvq reads (" + reads + ")",
                           "upgrade kvq, or write the file again with this kvq's tools");
  }
  if (c.version.major < format.major) {
    throw UnsupportedError(file, "format version " + c.version.str() +
                                     " is older than this kvq reads (" + reads + ")");
  }
  const std::string* order = meta("byte_order");
  if (order == nullptr) throw FormatError(file, "metadata has no 'byte_order'");
  if (*order != "little") {
    throw UnsupportedError(file, "byte order '" + order->substr(0, 32) +
                                     "' is not supported (kvq files are 'little')");
  }
  const std::string* doc = meta(std::string(format.doc_key).c_str());
  if (doc == nullptr) {
    throw FormatError(file, "metadata has no '" + std::string(format.doc_key) + "' document");
  }
  c.document = *doc;
  for (auto& t : st.tensors) {
    const auto* p = static_cast<const uint8_t*>(t.data);
    c.data_offset[t.name] = p == nullptr ? 0 : static_cast<int64_t>(p - bytes);
  }
  c.tensors = std::move(st.tensors);
  return c;
}

void write_kvq_container(const std::string& path, const KvqFormat& format,
                         const std::string& document, const FloatTensors& tensors) {
  const std::map<std::string, std::string> metadata = {
      {"format", std::string(format.name)},
      {"format_version", std::to_string(format.major) + "." + std::to_string(format.minor)},
      {"byte_order", "little"},
      {std::string(format.doc_key), document},
  };
  write_safetensors(path, tensor_views(tensors), metadata);
}

FloatTensors own_f32_tensors(const KvqContainer& c,
                             const std::function<bool(const std::string& name)>& keep) {
  FloatTensors out;
  for (const TensorView& t : c.tensors) {
    if (!keep(t.name)) continue;
    if (t.dtype != DType::kF32) {
      throw FormatError(c.file, c.data_offset.at(t.name),
                        "tensor '" + t.name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                            ", expected F32");
    }
    FloatTensor f;
    f.shape = t.shape;
    f.data.resize(t.nbytes / sizeof(float));
    if (t.nbytes > 0) std::memcpy(f.data.data(), t.data, t.nbytes);
    out.emplace(t.name, std::move(f));
  }
  return out;
}

bool split_layer_name(std::string_view name, int64_t* layer, std::string_view* quantity) {
  constexpr std::string_view kPrefix = "layers.";
  if (name.substr(0, kPrefix.size()) != kPrefix) return false;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return false;
  const std::string_view digits = name.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return false;
  int64_t i = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
    i = i * 10 + (ch - '0');
  }
  *layer = i;
  *quantity = name.substr(dot + 1);
  return true;
}

namespace {

void check_values(const std::string& name, const FloatTensor& t, const TensorRule& r,
                  const TensorFail& fail) {
  const size_t n = t.data.size();
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(t.data[i])) {
      fail(name, "tensor '" + name + "' element " + std::to_string(i) + " is " +
                     (std::isnan(t.data[i]) ? "NaN" : "infinite"));
    }
  }
  auto bad = [&](size_t i, const std::string& what) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(t.data[i]));
    fail(name, "tensor '" + name + "' element " + std::to_string(i) + " = " + buf + " " + what);
  };
  switch (r.rule) {
    case ValueRule::kFinite:
      break;
    case ValueRule::kIncreasingUnit:
      for (size_t i = 0; i < n; ++i) {
        if (t.data[i] < -1.0f || t.data[i] > 1.0f) bad(i, "is outside [-1, 1]");
        if (i > 0 && !(t.data[i] > t.data[i - 1])) bad(i, "is not above the previous signpost");
      }
      break;
    case ValueRule::kRowsOrdered: {
      // Shape [..., 2, D]: each pair of rows lower <= upper.
      const int64_t d = t.shape.empty() ? 0 : t.shape.back();
      for (size_t base = 0; base + 2 * static_cast<size_t>(d) <= n; base += 2 * d) {
        for (int64_t j = 0; j < d; ++j) {
          if (t.data[base + j] > t.data[base + d + j]) {
            bad(base + d + j, "(upper) is below its lower bound");
          }
        }
        if (d == 0) break;
      }
      break;
    }
    case ValueRule::kPositive:
      for (size_t i = 0; i < n; ++i) {
        if (!(t.data[i] > 0.0f)) bad(i, "is not > 0");
      }
      break;
    case ValueRule::kNonNegative:
      for (size_t i = 0; i < n; ++i) {
        if (!(t.data[i] >= 0.0f)) bad(i, "is negative");
      }
      break;
    case ValueRule::kScaleOffset:
      if (n >= 1 && !(t.data[0] > 0.0f)) bad(0, "(scale) is not > 0");
      break;
    case ValueRule::kMeanStd:
      if (n >= 2 && !(t.data[1] >= 0.0f)) bad(1, "(standard deviation) is negative");
      break;
  }
}

}  // namespace

void check_tensors(const FloatTensors& tensors, const TensorRules& rules, int64_t n_layers,
                   const std::function<bool(std::string_view quantity)>& is_known,
                   const TensorFail& fail) {
  for (const auto& [name, rule] : rules) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      fail(name, "tensor '" + name + "' is missing (needed: " + rule.why + ")");
      continue;
    }
    if (it->second.shape != rule.shape) {
      fail(name, "tensor '" + name + "' has shape " + shape_text(it->second.shape) +
                     ", expected " + shape_text(rule.shape) + " (" + rule.why + ")");
    }
    check_values(name, it->second, rule, fail);
  }
  for (const auto& [name, t] : tensors) {
    if (rules.count(name) != 0) continue;
    int64_t layer = 0;
    std::string_view quantity;
    if (name.rfind("layers.", 0) == 0) {
      if (!split_layer_name(name, &layer, &quantity)) {
        fail(name, "tensor '" + name + "' has a malformed layer index");
      }
      if (layer >= n_layers) {
        fail(name, "tensor '" + name + "' is for layer " + std::to_string(layer) +
                       " but the model has " + std::to_string(n_layers) + " layers");
      }
      if (is_known(quantity)) {
        fail(name, "tensor '" + name + "' is not used by the scheme the header describes");
      }
    }
  }
}

}  // namespace kvq
