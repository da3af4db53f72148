// KVQuant (arXiv 2401.18079): `kvquant[:bits=4,outliers=0.01,sink=1,qnorm=0]`.
//   Keys: pre-RoPE, per channel, with static per-channel ranges [lo_c, hi_c] (profile
//     tensors k_lo / k_hi from calibration). Without calibration the ranges come from the
//     data of the first append that holds non-sink tokens (the prefill; the whole window
//     in the simulated protocol): with outliers = f > 0, lo_c / hi_c are the order
//     statistics v[k] / v[n-1-k] of channel c over those n tokens, k = floor(n * f / 2)
//     (f/2 at each tail); with f = 0, the min / max. With f > 0, key values outside
//     [lo_c, hi_c] are outliers (so later tokens beyond the prefill's range become
//     outliers); with f = 0 there is no sparse part and they clamp to the range.
//   Values: per token and head, dynamic: the k = round_half_even(f * head_dim) entries of
//     largest |x| (ties: lower channel first) are outliers; the range of the rest is
//     (mid, half) = ((max+min)/2, (max-min)/2), stored as two fp16 per (token, head).
//   NUQ: codes index a per-layer LUT of 2^b signposts in [-1, 1] (profile tensor `lut`;
//     default uniform: lut[i] = -1 + 2i / (2^b - 1)); u = (x - mid) / half clamped to
//     [-1, 1], nearest signpost (kernels/kv_layout.h quantize_lut). Keys use
//     mid = (lo + hi) / 2, half = (hi - lo) / 2 in fp32 (static).
//   Dense-and-sparse: outliers are stored as CSR per token (uint32 count per token, then
//     {uint16 column in the [n_kv_heads * head_dim] row, fp16 value} records) and restored
//     exactly to fp16; their dense code is that of the clamped value and is overwritten.
//     The paper stores keys CSC; CSR per token is what an append-only cache and a
//     per-token decode kernel want, and costs the same 4 bytes per outlier.
//   Attention sinks: positions < sink (default 1) are stored whole in fp16 and excluded
//     from range statistics.
//   Q-Norm: per layer and side, x'' = fma(x', a, b) on dense (non-outlier, non-sink)
//     values; a, b from the profile (qnorm_scale, qnorm_offset), identity by default, or
//     with qnorm=1 fitted on the first non-sink append so that the dequantized dense
//     values have the mean and standard deviation of the originals.
// Static bytes: LUT 4 * 2^b + Q-Norm 8 (+ keys: 8 per channel for mid, half).
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

struct KvqState final : CodecState {
  std::vector<float> lo, hi;     // keys: per channel (stored, 8 bytes per channel)
  std::vector<float> mid, half;  // keys: derived, mid = (lo+hi)/2, half = (hi-lo)/2 in fp32
  std::vector<float> inv_half;   // keys: safe_inverse(half), once per channel, not per token
  float qa = 1.0f, qb = 0.0f;    // Q-Norm
  std::unique_ptr<CodecState> clone() const override { return std::make_unique<KvqState>(*this); }
};

class KvQuantCodec final : public ChunkedCodec {
 public:
  KvQuantCodec(KvSide side, int layer, const KvShape& shape, int bits, double outliers, int sink,
               bool qnorm_fit, std::vector<float> lut, std::vector<float> k_lo,
               std::vector<float> k_hi, bool qnorm_given, float qa, float qb)
      : ChunkedCodec("kvquant", side, layer, shape), bits_(bits), frac_(outliers), sink_(sink),
        qnorm_fit_(qnorm_fit), lut_(std::move(lut)), k_lo_(std::move(k_lo)),
        k_hi_(std::move(k_hi)), qnorm_given_(qnorm_given), qa_(qa), qb_(qb) {
    vk_ = static_cast<int>(std::nearbyint(frac_ * shape.head_dim));
    for (size_t i = 0; i + 1 < lut_.size(); ++i) mids_.push_back(0.5f * (lut_[i] + lut_[i + 1]));
    mids_.push_back(INFINITY);  // pads to 2^bits entries for the binary search
  }

