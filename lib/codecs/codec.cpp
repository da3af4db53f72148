// The codec spec parser (`--kv METHOD[:k=v,...]`), parameter maps, and the factory that
// maps a method name to its codec file.
#include "lib/codecs/codec.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include "formats/error.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

const char* const kWhere = "--kv";

struct MethodEntry {
  const char* name;
  CodecFactory factory;
};

const MethodEntry kMethods[] = {
    {"fp16", make_fp16_codec},         {"int2", make_uniform_codec},
    {"int3", make_uniform_codec},      {"int4", make_uniform_codec},
    {"int8", make_uniform_codec},      {"kivi", make_kivi_codec},
    {"kvquant", make_kvquant_codec},   {"wkvquant", make_wkvquant_codec},
    {"mikv", make_mikv_codec},         {"q8_0", make_ggml_codec},
    {"q4_0", make_ggml_codec},         {"fp8", make_fp8_codec},
    {"hadamard", make_hadamard_codec},
};

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

std::string trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return std::string(s.substr(a, b - a));
}

std::string method_list() {
  std::string r;
  for (const auto& m : kMethods) r += (r.empty() ? "" : ", ") + std::string(m.name);
  return r;
}

}  // namespace

std::string_view side_name(KvSide s) { return s == KvSide::kKey ? "k" : "v"; }

double CodecParams::number(const std::string& k, double fallback) const {
  auto it = numbers.find(k);
  return it == numbers.end() ? fallback : it->second;
}
const std::vector<float>* CodecParams::tensor(const std::string& k) const {
  auto it = tensors.find(k);
  return it == tensors.end() ? nullptr : &it->second;
}

bool CodecSpec::has(std::string_view key) const {
  return std::any_of(options.begin(), options.end(), [&](const auto& o) { return o.first == key; });
}

std::string CodecSpec::get(std::string_view key, std::string_view fallback) const {
  for (const auto& o : options)
    if (o.first == key) return o.second;
  return std::string(fallback);
}

int CodecSpec::get_int(std::string_view key, int fallback, int lo, int hi) const {
  if (!has(key)) return fallback;
  const std::string v = get(key, "");
  int r = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), r);
  if (ec != std::errc() || p != v.data() + v.size() || r < lo || r > hi)
    throw InvalidArgument(kWhere, text + ": " + std::string(key) + "=" + v +
                                      ": expected an integer in [" + std::to_string(lo) + ", " +
                                      std::to_string(hi) + "]");
  return r;
}

double CodecSpec::get_double(std::string_view key, double fallback, double lo, double hi) const {
  if (!has(key)) return fallback;
  const std::string v = get(key, "");
  double r = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), r);
  if (ec != std::errc() || p != v.data() + v.size() || !std::isfinite(r) || r < lo || r > hi)
    throw InvalidArgument(kWhere, text + ": " + std::string(key) + "=" + v +
                                      ": expected a number in [" + std::to_string(lo) + ", " +
                                      std::to_string(hi) + "]");
  return r;
}

bool CodecSpec::get_bool(std::string_view key, bool fallback) const {
  if (!has(key)) return fallback;
  const std::string v = lower(get(key, ""));
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw InvalidArgument(kWhere, text + ": " + std::string(key) + "=" + v + ": expected 0 or 1");
}

void CodecSpec::check_known(std::initializer_list<std::string_view> known) const {
  for (const auto& o : options) {
    if (std::find(known.begin(), known.end(), o.first) != known.end()) continue;
    std::string list;
    for (auto k : known)
      if (!k.empty()) list += (list.empty() ? "" : ", ") + std::string(k);
    throw InvalidArgument(kWhere,
                          text + ": unknown option '" + (o.first.empty() ? o.second : o.first) +
                              "' for " + method,
                          list.empty() ? method + " takes no options" : method + " takes: " + list);
  }
}

