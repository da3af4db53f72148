// Each CUDA kernel of kernels/ops.cuh against a plain CPU reference on fresh random inputs
// from a printed seed (KVQ_TEST_SEED replays), with awkward sizes, outputs poisoned with
// NaN bits before the launch (so unwritten elements fail), and tolerances derived from the
// arithmetic next to each check.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "formats/dtype.h"
#include "kernels/attention_prefill_sm90.cuh"
#include "kernels/kv_ops.cuh"
#include "kernels/ops.cuh"
#include "tests/catch.h"
#include "tests/gpu/device_buffers.h"
#include "tests/gpu/kv_test_support.h"
#include "tests/support/test_support.h"

namespace {

using kvq::kern::Act;

using kvq_test::act_name;
using kvq_test::Dev;
using kvq_test::download;
using kvq_test::from16;
using kvq_test::to16;
using kvq_test::to_dev;
using kvq_test::unit;

// Random 16-bit values (rounded from N(0, sd)), returned as raw bits and as floats. The
// draws in order on this thread (the generator is sequential), the roundings (pure functions
// of each draw) in parallel: the same values as rounding each draw as it comes (h66).
struct Rand16 {
  std::vector<uint16_t> bits;
  std::vector<float> f;
};
Rand16 rand16(Act a, size_t n, std::mt19937_64& rng, float sd) {
  std::normal_distribution<float> nd(0.f, sd);
  Rand16 r;
  r.bits.resize(n);
  r.f.resize(n);
  for (size_t i = 0; i < n; ++i) r.f[i] = nd(rng);
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (long long i = 0; i < static_cast<long long>(n); ++i) {
    r.bits[i] = to16(a, r.f[i]);
    r.f[i] = from16(a, r.bits[i]);
  }
  return r;
}

}  // namespace

TEST_CASE("gpu kernels: rmsnorm matches fp64 reference within one 16-bit rounding", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(101);
  std::mt19937_64 rng(seed);
  for (Act act : {Act::kF16, Act::kBF16}) {
    for (int hidden : {1, 7, 127, 384, 4097}) {
      const int tokens = 3;
      std::normal_distribution<float> nd(0.f, 2.f);
      std::vector<float> x(static_cast<size_t>(tokens) * hidden);
      for (auto& v : x) v = nd(rng);
      if (hidden > 1) x[5 % x.size()] = 40.f;  // an outlier channel
      Rand16 w = rand16(act, hidden, rng, 1.f);
      Dev dx = to_dev(x), dw = to_dev(w.bits), dout(x.size() * 2), flag(4);
      CK(cudaMemset(flag.p, 0, 4));
      CK(kvq::kern::rmsnorm(act, dx.as<float>(), tokens, hidden, dw.p, 1e-5f, dout.p, flag.as<int>(), nullptr));
      auto out = download<uint16_t>(dout, x.size());
      REQUIRE(download<int>(flag, 1)[0] == 0);
      double worst = 0;
      for (int t = 0; t < tokens; ++t) {
        double ss = 0;
        for (int c = 0; c < hidden; ++c) ss += double(x[t * hidden + c]) * x[t * hidden + c];
        const double inv = 1.0 / std::sqrt(ss / hidden + 1e-5);
        for (int c = 0; c < hidden; ++c) {
          const double ref = x[t * hidden + c] * inv * w.f[c];
          const double got = from16(act, out[t * hidden + c]);
          // One rounding to 16 bits (u |ref|) plus fp32 arithmetic (a few 2^-24 relative).
          const double tol = unit(act) * std::fabs(ref) * 1.001 + 1e-6 * std::fabs(ref) + 1e-30;
          REQUIRE(std::isfinite(got));
          REQUIRE(std::fabs(got - ref) <= tol + 6e-8);  // 6e-8: fp16 subnormal spacing
          worst = std::max(worst, std::fabs(got - ref) / std::max(std::fabs(ref), 1e-30));
        }
      }
      std::printf("rmsnorm %s hidden %d: max rel err %.3g (bound %.3g), seed %llu\n", act_name(act),
                  hidden, worst, unit(act), (unsigned long long)seed);
    }
  }
  // The non-finite flag.
  std::vector<float> x = {1.f, NAN, 2.f};
  std::vector<uint16_t> w(3, kvq::float_to_half(1.f));
  Dev dx = to_dev(x), dw = to_dev(w), dout(6), flag(4);
  CK(cudaMemset(flag.p, 0, 4));
  CK(kvq::kern::rmsnorm(Act::kF16, dx.as<float>(), 1, 3, dw.p, 1e-5f, dout.p, flag.as<int>(), nullptr));
  REQUIRE(download<int>(flag, 1)[0] == 1);
}