  std::string describe() const override {
    char f[32];
    std::snprintf(f, sizeof f, "%g", frac_);
    return "kvquant:bits=" + std::to_string(bits_) + ",outliers=" + f +
           ",sink=" + std::to_string(sink_) + ",qnorm=" + (qnorm_fit_ ? "1" : "0");
  }
  int bits() const override { return bits_; }
  RopeStage stage() const override { return RopeStage::kPreRope; }

  int64_t bytes_for(int64_t T) const override {
    if (side() == KvSide::kKey && frac_ > 0) return -1;  // outlier count depends on data
    const int dim = shape().dim();
    const int64_t s = std::min<int64_t>(T, sink_);
    return static_cast<int64_t>(static_bytes()) + s * 2 * dim + (T - s) * dense_token_bytes();
  }
  // Bytes of a non-sink token without its outlier records (keys) / with them (values).
  int64_t dense_token_bytes() const {
    int64_t b = 4 * token_group_words(shape(), bits_);
    if (frac_ > 0) b += 4;  // CSR row count
    if (side() == KvSide::kValue) b += 4 * shape().n_kv_heads + (frac_ > 0 ? 4 * shape().n_kv_heads * vk_ : 0);
    return b;
  }
  size_t static_bytes() const {
    return 4 * lut_.size() + 8 + (side() == KvSide::kKey ? 8 * shape().dim() : 0);
  }

  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"bits", bits_}, {"outliers", frac_}, {"sink", sink_},
                 {"qnorm_scale", qa_}, {"qnorm_offset", qb_}};
    p.tensors["lut"] = lut_;
    if (!k_lo_.empty()) {
      p.tensors["k_lo"] = k_lo_;
      p.tensors["k_hi"] = k_hi_;
    }
    return p;
  }

  std::unique_ptr<CodecState> new_state() const override {
    auto st = std::make_unique<KvqState>();
    st->static_bytes = static_bytes();
    st->qa = qa_;
    st->qb = qb_;
    return st;
  }

  bool freeze(CodecState& base, ConstMatrixView rows, int64_t pos0,
              const AppendContext& ctx) const override {
    auto& st = static_cast<KvqState&>(base);
    const int dim = shape().dim();
    const int64_t first = std::max<int64_t>(0, sink_ - pos0);  // first non-sink row
    const int64_t n = rows.rows - first;
    if (side() == KvSide::kKey) {
      std::vector<float> lo(dim), hi(dim);
      if (!k_lo_.empty()) {
        lo = k_lo_;
        hi = k_hi_;
      } else {
        if (n <= 0) return false;
        // Order statistics by selection, not sorting: a full sort of every channel was
        // 45% of the host time of a simulated window (testbed, T = 1024, 384 channels:
        // [.simbench] 500 -> 270 ms without it). nth_element yields the same value v[k]
        // as the sorted array (only the sign of a zero that ties with -0 could differ).
        // Channels gather a block of columns at once (rows are [n, dim]) and run in
        // parallel; each channel's result depends on its own values only.
        const int64_t k = static_cast<int64_t>(std::floor(static_cast<double>(n) * frac_ / 2));
        constexpr int kCols = 16;
#pragma omp parallel if (static_cast<int64_t>(dim) * n > 32768)
        {
          std::vector<float> v(static_cast<size_t>(n) * kCols);
#pragma omp for schedule(static)
          for (int c0 = 0; c0 < dim; c0 += kCols) {
            const int nc = std::min(kCols, dim - c0);
            for (int64_t t = 0; t < n; ++t) {
              const float* r = rows.row(static_cast<int>(first + t)) + c0;
              for (int j = 0; j < nc; ++j) v[j * n + t] = r[j];
            }
            for (int j = 0; j < nc; ++j) {
              float* b = v.data() + j * n;
              if (k < kSmallK && 2 * (k + 1) <= n) {
                lo[c0 + j] = kth_smallest(b, n, k);
                hi[c0 + j] = kth_largest(b, n, k);
                continue;
              }
              std::nth_element(b, b + k, b + n);
              lo[c0 + j] = b[k];
              // Everything after position k is >= b[k]: select the upper statistic there.
              if (n - 1 - k > k) std::nth_element(b + k + 1, b + (n - 1 - k), b + n);
              hi[c0 + j] = b[n - 1 - k];
            }
          }
        }
      }
      st.lo = lo;
      st.hi = hi;
      st.mid.resize(dim);
      st.half.resize(dim);
      st.inv_half.resize(dim);
      for (int c = 0; c < dim; ++c) {
        st.mid[c] = 0.5f * (lo[c] + hi[c]);
        st.half[c] = 0.5f * (hi[c] - lo[c]);
        st.inv_half[c] = kvlayout::safe_inverse(st.half[c]);
      }
    }
    if (qnorm_fit_ && !qnorm_given_) {
      if (n <= 0) return false;
      // Fit a, b on these rows: encode/decode with the identity, compare dense values.
      std::vector<float> x(static_cast<size_t>(n) * dim), y(x.size());
      for (int64_t t = 0; t < n; ++t)
        for (int c = 0; c < dim; ++c) x[t * dim + c] = rows.at(static_cast<int>(first + t), c);
      KvqState probe = st;
      probe.qa = 1.0f;
      probe.qb = 0.0f;
      Chunk ch;
      ch.pos0 = pos0 + first;
      ch.n = n;
      encode(probe, x.data(), ch.pos0, n, ctx, ch);
      decode(probe, ch, y.data());
      std::vector<char> is_out(x.size(), 0);
      mark_outliers(ch, is_out);
      double so = 0, sd = 0, so2 = 0, sd2 = 0;
      int64_t m = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        if (is_out[i]) continue;
        so += x[i]; sd += y[i]; so2 += double(x[i]) * x[i]; sd2 += double(y[i]) * y[i];
        ++m;
      }
      if (m > 0) {
        const double mo = so / m, md = sd / m;
        const double vo = std::max(0.0, so2 / m - mo * mo), vd = std::max(0.0, sd2 / m - md * md);
        const double a = vd > 0 ? std::sqrt(vo / vd) : 1.0;
        st.qa = static_cast<float>(a);
        st.qb = static_cast<float>(mo - a * md);
      }
    }
    return true;
  }

  // Tokens are independent once the state is frozen, so a chunk is encoded in blocks of
  // tokens in parallel, each into its own Chunk, and the blocks are concatenated in token
  // order: the arrays are the same for any number of blocks (and threads).
  void encode(CodecState& base, const float* rows, int64_t pos0, int64_t n,
              const AppendContext&, Chunk& out) const override {
    const auto& st = static_cast<const KvqState&>(base);
    const int dim = shape().dim();
    const int64_t blocks = n * dim >= 65536 ? std::min<int64_t>(n, 64) : 1;
    if (blocks == 1) {
      encode_tokens(st, rows, pos0, 0, n, out);
      return;
    }
    std::vector<Chunk> part(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b)
      encode_tokens(st, rows, pos0, n * b / blocks, n * (b + 1) / blocks, part[b]);
    for (Chunk& p : part) {
      out.codes.insert(out.codes.end(), p.codes.begin(), p.codes.end());
      out.halves.insert(out.halves.end(), p.halves.begin(), p.halves.end());
      out.outliers.insert(out.outliers.end(), p.outliers.begin(), p.outliers.end());
      out.row_counts.insert(out.row_counts.end(), p.row_counts.begin(), p.row_counts.end());
    }
  }

  // Encodes tokens [t0, t1) of rows (positions pos0 + t), appending to out.
  void encode_tokens(const KvqState& st, const float* rows, int64_t pos0, int64_t t0, int64_t t1,
                     Chunk& out) const {
    const int dim = shape().dim(), hd = shape().head_dim;
    const int64_t hw = kvlayout::packed_words(bits_, hd);
    std::vector<char> out_mask(hd);
    std::vector<int> order(hd);
    for (int64_t t = t0; t < t1; ++t) {
      const float* x = rows + t * dim;
      if (pos0 + t < sink_) {
        rows_to_halves(x, dim, out.halves);
        continue;
      }
      uint32_t count = 0;
      const size_t base_w = out.codes.size();
      out.codes.resize(base_w + shape().n_kv_heads * hw, 0u);
      for (int h = 0; h < shape().n_kv_heads; ++h) {
        const float* xh = x + h * hd;
        uint32_t* w = out.codes.data() + base_w + h * hw;
        std::fill(out_mask.begin(), out_mask.end(), 0);
        if (side() == KvSide::kKey) {
          if (frac_ > 0)
            for (int i = 0; i < hd; ++i)
              if (is_key_outlier(st, h * hd + i, xh[i])) out_mask[i] = 1;
        } else if (frac_ > 0 && vk_ > 0) {
          mark_value_outliers(xh, order, out_mask);
        }
        for (int i = 0; i < hd; ++i)
          if (out_mask[i]) {
            out.outliers.push_back({static_cast<uint16_t>(h * hd + i), float_to_half(xh[i])});
            ++count;
          }
        if (side() == KvSide::kValue) {
          float mn = INFINITY, mx = -INFINITY;
          for (int i = 0; i < hd; ++i)
            if (!out_mask[i]) { mn = std::min(mn, xh[i]); mx = std::max(mx, xh[i]); }
          if (mn > mx) mn = mx = 0.0f;  // every entry an outlier
          const uint16_t mh = float_to_half(0.5f * (mx + mn));
          const uint16_t hh = float_to_half(0.5f * (mx - mn));
          out.halves.push_back(mh);
          out.halves.push_back(hh);
          const float mid = half_to_float(mh);
          const float half = half_to_float(hh);
          const float inv = kvlayout::safe_inverse(half);
          for (int i = 0; i < hd; ++i) {
            const float u = kvlayout::clampf((xh[i] - mid) * inv, -1.0f, 1.0f);
            kvlayout::put_code(w, bits_, i, lut_code(u));
          }
        } else {
          for (int i = 0; i < hd; ++i) {
            const int c = h * hd + i;
            const float inv = st.inv_half[c];
            const float u = kvlayout::clampf((xh[i] - st.mid[c]) * inv, -1.0f, 1.0f);
            kvlayout::put_code(w, bits_, i, lut_code(u));
          }
        }
      }
      if (frac_ > 0) out.row_counts.push_back(count);
    }
  }

  // The vk_ entries of largest |x| of one (token, head), ties to the lower channel: the
  // first vk_ of a stable sort by decreasing |x|, found by a partial sort under the
  // equivalent total order (|x| decreasing, then channel increasing) instead of a stable
  // sort of all head_dim channels per row.
  void mark_value_outliers(const float* xh, std::vector<int>& order, std::vector<char>& mask) const {
    const int hd = shape().head_dim;
    if (vk_ == 1) {
      int best = 0;
      for (int i = 1; i < hd; ++i)
        if (std::fabs(xh[i]) > std::fabs(xh[best])) best = i;
      mask[best] = 1;
      return;
    }
    std::iota(order.begin(), order.end(), 0);
    const int k = std::min(vk_, hd);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
      const float fa = std::fabs(xh[a]), fb = std::fabs(xh[b]);
      return fa > fb || (fa == fb && a < b);
    });
    for (int j = 0; j < k; ++j) mask[order[j]] = 1;
  }

  // kvlayout::quantize_lut (the number of signpost midpoints strictly below u) by a
  // branch-free binary search over the midpoints computed once (the same floats): the
  // linear count was 7% of a simulated window's instructions at 4 bits (callgrind). The
  // midpoints of a strictly increasing LUT never decrease (rounding is monotone), so the
  // count is the lower bound of u; the +inf pad is never below u (u is clamped to
  // [-1, 1]; a NaN u compares false everywhere and gets 0, as in the count).
  uint32_t lut_code(float u) const {
    uint32_t pos = 0;
    for (uint32_t step = static_cast<uint32_t>(mids_.size()) / 2; step > 0; step /= 2)
      pos += (mids_[pos + step - 1] < u) ? step : 0u;
    return pos;
  }

  // Tokens decode independently: the offsets of each token's codes, halves and outlier
  // records are prefix sums, then the tokens run in parallel.
  void decode(const CodecState& base, const Chunk& c, float* out) const override {
    const auto& st = static_cast<const KvqState&>(base);
    const int dim = shape().dim(), hd = shape().head_dim, H = shape().n_kv_heads;
    const int64_t hw = kvlayout::packed_words(bits_, hd);
    struct Offsets {
      size_t h, w, o, r;
    };
    std::vector<Offsets> off(static_cast<size_t>(c.n));
    size_t hcur = 0, wcur = 0, ocur = 0, rcur = 0;
    for (int64_t t = 0; t < c.n; ++t) {
      off[t] = {hcur, wcur, ocur, rcur};
      if (c.pos0 + t < sink_) {
        hcur += dim;
        continue;
      }
      if (side() == KvSide::kValue) hcur += 2 * H;
      wcur += H * hw;
      if (frac_ > 0) ocur += c.row_counts[rcur++];
    }
#pragma omp parallel for schedule(static) if (c.n * dim >= 65536)
    for (int64_t t = 0; t < c.n; ++t) {
      float* y = out + t * dim;
      const Offsets& o = off[t];
      if (c.pos0 + t < sink_) {
        halves_to_rows(c.halves.data() + o.h, dim, y);
        continue;
      }
      for (int h = 0; h < H; ++h) {
        const uint32_t* w = c.codes.data() + o.w + h * hw;
        float mid = 0, half = 0;
        if (side() == KvSide::kValue) {
          mid = half_to_float(c.halves[o.h + 2 * h]);
          half = half_to_float(c.halves[o.h + 2 * h + 1]);
        }
        for (int i = 0; i < hd; ++i) {
          const int col = h * hd + i;
          const float m = side() == KvSide::kKey ? st.mid[col] : mid;
          const float hf = side() == KvSide::kKey ? st.half[col] : half;
          const float v = fmaf(lut_[kvlayout::get_code(w, bits_, i)], hf, m);
          y[col] = fmaf(v, st.qa, st.qb);
        }
      }
      if (frac_ > 0) {
        const uint32_t cnt = c.row_counts[o.r];
        for (uint32_t j = 0; j < cnt; ++j)
          y[c.outliers[o.o + j].index] = half_to_float(c.outliers[o.o + j].value);
      }
    }
  }

 private:
  // The k-th order statistics (0-based) of b[0, n) for small k, in one pass that keeps
  // the k + 1 smallest (largest) values seen in a sorted buffer: values that enter it
  // are rare on a long channel, so this costs about n comparisons where nth_element
  // moved the data three times (the default outlier fraction 1% of 1023 tokens gives
  // k = 5; [.simbench] kvquant:bits=4 defaults, one thread: 99 -> 74 ms CPU per window). Same
  // value as the sorted array's v[k] (v[n - 1 - k]).
  static constexpr int64_t kSmallK = 32;
  static float kth_smallest(const float* b, int64_t n, int64_t k) {
    float buf[kSmallK] = {};
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float x = b[i];
      if (m == k + 1 && !(x < buf[k])) continue;
      int64_t p = m < k + 1 ? m++ : k;  // slot freed at the end (the largest is dropped)
      while (p > 0 && x < buf[p - 1]) {
        buf[p] = buf[p - 1];
        --p;
      }
      buf[p] = x;
    }
    return buf[k];
  }
  static float kth_largest(const float* b, int64_t n, int64_t k) {
    float buf[kSmallK] = {};
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float x = b[i];
      if (m == k + 1 && !(x > buf[k])) continue;
      int64_t p = m < k + 1 ? m++ : k;
      while (p > 0 && x > buf[p - 1]) {
        buf[p] = buf[p - 1];
        --p;
      }
      buf[p] = x;
    }
    return buf[k];
  }

  static bool is_key_outlier(const KvqState& st, int c, float x) {
    return x < st.lo[c] || x > st.hi[c];
  }

  void mark_outliers(const Chunk& ch, std::vector<char>& mask) const {
    const int dim = shape().dim();
    size_t ocur = 0;
    for (size_t t = 0; t < ch.row_counts.size(); ++t)
      for (uint32_t j = 0; j < ch.row_counts[t]; ++j, ++ocur)
        mask[t * dim + ch.outliers[ocur].index] = 1;
  }

  int bits_;
  double frac_;
  int sink_;
  bool qnorm_fit_;
  std::vector<float> lut_, k_lo_, k_hi_;
  bool qnorm_given_;
  float qa_, qb_;
  int vk_ = 0;
  std::vector<float> mids_;  // signpost midpoints (kvlayout::quantize_lut's) and +inf: 2^bits
};

}  // namespace