CodecSpec parse_codec_spec(std::string_view text) {
  CodecSpec spec;
  spec.text = trim(text);
  if (spec.text.empty())
    throw InvalidArgument(kWhere, "empty codec spec", "methods: " + method_list());
  const size_t colon = spec.text.find(':');
  spec.method = lower(trim(std::string_view(spec.text).substr(0, colon)));
  if (std::none_of(std::begin(kMethods), std::end(kMethods),
                   [&](const MethodEntry& m) { return spec.method == m.name; }))
    throw InvalidArgument(kWhere, "unknown KV codec '" + spec.method + "'",
                          "methods: " + method_list());
  if (colon == std::string::npos) return spec;
  std::string_view rest = std::string_view(spec.text).substr(colon + 1);
  size_t start = 0;
  while (start <= rest.size()) {
    size_t comma = rest.find(',', start);
    if (comma == std::string_view::npos) comma = rest.size();
    const std::string item = trim(rest.substr(start, comma - start));
    if (item.empty())
      throw InvalidArgument(kWhere, spec.text + ": empty option (stray ',' or ':')");
    const size_t eq = item.find('=');
    std::string key, value;
    if (eq == std::string::npos) {
      value = lower(item);
    } else {
      key = lower(trim(std::string_view(item).substr(0, eq)));
      value = trim(std::string_view(item).substr(eq + 1));
      if (key.empty() || value.empty())
        throw InvalidArgument(kWhere, spec.text + ": option '" + item + "' needs key=value");
    }
    if (spec.has(key))
      throw InvalidArgument(kWhere, spec.text + ": option '" + (key.empty() ? value : key) +
                                        "' given twice");
    spec.options.emplace_back(key, value);
    start = comma + 1;
  }
  return spec;
}

std::vector<std::string> codec_methods() {
  std::vector<std::string> r;
  for (const auto& m : kMethods) r.emplace_back(m.name);
  return r;
}

size_t Codec::simulate(MatrixView rows, const AppendContext& ctx) const {
  auto cache = make_cache();
  cache->append(ConstMatrixView{rows.data, rows.rows, rows.cols, rows.stride}, ctx);
  cache->dequantize(0, rows.rows, rows);
  return cache->bytes();
}

double Codec::bits_per_element(int64_t T) const {
  const int64_t b = bytes_for(T);
  if (b < 0 || T <= 0) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(b) * 8.0 / (static_cast<double>(T) * shape().dim());
}

int bits_option(const CodecSpec& spec, int fallback) {
  const int b = spec.get_int("bits", fallback, 2, 8);
  if (b != 2 && b != 3 && b != 4 && b != 8)
    throw InvalidArgument(kWhere, spec.text + ": bits=" + std::to_string(b) +
                                      ": expected 2, 3, 4 or 8");
  return b;
}

int channel_group_option(const CodecSpec& spec, const KvShape& shape, int fallback) {
  int g = spec.get_int("group", fallback, 0, 1 << 20);
  if (g == 0) g = shape.head_dim;
  if (shape.head_dim % g != 0)
    throw InvalidArgument(kWhere, spec.text + ": group=" + std::to_string(g) +
                                      " does not divide head_dim " +
                                      std::to_string(shape.head_dim));
  return g;
}

std::unique_ptr<Codec> make_codec(const CodecSpec& spec, KvSide side, int layer,
                                  const KvShape& shape, const CodecParams* given) {
  if (shape.n_kv_heads <= 0 || shape.head_dim <= 0)
    throw InvalidArgument(kWhere, spec.text + ": bad KV shape " +
                                      std::to_string(shape.n_kv_heads) + " x " +
                                      std::to_string(shape.head_dim));
  if (shape.dim() > 65535)
    throw UnsupportedError(kWhere, spec.text + ": rows of " + std::to_string(shape.dim()) +
                                       " values exceed the 16-bit outlier/column index");
  static const CodecParams kNone;
  for (const auto& m : kMethods)
    if (spec.method == m.name) return m.factory(spec, side, layer, shape, given ? *given : kNone);
  throw InvalidArgument(kWhere, "unknown KV codec '" + spec.method + "'",
                        "methods: " + method_list());
}

}  // namespace kvq::codecs
