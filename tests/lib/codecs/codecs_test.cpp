// Every codec on random data (printed seed) with planted outlier channels, a constant row
// and a zero row, at awkward sizes: round-trip error within the bound its scheme implies
// (derived per group from the rule in kernels/kv_layout.h), exact bytes against the
// documented formula, streaming = one-shot where the codec says so, determinism.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"
#include "lib/codecs/codec.h"
#include "tests/catch.h"
#include "tests/lib/codecs/codec_test_util.h"
#include "tests/support/test_support.h"

using namespace kvq::codecs;
using namespace kvq_codec_test;

namespace {

struct Shape {
  int H, hd;
  int64_t T;
};
const Shape kShapes[] = {{1, 64, 1}, {3, 64, 3}, {8, 128, 7}, {2, 128, 127}, {5, 64, 129}, {4, 128, 129}};

struct Run {
  std::unique_ptr<Codec> codec;
  std::vector<float> y;
  size_t bytes = 0;
};

Run run(const std::string& spec, KvSide side, const KvShape& shape, const std::vector<float>& x,
        int64_t T, const AppendContext& ctx = {}, const CodecParams* given = nullptr) {
  Run r;
  r.codec = make_codec(parse_codec_spec(spec), side, 0, shape, given);
  r.y = x;
  r.bytes = r.codec->simulate(kvq::MatrixView{r.y.data(), static_cast<int>(T), shape.dim(), shape.dim()}, ctx);
  return r;
}

std::vector<float> to_f16(std::vector<float> x) {
  for (float& v : x) v = f16(v);
  return x;
}

std::vector<float> stream(const Codec& c, const std::vector<float>& x, int64_t T, int64_t prefill) {
  const int dim = c.shape().dim();
  auto cache = c.make_cache();
  int64_t t = 0;
  while (t < T) {
    const int64_t n = t == 0 ? std::min(prefill, T) : 1;
    cache->append(kvq::ConstMatrixView{x.data() + t * dim, static_cast<int>(n), dim, dim});
    t += n;
  }
  std::vector<float> y(x.size());
  cache->dequantize(0, T, kvq::MatrixView{y.data(), static_cast<int>(T), dim, dim});
  return y;
}

}  // namespace

TEST_CASE("fp16 codec stores IEEE halves", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(101));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const auto x = make_rows(rng, s.T, shape.dim());
    for (KvSide side : {KvSide::kKey, KvSide::kValue}) {
      Run r = run("fp16", side, shape, x, s.T);
      REQUIRE(r.y == to_f16(x));
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
      REQUIRE(r.codec->bits_per_element(s.T) == 16.0);
    }
  }
}

TEST_CASE("uniform int-b per token: error within s/2 + fp16 terms, exact bits", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(102));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    for (int bits : {2, 3, 4, 8})
      for (int sym : {0, 1})
        for (int group : {32, s.hd}) {
          const std::string spec = "int" + std::to_string(bits) + ":group=" + std::to_string(group) +
                                   ",sym=" + std::to_string(sym);
          INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
          Run r = run(spec, KvSide::kKey, shape, x, s.T);
          for (int64_t t = 0; t < s.T; ++t)
            for (int g0 = 0; g0 < dim; g0 += group) {
              std::vector<float> g(x.begin() + t * dim + g0, x.begin() + t * dim + g0 + group);
              const float b = sym ? sym_bound(g, bits) : asym_bound(g, bits);
              for (int i = 0; i < group; ++i)
                REQUIRE(std::fabs(r.y[t * dim + g0 + i] - g[i]) <= b);
            }
          REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
          // head_dim is a multiple of 32: codes cost exactly b bits, metadata 16 or 32
          // bits per group.
          REQUIRE(r.codec->bits_per_element(s.T) == bits + (sym ? 16.0 : 32.0) / group);
        }
  }
}