TEST_CASE("gpu kernels: embed, store_kv, to_act and swiglu are exact or one rounding", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(102);
  std::mt19937_64 rng(seed);
  for (Act act : {Act::kF16, Act::kBF16}) {
    // embed: exact widening.
    const int vocab = 129, hidden = 67, tokens = 7;
    Rand16 table = rand16(act, static_cast<size_t>(vocab) * hidden, rng, 1.f);
    std::vector<int32_t> ids(tokens);
    for (auto& i : ids) i = static_cast<int32_t>(rng() % vocab);
    ids[0] = vocab - 1;
    Dev dt = to_dev(table.bits), di = to_dev(ids), de(static_cast<size_t>(tokens) * hidden * 4);
    CK(kvq::kern::embed(act, di.as<int32_t>(), tokens, dt.p, hidden, de.as<float>(), nullptr));
    auto e = download<float>(de, static_cast<size_t>(tokens) * hidden);
    for (int t = 0; t < tokens; ++t)
      for (int c = 0; c < hidden; ++c) REQUIRE(e[t * hidden + c] == table.f[ids[t] * hidden + c]);

    // to_act: round half to even, bit-identical with formats/dtype.h, incl. ties.
    std::vector<float> f(1001);
    std::normal_distribution<float> nd(0.f, 3.f);
    for (auto& v : f) v = nd(rng);
    f[0] = kvq::bits_float(0x3f801000u);  // exactly half-way between two fp16 values: tie
    f[1] = kvq::bits_float(0x3f808000u);  // a bf16 tie
    f[2] = 70000.f;                        // fp16 overflow -> inf
    Dev df = to_dev(f), dh(f.size() * 2);
    CK(kvq::kern::to_act(act, df.as<float>(), 1, static_cast<int>(f.size()), f.size(), dh.p, f.size(), nullptr));
    auto h = download<uint16_t>(dh, f.size());
    for (size_t i = 0; i < f.size(); ++i) REQUIRE(h[i] == to16(act, f[i]));

    // store_kv: two rows into slots {2, 0} at positions {5, 0}.
    const int kvh = 3, hd = 8, n = 3, rows = 2, slots = 3, maxt = 11, ld = 2 * kvh * hd + 5;
    std::vector<float> kv(static_cast<size_t>(rows) * n * ld);
    for (auto& v : kv) v = nd(rng);
    std::vector<int32_t> slot = {2, 0}, pos0 = {5, 0};
    const size_t cache = static_cast<size_t>(slots) * kvh * maxt * hd;
    Dev dkv = to_dev(kv), ds = to_dev(slot), dp = to_dev(pos0), kc(cache * 2), vc(cache * 2);
    CK(kvq::kern::store_kv(act, dkv.as<float>(), dkv.as<float>() + kvh * hd, ld, rows, n, ds.as<int32_t>(),
                           dp.as<int32_t>(), kvh, hd, maxt, kc.p, vc.p, nullptr));
    auto k = download<uint16_t>(kc, cache), v = download<uint16_t>(vc, cache);
    size_t written = 0;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < n; ++i)
        for (int g = 0; g < kvh; ++g)
          for (int d = 0; d < hd; ++d) {
            const size_t dst = ((static_cast<size_t>(slot[r]) * kvh + g) * maxt + pos0[r] + i) * hd + d;
            REQUIRE(k[dst] == to16(act, kv[(r * n + i) * ld + g * hd + d]));
            REQUIRE(v[dst] == to16(act, kv[(r * n + i) * ld + kvh * hd + g * hd + d]));
            ++written;
          }
    size_t untouched = 0;
    for (size_t i = 0; i < cache; ++i) untouched += k[i] == 0xFFFF;
    REQUIRE(untouched == cache - written);  // nothing else written

    // swiglu: fp32 silu(g)*u then one rounding.
    const int inter = 131, tk = 5;
    std::vector<float> gu(static_cast<size_t>(tk) * 2 * inter);
    for (auto& x : gu) x = nd(rng);
    Dev dg = to_dev(gu), dout(static_cast<size_t>(tk) * inter * 2);
    CK(kvq::kern::swiglu(act, dg.as<float>(), tk, inter, dout.p, nullptr));
    auto o = download<uint16_t>(dout, static_cast<size_t>(tk) * inter);
    for (int t = 0; t < tk; ++t)
      for (int c = 0; c < inter; ++c) {
        const double g = gu[t * 2 * inter + c], u = gu[t * 2 * inter + inter + c];
        const double ref = g / (1 + std::exp(-g)) * u;
        REQUIRE(std::fabs(from16(act, o[t * inter + c]) - ref) <= unit(act) * std::fabs(ref) * 1.001 + 4e-6 * std::fabs(ref) + 6e-8);
      }
  }
  std::printf("embed/to_act/store_kv/swiglu exact, seed %llu\n", (unsigned long long)seed);
}

