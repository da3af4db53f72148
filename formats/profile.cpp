// The quantization profile: document <-> struct, tensor rules, read and write.
// docs/profile-format.md is the specification this file implements.
#include "formats/profile.h"

#include <functional>

#include "formats/error.h"
#include "formats/mapped_file.h"
#include "formats/profile_json.h"

namespace kvq {

using detail::json;
using detail::JsonObject;

namespace {

constexpr std::array<std::string_view, 9> kMethodNames = {
    "int", "kivi", "kvquant", "wkvquant", "mikv", "q8_0", "q4_0", "fp8", "hadamard"};

// Quantities that format 1.0 defines, without the "layers.{i}." prefix.
constexpr std::array<std::string_view, 15> kKnownQuantities = {
    "k.signposts",    "v.signposts",    "k.channel_range", "v.channel_range",
    "k.outlier_threshold", "v.outlier_threshold", "k.qnorm", "v.qnorm",
    "k.smooth_delta", "v.smooth_delta", "k.smooth_scale",  "v.smooth_scale",
    "k.fp8_scale",    "v.fp8_scale",    "balancer"};

bool is_known_quantity(std::string_view q) {
  for (auto k : kKnownQuantities) {
    if (k == q) return true;
  }
  return false;
}

// Upper limits on scalar options: far above any real use, small enough that arithmetic
// on them (group x heads, sink + residual) cannot overflow an int.
constexpr int64_t kMaxCount = int64_t{1} << 30;

const char* axis_name(QuantAxis a) { return a == QuantAxis::kChannel ? "channel" : "token"; }
const char* range_name(RangeSource r) { return r == RangeSource::kStatic ? "static" : "dynamic"; }
const char* fp8_scale_name(Fp8Scale s) {
  switch (s) {
    case Fp8Scale::kNone: return "none";
    case Fp8Scale::kDynamic: return "dynamic";
    case Fp8Scale::kPerHead: return "per_head";
  }
  return "none";
}
const char* fp8_format_name(Fp8Format f) { return f == Fp8Format::kE4M3 ? "e4m3" : "e5m2"; }
const char* mikv_high_name(MikvHigh h) { return h == MikvHigh::kFp16 ? "fp16" : "int8"; }

json scheme_json(const KindScheme& s) {
  json j = json::object();
  j["bits"] = s.bits;
  j["axis"] = axis_name(s.axis);
  j["group"] = s.group;
  j["symmetric"] = s.symmetric;
  j["pre_rope"] = s.pre_rope;
  j["nuq"] = s.nuq;
  j["range"] = range_name(s.range);
  j["outlier_fraction"] = s.outlier_fraction;
  j["qnorm"] = s.qnorm;
  j["smoothing"] = s.smoothing;
  j["fp8_scale"] = fp8_scale_name(s.fp8_scale);
  return j;
}

// Reads the fields of a scheme that `o` has (all of them when `require_all`) over `s`.
void read_scheme_fields(const JsonObject& o, bool require_all, KindScheme* s) {
  auto want = [&](const char* key) { return require_all || o.has(key); };
  if (want("bits")) s->bits = static_cast<int>(o.get_int("bits", 1, 16));
  if (want("axis")) {
    s->axis = o.get_enum("axis", {"channel", "token"}) == "channel" ? QuantAxis::kChannel
                                                                     : QuantAxis::kToken;
  }
  if (want("group")) s->group = static_cast<int>(o.get_int("group", 0, kMaxCount));
  if (want("symmetric")) s->symmetric = o.get_bool("symmetric");
  if (want("pre_rope")) s->pre_rope = o.get_bool("pre_rope");
  if (want("nuq")) s->nuq = o.get_bool("nuq");
  if (want("range")) {
    s->range = o.get_enum("range", {"static", "dynamic"}) == "static" ? RangeSource::kStatic
                                                                      : RangeSource::kDynamic;
  }
  if (want("outlier_fraction")) s->outlier_fraction = o.get_double("outlier_fraction", 0.0, 0.5);
  if (want("qnorm")) s->qnorm = o.get_bool("qnorm");
  if (want("smoothing")) s->smoothing = o.get_bool("smoothing");
  if (want("fp8_scale")) {
    const std::string v = o.get_enum("fp8_scale", {"none", "dynamic", "per_head"});
    s->fp8_scale = v == "none" ? Fp8Scale::kNone
                   : v == "dynamic" ? Fp8Scale::kDynamic
                                    : Fp8Scale::kPerHead;
  }
}

// The fields of `eff` that differ from `base`, as a JSON object (layer overrides).
json scheme_diff(const KindScheme& base, const KindScheme& eff) {
  const json a = scheme_json(base), b = scheme_json(eff);
  json d = json::object();
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (a.at(it.key()) != it.value()) d[it.key()] = it.value();
  }
  return d;
}

json options_json(const ProfileOptions& o) {
  json j = json::object();
  j["sink_tokens"] = o.sink_tokens;
  j["residual"] = o.residual;
  j["poq"] = o.poq;
  j["hadamard_seed"] = o.hadamard_seed;
  j["fp8_format"] = fp8_format_name(o.fp8_format);
  j["mikv_high_share"] = o.mikv_high_share;
  j["mikv_recent"] = o.mikv_recent;
  j["mikv_high"] = mikv_high_name(o.mikv_high);
  j["balancer"] = o.balancer;
  return j;
}

ProfileOptions options_from(const JsonObject& o) {
  ProfileOptions p;
  p.sink_tokens = static_cast<int>(o.get_int("sink_tokens", 0, kMaxCount));
  p.residual = static_cast<int>(o.get_int("residual", 0, kMaxCount));
  p.poq = o.get_bool("poq");
  p.hadamard_seed = o.get_u64("hadamard_seed");
  p.fp8_format = o.get_enum("fp8_format", {"e4m3", "e5m2"}) == "e4m3" ? Fp8Format::kE4M3
                                                                      : Fp8Format::kE5M2;
  p.mikv_high_share = o.get_double("mikv_high_share", 0.0, 1.0);
  p.mikv_recent = static_cast<int>(o.get_int("mikv_recent", 0, kMaxCount));
  p.mikv_high = o.get_enum("mikv_high", {"fp16", "int8"}) == "fp16" ? MikvHigh::kFp16
                                                                    : MikvHigh::kInt8;
  p.balancer = o.get_bool("balancer");
  return p;
}

json document_json(const Profile& p, const std::string& digest) {
  json d = json::object();
  d["method"] = std::string(method_name(p.method));
  d["keys"] = scheme_json(p.keys);
  d["values"] = scheme_json(p.values);
  d["options"] = options_json(p.options);
  json layers = json::array();
  for (int i = 0; i < p.fingerprint.layers; ++i) {
    json l = json::object();
    if (!p.layers.empty()) {
      const auto& ls = p.layers.at(static_cast<size_t>(i));
      json k = scheme_diff(p.keys, ls.keys), v = scheme_diff(p.values, ls.values);
      if (!k.empty()) l["keys"] = std::move(k);
      if (!v.empty()) l["values"] = std::move(v);
    }
    layers.push_back(std::move(l));
  }
  d["layers"] = std::move(layers);
  d["fingerprint"] = detail::fingerprint_json(p.fingerprint);
  if (p.calibration) {
    json c = detail::provenance_json(p.calibration->provenance);
    c["file_sha256"] = p.calibration->file_sha256;
    d["calibration"] = std::move(c);
  } else {
    d["calibration"] = nullptr;
  }
  d["tensors_sha256"] = digest;
  json w = json::object();
  w["tool"] = p.writer.tool;
  w["version"] = p.writer.version;
  w["git_revision"] = p.writer.git_revision;
  d["writer"] = std::move(w);
  return d;
}

using Fail = std::function<void(const std::string& message)>;

// Header consistency and the tensors it requires. `fail` throws.
TensorRules rules_impl(const Profile& p, const Fail& fail) {
  const ModelFingerprint& fp = p.fingerprint;
  if (!p.layers.empty() && p.layers.size() != static_cast<size_t>(fp.layers)) {
    fail("profile has schemes for " + std::to_string(p.layers.size()) +
         " layers but the model has " + std::to_string(fp.layers));
  }
  const int64_t kv_dim = int64_t{fp.kv_heads} * fp.head_dim;
  const std::string mname(method_name(p.method));
  TensorRules rules;
  for (int i = 0; i < fp.layers; ++i) {
    for (KvKind kind : {KvKind::kKeys, KvKind::kValues}) {
      const KindScheme& s = p.scheme(i, kind);
      const std::string what = std::string(kind == KvKind::kKeys ? "keys" : "values") +
                               ", layer " + std::to_string(i);
      const std::string bits_text = std::to_string(s.bits) + " bits";
      if (s.bits < 1 || s.bits > 16) fail(what + ": bits " + std::to_string(s.bits) + " not in [1, 16]");
      if (s.nuq && s.bits > 8) fail(what + ": NUQ signposts need bits <= 8, found " + bits_text);
      if (kind == KvKind::kValues && s.pre_rope) fail(what + ": pre_rope applies to keys only");
      if (s.fp8_scale != Fp8Scale::kNone && s.bits != 8) fail(what + ": FP8 needs 8 bits, found " + bits_text);
      if (s.outlier_fraction < 0.0 || s.outlier_fraction > 0.5) fail(what + ": outlier_fraction not in [0, 0.5]");
      if (s.group < 0) fail(what + ": negative group");
      switch (p.method) {
        case Method::kQ8_0:
        case Method::kQ4_0: {
          const int want = p.method == Method::kQ8_0 ? 8 : 4;
          if (s.bits != want) fail(what + ": " + mname + " is " + std::to_string(want) + "-bit, found " + bits_text);
          break;
        }
        case Method::kFp8:
          if (s.fp8_scale == Fp8Scale::kNone) fail(what + ": fp8 needs fp8_scale dynamic or per_head");
          break;
        default:
          break;
      }
      auto add = [&](const char* quantity, std::vector<int64_t> shape, ValueRule rule) {
        rules[profile_tensor_name(i, kind, quantity)] = TensorRule{std::move(shape), rule, what + ", " + bits_text};
      };
      if (s.nuq) add("signposts", {int64_t{1} << s.bits}, ValueRule::kIncreasingUnit);
      if (s.range == RangeSource::kStatic) add("channel_range", {2, kv_dim}, ValueRule::kRowsOrdered);
      if (kind == KvKind::kKeys && s.outlier_fraction > 0.0) {
        add("outlier_threshold", {2, kv_dim}, ValueRule::kRowsOrdered);
      }
      if (s.qnorm) add("qnorm", {2}, ValueRule::kScaleOffset);
      if (s.smoothing) {
        add("smooth_delta", {kv_dim}, ValueRule::kFinite);
        add("smooth_scale", {kv_dim}, ValueRule::kPositive);
      }
      if (s.fp8_scale == Fp8Scale::kPerHead) add("fp8_scale", {fp.kv_heads}, ValueRule::kPositive);
    }
    if (p.options.balancer) {
      rules[profile_balancer_name(i)] = TensorRule{{kv_dim}, ValueRule::kPositive,
                                                   "balancer, layer " + std::to_string(i)};
    }
  }
  return rules;
}

Profile document_from(const json& doc, const std::string& file) {
  const JsonObject root(doc, file, "profile");
  Profile p;
  const std::string m = root.get_string("method");
  const auto method = parse_method(m);
  if (!method) {
    throw UnsupportedError(file, "profile method '" + m.substr(0, 40) +
                                     "' is not one this kvq implements",
                           "upgrade kvq; known methods: int, kivi, kvquant, wkvquant, mikv, "
                           "q8_0, q4_0, fp8, hadamard");
  }
  p.method = *method;
  read_scheme_fields(root.get_object("keys"), true, &p.keys);
  read_scheme_fields(root.get_object("values"), true, &p.values);
  p.options = options_from(root.get_object("options"));
  p.fingerprint = detail::fingerprint_from(root.get_object("fingerprint"));

  const json& layers = root.get_array("layers");
  if (layers.size() != static_cast<size_t>(p.fingerprint.layers)) {
    root.fail("layers", "has " + std::to_string(layers.size()) + " entries but the fingerprint says " +
                            std::to_string(p.fingerprint.layers) + " layers");
  }
  bool any_override = false;
  std::vector<LayerSchemes> eff;
  eff.reserve(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const JsonObject l(layers[i], file, "profile.layers[" + std::to_string(i) + "]");
    LayerSchemes ls{p.keys, p.values};
    if (l.has("keys")) read_scheme_fields(l.get_object("keys"), false, &ls.keys);
    if (l.has("values")) read_scheme_fields(l.get_object("values"), false, &ls.values);
    any_override = any_override || ls.keys != p.keys || ls.values != p.values;
    eff.push_back(std::move(ls));
  }
  if (any_override) p.layers = std::move(eff);

  const json& cal = root.raw("calibration");
  if (!cal.is_null()) {
    const JsonObject c(cal, file, "profile.calibration");
    ProfileCalibration pc;
    pc.provenance = detail::provenance_from(c);
    pc.file_sha256 = c.get_sha256("file_sha256");
    p.calibration = std::move(pc);
  }
  p.tensors_sha256 = root.get_sha256("tensors_sha256");
  const JsonObject w = root.get_object("writer");
  p.writer.tool = w.get_string("tool");
  p.writer.version = w.get_string("version");
  p.writer.git_revision = w.get_string("git_revision");
  return p;
}

}  // namespace