TEST_CASE("uniform int-b per channel: groups of G tokens, partial last group quantized", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(103));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    const auto x16 = to_f16(x);  // window codecs quantize the fp16 value of every token
    for (int bits : {2, 4})
      for (int G : {4, 32}) {
        const std::string spec = "int" + std::to_string(bits) + ":axis=channel,group=" + std::to_string(G);
        INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
        Run r = run(spec, KvSide::kKey, shape, x, s.T);
        for (int64_t t0 = 0; t0 < s.T; t0 += G) {
          const int64_t n = std::min<int64_t>(G, s.T - t0);
          for (int c = 0; c < dim; ++c) {
            std::vector<float> g(n);
            for (int64_t i = 0; i < n; ++i) g[i] = x16[(t0 + i) * dim + c];
            const float b = asym_bound(g, bits);
            for (int64_t i = 0; i < n; ++i) REQUIRE(std::fabs(r.y[(t0 + i) * dim + c] - g[i]) <= b);
          }
        }
        REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
        const int64_t full = s.T / G * G;
        REQUIRE(r.codec->bytes_for(s.T) ==
                full * dim * bits / 8 + (full / G) * dim * 4 + (s.T - full) * dim * 2);
        REQUIRE(stream(*r.codec, x, s.T, 2) == r.y);
      }
  }
}

TEST_CASE("KIVI: per-channel keys, per-token values, fp16 residual as streaming holds it", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(104));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    const auto x16 = to_f16(x);
    for (const auto& [G, R] : std::vector<std::pair<int, int>>{{32, 128}, {16, 32}, {4, 8}})
      for (int bits : {2, 4}) {
        const std::string spec = "kivi:bits=" + std::to_string(bits) + ",group=" + std::to_string(G) +
                                 ",residual=" + std::to_string(R);
        INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
        Run k = run(spec, KvSide::kKey, shape, x, s.T);
        const int64_t kq = s.T / R * R;  // quantized keys
        for (int64_t t0 = 0; t0 < kq; t0 += G)
          for (int c = 0; c < dim; ++c) {
            std::vector<float> g(G);
            for (int i = 0; i < G; ++i) g[i] = x16[(t0 + i) * dim + c];
            const float b = asym_bound(g, bits);
            for (int i = 0; i < G; ++i) REQUIRE(std::fabs(k.y[(t0 + i) * dim + c] - g[i]) <= b);
          }
        for (int64_t i = kq * dim; i < s.T * dim; ++i) REQUIRE(k.y[i] == x16[i]);
        Run v = run(spec, KvSide::kValue, shape, x, s.T);
        const int64_t vq = std::max<int64_t>(0, s.T - R);
        const int vg = std::min(G, s.hd);
        for (int64_t t = 0; t < vq; ++t)
          for (int g0 = 0; g0 < dim; g0 += vg) {
            std::vector<float> g(x16.begin() + t * dim + g0, x16.begin() + t * dim + g0 + vg);
            const float b = asym_bound(g, bits);
            for (int i = 0; i < vg; ++i) REQUIRE(std::fabs(v.y[t * dim + g0 + i] - g[i]) <= b);
          }
        for (int64_t i = vq * dim; i < s.T * dim; ++i) REQUIRE(v.y[i] == x16[i]);
        REQUIRE(static_cast<int64_t>(k.bytes) == k.codec->bytes_for(s.T));
        REQUIRE(static_cast<int64_t>(v.bytes) == v.codec->bytes_for(s.T));
        // A prefill then token-by-token decode holds exactly what one append holds.
        REQUIRE(stream(*k.codec, x, s.T, 3) == k.y);
        REQUIRE(stream(*v.codec, x, s.T, 3) == v.y);
      }
  }
  // Effective bits at T = 1024, head_dim 128, 2 bits, G = 32, R = 128: keys all quantized
  // (1024 mod 128 = 0): 2 + 32/32 = 3; values: 896 tokens at 3 bits, 128 at 16.
  const KvShape shape{8, 128, 8};
  const auto k = make_codec(parse_codec_spec("kivi"), KvSide::kKey, 0, shape);
  const auto v = make_codec(parse_codec_spec("kivi"), KvSide::kValue, 0, shape);
  REQUIRE(k->bits_per_element(1024) == 3.0);
  REQUIRE(v->bits_per_element(1024) == (896 * 3.0 + 128 * 16.0) / 1024);
  REQUIRE(k->bits_per_element(1023) == (896 * 3.0 + 127 * 16.0) / 1023);
}

