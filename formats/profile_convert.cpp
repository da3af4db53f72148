// Calibration -> profile conversion, profile specs and vLLM scales; see profile_convert.h.
#include "formats/profile_convert.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "formats/error.h"

namespace kvq {

namespace {

const std::map<Method, std::vector<std::string_view>>& option_table() {
  static const std::map<Method, std::vector<std::string_view>> table = {
      {Method::kInt, {"bits", "key-bits", "value-bits", "axis", "group", "symmetric", "sink"}},
      {Method::kKivi, {"bits", "key-bits", "value-bits", "group", "residual", "sink"}},
      {Method::kKvquant, {"bits", "key-bits", "value-bits", "outliers", "sink", "qnorm", "nuq"}},
      {Method::kWkvquant, {"bits", "key-bits", "value-bits", "sink", "poq"}},
      {Method::kMikv, {"bits", "key-bits", "value-bits", "high-share", "recent", "high", "balancer", "sink"}},
      {Method::kQ8_0, {"sink"}},
      {Method::kQ4_0, {"sink"}},
      {Method::kFp8, {"fp8-format", "scale", "sink"}},
      {Method::kHadamard, {"bits", "key-bits", "value-bits", "seed", "sink"}},
  };
  return table;
}

std::string join_keys(const std::vector<std::string_view>& keys) {
  std::string s;
  for (auto k : keys) {
    if (!s.empty()) s += ", ";
    s += k;
  }
  return s;
}

std::string join_ints(const std::vector<int>& v) {
  std::string s;
  for (int x : v) {
    if (!s.empty()) s += ", ";
    s += std::to_string(x);
  }
  return s.empty() ? "none" : s;
}

// Reads a spec's options with the spec text in every message.
class SpecReader {
 public:
  explicit SpecReader(const ProfileSpec& s) : spec_(s) {}

  bool has(const char* key) const { return spec_.options.count(key) != 0; }

  [[noreturn]] void fail(const std::string& message) const {
    throw InvalidArgument(std::string(method_name(spec_.method)), message);
  }

  int64_t get_int(const char* key, int64_t def, int64_t lo, int64_t hi) const {
    auto it = spec_.options.find(key);
    if (it == spec_.options.end()) return def;
    const std::string& v = it->second;
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi) {
      fail(std::string(key) + "=" + v + ": expected an integer in [" + std::to_string(lo) + ", " +
           std::to_string(hi) + "]");
    }
    return x;
  }

  bool get_bool(const char* key, bool def) const {
    auto it = spec_.options.find(key);
    if (it == spec_.options.end()) return def;
    const std::string& v = it->second;
    if (v == "1" || v == "true" || v == "on" || v == "yes") return true;
    if (v == "0" || v == "false" || v == "off" || v == "no") return false;
    fail(std::string(key) + "=" + v + ": expected 1/0, true/false, on/off");
  }

  double get_fraction(const char* key, double def, double hi) const {
    auto it = spec_.options.find(key);
    if (it == spec_.options.end()) return def;
    const auto f = parse_fraction(it->second);
    if (!f || *f > hi) {
      fail(std::string(key) + "=" + it->second + ": expected a fraction in [0, " +
           std::to_string(hi) + "] such as 0.01 or 1%");
    }
    return *f;
  }

  std::string get_enum(const char* key, const std::string& def,
                       std::initializer_list<const char*> allowed) const {
    auto it = spec_.options.find(key);
    if (it == spec_.options.end()) return def;
    std::string list;
    for (const char* a : allowed) {
      if (it->second == a) return it->second;
      if (!list.empty()) list += ", ";
      list += a;
    }
    fail(std::string(key) + "=" + it->second + ": expected one of " + list);
  }

  // key-bits / value-bits override bits; `def` when none is given.
  std::pair<int, int> bits(int def) const {
    const int b = static_cast<int>(get_int("bits", def, 1, 16));
    return {static_cast<int>(get_int("key-bits", b, 1, 16)),
            static_cast<int>(get_int("value-bits", b, 1, 16))};
  }