TEST_CASE("gpu kernels: rope rotates like the fp64 rotation of the fp32 angle", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(103);
  std::mt19937_64 rng(seed);
  for (bool inter : {false, true}) {
    for (int hd : {8, 64, 128}) {
      const int heads = 3, rows = 2, n = 5, ld = heads * hd + 3, tokens = rows * n;
      std::vector<float> x(static_cast<size_t>(tokens) * ld);
      std::normal_distribution<float> nd(0.f, 1.f);
      for (auto& v : x) v = nd(rng);
      std::vector<int32_t> pos0 = {0, 4093};
      std::vector<float> invf(hd / 2);
      for (int i = 0; i < hd / 2; ++i) invf[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
      Dev dx = to_dev(x), dp = to_dev(pos0), di = to_dev(invf);
      CK(kvq::kern::rope(dx.as<float>(), tokens, ld, heads, hd, n, dp.as<int32_t>(), di.as<float>(), inter, nullptr));
      auto y = download<float>(dx, x.size());
      double worst = 0;
      for (int t = 0; t < tokens; ++t) {
        const int pos = pos0[t / n] + t % n;
        for (int h = 0; h < heads; ++h)
          for (int i = 0; i < hd / 2; ++i) {
            const int a = inter ? 2 * i : i, b = inter ? 2 * i + 1 : i + hd / 2;
            // The angle is the fp32 product (as in HF); cos/sin and the rotation in fp64.
            const double ang = static_cast<float>(static_cast<float>(pos) * invf[i]);
            const double x0 = x[t * ld + h * hd + a], x1 = x[t * ld + h * hd + b];
            const double r0 = x0 * std::cos(ang) - x1 * std::sin(ang);
            const double r1 = x1 * std::cos(ang) + x0 * std::sin(ang);
            // cosf/sinf are within 2 ulp; two products and a sum in fp32: 4 * 2^-24 * (|x0|+|x1|).
            const double tol = 8 * std::ldexp(1.0, -24) * (std::fabs(x0) + std::fabs(x1));
            REQUIRE(std::fabs(y[t * ld + h * hd + a] - r0) <= tol);
            REQUIRE(std::fabs(y[t * ld + h * hd + b] - r1) <= tol);
            worst = std::max(worst, std::fabs(y[t * ld + h * hd + a] - r0) / (std::fabs(x0) + std::fabs(x1)));
          }
        // Columns past the heads are untouched.
        for (int c = heads * hd; c < ld; ++c) REQUIRE(y[t * ld + c] == x[t * ld + c]);
      }
      std::printf("rope %s hd %d: max err %.3g x |pair|, seed %llu\n", inter ? "interleaved" : "rotate-half",
                  hd, worst, (unsigned long long)seed);
    }
  }
}

TEST_CASE("gpu kernels: nll_rows against fp64 log-softmax", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(104);
  std::mt19937_64 rng(seed);
  for (int vocab : {1, 3, 513, 32000}) {
    const int tokens = 4;
    std::normal_distribution<float> nd(0.f, 4.f);
    std::vector<float> lg(static_cast<size_t>(tokens) * vocab);
    for (auto& v : lg) v = nd(rng);
    lg[0] = 80.f;  // large logit: the max subtraction matters
    std::vector<int32_t> tg(tokens);
    for (auto& t : tg) t = static_cast<int32_t>(rng() % vocab);
    tg[2] = -1;
    Dev dl = to_dev(lg), dt = to_dev(tg), dn(tokens * 4);
    CK(kvq::kern::nll_rows(dl.as<float>(), tokens, vocab, dt.as<int32_t>(), dn.as<float>(), nullptr));
    auto nll = download<float>(dn, tokens);
    for (int t = 0; t < tokens; ++t) {
      if (tg[t] < 0) {
        REQUIRE(std::isnan(nll[t]));
        continue;
      }
      double m = -1e300, s = 0;
      for (int c = 0; c < vocab; ++c) m = std::max(m, double(lg[t * vocab + c]));
      for (int c = 0; c < vocab; ++c) s += std::exp(lg[t * vocab + c] - m);
      const double ref = m + std::log(s) - lg[t * vocab + tg[t]];
      // fp32: exp/log within 2 ulp, a sum of `vocab` terms within vocab * 2^-24 relative,
      // then lse - logit cancels: absolute error ~ 2^-24 (|m| + log s) * small constant.
      const double tol = (4.0 + 1e-3 * vocab / 32.0) * std::ldexp(1.0, -24) * (std::fabs(m) + std::log(s) + 1) * 4;
      REQUIRE(std::fabs(nll[t] - ref) <= tol);
    }
  }
  std::printf("nll_rows ok, seed %llu\n", (unsigned long long)seed);
}

TEST_CASE("gpu kernels: cuBLAS gemm with fp32 accumulation", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(105);
  std::mt19937_64 rng(seed);
  cublasHandle_t h = nullptr;
  REQUIRE(cublasCreate(&h) == 0);
  for (Act act : {Act::kF16, Act::kBF16}) {
    const int T = 7, K = 129, N = 67;
    Rand16 x = rand16(act, static_cast<size_t>(T) * K, rng, 1.f), w = rand16(act, static_cast<size_t>(N) * K, rng, 1.f);
    std::vector<float> y0(static_cast<size_t>(T) * N);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& v : y0) v = nd(rng);
    Dev dx = to_dev(x.bits), dw = to_dev(w.bits), dy = to_dev(y0);
    REQUIRE(kvq::kern::gemm(h, act, dx.p, T, K, dw.p, N, dy.as<float>(), 1.f, nullptr) == 0);
    auto y = download<float>(dy, y0.size());
    for (int t = 0; t < T; ++t)
      for (int o = 0; o < N; ++o) {
        double ref = y0[t * N + o], mag = std::fabs(y0[t * N + o]);
        for (int k = 0; k < K; ++k) {
          ref += double(x.f[t * K + k]) * w.f[o * K + k];
          mag += std::fabs(double(x.f[t * K + k]) * w.f[o * K + k]);
        }
        // Products of 16-bit values are exact in fp32; K+1 fp32 additions: (K+1) 2^-24 sum|.|.
        REQUIRE(std::fabs(y[t * N + o] - ref) <= (K + 1) * std::ldexp(1.0, -24) * mag);
      }
  }
  cublasDestroy(h);
}

