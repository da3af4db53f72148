// MiKV, "No Token Left Behind" (arXiv 2402.18096):
// `mikv[:hi=fp16|int8,lo=int2|int3|int4,budget=0.2,recent=32,balance=1]`.
//   Importance: H2O-style accumulated attention per token and key/value head (the sum,
//     over the queries that see the token and the query heads of the group, of its softmax
//     weight), given by the caller in AppendContext::importance; sim_observer.cpp computes
//     it from the layer's own (unquantized) attention.
//   Recent window: the newest `recent` tokens stay full precision (held as fp16).
//   When tokens leave the window they are encoded per (token, kv head) either at high
//     precision (fp16, or int8 per-token asymmetric over the head) or at low precision
//     (int-lo per-token asymmetric over the head). The high-precision share is the cache
//     budget: with T tokens held, each head keeps round_half_even(budget * T) tokens at
//     high precision counting the recent window, so round(budget*T) - min(recent, T)
//     heavy hitters among the older ones; the tokens leaving the window take the free
//     places in order of importance (ties: older first). Decisions are final (a token is
//     never promoted or demoted later): after one append of a whole window this is
//     exactly H2O's top-k of the older tokens; streaming appends approximate it greedily.
//   Query-key balancer (keys, balance=1): b_c = sqrt(max|Q_c| / max|K_c|) per channel,
//     max over the tokens of the first append and, for Q, over the query heads of the
//     group (1 where either max is 0). Keys are *multiplied* by b_c and queries divided,
//     so both end with max sqrt(max|Q_c| max|K_c|): an outlier key channel shrinks.
//     (METHODS.md writes "keys divided by b_c" with the same b_c, which would grow outlier
//     channels by sqrt(max|K_c| / max|Q_c|); we follow the stated intent, flattening.)
//     The cache stores codes of k * b; dequantize() returns k'' / b (times 1/b_c in
//     fp32) so simulated attention scores equal a kernel's (q / b) . k''.
// Keys are quantized post-RoPE (the balancer must see the keys attention uses).
// Bytes: 1 flag byte per (token, head) outside the window; fp16 hi: 2 * head_dim; int-b:
// codes (4 * b * ceil(head_dim / 32)) + 4 (fp16 scale, zero); balancer 4 per channel.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "formats/dtype.h"
#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

struct MikvState final : CodecState {
  std::vector<float> b, inv_b;      // balancer per channel (keys)
  std::vector<int64_t> hi_count;    // per kv head: high-precision tokens outside the window
  std::unique_ptr<CodecState> clone() const override { return std::make_unique<MikvState>(*this); }
};

class MikvCodec final : public ChunkedCodec {
 public:
  MikvCodec(KvSide side, int layer, const KvShape& shape, int hi_bits, int lo_bits, double budget,
            int recent, bool balance, std::vector<float> given_b)
      : ChunkedCodec("mikv", side, layer, shape), hi_bits_(hi_bits), lo_bits_(lo_bits),
        budget_(budget), recent_(recent), balance_(balance && side == KvSide::kKey),
        given_b_(std::move(given_b)) {}