std::string_view method_name(Method m) { return kMethodNames[static_cast<size_t>(m)]; }

std::optional<Method> parse_method(std::string_view s) {
  for (size_t i = 0; i < kMethodNames.size(); ++i) {
    if (kMethodNames[i] == s) return static_cast<Method>(i);
  }
  return std::nullopt;
}

float fp8_max_finite(Fp8Format f) { return f == Fp8Format::kE4M3 ? 448.0f : 57344.0f; }

const KindScheme& Profile::scheme(int layer, KvKind kind) const {
  if (layers.empty()) return kind == KvKind::kKeys ? keys : values;
  const LayerSchemes& l = layers.at(static_cast<size_t>(layer));
  return kind == KvKind::kKeys ? l.keys : l.values;
}

const FloatTensor* Profile::find(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? nullptr : &it->second;
}

const FloatTensor& Profile::tensor(const std::string& name) const {
  const FloatTensor* t = find(name);
  if (t == nullptr) throw InvalidArgument("profile", "has no tensor '" + name + "'");
  return *t;
}

std::string profile_tensor_name(int layer, KvKind kind, std::string_view quantity) {
  std::string s = "layers." + std::to_string(layer) + ".";
  s += kind_letter(kind);
  s += ".";
  s += quantity;
  return s;
}

