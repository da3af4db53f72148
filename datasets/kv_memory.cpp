// KV bytes per context, the workspace estimate and the budget search (see kv_memory.h).
#include "datasets/kv_memory.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "formats/error.h"
#include "lib/codecs/sim_observer.h"

namespace kvq::datasets {

int64_t parse_byte_size(std::string_view text, std::string_view option) {
  auto bad = [&](const std::string& why) -> InvalidArgument {
    return InvalidArgument(std::string(option), "'" + std::string(text) + "' " + why,
                           "for example 80GiB, 24GB, 512MiB or a byte count");
  };
  std::string s(text);
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i);
  std::string unit = s.substr(i);
  unit.erase(0, unit.find_first_not_of(' '));
  if (number.empty()) throw bad("is not a size");
  char* end = nullptr;
  const double v = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !std::isfinite(v)) throw bad("is not a size");
  std::string u;
  for (char c : unit) u.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  double mult = 0;
  if (u.empty() || u == "B") mult = 1;
  else if (u == "K" || u == "KIB") mult = 0x1p10;
  else if (u == "M" || u == "MIB") mult = 0x1p20;
  else if (u == "G" || u == "GIB") mult = 0x1p30;
  else if (u == "T" || u == "TIB") mult = 0x1p40;
  else if (u == "KB") mult = 1e3;
  else if (u == "MB") mult = 1e6;
  else if (u == "GB") mult = 1e9;
  else if (u == "TB") mult = 1e12;
  else throw bad("has an unknown unit '" + unit + "'");
  const double bytes = std::floor(v * mult);
  if (!(bytes >= 1)) throw bad("is not a positive size");
  if (bytes > 0x1p62) throw bad("is too large");
  return static_cast<int64_t>(bytes);
}

int64_t kv_bytes_for_context(const ModelConfig& cfg, const codecs::SimQuantObserver* observer, int64_t T,
                             double measured_bits_per_element) {
  const int64_t elems = 2 * static_cast<int64_t>(cfg.n_layers) * cfg.n_kv_heads * cfg.head_dim * T;
  if (observer == nullptr) return 2 * elems;
  int64_t sum = 0;
  for (int l = 0; l < cfg.n_layers; ++l) {
    const int64_t k = observer->k_codec(l).bytes_for(T);
    const int64_t v = observer->v_codec(l).bytes_for(T);
    if (k < 0 || v < 0) {
      // The size depends on the data (outlier records): the run's measured density.
      if (!(measured_bits_per_element > 0))
        throw InvalidArgument("memory", observer->k_codec(l).describe() +
                                            ": the cache size depends on the data and no measured size is known");
      return static_cast<int64_t>(std::ceil(measured_bits_per_element * static_cast<double>(elems) / 8.0));
    }
    sum += k + v;
  }
  return sum;
}

int64_t activation_workspace_bytes(const ModelConfig& cfg, int64_t T, int max_step_tokens) {
  const int64_t S = std::min<int64_t>(T, max_step_tokens);
  const int64_t H = cfg.hidden, Q = cfg.q_dim(), KV = cfg.kv_dim(), I = cfg.intermediate;
  // x 4, xn 2, qkv 4, queries 2, attention out 2, gate/up 2 x 4, MLP 2, token ids/positions 4.
  const int64_t per_token = 4 * H + 2 * H + 4 * (Q + 2 * KV) + 2 * Q + 2 * Q + 8 * I + 2 * I + 4;
  return S * per_token + int64_t{1024} * cfg.vocab * 4 + 2 * H;
}

int64_t longest_context(int64_t budget_bytes, int64_t weights_bytes, const std::function<int64_t(int64_t)>& kv_bytes,
                        const std::function<int64_t(int64_t)>& workspace_bytes, int64_t max_T) {
  auto fits = [&](int64_t T) { return weights_bytes + kv_bytes(T) + workspace_bytes(T) <= budget_bytes; };
  if (!fits(1)) return 0;
  if (fits(max_T)) return max_T;
  int64_t lo = 1, hi = max_T;  // fits(lo), !fits(hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

}  // namespace kvq::datasets
