// The calibration file: document <-> struct, tensor rules, read and write.
// docs/calibration-format.md is the specification this file implements.
#include "formats/calibration.h"

#include <cmath>
#include <functional>

#include "formats/error.h"
#include "formats/mapped_file.h"
#include "formats/profile_json.h"
#include "formats/sha256.h"

namespace kvq {

using detail::json;
using detail::JsonObject;

namespace {

constexpr std::array<std::string_view, 8> kFixedQuantities = {
    "k.channel_range", "v.channel_range", "k.moments", "v.moments", "k.outlier_threshold",
    "q.post_rope_absmax", "k.post_rope_absmax", "v.absmax"};
constexpr std::array<std::string_view, 4> kBitsQuantities = {"signposts", "qnorm",
                                                             "smooth_delta", "smooth_scale"};

// "k.channel_range" or "[kv].b{digits}.{signposts|qnorm|smooth_delta|smooth_scale}".
bool is_known_quantity(std::string_view q) {
  for (auto k : kFixedQuantities) {
    if (k == q) return true;
  }
  if (q.size() < 5 || (q[0] != 'k' && q[0] != 'v') || q[1] != '.' || q[2] != 'b') return false;
  size_t i = 3;
  while (i < q.size() && q[i] >= '0' && q[i] <= '9') ++i;
  if (i == 3 || i >= q.size() || q[i] != '.') return false;
  const std::string_view rest = q.substr(i + 1);
  for (auto k : kBitsQuantities) {
    if (k == rest) return true;
  }
  return false;
}

// Limits on list lengths: far above use, small enough that fuzzed headers stay cheap.
constexpr size_t kMaxFractions = 64;

using Fail = std::function<void(const std::string& message)>;

TensorRules rules_impl(const Calibration& c, const Fail& fail) {
  const ModelFingerprint& fp = c.fingerprint;
  if (c.complete_layers < 0 || c.complete_layers > fp.layers) {
    fail("complete_layers " + std::to_string(c.complete_layers) + " not in [0, " +
         std::to_string(fp.layers) + "]");
  }
  if (c.sink_tokens < 0) fail("sink_tokens is negative");
  if (!(c.outlier_fraction >= 0.0 && c.outlier_fraction <= 0.5)) fail("outlier_fraction not in [0, 0.5]");
  if (c.outlier_fractions.size() > kMaxFractions) fail("more than 64 outlier_fractions");
  for (size_t i = 0; i < c.outlier_fractions.size(); ++i) {
    const double f = c.outlier_fractions[i];
    if (!(f > 0.0 && f <= 0.5)) fail("outlier_fractions[" + std::to_string(i) + "] not in (0, 0.5]");
    if (i > 0 && !(f > c.outlier_fractions[i - 1])) fail("outlier_fractions must increase");
  }
  if (c.outlier_fraction > 0.0 && c.outlier_index(c.outlier_fraction) < 0) {
    fail("outlier_fraction " + json(c.outlier_fraction).dump() + " is not among outlier_fractions");
  }
  auto check_bits = [&](const std::vector<int>& bits, const char* what) {
    for (size_t i = 0; i < bits.size(); ++i) {
      if (bits[i] < 1 || bits[i] > 8) fail(std::string(what) + " entry " + std::to_string(bits[i]) + " not in [1, 8]");
      if (i > 0 && bits[i] <= bits[i - 1]) fail(std::string(what) + " must increase");
    }
  };
  check_bits(c.nuq_bits, "nuq_bits");
  if (c.wkvquant) {
    check_bits(c.wkvquant->bits, "wkvquant.bits");
    if (c.wkvquant->group <= 0 || fp.head_dim % c.wkvquant->group != 0) {
      fail("wkvquant.group " + std::to_string(c.wkvquant->group) + " must divide head_dim " +
           std::to_string(fp.head_dim));
    }
    if (c.wkvquant->window <= 0) fail("wkvquant.window must be > 0");
  }

  const int64_t d = int64_t{fp.kv_heads} * fp.head_dim;
  const int64_t q = int64_t{fp.heads} * fp.head_dim;
  const auto nf = static_cast<int64_t>(c.outlier_fractions.size());
  TensorRules rules;
  for (int i = 0; i < c.complete_layers; ++i) {
    const std::string layer = "layer " + std::to_string(i);
    auto add = [&](std::string name, std::vector<int64_t> shape, ValueRule rule, std::string why) {
      rules[std::move(name)] = TensorRule{std::move(shape), rule, std::move(why) + ", " + layer};
    };
    for (KvKind kind : {KvKind::kKeys, KvKind::kValues}) {
      const char k = kind_letter(kind);
      const std::string kname = kind == KvKind::kKeys ? "keys" : "values";
      add(calibration_tensor_name(i, k, "channel_range"), {2, d}, ValueRule::kRowsOrdered, kname);
      add(calibration_tensor_name(i, k, "moments"), {2}, ValueRule::kMeanStd, kname);
      for (int b : c.nuq_bits) {
        const std::string why = kname + ", " + std::to_string(b) + " bits";
        add(calibration_bits_name(i, kind, b, "signposts"), {int64_t{1} << b}, ValueRule::kIncreasingUnit, why);
        add(calibration_bits_name(i, kind, b, "qnorm"), {2}, ValueRule::kScaleOffset, why);
      }
      if (c.wkvquant) {
        for (int b : c.wkvquant->bits) {
          const std::string why = kname + ", WKVQuant " + std::to_string(b) + " bits";
          add(calibration_bits_name(i, kind, b, "smooth_delta"), {d}, ValueRule::kFinite, why);
          add(calibration_bits_name(i, kind, b, "smooth_scale"), {d}, ValueRule::kPositive, why);
        }
      }
    }
    if (nf > 0) {
      add(calibration_tensor_name(i, 'k', "outlier_threshold"), {nf, 2, d}, ValueRule::kRowsOrdered,
          std::to_string(nf) + " outlier fractions");
    }
    add(calibration_tensor_name(i, 'q', "post_rope_absmax"), {q}, ValueRule::kNonNegative, "queries");
    add(calibration_tensor_name(i, 'k', "post_rope_absmax"), {d}, ValueRule::kNonNegative, "keys");
    add(calibration_tensor_name(i, 'v', "absmax"), {d}, ValueRule::kNonNegative, "values");
  }
  return rules;
}

std::vector<int> int_list(const JsonObject& o, const char* key) {
  const json& a = o.get_array(key);
  if (a.size() > kMaxFractions) o.fail(key, "has more than 64 entries");
  std::vector<int> out;
  for (const json& v : a) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 64) {
      o.fail(key, "entries must be integers in [0, 64]");
    }
    out.push_back(static_cast<int>(v.get<int64_t>()));
  }
  return out;
}

