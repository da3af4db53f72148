// Golden comparison for the fast simulated-quantization paths (KVQuant, MiKV and the
// observer's H2O importance): plain, obviously-correct reference implementations of the
// documented rules live here, and simulate() / the observer must equal them bit for bit
// on random data (printed seed) with planted outlier channels, ties in |x| and in the
// importance, constant and zero rows, at awkward sizes, for every thread count. The
// references were checked against the pre-optimisation code (commit before the speed-up)
// and keep the fast code honest: any change of order of float operations shows here.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/model_config.h"
#include "lib/codecs/codec.h"
#include "lib/codecs/sim_observer.h"
#include "lib/rope.h"
#include "tests/catch.h"
#include "tests/lib/codecs/codec_test_util.h"
#include "tests/support/test_support.h"

using namespace kvq::codecs;
using kvq_codec_test::f16;

namespace {

// ---- references (one append of all T rows to a fresh cache, pos0 = 0) ----

float ref_safe_inverse(float s) { return s != 0.0f ? 1.0f / s : 0.0f; }
float ref_clamp(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Nearest signpost, ties to the lower one: the number of midpoints strictly below u.
uint32_t ref_lut_code(float u, const std::vector<float>& lut) {
  uint32_t code = 0;
  for (size_t i = 0; i + 1 < lut.size(); ++i)
    if (u > 0.5f * (lut[i] + lut[i + 1])) ++code;
  return code;
}

struct KvqOpts {
  int bits = 4;
  double frac = 0.01;
  int sink = 1;
  bool qnorm_fit = false;
  std::vector<float> lut, lo, hi;  // empty: defaults
  bool qnorm_given = false;
  float qa = 1.0f, qb = 0.0f;
};

std::string kvq_spec(const KvqOpts& o) {
  char f[32];
  std::snprintf(f, sizeof f, "%g", o.frac);
  return "kvquant:bits=" + std::to_string(o.bits) + ",outliers=" + f + ",sink=" +
         std::to_string(o.sink) + ",qnorm=" + (o.qnorm_fit ? "1" : "0");
}

// KVQuant dense-and-sparse NUQ, as lib/codecs/kvquant.cpp documents it.
std::vector<float> ref_kvquant(KvSide side, const KvShape& s, const std::vector<float>& x,
                               int64_t T, const KvqOpts& o) {
  const int dim = s.dim(), hd = s.head_dim, H = s.n_kv_heads;
  std::vector<float> lut = o.lut;
  const int L = 1 << o.bits;
  if (lut.empty())
    for (int i = 0; i < L; ++i) lut.push_back(-1.0f + 2.0f * static_cast<float>(i) / static_cast<float>(L - 1));
  const int64_t first = std::min<int64_t>(o.sink, T);
  const int64_t n = T - first;
  std::vector<float> lo = o.lo, hi = o.hi;
  if (side == KvSide::kKey && lo.empty() && n > 0) {
    lo.resize(dim);
    hi.resize(dim);
    const int64_t k = static_cast<int64_t>(std::floor(static_cast<double>(n) * o.frac / 2));
    for (int c = 0; c < dim; ++c) {
      std::vector<float> v;
      for (int64_t t = first; t < T; ++t) v.push_back(x[t * dim + c]);
      std::sort(v.begin(), v.end());
      lo[c] = v[k];
      hi[c] = v[n - 1 - k];
    }
  }
  const int vk = static_cast<int>(std::nearbyint(o.frac * hd));
  // Dense reconstruction with Q-Norm (a, b) and the outlier mask of every non-sink entry.
  auto quant = [&](float a, float b, std::vector<float>& y, std::vector<char>& out) {
    y.assign(x.size(), 0.0f);
    out.assign(x.size(), 0);
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const float* xh = x.data() + t * dim + h * hd;
        float* yh = y.data() + t * dim + h * hd;
        char* oh = out.data() + t * dim + h * hd;
        if (t < first) {
          for (int i = 0; i < hd; ++i) yh[i] = f16(xh[i]);
          continue;
        }
        if (side == KvSide::kKey) {
          for (int i = 0; i < hd; ++i) {
            const int c = h * hd + i;
            if (o.frac > 0 && (xh[i] < lo[c] || xh[i] > hi[c])) oh[i] = 1;
            const float mid = 0.5f * (lo[c] + hi[c]), half = 0.5f * (hi[c] - lo[c]);
            const float u = ref_clamp((xh[i] - mid) * ref_safe_inverse(half), -1.0f, 1.0f);
            yh[i] = std::fma(std::fma(lut[ref_lut_code(u, lut)], half, mid), a, b);
          }
        } else {
          if (o.frac > 0 && vk > 0) {
            // The vk largest |x|; among equal |x| the lower channel first.
            for (int j = 0; j < vk; ++j) {
              int best = -1;
              for (int i = 0; i < hd; ++i)
                if (!oh[i] && (best < 0 || std::fabs(xh[i]) > std::fabs(xh[best]))) best = i;
              oh[best] = 1;
            }
          }
          float mn = INFINITY, mx = -INFINITY;
          for (int i = 0; i < hd; ++i)
            if (!oh[i]) {
              mn = std::min(mn, xh[i]);
              mx = std::max(mx, xh[i]);
            }
          if (mn > mx) mn = mx = 0.0f;
          const float mid = f16(0.5f * (mx + mn)), half = f16(0.5f * (mx - mn));
          const float inv = ref_safe_inverse(half);
          for (int i = 0; i < hd; ++i) {
            const float u = ref_clamp((xh[i] - mid) * inv, -1.0f, 1.0f);
            yh[i] = std::fma(std::fma(lut[ref_lut_code(u, lut)], half, mid), a, b);
          }
        }
        for (int i = 0; i < hd; ++i)
          if (oh[i]) yh[i] = f16(xh[i]);
      }
  };
  float qa = o.qa, qb = o.qb;
  std::vector<float> y;
  std::vector<char> out;
  if (o.qnorm_fit && !o.qnorm_given && n > 0) {
    quant(1.0f, 0.0f, y, out);
    double so = 0, sd = 0, so2 = 0, sd2 = 0;
    int64_t m = 0;
    for (size_t i = static_cast<size_t>(first) * dim; i < x.size(); ++i) {
      if (out[i]) continue;
      so += x[i];
      sd += y[i];
      so2 += double(x[i]) * x[i];
      sd2 += double(y[i]) * y[i];
      ++m;
    }
    if (m > 0) {
      const double mo = so / m, md = sd / m;
      const double vo = std::max(0.0, so2 / m - mo * mo), vd = std::max(0.0, sd2 / m - md * md);
      const double a = vd > 0 ? std::sqrt(vo / vd) : 1.0;
      qa = static_cast<float>(a);
      qb = static_cast<float>(mo - a * md);
    }
  }
  quant(qa, qb, y, out);
  return y;
}

struct MikvOpts {
  int hi_bits = 16, lo_bits = 2;
  double budget = 0.2;
  int recent = 32;
  bool balance = true;
};

std::string mikv_spec(const MikvOpts& o) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", o.budget);
  return std::string("mikv:hi=") + (o.hi_bits == 16 ? "fp16" : "int8") + ",lo=int" +
         std::to_string(o.lo_bits) + ",budget=" + b + ",recent=" + std::to_string(o.recent) +
         ",balance=" + (o.balance ? "1" : "0");
}