TEST_CASE("KVQuant keys: sinks fp16, outliers exact, dense within half the signpost gap", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(105));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    for (int bits : {2, 3, 4})
      for (double f : {0.0, 0.01, 0.1}) {
        char spec[96];
        std::snprintf(spec, sizeof spec, "kvquant:bits=%d,outliers=%g,sink=1", bits, f);
        INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
        Run r = run(spec, KvSide::kKey, shape, x, s.T);
        for (int c = 0; c < dim; ++c) REQUIRE(r.y[c] == f16(x[c]));  // the sink token
        const int64_t n = s.T - 1;
        int64_t outliers = 0;
        if (n > 0) {
          const int64_t k = static_cast<int64_t>(std::floor(static_cast<double>(n) * f / 2));
          const float gap = 2.0f / static_cast<float>((1 << bits) - 1);
          for (int c = 0; c < dim; ++c) {
            std::vector<float> v(n);
            for (int64_t t = 0; t < n; ++t) v[t] = x[(t + 1) * dim + c];
            std::sort(v.begin(), v.end());
            const float lo = v[k], hi = v[n - 1 - k];
            const float mid = 0.5f * (lo + hi), half = 0.5f * (hi - lo);
            for (int64_t t = 1; t < s.T; ++t) {
              const float xv = x[t * dim + c], yv = r.y[t * dim + c];
              if (f > 0 && (xv < lo || xv > hi)) {
                ++outliers;
                REQUIRE(yv == f16(xv));
              } else {
                REQUIRE(std::fabs(yv - xv) <= gap / 2 * half + slop(std::fabs(mid) + half));
              }
            }
          }
        }
        const int64_t words = static_cast<int64_t>(s.H) * 4 * bits * ((s.hd + 31) / 32);
        const int64_t expected = 4 * (1 << bits) + 8 + 8 * dim + 2 * dim +
                                 n * (words + (f > 0 ? 4 : 0)) + 4 * outliers;
        REQUIRE(static_cast<int64_t>(r.bytes) == expected);
        if (f == 0) REQUIRE(r.codec->bytes_for(s.T) == expected);
      }
  }
}

TEST_CASE("KVQuant values: top-k outliers per token and head, NUQ with fp16 ranges", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(106));
  CodecParams lut3;  // a non-uniform LUT: denser near 0
  lut3.tensors["lut"] = {-1.0f, -0.55f, -0.25f, -0.05f, 0.05f, 0.25f, 0.55f, 1.0f};
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim(), hd = s.hd;
    const auto x = make_rows(rng, s.T, dim);
    for (int variant = 0; variant < 3; ++variant) {
      const int bits = variant == 0 ? 2 : 3;
      const double f = variant == 1 ? 0.0 : 0.03;
      char spec[96];
      std::snprintf(spec, sizeof spec, "kvquant:bits=%d,outliers=%g,sink=2", bits, f);
      INFO(spec << " variant " << variant << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      const CodecParams* given = variant == 2 ? &lut3 : nullptr;
      Run r = run(spec, KvSide::kValue, shape, x, s.T, {}, given);
      std::vector<float> lut(1 << bits);
      for (int i = 0; i < (1 << bits); ++i) lut[i] = -1.0f + 2.0f * i / ((1 << bits) - 1);
      if (given) lut = lut3.tensors["lut"];
      float max_gap = 0;
      for (size_t i = 1; i < lut.size(); ++i) max_gap = std::max(max_gap, lut[i] - lut[i - 1]);
      const int k = static_cast<int>(std::nearbyint(f * hd));
      for (int64_t t = 0; t < s.T; ++t)
        for (int h = 0; h < s.H; ++h) {
          const float* xh = x.data() + t * dim + h * hd;
          const float* yh = r.y.data() + t * dim + h * hd;
          if (t < 2) {
            for (int i = 0; i < hd; ++i) REQUIRE(yh[i] == f16(xh[i]));
            continue;
          }
          std::vector<int> order(hd);
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(),
                           [&](int a, int b) { return std::fabs(xh[a]) > std::fabs(xh[b]); });
          std::vector<char> out(hd, 0);
          for (int j = 0; j < k; ++j) out[order[j]] = 1;
          float mn = INFINITY, mx = -INFINITY;
          for (int i = 0; i < hd; ++i)
            if (!out[i]) mn = std::min(mn, xh[i]), mx = std::max(mx, xh[i]);
          const float mid = 0.5f * (mx + mn), half = 0.5f * (mx - mn);
          const float mh = f16(mid), hh = f16(half);
          const float b = max_gap / 2 * hh + std::fabs(mid - mh) + std::fabs(half - hh) +
                          slop(std::fabs(mh) + hh);
          for (int i = 0; i < hd; ++i) {
            if (out[i]) REQUIRE(yh[i] == f16(xh[i]));
            else REQUIRE(std::fabs(yh[i] - xh[i]) <= b);
          }
        }
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
    }
  }
}