  std::string describe() const override {
    char b[32];
    std::snprintf(b, sizeof b, "%g", budget_);
    return std::string("mikv:hi=") + (hi_bits_ == 16 ? "fp16" : "int8") +
           ",lo=int" + std::to_string(lo_bits_) + ",budget=" + b +
           ",recent=" + std::to_string(recent_) + ",balance=" + (balance_ ? "1" : "0");
  }
  int bits() const override { return lo_bits_; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  bool needs_queries() const override { return balance_; }
  bool needs_importance() const override { return true; }
  bool uses_window() const override { return true; }
  int64_t to_encode(int64_t pending, int64_t) const override {
    return std::max<int64_t>(0, pending - recent_);
  }

  int64_t head_bytes(int bits) const {
    return bits == 16 ? 2 * shape().head_dim : 4 * kvlayout::packed_words(bits, shape().head_dim) + 4;
  }
  int64_t static_bytes() const { return balance_ ? 4 * shape().dim() : 0; }
  int64_t target_hi(int64_t total) const {
    return static_cast<int64_t>(std::nearbyint(budget_ * static_cast<double>(total))) -
           std::min<int64_t>(recent_, total);
  }
  int64_t bytes_for(int64_t T) const override {
    const int64_t w = std::min<int64_t>(T, recent_), q = T - w;
    const int64_t hi = std::clamp<int64_t>(target_hi(T), 0, q);
    return static_bytes() + w * 2 * shape().dim() +
           shape().n_kv_heads * (q + hi * head_bytes(hi_bits_) + (q - hi) * head_bytes(lo_bits_));
  }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"hi_bits", hi_bits_}, {"lo_bits", lo_bits_}, {"budget", budget_},
                 {"recent", recent_}, {"balance", balance_ ? 1 : 0}};
    return p;
  }

  std::unique_ptr<CodecState> new_state() const override {
    auto st = std::make_unique<MikvState>();
    st->static_bytes = static_cast<size_t>(static_bytes());
    st->hi_count.assign(shape().n_kv_heads, 0);
    return st;
  }

  bool freeze(CodecState& base, ConstMatrixView rows, int64_t, const AppendContext& ctx) const override {
    auto& st = static_cast<MikvState&>(base);
    if (!balance_) return true;
    const int dim = shape().dim(), hd = shape().head_dim;
    st.b.assign(dim, 1.0f);
    if (!given_b_.empty()) {
      st.b = given_b_;
    } else if (ctx.queries.data) {
      const int nh = shape().n_heads > 0 ? shape().n_heads : shape().n_kv_heads;
      const int grp = nh / shape().n_kv_heads;
      // Channels are independent (a serial 2 ms per layer of a 1024-token window).
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(rows.rows) * dim >= 65536)
      for (int c = 0; c < dim; ++c) {
        float kmax = 0, qmax = 0;
        for (int t = 0; t < rows.rows; ++t) kmax = std::max(kmax, std::fabs(rows.at(t, c)));
        const int kh = c / hd, i = c % hd;
        for (int t = 0; t < ctx.queries.rows; ++t)
          for (int g = 0; g < grp; ++g)
            qmax = std::max(qmax, std::fabs(ctx.queries.at(t, (kh * grp + g) * hd + i)));
        if (kmax > 0 && qmax > 0) st.b[c] = std::sqrt(qmax / kmax);
      }
    }
    st.inv_b.resize(dim);
    for (int c = 0; c < dim; ++c) st.inv_b[c] = 1.0f / st.b[c];
    return true;
  }

  void encode(CodecState& base, const float* rows, int64_t pos0, int64_t n,
              const AppendContext& ctx, Chunk& out) const override {
    auto& st = static_cast<MikvState&>(base);
    const int dim = shape().dim(), hd = shape().head_dim, H = shape().n_kv_heads;
    const int64_t total = pos0 + n + recent_;  // the window stays full after an encode
    // Choose the high-precision tokens per head.
    std::vector<uint8_t> hi(static_cast<size_t>(n) * H, 0);
    std::vector<int64_t> order(n);
    for (int h = 0; h < H; ++h) {
      const int64_t quota =
          std::clamp<int64_t>(target_hi(total) - st.hi_count[h], 0, n);
      std::iota(order.begin(), order.end(), 0);
      auto imp = [&](int64_t t) {
        return ctx.importance ? ctx.importance[(pos0 + t) * H + h] : 0.0f;
      };
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return imp(a) > imp(b); });
      for (int64_t j = 0; j < quota; ++j) hi[order[j] * H + h] = 1;
      st.hi_count[h] += quota;
    }
    // Every (token, head) record has a size fixed by its flag: offsets first, then the
    // records are written in parallel over tokens into the same arrays a serial loop
    // appends (identical bytes for any thread count).
    const size_t h0 = out.halves.size(), w0 = out.codes.size();
    std::vector<size_t> hoff(static_cast<size_t>(n) * H + 1), woff(hoff.size());
    hoff[0] = h0;
    woff[0] = w0;
    for (int64_t r = 0; r < n * H; ++r) {
      const int bits = hi[r] ? hi_bits_ : lo_bits_;
      hoff[r + 1] = hoff[r] + (bits == 16 ? hd : 2);
      woff[r + 1] = woff[r] + (bits == 16 ? 0 : kvlayout::packed_words(bits, hd));
    }
    out.raw.insert(out.raw.end(), hi.begin(), hi.end());
    out.halves.resize(hoff.back());
    out.codes.resize(woff.back(), 0u);