  void require_bits_in(std::pair<int, int> kv, std::initializer_list<int> allowed) const {
    for (int b : {kv.first, kv.second}) {
      if (std::find(allowed.begin(), allowed.end(), b) == allowed.end()) {
        std::string list;
        for (int a : allowed) list += (list.empty() ? "" : ", ") + std::to_string(a);
        fail(std::to_string(b) + " bits is not supported (choose " + list + ")");
      }
    }
  }

 private:
  const ProfileSpec& spec_;
};

const FloatTensor& calib_tensor(const Calibration& c, const std::string& name) {
  const FloatTensor* t = c.find(name);
  // The reader checked every required tensor; this guards calibrations built in memory.
  if (t == nullptr) throw InvalidArgument("calibration", "has no tensor '" + name + "'");
  return *t;
}

void require_complete(const Calibration& c, Method m) {
  if (c.complete_layers != c.fingerprint.layers) {
    throw InvalidArgument("calibration",
                          std::string(method_name(m)) + " needs a complete calibration, this one has " +
                              std::to_string(c.complete_layers) + " of " +
                              std::to_string(c.fingerprint.layers) + " layers",
                          "resume kvq-calibrate to finish the remaining layers");
  }
}

ProfileCalibration provenance_of(const Calibration& c) {
  return ProfileCalibration{c.provenance, c.file_sha256};
}

// 0.01 -> "1%".
std::string percent_text(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g%%", f * 100.0);
  return buf;
}

// num / den in double, or 1 when either is 0 (nothing measured: leave the data as is).
double ratio_or_one(double num, double den) {
  if (!(num > 0.0) || !(den > 0.0)) return 1.0;
  return num / den;
}

}  // namespace

std::optional<double> parse_fraction(std::string_view s) {
  if (s.empty()) return std::nullopt;
  bool percent = false;
  if (s.back() == '%') {
    percent = true;
    s.remove_suffix(1);
  }
  if (s.empty()) return std::nullopt;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || c == '.')) return std::nullopt;
  }
  // "1%" parses as the decimal "1e-2", so it equals the literal 0.01 exactly (the
  // calibration file's fractions are compared with the same parse).
  std::string text(s);
  if (percent) text += "e-2";
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (*end != '\0' || !std::isfinite(v) || v < 0.0) return std::nullopt;
  return v;
}

const std::vector<std::string_view>& method_option_keys(Method m) { return option_table().at(m); }

bool method_takes_option(Method m, std::string_view key) {
  const auto& keys = method_option_keys(m);
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

ProfileSpec parse_profile_spec(std::string_view text) {
  ProfileSpec spec;
  spec.text = std::string(text);
  const size_t colon = text.find(':');
  const std::string mname(text.substr(0, colon));
  const auto m = parse_method(mname);
  if (!m) {
    throw InvalidArgument("--profile", "unknown method '" + mname + "' in '" + spec.text + "'",
                          "methods: int, kivi, kvquant, wkvquant, mikv, q8_0, q4_0, fp8, hadamard");
  }
  spec.method = *m;
  if (colon == std::string_view::npos) return spec;
  std::string_view rest = text.substr(colon + 1);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view pair = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0 || eq + 1 == pair.size()) {
      throw InvalidArgument("--profile", "'" + std::string(pair) + "' in '" + spec.text +
                                             "' is not KEY=VALUE");
    }
    const std::string key(pair.substr(0, eq)), value(pair.substr(eq + 1));
    if (!method_takes_option(spec.method, key)) {
      throw InvalidArgument("--profile", "option '" + key + "' does not apply to " + mname +
                                             " (it takes: " + join_keys(method_option_keys(spec.method)) + ")");
    }
    if (!spec.options.emplace(key, value).second) {
      throw InvalidArgument("--profile", "option '" + key + "' given twice in '" + spec.text + "'");
    }
  }
  return spec;
}

bool spec_needs_calibration(const ProfileSpec& spec) {
  switch (spec.method) {
    case Method::kKvquant:
    case Method::kWkvquant:
      return true;
    case Method::kMikv:
      return SpecReader(spec).get_bool("balancer", true);
    default:
      return false;
  }
}