TEST_CASE("KVQuant Q-Norm matches mean and std of the dense values, calibrated ranges clip to outliers", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(107));
  const KvShape shape{2, 64, 2};
  const int dim = shape.dim();
  const int64_t T = 129;
  const auto x = make_rows(rng, T, dim);
  Run r = run("kvquant:bits=2,outliers=0,sink=1,qnorm=1", KvSide::kValue, shape, x, T);
  double so = 0, sd = 0, so2 = 0, sd2 = 0;
  const int64_t m = (T - 1) * dim;
  for (int64_t i = dim; i < T * dim; ++i) {
    so += x[i]; sd += r.y[i]; so2 += double(x[i]) * x[i]; sd2 += double(r.y[i]) * r.y[i];
  }
  const double mo = so / m, md = sd / m;
  const double vo = so2 / m - mo * mo, vd = sd2 / m - md * md;
  // a and b are rounded to fp32 and applied with one fma per value: relative 2^-23 each.
  REQUIRE(std::fabs(md - mo) <= 4 * 0x1p-23 * (std::sqrt(vo) + std::fabs(mo)));
  REQUIRE(std::fabs(std::sqrt(vd) - std::sqrt(vo)) <= 4 * 0x1p-23 * std::sqrt(vo) + 1e-6);
  // Identity Q-Norm leaves the mean off (2-bit uniform signposts shrink nothing, but the
  // check above must not pass by accident): the fitted scale differs from 1.
  Run plain = run("kvquant:bits=2,outliers=0,sink=1", KvSide::kValue, shape, x, T);
  REQUIRE(plain.y != r.y);

  // Calibrated key ranges: values outside [k_lo, k_hi] become exact fp16 outliers.
  CodecParams cal;
  cal.tensors["k_lo"].assign(dim, -0.5f);
  cal.tensors["k_hi"].assign(dim, 0.5f);
  Run k = run("kvquant:bits=4,outliers=0.01,sink=0", KvSide::kKey, shape, x, T, {}, &cal);
  for (int64_t i = 0; i < T * dim; ++i) {
    if (x[i] < -0.5f || x[i] > 0.5f) REQUIRE(k.y[i] == f16(x[i]));
    else REQUIRE(std::fabs(k.y[i] - x[i]) <= 0.5f / 15 + slop(1.0f));
  }
}

TEST_CASE("WKVQuant: smoothing undone exactly, per-token groups, past-only flag", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(108));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    CodecParams p;
    std::uniform_real_distribution<float> u(0.5f, 4.0f), d(-1.0f, 1.0f);
    for (int c = 0; c < dim; ++c) {
      p.tensors["s"].push_back(c % 13 == 5 ? 20.0f : u(rng));
      p.tensors["delta"].push_back(d(rng));
    }
    for (int bits : {2, 4}) {
      const std::string spec = "wkvquant:bits=" + std::to_string(bits) + ",group=32";
      INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      Run r = run(spec, KvSide::kKey, shape, x, s.T, {}, &p);
      REQUIRE(r.codec->past_only());
      for (int64_t t = 0; t < s.T; ++t)
        for (int g0 = 0; g0 < dim; g0 += 32) {
          std::vector<float> g(32);
          for (int i = 0; i < 32; ++i) {
            const int c = g0 + i;
            g[i] = (x[t * dim + c] - p.tensors["delta"][c]) * (1.0f / p.tensors["s"][c]);
          }
          const float b = asym_bound(g, bits);
          for (int i = 0; i < 32; ++i) {
            const int c = g0 + i;
            // |x - x'| = s_c |x~ - x~'| plus the fp32 error of the smoothing and its undo.
            REQUIRE(std::fabs(r.y[t * dim + c] - x[t * dim + c]) <=
                    p.tensors["s"][c] * b + slop(std::fabs(x[t * dim + c]) + std::fabs(p.tensors["delta"][c]) +
                                                  p.tensors["s"][c] * (std::fabs(g[i]) + b)));
          }
        }
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
    }
  }
  const KvShape shape{2, 64, 2};
  REQUIRE_FALSE(make_codec(parse_codec_spec("wkvquant:poq=0"), KvSide::kKey, 0, shape)->past_only());
}