std::vector<double> double_list(const JsonObject& o, const char* key, size_t max_size) {
  const json& a = o.get_array(key);
  if (a.size() > max_size) o.fail(key, "has more than " + std::to_string(max_size) + " entries");
  std::vector<double> out;
  for (const json& v : a) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) o.fail(key, "entries must be finite numbers");
    out.push_back(v.get<double>());
  }
  return out;
}

json document_json(const Calibration& c, const std::string& digest) {
  json d = json::object();
  d["fingerprint"] = detail::fingerprint_json(c.fingerprint);
  d["provenance"] = detail::provenance_json(c.provenance);
  d["sink_tokens"] = c.sink_tokens;
  d["outlier_fraction"] = c.outlier_fraction;
  d["outlier_fractions"] = c.outlier_fractions;
  d["nuq_bits"] = c.nuq_bits;
  d["fisher_weighted"] = c.fisher_weighted;
  if (c.signpost_clip_quantile < 1.0 || c.signpost_uniform_mix > 0.0) {
    d["signpost_weighting"] = {{"clip_quantile", c.signpost_clip_quantile}, {"uniform_mix", c.signpost_uniform_mix}};
  }
  if (c.wkvquant) {
    json w = json::object();
    w["bits"] = c.wkvquant->bits;
    w["group"] = c.wkvquant->group;
    w["window"] = c.wkvquant->window;
    w["loss_before"] = c.wkvquant->loss_before;
    w["loss_after"] = c.wkvquant->loss_after;
    d["wkvquant"] = std::move(w);
  } else {
    d["wkvquant"] = nullptr;
  }
  d["complete_layers"] = c.complete_layers;
  d["tensors_sha256"] = digest;
  return d;
}