Profile make_profile(const ProfileSpec& spec, const Calibration* calib,
                     const ModelFingerprint* model, const WriterInfo& writer,
                     std::vector<std::string>* notes) {
  const SpecReader r(spec);
  if (calib == nullptr && spec_needs_calibration(spec)) {
    r.fail("needs a calibration file (--calib)" +
           std::string(spec.method == Method::kMikv ? " for its balancer, or balancer=0" : ""));
  }
  if (calib == nullptr && model == nullptr) r.fail("needs --model (or --calib) for the fingerprint");
  if (calib != nullptr && model != nullptr) {
    check_fingerprint(calib->fingerprint, *model, "calibration", "calibration");
  }
  Profile p;
  p.method = spec.method;
  p.fingerprint = calib != nullptr ? calib->fingerprint : *model;
  p.writer = writer;
  const ModelFingerprint& fp = p.fingerprint;
  const int n_layers = fp.layers;
  const int head_dim = fp.head_dim;
  KindScheme& k = p.keys;
  KindScheme& v = p.values;
  p.options.sink_tokens = static_cast<int>(r.get_int("sink", 0, 0, 1 << 30));
  auto note = [&](const std::string& s) {
    if (notes != nullptr) notes->push_back(std::string(method_name(spec.method)) + ": " + s);
  };

  switch (spec.method) {
    case Method::kInt:
    case Method::kHadamard: {
      const auto kv = r.bits(4);
      r.require_bits_in(kv, {2, 3, 4, 8});
      k.bits = kv.first;
      v.bits = kv.second;
      const QuantAxis axis =
          r.get_enum("axis", "token", {"token", "channel"}) == "channel" ? QuantAxis::kChannel : QuantAxis::kToken;
      // Per-channel groups run along tokens and need a finite size (128 tokens, as the
      // int-b codec defaults to); per-token groups of 0 mean one whole head.
      const int group = static_cast<int>(
          r.get_int("group", axis == QuantAxis::kChannel ? 128 : 0, axis == QuantAxis::kChannel ? 1 : 0, 1 << 20));
      const bool sym = r.get_bool("symmetric", false);
      for (KindScheme* s : {&k, &v}) {
        s->axis = axis;
        s->group = group;
        s->symmetric = sym;
      }
      if (spec.method == Method::kHadamard) {
        if ((head_dim & (head_dim - 1)) != 0) r.fail("needs a power-of-two head_dim, the model has " + std::to_string(head_dim));
        // The codec draws its signs from a 31-bit seed (lib/codecs/hadamard.cpp).
        p.options.hadamard_seed = static_cast<uint64_t>(r.get_int("seed", 0, 0, 0x7fffffff));
      }
      break;
    }
    case Method::kKivi: {
      const auto kv = r.bits(2);
      r.require_bits_in(kv, {2, 3, 4, 8});
      const int group = static_cast<int>(r.get_int("group", 32, 1, 1 << 20));
      const int residual = static_cast<int>(r.get_int("residual", 128, 0, 1 << 30));
      if (residual % group != 0) {
        r.fail("residual " + std::to_string(residual) + " must be a multiple of group " + std::to_string(group));
      }
      k = KindScheme{kv.first, QuantAxis::kChannel, group};
      v = KindScheme{kv.second, QuantAxis::kToken, group};
      p.options.residual = residual;
      break;
    }
    case Method::kKvquant: {
      const Calibration& c = *calib;
      require_complete(c, spec.method);
      // nuq: which sides index the calibrated signposts; the others use uniform codes.
      // keys-only exists because the value signposts can transfer worse than the key
      // ones to text unlike the calibration's (docs/results.md, session 4).
      const std::string nuq_sides = r.get_enum("nuq", "both", {"1", "true", "on", "yes", "both", "0", "false", "off",
                                                                "no", "none", "keys", "values"});
      const bool none = nuq_sides == "0" || nuq_sides == "false" || nuq_sides == "off" ||
                        nuq_sides == "no" || nuq_sides == "none";
      const bool k_nuq = !none && nuq_sides != "values";
      const bool v_nuq = !none && nuq_sides != "keys";
      const bool qnorm = r.get_bool("qnorm", false);
      const auto kv = r.bits(3);
      for (const auto& [b, side_nuq] : {std::pair{kv.first, k_nuq}, std::pair{kv.second, v_nuq}}) {
        if (side_nuq && !c.has_nuq_bits(b)) {
          r.fail(std::to_string(b) + " bits: the calibration has signposts for " + join_ints(c.nuq_bits) + " bits");
        }
        if (!side_nuq) r.require_bits_in({b, b}, {2, 3, 4, 5, 6, 7, 8});
      }
      if (qnorm && !(k_nuq && v_nuq)) r.fail("qnorm=1 needs nuq=1 (Q-Norm was fitted for the NUQ quantizer on both sides)");
      const double f = r.get_fraction("outliers", c.outlier_fraction, 0.5);
      const int fi = c.outlier_index(f);
      if (f > 0.0 && fi < 0) {
        std::string list;
        for (double x : c.outlier_fractions) list += (list.empty() ? "" : ", ") + percent_text(x);
        const auto given = spec.options.find("outliers");
        r.fail("outliers " + (given != spec.options.end() ? given->second : std::to_string(f)) +
               ": the calibration has key thresholds for " + list + " (and 0)");
      }
      if (std::fabs(f - c.outlier_fraction) > 1e-12) {
        note("outliers " + percent_text(f) + " differ from the " + percent_text(c.outlier_fraction) +
             " the signposts were fitted with");
      }
      if (!r.has("sink")) p.options.sink_tokens = c.sink_tokens;
      if (p.options.sink_tokens != c.sink_tokens) {
        note("sink " + std::to_string(p.options.sink_tokens) + " differs from the " +
             std::to_string(c.sink_tokens) + " sink tokens excluded at calibration");
      }
      k = KindScheme{kv.first, QuantAxis::kChannel, 0, false, true, k_nuq, RangeSource::kStatic, f, qnorm};
      v = KindScheme{kv.second, QuantAxis::kToken, 0, false, false, v_nuq, RangeSource::kDynamic, f, qnorm};
      for (int i = 0; i < n_layers; ++i) {
        if (k_nuq) {
          p.tensors[profile_tensor_name(i, KvKind::kKeys, "signposts")] =
              calib_tensor(c, calibration_bits_name(i, KvKind::kKeys, k.bits, "signposts"));
        }
        if (v_nuq) {
          p.tensors[profile_tensor_name(i, KvKind::kValues, "signposts")] =
              calib_tensor(c, calibration_bits_name(i, KvKind::kValues, v.bits, "signposts"));
        }
        if (qnorm) {
          p.tensors[profile_tensor_name(i, KvKind::kKeys, "qnorm")] =
              calib_tensor(c, calibration_bits_name(i, KvKind::kKeys, k.bits, "qnorm"));
          p.tensors[profile_tensor_name(i, KvKind::kValues, "qnorm")] =
              calib_tensor(c, calibration_bits_name(i, KvKind::kValues, v.bits, "qnorm"));
        }
        if (f > 0.0) {
          // Row fi of [F, 2, D]: the dense part is normalized with the outliers removed,
          // so the static range is the thresholds themselves (METHODS.md, KVQuant 5).
          const FloatTensor& all = calib_tensor(c, calibration_tensor_name(i, 'k', "outlier_threshold"));
          const int64_t d = all.shape.back();
          FloatTensor row{{2, d}, std::vector<float>(all.data.begin() + fi * 2 * d,
                                                      all.data.begin() + (fi + 1) * 2 * d)};
          p.tensors[profile_tensor_name(i, KvKind::kKeys, "outlier_threshold")] = row;
          p.tensors[profile_tensor_name(i, KvKind::kKeys, "channel_range")] = std::move(row);
        } else {
          p.tensors[profile_tensor_name(i, KvKind::kKeys, "channel_range")] =
              calib_tensor(c, calibration_tensor_name(i, 'k', "channel_range"));
        }
      }
      p.calibration = provenance_of(c);
      break;
    }
    case Method::kWkvquant: {
      const Calibration& c = *calib;
      require_complete(c, spec.method);
      if (!c.wkvquant) r.fail("the calibration has no WKVQuant fit (run kvq-calibrate with CRR)");
      const auto kv = r.bits(c.wkvquant->bits.empty() ? 4 : c.wkvquant->bits.back());
      for (int b : {kv.first, kv.second}) {
        if (std::find(c.wkvquant->bits.begin(), c.wkvquant->bits.end(), b) == c.wkvquant->bits.end()) {
          r.fail(std::to_string(b) + " bits: the calibration has WKVQuant fits for " +
                 join_ints(c.wkvquant->bits) + " bits");
        }
      }
      const int group = c.wkvquant->group;
      k = KindScheme{kv.first, QuantAxis::kToken, group};
      v = KindScheme{kv.second, QuantAxis::kToken, group};
      k.smoothing = v.smoothing = true;
      p.options.poq = r.get_bool("poq", true);
      for (int i = 0; i < n_layers; ++i) {
        for (KvKind kind : {KvKind::kKeys, KvKind::kValues}) {
          const int b = kind == KvKind::kKeys ? k.bits : v.bits;
          for (const char* q : {"smooth_delta", "smooth_scale"}) {
            p.tensors[profile_tensor_name(i, kind, q)] = calib_tensor(c, calibration_bits_name(i, kind, b, q));
          }
        }
      }
      p.calibration = provenance_of(c);
      break;
    }
    case Method::kMikv: {
      const auto kv = r.bits(2);
      r.require_bits_in(kv, {2, 3, 4});
      k = KindScheme{kv.first, QuantAxis::kToken, 0};
      v = KindScheme{kv.second, QuantAxis::kToken, 0};
      p.options.mikv_high_share = r.get_fraction("high-share", 0.2, 1.0);
      p.options.mikv_recent = static_cast<int>(r.get_int("recent", 32, 0, 1 << 30));
      p.options.mikv_high = r.get_enum("high", "fp16", {"fp16", "int8"}) == "fp16" ? MikvHigh::kFp16 : MikvHigh::kInt8;
      p.options.balancer = r.get_bool("balancer", true);
      if (p.options.balancer) {
        const Calibration& c = *calib;
        require_complete(c, spec.method);
        const int group = fp.heads / fp.kv_heads;
        for (int i = 0; i < n_layers; ++i) {
          const FloatTensor& qa = calib_tensor(c, calibration_tensor_name(i, 'q', "post_rope_absmax"));
          const FloatTensor& ka = calib_tensor(c, calibration_tensor_name(i, 'k', "post_rope_absmax"));
          FloatTensor bal{{fp.kv_dim()}, std::vector<float>(static_cast<size_t>(fp.kv_dim()))};
          for (int h = 0; h < fp.kv_heads; ++h) {
            for (int j = 0; j < head_dim; ++j) {
              // A key channel is shared by the group's query heads: one divisor, with the
              // largest query magnitude among them (docs/profile-format.md).
              double qmax = 0.0;
              for (int g = h * group; g < (h + 1) * group; ++g) {
                qmax = std::max(qmax, static_cast<double>(qa.data[static_cast<size_t>(g) * head_dim + j]));
              }
              const size_t c_idx = static_cast<size_t>(h) * head_dim + j;
              bal.data[c_idx] = static_cast<float>(std::sqrt(ratio_or_one(qmax, ka.data[c_idx])));
            }
          }
          p.tensors[profile_balancer_name(i)] = std::move(bal);
        }
        p.calibration = provenance_of(c);
      }
      break;
    }
    case Method::kQ8_0:
    case Method::kQ4_0: {
      const int b = spec.method == Method::kQ8_0 ? 8 : 4;
      k = KindScheme{b, QuantAxis::kToken, 32, true};
      v = KindScheme{b, QuantAxis::kToken, 32, true};
      break;
    }
    case Method::kFp8: {
      p.options.fp8_format = r.get_enum("fp8-format", "e4m3", {"e4m3", "e5m2"}) == "e4m3" ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
      const std::string scale = r.get_enum("scale", calib != nullptr ? "per-head" : "dynamic", {"per-head", "dynamic"});
      if (scale == "per-head" && calib == nullptr) r.fail("scale=per-head needs a calibration file (--calib)");
      k = KindScheme{8, QuantAxis::kToken, 0};
      v = KindScheme{8, QuantAxis::kToken, 0};
      k.fp8_scale = v.fp8_scale = scale == "per-head" ? Fp8Scale::kPerHead : Fp8Scale::kDynamic;
      if (scale == "per-head") {
        const Calibration& c = *calib;
        require_complete(c, spec.method);
        const double fmax = fp8_max_finite(p.options.fp8_format);
        for (int i = 0; i < n_layers; ++i) {
          for (KvKind kind : {KvKind::kKeys, KvKind::kValues}) {
            const FloatTensor& a = calib_tensor(
                c, kind == KvKind::kKeys ? calibration_tensor_name(i, 'k', "post_rope_absmax")
                                         : calibration_tensor_name(i, 'v', "absmax"));
            FloatTensor s{{fp.kv_heads}, std::vector<float>(static_cast<size_t>(fp.kv_heads))};
            for (int h = 0; h < fp.kv_heads; ++h) {
              double m = 0.0;
              for (int j = 0; j < head_dim; ++j) m = std::max(m, static_cast<double>(a.data[static_cast<size_t>(h) * head_dim + j]));
              s.data[static_cast<size_t>(h)] = static_cast<float>(ratio_or_one(m, fmax));
            }
            p.tensors[profile_tensor_name(i, kind, "fp8_scale")] = std::move(s);
          }
        }
        p.calibration = provenance_of(c);
      }
      break;
    }
  }
  // The same checks the reader applies, so that a bad combination fails here, not later.
  profile_tensor_rules(p, std::string(method_name(spec.method)));
  return p;
}