namespace {

// Whether a prefill path (attention_prefill_sm90_usable / _fa3_usable) takes head_dim hd on
// this device and build.
bool takes(bool (*usable)(const kvq::kern::AttentionArgs&), int hd) {
  kvq::kern::AttentionArgs probe;
  probe.head_dim = hd;
  return usable(probe);
}

// CPU reference attention in fp64 from the same 16-bit q/k/v the kernel reads.
struct AttnCase {
  Act act;
  int rows, n, heads, kv_heads, hd, slots, max_tokens, window;
  std::vector<int32_t> slot, pos0;
  bool self;
};

using PrefillFn = cudaError_t (*)(Act, const kvq::kern::AttentionArgs&, cudaStream_t);

// q_scale: standard deviation of the queries (1: the usual N(0, 1)); large values spread
// the scores so that most softmax weights fall below 2^-126 (the FA3 kernel's ftz exp2).
// sm_count: what the decode planner is told (1 forces single-split plans on long caches).
void run_attention_case(const AttnCase& c, std::mt19937_64& rng, bool decode,
                        PrefillFn prefill = kvq::kern::attention_prefill, const char* label = "prefill",
                        float q_scale = 1.f, int sm_count = 132) {
  const size_t qn = static_cast<size_t>(c.rows) * c.n * c.heads * c.hd;
  const size_t cache = static_cast<size_t>(c.slots) * c.kv_heads * c.max_tokens * c.hd;
  const size_t selfn = static_cast<size_t>(c.rows) * c.n * c.kv_heads * c.hd;
  Rand16 q = rand16(c.act, qn, rng, q_scale), k = rand16(c.act, cache, rng, 1.f), v = rand16(c.act, cache, rng, 1.f);
  Rand16 ks = rand16(c.act, selfn, rng, 1.f), vs = rand16(c.act, selfn, rng, 1.f);
  // Cache entries beyond each slot's length hold NaN bits: the kernel must never read them.
  std::vector<int> len(c.slots, 0);
  for (int r = 0; r < c.rows; ++r) len[c.slot[r]] = c.pos0[r] + c.n;
  for (int s = 0; s < c.slots; ++s)
    for (int g = 0; g < c.kv_heads; ++g)
      for (int j = len[s]; j < c.max_tokens; ++j)
        for (int d = 0; d < c.hd; ++d) {
          const size_t i = ((static_cast<size_t>(s) * c.kv_heads + g) * c.max_tokens + j) * c.hd + d;
          k.bits[i] = v.bits[i] = 0xFFFF;
        }
  Dev dq = to_dev(q.bits), dk = to_dev(k.bits), dv = to_dev(v.bits), dks = to_dev(ks.bits), dvs = to_dev(vs.bits);
  Dev ds = to_dev(c.slot), dp = to_dev(c.pos0), dout(qn * 2);
  kvq::kern::AttentionArgs a;
  a.q = dq.p;
  a.k_cache = dk.p;
  a.v_cache = dv.p;
  a.slot = ds.as<int32_t>();
  a.pos0 = dp.as<int32_t>();
  a.k_self = c.self ? dks.p : nullptr;
  a.v_self = c.self ? dvs.p : nullptr;
  a.out = dout.p;
  a.rows = c.rows;
  a.n = c.n;
  a.n_heads = c.heads;
  a.kv_heads = c.kv_heads;
  a.head_dim = c.hd;
  a.max_tokens = c.max_tokens;
  a.window = c.window;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
  if (decode) {
    int max_len = 0;
    for (int r = 0; r < c.rows; ++r) max_len = std::max(max_len, c.pos0[r] + 1);
    const size_t ws = kvq::kern::attention_decode_workspace(a, max_len, sm_count);
    Dev dws(ws);
    CK(kvq::kern::attention_decode(c.act, a, max_len, sm_count, dws.p, ws, nullptr));
    CK(cudaDeviceSynchronize());
  } else {
    CK(prefill(c.act, a, nullptr));
  }
  auto out = download<uint16_t>(dout, qn);
  const int group = c.heads / c.kv_heads;
  const float scale = a.scale;
  // The fp64 reference costs ~4 hd flops per (query, key) pair: ~1e9 for the 1,024- and
  // 2,048-query causal cases, seconds per call on one thread, the most of the prefill and
  // decode cases' time (h66). So the (row, query, head) triples, independent, run in parallel
  // (OpenMP) into per-element arrays, and the checks follow in the original order on this
  // thread (Catch2's assertions are not thread-safe). Each element is the same sequence of fp64
  // operations as the serial loops before (the P V sums token-major, but per channel d in the
  // same order j = lo..p; max exact in any order): the figures are bit-identical to them.
  const size_t triples = static_cast<size_t>(c.rows) * c.n * c.heads;
  std::vector<double> ref_v(qn), got_v(qn), tol_v(qn);
#pragma omp parallel for schedule(dynamic, 4)
  for (long long tr = 0; tr < static_cast<long long>(triples); ++tr) {
    const int h = static_cast<int>(tr % c.heads), i = static_cast<int>(tr / c.heads % c.n);
    const int r = static_cast<int>(tr / (static_cast<long long>(c.heads) * c.n));
    const int g = h / group, p = c.pos0[r] + i;
    const int lo = c.window > 0 ? std::max(0, p - c.window + 1) : 0;
    const float* qi = q.f.data() + ((static_cast<size_t>(r) * c.n + i) * c.heads + h) * c.hd;
    auto key = [&](int j) -> const float* {
      if (c.self && j == p) return ks.f.data() + ((static_cast<size_t>(r) * c.n + i) * c.kv_heads + g) * c.hd;
      return k.f.data() + ((static_cast<size_t>(c.slot[r]) * c.kv_heads + g) * c.max_tokens + j) * c.hd;
    };
    auto val = [&](int j) -> const float* {
      if (c.self && j == p) return vs.f.data() + ((static_cast<size_t>(r) * c.n + i) * c.kv_heads + g) * c.hd;
      return v.f.data() + ((static_cast<size_t>(c.slot[r]) * c.kv_heads + g) * c.max_tokens + j) * c.hd;
    };
    std::vector<double> s(static_cast<size_t>(p + 1));
    double m = -1e300, emax = 0;
    for (int j = lo; j <= p; ++j) {
      const float* kj = key(j);
      double dot = 0, mag = 0;
      for (int d = 0; d < c.hd; ++d) {
        dot += double(qi[d]) * kj[d];
        mag += std::fabs(double(qi[d]) * kj[d]);
      }
      s[j] = dot * scale;
      m = std::max(m, s[j]);
      // fp32 score (exact 16-bit products, hd + 1 roundings): |error| <= (hd+1) 2^-24 sum|q k|.
      emax = std::max(emax, (c.hd + 1) * std::ldexp(1.0, -24) * mag * scale);
    }
    const int nkeys = p - lo + 1;
    double sum = 0;
    for (int j = lo; j <= p; ++j) sum += (s[j] = std::exp(s[j] - m));
    std::vector<double> ref(c.hd, 0.0), vmax(c.hd, 0.0);
    for (int j = lo; j <= p; ++j) {
      const float* vj = val(j);
      const double w = s[j] / sum;
      for (int d = 0; d < c.hd; ++d) {
        ref[d] += w * vj[d];
        vmax[d] = std::max(vmax[d], std::fabs(double(vj[d])));
      }
    }
    for (int d = 0; d < c.hd; ++d) {
      const size_t e = static_cast<size_t>(tr) * c.hd + d;
      got_v[e] = from16(c.act, out[e]);
      ref_v[e] = ref[d];
      // Derived bound: the probabilities are rounded to 16 bits before P V (prefill and
      // the tensor-core decode) or kept in fp32 (the CUDA-core decode): <= u * max|v|;
      // the output is rounded once: u * |ref|; fp32 arithmetic: a score error e (fp32 or
      // the mma's fp32 accumulation over head_dim / 16 steps, inside emax) moves each
      // weight by a factor exp(+-2e), and exp2f/expf, the fp32 normaliser, the split
      // merges and the fp32 P V accumulation add < (2 keys + 16) 2^-24.
      const double f32 = 2 * emax + (2.0 * nkeys + 16) * std::ldexp(1.0, -24);
      tol_v[e] = unit(c.act) * (vmax[d] + std::fabs(ref[d])) * 1.05 + f32 * vmax[d] + 1e-7;
    }
  }
  double worst = 0, worst_ratio = 0;
  for (int r = 0; r < c.rows; ++r)
    for (int i = 0; i < c.n; ++i)
      for (int h = 0; h < c.heads; ++h)
        for (int d = 0; d < c.hd; ++d) {
          const size_t e = ((static_cast<size_t>(r) * c.n + i) * c.heads + h) * c.hd + d;
          const double got = got_v[e], ref = ref_v[e], tol = tol_v[e];
          REQUIRE(std::isfinite(got));
          const double err = std::fabs(got - ref);
          if (err > tol)
            FAIL("row " << r << " query " << i << " head " << h << " d " << d << ": got " << got
                        << " ref " << ref << " tol " << tol);
          worst = std::max(worst, err);
          worst_ratio = std::max(worst_ratio, err / tol);
        }
  std::printf("%s %s hd %d heads %d/%d rows %d n %d pos0[0] %d window %d self %d: max abs err %.3g "
              "(%.2f of bound)\n",
              decode ? "decode " : label, act_name(c.act), c.hd, c.heads, c.kv_heads, c.rows, c.n,
              c.pos0[0], c.window, int(c.self), worst, worst_ratio);
}

}  // namespace