TEST_CASE("MiKV: budget of high-precision heavy hitters, recent window, low-precision rest", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(109));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim(), hd = s.hd;
    const auto x = make_rows(rng, s.T, dim);
    const auto x16 = to_f16(x);
    std::vector<float> imp(static_cast<size_t>(s.T) * s.H);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (float& v : imp) v = std::floor(u(rng) * 8);  // many ties: older first
    AppendContext ctx;
    ctx.importance = imp.data();
    for (int lo : {2, 3, 4}) {
      const std::string spec = "mikv:hi=fp16,lo=int" + std::to_string(lo) + ",budget=0.3,recent=4,balance=0";
      INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      Run r = run(spec, KvSide::kValue, shape, x, s.T, ctx);
      const int64_t w = std::min<int64_t>(4, s.T), q = s.T - w;
      const int64_t nhi = std::clamp<int64_t>(
          static_cast<int64_t>(std::nearbyint(0.3 * static_cast<double>(s.T))) - w, 0, q);
      for (int h = 0; h < s.H; ++h) {
        std::vector<int64_t> order(q);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](int64_t a, int64_t b) { return imp[a * s.H + h] > imp[b * s.H + h]; });
        std::vector<char> hi(s.T, 0);
        for (int64_t j = 0; j < nhi; ++j) hi[order[j]] = 1;
        for (int64_t t = q; t < s.T; ++t) hi[t] = 1;  // the window is fp16
        for (int64_t t = 0; t < s.T; ++t) {
          const float* xh = x16.data() + t * dim + h * hd;
          const float* yh = r.y.data() + t * dim + h * hd;
          if (hi[t]) {
            for (int i = 0; i < hd; ++i) REQUIRE(yh[i] == xh[i]);
          } else {
            const float b = asym_bound(std::vector<float>(xh, xh + hd), lo);
            for (int i = 0; i < hd; ++i) REQUIRE(std::fabs(yh[i] - xh[i]) <= b);
          }
        }
      }
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
    }
  }
}

TEST_CASE("MiKV balancer: b = sqrt(max|Q| / max|K|) per channel flattens outlier key channels", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(110));
  const KvShape shape{2, 64, 4};  // GQA: 2 query heads per key head
  const int dim = shape.dim(), qd = 4 * 64;
  const int64_t T = 129;
  const auto k = make_rows(rng, T, dim);
  std::normal_distribution<float> nd;
  std::vector<float> q(static_cast<size_t>(T) * qd);
  for (float& v : q) v = nd(rng);
  AppendContext ctx;
  ctx.queries = kvq::ConstMatrixView{q.data(), static_cast<int>(T), qd, qd};
  Run bal = run("mikv:lo=int3,budget=0,recent=0,balance=1", KvSide::kKey, shape, k, T, ctx);
  Run raw = run("mikv:lo=int3,budget=0,recent=0,balance=0", KvSide::kKey, shape, k, T, ctx);
  const auto k16 = to_f16(k);
  std::vector<float> b(dim);
  for (int c = 0; c < dim; ++c) {
    float km = 0, qm = 0;
    for (int64_t t = 0; t < T; ++t) km = std::max(km, std::fabs(k16[t * dim + c]));
    for (int64_t t = 0; t < T; ++t)
      for (int g = 0; g < 2; ++g) qm = std::max(qm, std::fabs(q[t * qd + ((c / 64) * 2 + g) * 64 + c % 64]));
    b[c] = km > 0 && qm > 0 ? std::sqrt(qm / km) : 1.0f;
  }
  double err_bal = 0, err_raw = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h) {
      std::vector<float> g(64);
      for (int i = 0; i < 64; ++i) g[i] = k16[t * dim + h * 64 + i] * b[h * 64 + i];
      const float bound = asym_bound(g, 3);
      for (int i = 0; i < 64; ++i) {
        const int c = h * 64 + i;
        // In the balanced domain the int3 bound holds; dividing by b_c scales it.
        REQUIRE(std::fabs(bal.y[t * dim + c] * b[c] - g[i]) <= bound + slop(std::fabs(g[i]) + bound));
        // Scores see keys through q / b: compare in that metric (error * b).
        if (c % 13 != 5) {
          err_bal += std::fabs(bal.y[t * dim + c] - k16[t * dim + c]);
          err_raw += std::fabs(raw.y[t * dim + c] - k16[t * dim + c]);
        }
      }
    }
  // Outlier channels (x20) no longer set the per-token range: ordinary channels gain.
  REQUIRE(err_bal < 0.5 * err_raw);
}