std::string profile_balancer_name(int layer) {
  return "layers." + std::to_string(layer) + ".balancer";
}

TensorRules profile_tensor_rules(const Profile& p, const std::string& where) {
  return rules_impl(p, [&](const std::string& m) -> void { throw InvalidArgument(where, m); });
}

std::string profile_document(const Profile& p) {
  return document_json(p, tensors_sha256(p.tensors)).dump();
}

Profile parse_profile(const std::string& file, const uint8_t* bytes, size_t size,
                      const ProfileReadOptions& opts) {
  const KvqContainer c = parse_kvq_container(file, bytes, size, kProfileFormat);
  Profile p = document_from(detail::parse_document(file, "profile", c.document), file);
  p.version = c.version;
  const TensorRules rules =
      rules_impl(p, [&](const std::string& m) -> void { throw FormatError(file, m); });

  const int64_t n_layers = p.fingerprint.layers;
  auto fail_at = [&](const std::string& name, const std::string& msg) -> void {
    auto it = c.data_offset.find(name);
    throw FormatError(file, it == c.data_offset.end() ? -1 : it->second, msg);
  };
  if (opts.verify_digest) {
    const std::string actual = tensors_sha256(c.tensors);
    if (actual != p.tensors_sha256) {
      throw FormatError(file, "tensor digest mismatch: the header says " +
                                  p.tensors_sha256.substr(0, 16) + "..., the tensors hash to " +
                                  actual.substr(0, 16) + "...",
                        "the file is corrupted or was edited; --no-verify skips this check");
    }
  }
  // Own what this version knows; a known quantity under a bad layer index is refused by
  // check_tensors, unknown quantities (a newer minor version) are skipped.
  FloatTensors owned = own_f32_tensors(c, [&](const std::string& name) {
    if (rules.count(name) != 0) return true;
    int64_t layer = 0;
    std::string_view q;
    if (name.rfind("layers.", 0) != 0) return false;
    if (!split_layer_name(name, &layer, &q)) return true;  // refused below
    return layer >= n_layers || is_known_quantity(q);
  });
  check_tensors(owned, rules, n_layers, is_known_quantity, fail_at);
  p.tensors = std::move(owned);
  return p;
}

Profile read_profile(const std::string& path, const ProfileReadOptions& opts) {
  const MappedFile file(path);
  return parse_profile(path, file.data(), file.size(), opts);
}

void write_profile(const std::string& path, const Profile& p) {
  const TensorRules rules = profile_tensor_rules(p, path);
  for (const auto& [name, t] : p.tensors) {
    if (rules.count(name) == 0) {
      throw InvalidArgument(path, "tensor '" + name + "' is not part of this profile's scheme");
    }
    if (static_cast<int64_t>(t.data.size()) != t.numel()) {
      throw InvalidArgument(path, "tensor '" + name + "' holds " + std::to_string(t.data.size()) +
                                      " values for shape " + shape_text(t.shape));
    }
  }
  check_tensors(p.tensors, rules, p.fingerprint.layers, is_known_quantity,
                [&](const std::string&, const std::string& m) -> void { throw InvalidArgument(path, m); });
  write_kvq_container(path, kProfileFormat, profile_document(p), p.tensors);
}

}  // namespace kvq