TEST_CASE("gpu kernels: prefill attention against fp64 reference", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(106);
  std::printf("prefill attention seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  for (Act act : {Act::kF16, Act::kBF16}) {
    // head_dim 64 and 128, GQA 4:1, chunk lengths 1, 3, 65, 129 on top of cached prefixes,
    // two rows on swapped slots with different lengths.
    run_attention_case({act, 1, 129, 4, 1, 64, 1, 200, 0, {0}, {0}, false}, rng, false);
    run_attention_case({act, 2, 65, 8, 2, 128, 3, 300, 0, {2, 0}, {130, 7}, false}, rng, false);
    run_attention_case({act, 2, 3, 2, 2, 64, 2, 80, 0, {1, 0}, {64, 0}, false}, rng, false);
    run_attention_case({act, 1, 1, 4, 4, 128, 1, 10, 0, {0}, {5}, false}, rng, false);
    // head_dim 8 (stories260K) and 32, sliding window, past-only diagonal.
    run_attention_case({act, 1, 70, 8, 4, 8, 1, 100, 0, {0}, {3}, false}, rng, false);
    run_attention_case({act, 1, 100, 2, 1, 32, 1, 260, 37, {0}, {150}, false}, rng, false);
    run_attention_case({act, 2, 67, 4, 2, 64, 2, 140, 0, {0, 1}, {0, 60}, true}, rng, false);
    // FA2 kernel paths: many query blocks and key tiles (1030 = 16 blocks of 64 + 6), the
    // window's far edge crossing tiles over a long prefix, head_dim 96 on the padded
    // 128-wide path with window + past-only + GQA, head_dim 16 with past-only at position
    // 0 (a row whose only key is the diagonal), warps whose rows are all past the chunk.
    run_attention_case({act, 1, 1030, 4, 2, 128, 1, 1100, 0, {0}, {0}, false}, rng, false);
    run_attention_case({act, 1, 200, 2, 1, 64, 1, 3000, 500, {0}, {2700}, false}, rng, false);
    run_attention_case({act, 2, 150, 4, 2, 96, 2, 700, 100, {1, 0}, {500, 37}, true}, rng, false);
    run_attention_case({act, 1, 33, 2, 1, 16, 1, 40, 0, {0}, {0}, true}, rng, false);
    run_attention_case({act, 3, 17, 8, 8, 128, 3, 300, 0, {2, 0, 1}, {255, 0, 64}, false}, rng, false);
  }
}