// Asymmetric min/max group over x[0..n): quantize -> dequantize in place.
void ref_asym(float* x, int n, int bits) {
  float mn = x[0], mx = x[0];
  for (int i = 1; i < n; ++i) {
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  const float levels = static_cast<float>((1u << bits) - 1u);
  const float sf = f16((mx - mn) / levels), zf = f16(mn);
  const float inv = ref_safe_inverse(sf);
  for (int i = 0; i < n; ++i) {
    const float q = ref_clamp(std::nearbyint((x[i] - zf) * inv), 0.0f, levels);
    x[i] = std::fma(q, sf, zf);
  }
}

// MiKV, as lib/codecs/mikv.cpp documents it. imp: [T, H] or empty; q: [T, n_heads*hd] or empty.
std::vector<float> ref_mikv(KvSide side, const KvShape& s, const std::vector<float>& x0, int64_t T,
                            const MikvOpts& o, const std::vector<float>& imp,
                            const std::vector<float>& q) {
  const int dim = s.dim(), hd = s.head_dim, H = s.n_kv_heads;
  std::vector<float> x(x0);
  for (float& v : x) v = f16(v);  // the window holds fp16
  const bool balance = o.balance && side == KvSide::kKey;
  std::vector<float> b(dim, 1.0f), inv_b(dim, 1.0f);
  if (balance) {
    const int nh = s.n_heads > 0 ? s.n_heads : H, grp = nh / H;
    if (!q.empty())
      for (int c = 0; c < dim; ++c) {
        float kmax = 0, qmax = 0;
        for (int64_t t = 0; t < T; ++t) kmax = std::max(kmax, std::fabs(x[t * dim + c]));
        for (int64_t t = 0; t < T; ++t)
          for (int g = 0; g < grp; ++g)
            qmax = std::max(qmax, std::fabs(q[t * nh * hd + ((c / hd) * grp + g) * hd + c % hd]));
        if (kmax > 0 && qmax > 0) b[c] = std::sqrt(qmax / kmax);
      }
    for (int c = 0; c < dim; ++c) inv_b[c] = 1.0f / b[c];
  }
  const int64_t n = std::max<int64_t>(0, T - o.recent);  // encoded; the rest stays fp16
  std::vector<float> y(x);
  if (n == 0) return y;
  const int64_t target = static_cast<int64_t>(std::nearbyint(o.budget * static_cast<double>(T))) -
                         std::min<int64_t>(o.recent, T);
  const int64_t quota = std::clamp<int64_t>(target, 0, n);
  for (int h = 0; h < H; ++h) {
    // Highest importance first, older first among equals: selection by repeated scans.
    std::vector<char> hi(n, 0);
    for (int64_t j = 0; j < quota; ++j) {
      int64_t best = -1;
      for (int64_t t = 0; t < n; ++t) {
        if (hi[t]) continue;
        const float it = imp.empty() ? 0.0f : imp[t * H + h];
        if (best < 0 || it > (imp.empty() ? 0.0f : imp[best * H + h])) best = t;
      }
      hi[best] = 1;
    }
    for (int64_t t = 0; t < n; ++t) {
      float* yh = y.data() + t * dim + h * hd;
      for (int i = 0; i < hd; ++i) yh[i] = balance ? x[t * dim + h * hd + i] * b[h * hd + i] : x[t * dim + h * hd + i];
      const int bits = hi[t] ? o.hi_bits : o.lo_bits;
      if (bits == 16)
        for (int i = 0; i < hd; ++i) yh[i] = f16(yh[i]);
      else
        ref_asym(yh, hd, bits);
      if (balance)
        for (int i = 0; i < hd; ++i) yh[i] *= inv_b[h * hd + i];
    }
  }
  return y;
}

// H2O accumulated attention of the observer (sim_observer.h): post-RoPE q and k of all
// positions so far, softmax per query and query head, summed into the key's kv head.
// q: [T, NH*hd], k: [T, H*hd] pre-RoPE, one sequence from position 0, given in chunks
// [0, split) and [split, T): each chunk adds its queries' weights head by head (in GQA the
// order of the float sums follows the chunks).
std::vector<float> ref_importance(const kvq::ModelConfig& cfg, std::vector<float> q,
                                  std::vector<float> k, int T, int split = 0) {
  const int hd = cfg.head_dim, H = cfg.n_kv_heads, NH = cfg.n_heads;
  kvq::RopeTable rope(cfg.rope, hd, T);
  rope.apply(q.data(), T, NH, NH * hd, 0);
  rope.apply(k.data(), T, H, H * hd, 0);
  std::vector<float> imp(static_cast<size_t>(T) * H, 0.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (auto [t0, t1] : {std::pair<int, int>{0, split}, std::pair<int, int>{split, T}})
  for (int qh = 0; qh < NH; ++qh) {
    const int kh = qh / (NH / H);
    for (int t = t0; t < t1; ++t) {
      std::vector<double> p(t + 1);
      double mx = -INFINITY;
      for (int j = 0; j <= t; ++j) {
        float s = 0;
        for (int c = 0; c < hd; ++c) s += q[t * NH * hd + qh * hd + c] * k[j * H * hd + kh * hd + c];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0;
      for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int j = 0; j <= t; ++j) imp[j * H + kh] += static_cast<float>(p[j] / sum);
    }
  }
  return imp;
}

// ---- data ----

// make_rows (N(0,1), every 13th channel x20, a constant and a zero row) plus ties: in
// every 5th row the first 16 channels take values from {+-0.5, +-1.5, +-40} so that
// several |x| tie inside a head, lower and higher channels alike.
std::vector<float> golden_rows(std::mt19937_64& rng, int64_t T, int dim) {
  std::vector<float> x = kvq_codec_test::make_rows(rng, T, dim);
  const float vals[] = {0.5f, -0.5f, 1.5f, -1.5f, 40.0f, -40.0f};
  std::uniform_int_distribution<int> pick(0, 5);
  for (int64_t t = 0; t < T; t += 5)
    if (t != 2 && t != 4)
      for (int c = 0; c < std::min(dim, 16); ++c) x[t * dim + c] = vals[pick(rng)];
  return x;
}

// Bitwise equality, reporting the first difference.
void require_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                       int dim, const std::string& what) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], 4) != 0) {
      INFO(what << ": first difference at token " << i / dim << ", column " << i % dim << ": got "
                << got[i] << ", reference " << want[i]);
      REQUIRE(false);
    }
}