std::unique_ptr<Codec> make_kvquant_codec(const CodecSpec& spec, KvSide side, int layer,
                                          const KvShape& shape, const CodecParams& given) {
  spec.check_known({"bits", "outliers", "sink", "qnorm"});
  const int bits = bits_option(spec, 4);
  const double frac = spec.get_double("outliers", 0.01, 0.0, 0.5);
  const int sink = spec.get_int("sink", 1, 0, 1 << 20);
  const bool qnorm = spec.get_bool("qnorm", false);
  const std::string where = "--kv " + spec.text + " (layer " + std::to_string(layer) + ", " +
                            std::string(side_name(side)) + ")";
  const int L = 1 << bits;
  std::vector<float> lut(L);
  if (const auto* g = given.tensor("lut")) {
    if (static_cast<int>(g->size()) != L)
      throw InvalidArgument(where, "lut has " + std::to_string(g->size()) + " signposts, expected " +
                                       std::to_string(L));
    for (int i = 0; i < L; ++i)
      if (!(std::fabs((*g)[i]) <= 1.0f) || (i > 0 && !((*g)[i] > (*g)[i - 1])))
        throw InvalidArgument(where, "lut signposts must increase strictly within [-1, 1] (entry " +
                                         std::to_string(i) + ")");
    lut = *g;
  } else {
    const float levels = static_cast<float>(L - 1);
    for (int i = 0; i < L; ++i) lut[i] = -1.0f + 2.0f * static_cast<float>(i) / levels;
  }
  std::vector<float> lo, hi;
  if (side == KvSide::kKey && given.tensor("k_lo")) {
    const auto* a = given.tensor("k_lo");
    const auto* b = given.tensor("k_hi");
    if (!b || a->size() != static_cast<size_t>(shape.dim()) || b->size() != a->size())
      throw InvalidArgument(where, "k_lo / k_hi need " + std::to_string(shape.dim()) + " entries each");
    for (size_t c = 0; c < a->size(); ++c)
      if (!((*a)[c] <= (*b)[c]))
        throw InvalidArgument(where, "k_lo > k_hi at channel " + std::to_string(c));
    lo = *a;
    hi = *b;
  }
  const bool qgiven = given.numbers.count("qnorm_scale") > 0;
  return std::make_unique<KvQuantCodec>(
      side, layer, shape, bits, frac, sink, qnorm, std::move(lut), std::move(lo), std::move(hi),
      qgiven, static_cast<float>(given.number("qnorm_scale", 1.0)),
      static_cast<float>(given.number("qnorm_offset", 0.0)));
}

}  // namespace kvq::codecs