Calibration document_from(const json& doc, const std::string& file) {
  const JsonObject root(doc, file, "calibration");
  Calibration c;
  c.fingerprint = detail::fingerprint_from(root.get_object("fingerprint"));
  c.provenance = detail::provenance_from(root.get_object("provenance"));
  c.sink_tokens = static_cast<int>(root.get_int("sink_tokens", 0, int64_t{1} << 30));
  c.outlier_fraction = root.get_double("outlier_fraction", 0.0, 0.5);
  c.outlier_fractions = double_list(root, "outlier_fractions", kMaxFractions);
  c.nuq_bits = int_list(root, "nuq_bits");
  c.fisher_weighted = root.get_bool("fisher_weighted");
  if (root.has("signpost_weighting")) {
    const JsonObject sw(root.raw("signpost_weighting"), file, "calibration.signpost_weighting");
    c.signpost_clip_quantile = sw.get_double("clip_quantile", 0.0, 1.0);
    c.signpost_uniform_mix = sw.get_double("uniform_mix", 0.0, 1.0);
    if (!(c.signpost_clip_quantile > 0.0) || !(c.signpost_uniform_mix < 1.0)) {
      sw.fail("clip_quantile", "needs 0 < clip_quantile <= 1 and 0 <= uniform_mix < 1");
    }
  }
  const json& w = root.raw("wkvquant");
  if (!w.is_null()) {
    const JsonObject o(w, file, "calibration.wkvquant");
    WkvquantFit fit;
    fit.bits = int_list(o, "bits");
    fit.group = static_cast<int>(o.get_int("group", 1, int64_t{1} << 30));
    fit.window = static_cast<int>(o.get_int("window", 1, int64_t{1} << 30));
    if (o.has("loss_before")) fit.loss_before = double_list(o, "loss_before", 1 << 20);
    if (o.has("loss_after")) fit.loss_after = double_list(o, "loss_after", 1 << 20);
    c.wkvquant = std::move(fit);
  }
  c.complete_layers = static_cast<int>(root.get_int("complete_layers", 0, c.fingerprint.layers));
  c.tensors_sha256 = root.get_sha256("tensors_sha256");
  return c;
}

}  // namespace

const FloatTensor* Calibration::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

const FloatTensor& Calibration::tensor(const std::string& name) const {
  const FloatTensor* t = find(name);
  if (t == nullptr) throw InvalidArgument("calibration", "has no tensor '" + name + "'");
  return *t;
}

int Calibration::outlier_index(double f) const {
  for (size_t i = 0; i < outlier_fractions.size(); ++i) {
    if (std::fabs(outlier_fractions[i] - f) <= 1e-9 * std::fabs(f)) return static_cast<int>(i);
  }
  return -1;
}

bool Calibration::has_nuq_bits(int bits) const {
  for (int b : nuq_bits) {
    if (b == bits) return true;
  }
  return false;
}

std::string calibration_tensor_name(int layer, char kind, std::string_view quantity) {
  std::string s = "layers." + std::to_string(layer) + ".";
  s += kind;
  s += ".";
  s += quantity;
  return s;
}