TEST_CASE("llama.cpp q8_0 / q4_0 blocks: bounds and bits", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(111));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim();
    const auto x = make_rows(rng, s.T, dim);
    for (bool q8 : {true, false}) {
      INFO((q8 ? "q8_0" : "q4_0") << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      Run r = run(q8 ? "q8_0" : "q4_0", KvSide::kValue, shape, x, s.T);
      for (int64_t b0 = 0; b0 < s.T * dim; b0 += 32) {
        float amax = 0, mx = 0;
        for (int j = 0; j < 32; ++j)
          if (amax < std::fabs(x[b0 + j])) amax = std::fabs(x[b0 + j]), mx = x[b0 + j];
        const float d = q8 ? amax / 127 : mx / -8, dh = f16(d);
        // q8_0: half a step plus 127 steps of the fp16 error of d. q4_0: the value of
        // sign opposite to `max` with the same magnitude clamps at code 15: a full step.
        const float bound = q8 ? std::fabs(dh) / 2 + 127 * std::fabs(d - dh) + slop(amax)
                               : std::fabs(dh) + 8 * std::fabs(d - dh) + slop(amax);
        for (int j = 0; j < 32; ++j) REQUIRE(std::fabs(r.y[b0 + j] - x[b0 + j]) <= bound);
      }
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
      REQUIRE(r.codec->bits_per_element(s.T) == (q8 ? 8.5 : 4.5));
    }
  }
}

TEST_CASE("FP8 per-head scales: relative half-ulp bound, saturation beyond the prefill", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(112));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim(), hd = s.hd;
    const auto x = make_rows(rng, s.T, dim);
    for (bool e4m3 : {true, false}) {
      INFO((e4m3 ? "e4m3" : "e5m2") << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      Run r = run(e4m3 ? "fp8:e4m3" : "fp8:format=e5m2", KvSide::kKey, shape, x, s.T);
      const float rel = e4m3 ? 0x1p-4f : 0x1p-3f, sub = e4m3 ? 0x1p-10f : 0x1p-17f;
      for (int h = 0; h < s.H; ++h) {
        float amax = 0;
        for (int64_t t = 0; t < s.T; ++t)
          for (int i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(x[t * dim + h * hd + i]));
        const float scale = amax > 0 ? amax / (e4m3 ? 448.0f : 57344.0f) : 1.0f;
        for (int64_t t = 0; t < s.T; ++t)
          for (int i = 0; i < hd; ++i) {
            const float xv = x[t * dim + h * hd + i];
            REQUIRE(std::fabs(r.y[t * dim + h * hd + i] - xv) <=
                    std::fabs(xv) * rel + scale * sub + slop(std::fabs(xv)));
          }
      }
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
    }
  }
  // The scale is frozen at the prefill: a later, larger value saturates to +-max * scale.
  const KvShape shape{1, 64, 1};
  auto c = make_codec(parse_codec_spec("fp8"), KvSide::kValue, 0, shape);
  auto cache = c->make_cache();
  std::vector<float> a(64, 0.5f), b(64, -1000.0f), y(128);
  a[3] = 448.0f;  // scale 1
  cache->append(kvq::ConstMatrixView{a.data(), 1, 64, 64});
  cache->append(kvq::ConstMatrixView{b.data(), 1, 64, 64});
  cache->dequantize(0, 2, kvq::MatrixView{y.data(), 2, 64, 64});
  REQUIRE(y[3] == 448.0f);
  REQUIRE(y[64] == -448.0f);
}