std::string profile_bits_label(const Profile& p) {
  if (p.keys.bits == p.values.bits) return std::to_string(p.keys.bits);
  std::string s = "k";  // appended piecewise: GCC 12's false -Wrestrict on "k" + to_string
  s += std::to_string(p.keys.bits);
  s += 'v';
  s += std::to_string(p.values.bits);
  return s;
}

std::string expand_output_template(const std::string& tmpl, const Profile& p) {
  std::string out;
  for (size_t i = 0; i < tmpl.size();) {
    if (tmpl.compare(i, 8, "{method}") == 0) {
      out += method_name(p.method);
      i += 8;
    } else if (tmpl.compare(i, 6, "{bits}") == 0) {
      out += profile_bits_label(p);
      i += 6;
    } else {
      out += tmpl[i++];
    }
  }
  return out;
}

FloatTensors vllm_kv_scales(const Calibration& calib, Fp8Format format) {
  if (calib.complete_layers != calib.fingerprint.layers) {
    throw InvalidArgument("calibration", "export-vllm needs a complete calibration, this one has " +
                                             std::to_string(calib.complete_layers) + " of " +
                                             std::to_string(calib.fingerprint.layers) + " layers");
  }
  const double fmax = fp8_max_finite(format);
  FloatTensors out;
  for (int i = 0; i < calib.fingerprint.layers; ++i) {
    for (const auto& [src, dst] : {std::pair<std::string, const char*>{calibration_tensor_name(i, 'k', "post_rope_absmax"), "k_scale"},
                                   std::pair<std::string, const char*>{calibration_tensor_name(i, 'v', "absmax"), "v_scale"}}) {
      const FloatTensor& a = calib_tensor(calib, src);
      double m = 0.0;
      for (float x : a.data) m = std::max(m, static_cast<double>(x));
      out["model.layers." + std::to_string(i) + ".self_attn." + dst] = FloatTensor{{}, {static_cast<float>(ratio_or_one(m, fmax))}};
    }
  }
  return out;
}

}  // namespace kvq