// The same prefill cases through each path by name (kernels/attention_prefill_sm90.cuh):
// the FA2 kernel always, the wgmma kernel where it applies (head_dim 64 and 128 on an sm_90
// device); cases it does not take are the dispatcher's FA2 cases above. Extra head_dim-128
// cases aim at the wgmma kernel's own edges: several 64-query blocks with a ragged last
// one, the sliding window's far edge, past-only with GQA, a 1-token chunk deep in a prefix;
// and two grids of 256 blocks (more than one block per SM on an H100: a pipelined variant
// passed every smaller case here and returned NaN only once blocks shared SMs).
TEST_CASE("gpu kernels: prefill attention, FA2 and wgmma paths, against fp64 reference", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(108);
  std::printf("prefill paths seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  int sm90_cases = 0, fa3_cases = 0;
  for (Act act : {Act::kF16, Act::kBF16}) {
    const std::vector<AttnCase> cases = {
        {act, 2, 65, 8, 2, 128, 3, 300, 0, {2, 0}, {130, 7}, false},
        {act, 1, 1, 4, 4, 128, 1, 10, 0, {0}, {5}, false},
        {act, 1, 1030, 4, 2, 128, 1, 1100, 0, {0}, {0}, false},
        {act, 3, 17, 8, 8, 128, 3, 300, 0, {2, 0, 1}, {255, 0, 64}, false},
        {act, 1, 333, 4, 1, 128, 1, 2000, 129, {0}, {1500}, false},
        {act, 2, 191, 8, 2, 128, 2, 600, 0, {1, 0}, {0, 300}, true},
        {act, 1, 129, 2, 2, 128, 1, 300, 70, {0}, {0}, true},
        {act, 1, 1, 2, 1, 128, 1, 5000, 0, {0}, {4097}, false},
        {act, 1, 70, 8, 4, 64, 1, 100, 0, {0}, {3}, false},
        {act, 2, 67, 4, 2, 64, 2, 140, 40, {0, 1}, {0, 60}, true},
        {act, 1, 100, 2, 1, 96, 1, 260, 37, {0}, {150}, false},
        {act, 1, 1024, 16, 4, 128, 1, 1024, 0, {0}, {0}, false},
        {act, 1, 2048, 8, 2, 64, 1, 2100, 0, {0}, {0}, false},
    };
    for (const AttnCase& c : cases) {
      run_attention_case(c, rng, false, kvq::kern::attention_prefill_fa2, "prefill fa2 ");
      if (takes(kvq::kern::attention_prefill_sm90_usable, c.hd)) {
        run_attention_case(c, rng, false, kvq::kern::attention_prefill_sm90, "prefill sm90");
        ++sm90_cases;
      }
      if (takes(kvq::kern::attention_prefill_fa3_usable, c.hd)) {
        run_attention_case(c, rng, false, kvq::kern::attention_prefill_fa3, "prefill fa3 ");
        ++fa3_cases;
      }
    }
    // The warp-specialized kernel's own edges (128-query blocks, 128-key tiles, 2-stage
    // rings): a chunk of 64 (the second consumer warpgroup's rows all past it), prefixes
    // that are not multiples of 128 (partial first and last tiles), 41 key tiles (the rings
    // wrap many times), a window shorter than one tile with past-only, and 20 heads x 9
    // query tiles = 180 blocks (more than one wave on a 132-SM H100).
    const std::vector<AttnCase> fa3_edges = {
        {act, 1, 64, 4, 1, 128, 1, 200, 0, {0}, {0}, false},
        {act, 2, 257, 4, 2, 128, 2, 900, 0, {1, 0}, {300, 77}, false},
        {act, 1, 130, 2, 1, 128, 1, 5300, 0, {0}, {5100}, false},
        {act, 1, 300, 4, 4, 128, 1, 700, 45, {0}, {200}, true},
        {act, 1, 1100, 20, 4, 128, 1, 1100, 0, {0}, {0}, false},
    };
    for (const AttnCase& c : fa3_edges) {
      if (!takes(kvq::kern::attention_prefill_fa3_usable, c.hd)) break;
      run_attention_case(c, rng, false, kvq::kern::attention_prefill_fa3, "prefill fa3 ");
      ++fa3_cases;
    }
  }
  int major = 0, minor = 0, dev = 0;
  REQUIRE(cudaGetDevice(&dev) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess);
  std::printf("prefill sm90 cases run: %d (device compute capability %d.%d)\n", sm90_cases, major, minor);
  // On an sm_90 device this build must have taken the wgmma kernel for every head_dim 64 / 128
  // case (12 per type), and never for head_dim 96.
  std::printf("prefill fa3 cases run: %d\n", fa3_cases);
  if (major == 9 && minor == 0) REQUIRE(sm90_cases == 24);
  // ... and the warp-specialized kernel for every head_dim 128 case (9 + 5 per type).
  if (major == 9 && minor == 0) REQUIRE(fa3_cases == 28);
  REQUIRE_FALSE(takes(kvq::kern::attention_prefill_sm90_usable, 96));
  REQUIRE_FALSE(takes(kvq::kern::attention_prefill_fa3_usable, 64));
}

// The FA3-style kernel's softmax takes ex2.approx.ftz (weights below 2^-126 become 0, see
// online_softmax in kernels/attention_prefill_sm90_wgmma.cuh). Queries from N(0, 64^2) give
// scaled scores with a standard deviation of ~64 within a row (64 sqrt(128) / sqrt(128)): a
// weight is below 2^-126 when its score is 87.3 below the row's maximum, i.e. for most keys
// of every row, and many rows are dominated by one key. The output must
// stay within the same derived bound (the fp64 reference keeps every tiny weight), fp16 and
// bf16 (bf16 P could hold the flushed values as subnormals), with and without past-only.
TEST_CASE("gpu kernels: prefill fa3 with softmax weights below 2^-126, against fp64 reference", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(110);
  std::printf("prefill fa3 tiny-weights seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  if (!takes(kvq::kern::attention_prefill_fa3_usable, 128)) return;  // no sm_90 device
  for (Act act : {Act::kF16, Act::kBF16}) {
    run_attention_case({act, 1, 300, 4, 2, 128, 1, 700, 0, {0}, {261}, false}, rng, false,
                       kvq::kern::attention_prefill_fa3, "prefill fa3 ", 64.f);
    run_attention_case({act, 2, 131, 4, 4, 128, 2, 400, 0, {1, 0}, {0, 200}, true}, rng, false,
                       kvq::kern::attention_prefill_fa3, "prefill fa3 ", 64.f);
  }
}

TEST_CASE("gpu kernels: decode attention against fp64 reference", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(107);
  std::printf("decode attention seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  // Each case through the default pick (the tensor-core kernel where it fits) and the
  // CUDA-core kernel (KVQ_ATTN_DECODE=old).
  for (const char* pick : {static_cast<const char*>(nullptr), "old"}) {
    kvq_test::EnvGuard env("KVQ_ATTN_DECODE", pick);
    std::printf("KVQ_ATTN_DECODE=%s\n", pick ? pick : "(unset)");
    for (Act act : {Act::kF16, Act::kBF16}) {
      run_attention_case({act, 1, 1, 4, 4, 64, 1, 8, 0, {0}, {0}, false}, rng, true);      // 1 key
      run_attention_case({act, 3, 1, 8, 2, 128, 3, 4200, 0, {1, 2, 0}, {4096, 6, 127}, false}, rng, true);
      run_attention_case({act, 2, 1, 32, 4, 64, 2, 1100, 0, {0, 1}, {1024, 999}, false}, rng, true);  // G=8
      run_attention_case({act, 1, 1, 8, 4, 8, 1, 600, 0, {0}, {511}, false}, rng, true);
      run_attention_case({act, 2, 1, 4, 1, 64, 2, 3000, 100, {0, 1}, {2999, 50}, false}, rng, true);
      run_attention_case({act, 2, 1, 6, 3, 128, 2, 700, 0, {1, 0}, {600, 129}, true}, rng, true);
    }
  }
}

// The tensor-core decode (kernels/attention_decode_mma.cu) over the shapes it takes and the
// awkward ones around them: MHA and G = 2, 4, 8; rows of one call at 1, 63, 65, 4097 keys
// (tile edges at 16 tokens, split edges); windows that start inside a tile; past-only
// diagonals; head_dim 32/64/128 and the fallback head_dims 8/40/120 (not multiples of 16);
// single-split plans (sm_count 1: the output written by the attention kernel itself) and
// many-split plans (the PDL combine). Every case also through KVQ_ATTN_DECODE=old and with
// every build variant of the tensor-core kernel (warps per block x pipeline depth).
TEST_CASE("gpu kernels: tensor-core decode attention against fp64 reference", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(113);
  std::printf("tensor-core decode attention seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  for (const char* pick : {static_cast<const char*>(nullptr), "old", "new-w4s2", "new-w4s3", "new-w4s4",
                           "new-w8s2", "new-w8s3"}) {
    kvq_test::EnvGuard env("KVQ_ATTN_DECODE", pick);
    std::printf("KVQ_ATTN_DECODE=%s\n", pick ? pick : "(unset)");
    for (Act act : {Act::kF16, Act::kBF16}) {
      for (int sm : {132, 1}) {
        // MHA, 4 rows of different lengths sharing 5 slots (slot indirection, an unused slot).
        run_attention_case({act, 4, 1, 4, 4, 128, 5, 4100, 0, {3, 0, 4, 1}, {4096, 62, 64, 0}, false}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
        // G = 2, 4, 8 (llama3-8b's G = 4 at head_dim 128), POQ on the diagonal.
        run_attention_case({act, 2, 1, 4, 2, 64, 2, 1200, 0, {1, 0}, {1100, 15}, true}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
        run_attention_case({act, 3, 1, 8, 2, 128, 3, 4200, 0, {2, 0, 1}, {4096, 65, 16}, true}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
        run_attention_case({act, 2, 1, 16, 2, 32, 2, 2100, 0, {0, 1}, {2050, 31}, false}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
        // Sliding windows: 37 keys starting mid-tile, a window longer than the row, POQ.
        run_attention_case({act, 3, 1, 8, 2, 128, 3, 3100, 37, {0, 1, 2}, {3000, 20, 36}, true}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
        run_attention_case({act, 2, 1, 8, 1, 64, 2, 900, 513, {1, 0}, {800, 513}, false}, rng, true,
                           kvq::kern::attention_prefill, "prefill", 1.f, sm);
      }
      // head_dims the tensor-core kernel does not take (fallback to the CUDA-core kernel).
      run_attention_case({act, 2, 1, 4, 2, 40, 2, 300, 0, {0, 1}, {299, 7}, true}, rng, true);
      run_attention_case({act, 1, 1, 8, 8, 120, 1, 200, 0, {0}, {150}, false}, rng, true);
    }
  }
  // MHA with a (row, kv head) pair per SM and >= 32K keys: the default routes it to the
  // CUDA-core kernel (attention_decode.cu's header), new-w8s2 forces the tensor-core one.
  for (const char* pick : {static_cast<const char*>(nullptr), "new-w8s2"}) {
    kvq_test::EnvGuard env("KVQ_ATTN_DECODE", pick);
    for (Act act : {Act::kF16, Act::kBF16})
      run_attention_case({act, 1, 1, 2, 2, 64, 1, 32800, 0, {0}, {32767}, false}, rng, true,
                         kvq::kern::attention_prefill, "prefill", 1.f, 1);
  }
  // Queries that make a few keys dominate (scores spread by 8x): the online max must carry.
  for (Act act : {Act::kF16, Act::kBF16})
    run_attention_case({act, 2, 1, 8, 2, 128, 2, 5000, 0, {0, 1}, {4999, 300}, false}, rng, true,
                       kvq::kern::attention_prefill, "prefill", 8.f);
}

TEST_CASE("gpu kernels: KVQ_ATTN_DECODE with an unknown value is an error status", "[gpu]") {
  kvq::kern::AttentionArgs a;
  a.rows = 1;
  a.n = 1;
  a.n_heads = 4;
  a.kv_heads = 4;
  a.head_dim = 64;
  for (const char* bad : {"mma", "new-w4s9", "OLD"}) {
    kvq_test::EnvGuard env("KVQ_ATTN_DECODE", bad);
    REQUIRE(kvq::kern::attention_decode(Act::kF16, a, 4, 132, nullptr, 0, nullptr) == cudaErrorInvalidValue);
  }
}

TEST_CASE("gpu kernels: bad attention shapes return an error status, not a crash", "[gpu]") {
  kvq::kern::AttentionArgs a;
  a.rows = 1;
  a.n = 1;
  a.n_heads = 4;
  a.kv_heads = 4;
  a.head_dim = 136;  // > kMaxHeadDim
  REQUIRE(kvq::kern::attention_prefill(Act::kF16, a, nullptr) == cudaErrorInvalidValue);
  a.head_dim = 60;  // not a multiple of 8
  REQUIRE(kvq::kern::attention_prefill(Act::kF16, a, nullptr) == cudaErrorInvalidValue);
  a.head_dim = 64;
  a.n = 2;  // decode needs n == 1
  REQUIRE(kvq::kern::attention_decode(Act::kF16, a, 4, 132, nullptr, 0, nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("gpu kernels: fill_uniform is deterministic, in range and not constant", "[gpu]") {
  const size_t n = 100003;
  Dev a(n * 2), b(n * 2);
  CK(kvq::kern::fill_uniform(Act::kF16, a.p, n, 0.5f, 42, nullptr));
  CK(kvq::kern::fill_uniform(Act::kF16, b.p, n, 0.5f, 42, nullptr));
  auto x = download<uint16_t>(a, n), y = download<uint16_t>(b, n);
  REQUIRE(x == y);
  double mean = 0, sq = 0;
  for (auto h : x) {
    const float f = kvq::half_to_float(h);
    REQUIRE(std::fabs(f) <= 0.5f);
    mean += f;
    sq += double(f) * f;
  }
  mean /= n;
  sq /= n;
  // Uniform on [-0.5, 0.5]: mean 0 (std of the mean 0.29/sqrt(n) = 9e-4), variance 1/12.
  REQUIRE(std::fabs(mean) < 5e-3);
  REQUIRE(std::fabs(sq - 1.0 / 12) < 3e-3);
}

// kvq-kvbench's L2 scrub (kern::kv_l2_scrub) must read every 16-byte word of its buffer and
// write nothing but its sink, and that only when a thread's XOR hits the constant. One word
// holding the constant in a zero buffer makes exactly that thread's XOR match, wherever the
// word is: the sink shows the loads reach the first, the last and random words of a buffer
// larger than any grid's stride; a zero buffer leaves the sink's poison.
TEST_CASE("gpu kernels: kv_l2_scrub reads every word, writes only its sink", "[gpu]") {
  const uint64_t seed = kvq_test::test_seed(8);
  std::printf("kv_l2_scrub seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const size_t words = (size_t{48} << 20) / 16 + 7;  // 48 MiB + 7 words: an awkward count
  Dev buf(words * 16), sink(4);
  CK(cudaMemset(buf.p, 0, words * 16));
  CK(kvq::kern::kv_l2_scrub(buf.p, words * 16, sink.as<unsigned>(), nullptr));
  REQUIRE(download<unsigned>(sink, 1)[0] == 0xFFFFFFFFu);  // no match: untouched
  std::vector<size_t> at = {0, words - 1};
  for (int i = 0; i < 4; ++i) at.push_back(rng() % words);
  for (const size_t w : at) {
    const size_t lane = rng() % 4;  // the constant in any of the word's four lanes
    unsigned word[4] = {0, 0, 0, 0};
    word[lane] = 0x9e3779b9u;
    CK(cudaMemcpy(buf.as<char>() + w * 16, word, 16, cudaMemcpyHostToDevice));
    CK(cudaMemset(sink.p, 0xFF, 4));
    CK(kvq::kern::kv_l2_scrub(buf.p, words * 16, sink.as<unsigned>(), nullptr));
    INFO("word " << w << " lane " << lane);
    REQUIRE(download<unsigned>(sink, 1)[0] == 0x9e3779b9u);
    const auto back = download<unsigned>(buf, words * 4);  // read-only: the buffer is as written
    size_t nonzero = 0;
    for (const unsigned u : back) nonzero += u != 0;
    REQUIRE(nonzero == 1);
    REQUIRE(back[w * 4 + lane] == 0x9e3779b9u);
    CK(cudaMemset(buf.as<char>() + w * 16, 0, 16));
  }
}