TEST_CASE("Hadamard rotation + int-b: orthogonal bound per head, beats plain int-b on outlier channels", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(113));
  for (const auto& s : kShapes) {
    const KvShape shape{s.H, s.hd, s.H};
    const int dim = shape.dim(), hd = s.hd;
    const auto x = make_rows(rng, s.T, dim);
    for (int bits : {2, 4}) {
      const std::string spec = "hadamard:bits=" + std::to_string(bits);
      INFO(spec << " H=" << s.H << " hd=" << s.hd << " T=" << s.T);
      Run r = run(spec, KvSide::kKey, shape, x, s.T);
      Run plain = run("int" + std::to_string(bits), KvSide::kKey, shape, x, s.T);
      double e_had = 0, e_plain = 0;
      for (int64_t t = 0; t < s.T; ++t)
        for (int h = 0; h < s.H; ++h) {
          // Rotated coordinates y = H D x / sqrt(hd) have the same L2 norm, so
          // ||x - x'||_2 = ||y - y'||_2 <= sqrt(hd) * (bound on y's range), and the range
          // of y is at most 2 * ||x||_2.
          double n2 = 0, e2 = 0;
          for (int i = 0; i < hd; ++i) {
            const float xv = x[t * dim + h * hd + i];
            n2 += double(xv) * xv;
            e2 += std::pow(double(r.y[t * dim + h * hd + i]) - xv, 2);
            e_had += std::pow(double(r.y[t * dim + h * hd + i]) - xv, 2);
            e_plain += std::pow(double(plain.y[t * dim + h * hd + i]) - xv, 2);
          }
          const double L = (1 << bits) - 1;
          const double range = 2 * std::sqrt(n2);
          REQUIRE(std::sqrt(e2) <= std::sqrt(double(hd)) * (range / L * (0.5 + 0x1p-10) + range * 0x1p-10) +
                                       64 * 0x1p-24 * std::sqrt(n2) * hd + 1e-20);
        }
      if (s.T * s.H >= 7) REQUIRE(e_had < e_plain);
      REQUIRE(static_cast<int64_t>(r.bytes) == r.codec->bytes_for(s.T));
    }
  }
}

TEST_CASE("every codec: deterministic, finite, rejects non-finite input naming the position", "[codecs]") {
  std::mt19937_64 rng(kvq_test::test_seed(114));
  const KvShape shape{3, 64, 6};
  const int dim = shape.dim();
  const int64_t T = 37;
  const auto x = make_rows(rng, T, dim);
  for (const char* spec : {"fp16", "int2", "int3:sym=1", "int8:axis=channel,group=8", "kivi:group=4,residual=8",
                           "kvquant:bits=3", "wkvquant:bits=4", "mikv:hi=int8,lo=int2,recent=4",
                           "q8_0", "q4_0", "fp8:e4m3", "fp8:e5m2", "hadamard:bits=3,seed=7"})
    for (KvSide side : {KvSide::kKey, KvSide::kValue}) {
      INFO(spec);
      Run a = run(spec, side, shape, x, T), b = run(spec, side, shape, x, T);
      REQUIRE(a.y == b.y);
      REQUIRE(a.bytes == b.bytes);
      for (float v : a.y) REQUIRE(std::isfinite(v));
      auto bad = x;
      bad[5 * dim + 7] = NAN;
      auto cache = a.codec->make_cache();
      try {
        cache->append(kvq::ConstMatrixView{bad.data(), static_cast<int>(T), dim, dim});
        FAIL("no exception for NaN input");
      } catch (const kvq::InvalidArgument& e) {
        REQUIRE_THAT(e.what(), kvq_test::HasSubstr("position 5, column 7"));
      }
    }
}