#pragma omp parallel if (n * dim >= 65536)
    {
      std::vector<float> x(hd);
      std::vector<uint32_t> q(hd);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < H; ++h) {
          for (int i = 0; i < hd; ++i) {
            const int c = h * hd + i;
            x[i] = balance_ ? rows[t * dim + c] * st.b[c] : rows[t * dim + c];
          }
          const size_t r = static_cast<size_t>(t) * H + h;
          const int bits = hi[r] ? hi_bits_ : lo_bits_;
          uint16_t* hv = out.halves.data() + hoff[r];
          if (bits == 16) {
            for (int i = 0; i < hd; ++i) hv[i] = float_to_half(x[i]);
            continue;
          }
          const kvlayout::ScaleZero sz = quantize_group_asym(x.data(), hd, 1, bits, q.data());
          hv[0] = sz.scale;
          hv[1] = sz.zero;
          for (int i = 0; i < hd; ++i) kvlayout::put_code(out.codes.data() + woff[r], bits, i, q[i]);
        }
    }
  }

  void decode(const CodecState& base, const Chunk& c, float* out) const override {
    const auto& st = static_cast<const MikvState&>(base);
    const int dim = shape().dim(), hd = shape().head_dim, H = shape().n_kv_heads;
    // Record offsets from the flags, then tokens in parallel (as encode).
    std::vector<size_t> hoff(static_cast<size_t>(c.n) * H + 1, 0), woff(hoff.size(), 0);
    for (int64_t r = 0; r < c.n * H; ++r) {
      const int bits = c.raw[r] ? hi_bits_ : lo_bits_;
      hoff[r + 1] = hoff[r] + (bits == 16 ? hd : 2);
      woff[r + 1] = woff[r] + (bits == 16 ? 0 : kvlayout::packed_words(bits, hd));
    }
#pragma omp parallel if (c.n * dim >= 65536)
    {
      std::vector<uint32_t> q(hd);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < c.n; ++t)
        for (int h = 0; h < H; ++h) {
          const size_t r = static_cast<size_t>(t) * H + h;
          float* y = out + t * dim + h * hd;
          const int bits = c.raw[r] ? hi_bits_ : lo_bits_;
          if (bits == 16) {
            for (int i = 0; i < hd; ++i) y[i] = half_to_float(c.halves[hoff[r] + i]);
          } else {
            const kvlayout::ScaleZero sz{c.halves[hoff[r]], c.halves[hoff[r] + 1]};
            for (int i = 0; i < hd; ++i) q[i] = kvlayout::get_code(c.codes.data() + woff[r], bits, i);
            dequantize_group_asym(q.data(), hd, sz, y, 1);
          }
          if (balance_)
            for (int i = 0; i < hd; ++i) y[i] *= st.inv_b[h * hd + i];
        }
    }
  }

 private:
  int hi_bits_, lo_bits_;
  double budget_;
  int recent_;
  bool balance_;
  std::vector<float> given_b_;
};

int precision_option(const CodecSpec& spec, std::string_view key, std::string_view fallback,
                     std::initializer_list<std::string_view> allowed) {
  const std::string v = spec.get(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    throw InvalidArgument("--kv", spec.text + ": " + std::string(key) + "=" + v + ": expected " + list);
  }
  return v == "fp16" ? 16 : v[3] - '0';
}

}  // namespace

std::unique_ptr<Codec> make_mikv_codec(const CodecSpec& spec, KvSide side, int layer,
                                       const KvShape& shape, const CodecParams& given) {
  spec.check_known({"hi", "lo", "budget", "recent", "balance"});
  const int hi = precision_option(spec, "hi", "fp16", {"fp16", "int8"});
  const int lo = precision_option(spec, "lo", "int4", {"int2", "int3", "int4"});
  const double budget = spec.get_double("budget", 0.2, 0.0, 1.0);
  const int recent = spec.get_int("recent", 32, 0, 1 << 20);
  std::vector<float> b;
  if (side == KvSide::kKey)
    if (const auto* g = given.tensor("balance")) {
      if (g->size() != static_cast<size_t>(shape.dim()))
        throw InvalidArgument("--kv", spec.text + ": balance has " + std::to_string(g->size()) +
                                          " entries, expected " + std::to_string(shape.dim()));
      for (float v : *g)
        if (!(v > 0.0f) || !std::isfinite(v))
          throw InvalidArgument("--kv", spec.text + ": balance entries must be positive and finite");
      b = *g;
    }
  if (shape.n_heads > 0 && shape.n_heads % shape.n_kv_heads != 0)
    throw InvalidArgument("--kv", spec.text + ": n_heads not a multiple of n_kv_heads");
  return std::make_unique<MikvCodec>(side, layer, shape, hi, lo, budget, recent,
                                     spec.get_bool("balance", true), std::move(b));
}

}  // namespace kvq::codecs