std::string calibration_bits_name(int layer, KvKind kind, int bits, std::string_view quantity) {
  // Appended piecewise: GCC 12 warns falsely (-Wrestrict) on "b" + std::to_string(...).
  std::string q = "b";
  q += std::to_string(bits);
  q += '.';
  q += quantity;
  return calibration_tensor_name(layer, kind_letter(kind), q);
}

TensorRules calibration_tensor_rules(const Calibration& c, const std::string& where) {
  return rules_impl(c, [&](const std::string& m) -> void { throw InvalidArgument(where, m); });
}

std::string calibration_document(const Calibration& c) {
  return document_json(c, tensors_sha256(c.tensors)).dump();
}

Calibration parse_calibration(const std::string& file, const uint8_t* bytes, size_t size,
                              const CalibrationReadOptions& opts) {
  const KvqContainer k = parse_kvq_container(file, bytes, size, kCalibrationFormat);
  Calibration c = document_from(detail::parse_document(file, "calibration", k.document), file);
  c.version = k.version;
  const TensorRules rules =
      rules_impl(c, [&](const std::string& m) -> void { throw FormatError(file, m); });
  auto fail_at = [&](const std::string& name, const std::string& msg) -> void {
    auto it = k.data_offset.find(name);
    throw FormatError(file, it == k.data_offset.end() ? -1 : it->second, msg);
  };
  if (opts.verify_digest) {
    const std::string actual = tensors_sha256(k.tensors);
    if (actual != c.tensors_sha256) {
      throw FormatError(file, "tensor digest mismatch: the header says " +
                                  c.tensors_sha256.substr(0, 16) + "..., the tensors hash to " +
                                  actual.substr(0, 16) + "...",
                        "the file is corrupted or was edited; --no-verify skips this check");
    }
  }
  const int64_t n_layers = c.fingerprint.layers;
  for (const TensorView& t : k.tensors) {
    int64_t layer = 0;
    std::string_view q;
    if (split_layer_name(t.name, &layer, &q) && layer >= c.complete_layers &&
        layer < n_layers && is_known_quantity(q)) {
      fail_at(t.name, "tensor '" + t.name + "' is for layer " + std::to_string(layer) +
                          " but only " + std::to_string(c.complete_layers) +
                          " layers are complete");
    }
  }
  FloatTensors owned = own_f32_tensors(k, [&](const std::string& name) {
    if (rules.count(name) != 0) return true;
    int64_t layer = 0;
    std::string_view q;
    if (name.rfind("layers.", 0) != 0) return false;
    if (!split_layer_name(name, &layer, &q)) return true;
    return layer >= n_layers || is_known_quantity(q);
  });
  check_tensors(owned, rules, n_layers, is_known_quantity, fail_at);
  c.tensors = std::move(owned);
  Sha256 whole;
  if (size > 0) whole.update(bytes, size);
  c.file_sha256 = whole.hex_digest();
  return c;
}

Calibration read_calibration(const std::string& path, const CalibrationReadOptions& opts) {
  const MappedFile file(path);
  return parse_calibration(path, file.data(), file.size(), opts);
}

void write_calibration(const std::string& path, const Calibration& c) {
  const TensorRules rules = calibration_tensor_rules(c, path);
  for (const auto& [name, t] : c.tensors) {
    if (rules.count(name) == 0) {
      throw InvalidArgument(path, "tensor '" + name + "' is not part of this calibration's layout "
                                  "(complete_layers " + std::to_string(c.complete_layers) + ")");
    }
    if (static_cast<int64_t>(t.data.size()) != t.numel()) {
      throw InvalidArgument(path, "tensor '" + name + "' holds " + std::to_string(t.data.size()) +
                                      " values for shape " + shape_text(t.shape));
    }
  }
  check_tensors(c.tensors, rules, c.fingerprint.layers, is_known_quantity,
                [&](const std::string&, const std::string& m) -> void { throw InvalidArgument(path, m); });
  write_kvq_container(path, kCalibrationFormat, calibration_document(c), c.tensors);
}

}  // namespace kvq