std::vector<float> simulate(const std::string& spec, KvSide side, const KvShape& s,
                            std::vector<float> x, int64_t T, const AppendContext& ctx = {},
                            const CodecParams* given = nullptr) {
  auto c = make_codec(parse_codec_spec(spec), side, 0, s, given);
  c->simulate(kvq::MatrixView{x.data(), static_cast<int>(T), s.dim(), s.dim()}, ctx);
  return x;
}

struct ThreadCount {
  int saved = omp_get_max_threads();
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
};

const int kThreads[] = {1, 2, 3};

}  // namespace

TEST_CASE("KVQuant simulate equals the reference bit for bit, any thread count", "[codecs][golden]") {
  const uint64_t seed = kvq_test::test_seed(4051);
  std::printf("[golden kvquant] seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const KvShape shapes[] = {{1, 64, 1}, {3, 64, 3}, {2, 128, 2}, {5, 32, 5}};
  const int64_t lengths[] = {1, 2, 3, 7, 127, 129, 300};
  for (const KvShape& s : shapes)
    for (int64_t T : lengths) {
      const std::vector<float> x = golden_rows(rng, T, s.dim());
      std::vector<KvqOpts> opts;
      for (int bits : {2, 3, 4, 8})
        for (double frac : {0.0, 0.01, 0.1})
          for (int sink : {0, 1, 4}) {
            KvqOpts o;
            o.bits = bits;
            o.frac = frac;
            o.sink = sink;
            o.qnorm_fit = (bits + sink) % 3 == 0;
            opts.push_back(o);
          }
      {  // a large outlier fraction: key ranges by nth_element instead of the small-k scan
        KvqOpts o;
        o.bits = 3;
        o.frac = 0.45;
        opts.push_back(o);
      }
      {  // calibrated: ranges, a non-uniform LUT and Q-Norm from a "profile"
        KvqOpts o;
        o.bits = 3;
        o.frac = 0.02;
        for (int i = 0; i < 8; ++i) o.lut.push_back(std::tanh(-1.6f + 3.2f * i / 7.0f) / std::tanh(1.6f));
        o.lut.front() = -1.0f;
        o.lut.back() = 1.0f;
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (int c = 0; c < s.dim(); ++c) {
          const float a = nd(rng) - 1.5f, b = nd(rng) + 1.5f;
          o.lo.push_back(std::min(a, b));
          o.hi.push_back(std::max(a, b));
        }
        o.qnorm_given = true;
        o.qa = 1.0625f;
        o.qb = -0.03125f;
        opts.push_back(o);
      }
      for (const KvqOpts& o : opts)
        for (KvSide side : {KvSide::kKey, KvSide::kValue}) {
          CodecParams given;
          if (!o.lut.empty()) given.tensors["lut"] = o.lut;
          if (!o.lo.empty() && side == KvSide::kKey) {
            given.tensors["k_lo"] = o.lo;
            given.tensors["k_hi"] = o.hi;
          }
          if (o.qnorm_given) {
            given.numbers["qnorm_scale"] = o.qa;
            given.numbers["qnorm_offset"] = o.qb;
          }
          KvqOpts ro = o;
          if (side == KvSide::kValue) ro.lo.clear(), ro.hi.clear();
          const std::vector<float> want = ref_kvquant(side, s, x, T, ro);
          for (int th : kThreads) {
            ThreadCount tc(th);
            const std::string what = kvq_spec(o) + (o.lut.empty() ? "" : " (calibrated)") + " " +
                                     std::string(side_name(side)) + " H=" + std::to_string(s.n_kv_heads) +
                                     " hd=" + std::to_string(s.head_dim) + " T=" + std::to_string(T) +
                                     " threads=" + std::to_string(th);
            require_same_bits(simulate(kvq_spec(o), side, s, x, T, {}, &given), want, s.dim(), what);
          }
        }
    }
}

TEST_CASE("MiKV simulate equals the reference bit for bit, any thread count", "[codecs][golden]") {
  const uint64_t seed = kvq_test::test_seed(5052);
  std::printf("[golden mikv] seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const KvShape shapes[] = {{1, 64, 1}, {3, 64, 6}, {2, 128, 2}};
  for (const KvShape& s : shapes)
    for (int64_t T : {1, 7, 33, 127, 129, 300}) {
      const std::vector<float> x = golden_rows(rng, T, s.dim());
      const int nh = s.n_heads;
      std::vector<float> q = kvq_codec_test::make_rows(rng, T, nh * s.head_dim);
      // Importance with ties: values from a small set so that many tokens share one.
      std::vector<float> imp(static_cast<size_t>(T) * s.n_kv_heads);
      std::uniform_int_distribution<int> level(0, 5);
      for (float& v : imp) v = 0.25f * static_cast<float>(level(rng));
      for (int hi_bits : {16, 8})
        for (int lo_bits : {2, 3, 4})
          for (int recent : {0, 5, 32})
            for (double budget : {0.0, 0.2, 0.5})
              for (bool with_imp : {true, false}) {
                MikvOpts o;
                o.hi_bits = hi_bits;
                o.lo_bits = lo_bits;
                o.recent = recent;
                o.budget = budget;
                o.balance = (lo_bits + recent) % 2 == 0;
                for (KvSide side : {KvSide::kKey, KvSide::kValue}) {
                  AppendContext ctx;
                  if (with_imp) ctx.importance = imp.data();
                  ctx.queries = kvq::ConstMatrixView{q.data(), static_cast<int>(T), nh * s.head_dim,
                                                     nh * s.head_dim};
                  const std::vector<float> want =
                      ref_mikv(side, s, x, T, o, with_imp ? imp : std::vector<float>{}, q);
                  for (int th : kThreads) {
                    ThreadCount tc(th);
                    const std::string what = mikv_spec(o) + " " + std::string(side_name(side)) +
                                             " T=" + std::to_string(T) + (with_imp ? " imp" : "") +
                                             " threads=" + std::to_string(th);
                    require_same_bits(simulate(mikv_spec(o), side, s, x, T, ctx), want, s.dim(), what);
                  }
                }
              }
    }
}

TEST_CASE("observer importance and MiKV rows equal the references, one chunk or two, any thread count",
          "[codecs][golden][sim]") {
  const uint64_t seed = kvq_test::test_seed(6063);
  std::printf("[golden importance] seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  struct Case {
    int NH, H, hd, T;
    kvq::RopeLayout layout;
  };
  for (const Case& cs : {Case{2, 1, 64, 1, kvq::RopeLayout::kRotateHalf},
                         Case{6, 3, 32, 77, kvq::RopeLayout::kInterleaved},
                         Case{4, 4, 64, 129, kvq::RopeLayout::kRotateHalf},
                         Case{8, 2, 16, 300, kvq::RopeLayout::kRotateHalf}}) {
    kvq::ModelConfig cfg;
    cfg.n_layers = 1;
    cfg.n_heads = cs.NH;
    cfg.n_kv_heads = cs.H;
    cfg.head_dim = cs.hd;
    cfg.hidden = cs.NH * cs.hd;
    cfg.max_position = 4096;
    cfg.rope.layout = cs.layout;
    const int QD = cfg.q_dim(), KV = cfg.kv_dim(), T = cs.T;
    const std::vector<float> q = kvq_codec_test::make_rows(rng, T, QD);
    std::vector<float> k = golden_rows(rng, T, KV), v = golden_rows(rng, T, KV);
    for (float& e : k) e *= 0.5f;  // keep the softmax away from one-hot
    const std::vector<float> imp = ref_importance(cfg, q, k, T);
    // The MiKV rows the observer must write: values pre-RoPE, keys post-RoPE (the
    // balancer reads the post-RoPE queries), both with the reference importance.
    std::vector<float> qr = q, kr = k;
    kvq::RopeTable rope(cfg.rope, cs.hd, T);
    rope.apply(qr.data(), T, cs.NH, QD, 0);
    rope.apply(kr.data(), T, cs.H, KV, 0);
    MikvOpts o;
    o.recent = 8;
    const KvShape s{cs.H, cs.hd, cs.NH};
    const std::vector<float> want_k = ref_mikv(KvSide::kKey, s, kr, T, o, imp, qr);
    const std::vector<float> want_v = ref_mikv(KvSide::kValue, s, v, T, o, imp, {});
    for (int th : kThreads)
    for (int64_t batch : {int64_t{1} << 23, int64_t{1000}, int64_t{1}}) {
      ThreadCount tc(th);
      const std::string what = "NH=" + std::to_string(cs.NH) + " H=" + std::to_string(cs.H) +
                               " T=" + std::to_string(T) + " threads=" + std::to_string(th) +
                               " batch=" + std::to_string(batch);
      SimOptions so;
      so.importance_batch = batch;
      SimQuantObserver obs(cfg, parse_codec_spec(mikv_spec(o)), so);
      std::vector<float> kk = k, vv = v;
      obs.on_qkv(0, 0, 0, kvq::ConstMatrixView{q.data(), T, QD, QD}, kvq::MatrixView{kk.data(), T, KV, KV},
                 kvq::MatrixView{vv.data(), T, KV, KV});
      std::vector<float> kpost = kk;  // the backend rotates what on_qkv left (unchanged here)
      REQUIRE(std::memcmp(kpost.data(), k.data(), k.size() * 4) == 0);
      kpost = kr;
      obs.on_k_post_rope(0, 0, 0, kvq::ConstMatrixView{qr.data(), T, QD, QD},
                         kvq::MatrixView{kpost.data(), T, KV, KV});
      const std::vector<float>* got = obs.importance(0, 0);
      REQUIRE(got != nullptr);
      require_same_bits(*got, imp, cs.H, what + " importance");
      require_same_bits(vv, want_v, KV, what + " values");
      require_same_bits(kpost, want_k, KV, what + " keys");

      // Two chunks (split at an awkward place) accumulate the same importance.
      if (T > 3) {
        const int a = T / 3;
        SimQuantObserver obs2(cfg, parse_codec_spec("mikv"), so);
        std::vector<float> k2 = k, v2 = v, kp2 = kr;
        for (auto [p0, n] : {std::pair<int, int>{0, a}, std::pair<int, int>{a, T - a}}) {
          obs2.on_qkv(0, 0, p0, kvq::ConstMatrixView{q.data() + p0 * QD, n, QD, QD},
                      kvq::MatrixView{k2.data() + p0 * KV, n, KV, KV},
                      kvq::MatrixView{v2.data() + p0 * KV, n, KV, KV});
          obs2.on_k_post_rope(0, 0, p0, kvq::ConstMatrixView{qr.data() + p0 * QD, n, QD, QD},
                              kvq::MatrixView{kp2.data() + p0 * KV, n, KV, KV});
        }
        require_same_bits(*obs2.importance(0, 0), ref_importance(cfg, q, k, T, a), cs.H,
                          what + " importance, two chunks");
      }
    }
  }
}
