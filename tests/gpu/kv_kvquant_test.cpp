// KVQuant's own decode kernels, the folded tensor-core builds (kernels/kv_decode_kvquant_fold.cu:
// kvq-fold2, the default at G = 1, and kvq-foldm, the default at G > 1), each forced by
// KVQ_KV_DECODE, against attention in fp64 over the CPU codec's dequantized (simulated) cache,
// RoPE applied in fp64 to the pre-RoPE keys. kvq-fold, kvq-mma and kvq-stream were retired in
// session 7 (their cases with them; the refusal of their values is tested below). From a printed
// seed (KVQ_TEST_SEED replays): random rows N(0, 1) with an outlier channel (x8), every third
// token on a 1/8 grid (ties), one constant token; 3 slots streamed in uneven appends
// (lengths 300, 129, 10) read by 4 batch rows {0, 1, 2, 0}; MHA and G = 2, 3, 4, 8; 4 and 2
// bits; sparse outliers at 1% (records staged in shared memory) and 5% (past the staging
// cap: read from global memory), none; sinks 0, 1, 4; a calibrated LUT, key ranges and
// Q-Norm; a long slot (20000 tokens: chunks of > 1000 tokens, so each lane's RoPE recurrence
// re-anchors) ; outputs poisoned with NaN bits first.
//
// Tolerance of one output element (the derivation of kv_packed_test.cpp's attention_tolerance,
// written for h42's CUDA-core kernel, retired after dfabb0b; the tensor-core builds keep its
// fp32 steps, so it is their base, and add the fp16 terms below):
//  - K', V' are the CPU's fp32 values bit for bit (same stored codes, LUT, (half, mid) and
//    the same fma(fma(lut, half, mid), qa, qb); sinks and outliers from the same fp16 bits).
//  - score = scale * q . R_t k: 16 sequential fmas per lane, then a tree over the token's 8
//    lanes: <= hd roundings, hd 2^-24 A_t (A_t = sum |q_i k_ti|); RoPE: (cos, sin) from an
//    angle reduced in double (2^-24 2 pi), sincosf (<= 2 ulp), then <= 31 steps of the fp32
//    angle-addition recurrence (4 roundings each): <= 2^-17 relative per component, so
//    2^-17 sum |q_i| (|k_i| + |k_partner(i)|) more.
//  - softmax weights: 2 max|err s| + (L + 64) 2^-24; o = sum p v: (2 delta + (L + 64) 2^-23)
//    max|v|; the fp16 output rounding 2^-11 |o|.
// h45's fp32-dequantizing builds (kvq-mma, kvq-stream; retired in session 7) added these two
// terms; the folded builds keep the first (the query's fp16 rounding, 2^-9 B):
//  - scores: the query rotated by R(j0)^T and each key pair by R(u) in fp32, both rounded to
//    fp16 (2^-11 relative each), products exact, fp32 accumulation; per rotate-half pair
//    |q'_i k'_i| + |q'_p k'_p| <= |q_pair| |k_pair| <= (|q_i| + |q_p|)(|k_i| + |k_p|) (rotations
//    keep norms), so 2^-10 B + O(2^-18) B with B = sum over pairs of that product: the test
//    adds 2^-9 B to delta (a factor 2 over the leading term; it also covers an outlier
//    channel's dense value, which the kernel rounds before the fp32 correction removes it).
//  - values: v = fma(lut, half_t, mid_t) and p rounded to fp16 (2^-11 each), so
//    2^-10 sum p |v_dense| / l <= 2^-10 max |v| over the head's tokens and channels (the dense
//    value lies in its token's range): the test adds 2^-9 max|v| of the head.
// The folded builds (h51's tables, kernels/kv_decode_kvquant_fold.cu; derived for h51's kvq-fold,
// which kvq-fold2 and kvq-foldm round no more than, see their cases) round other things to
// fp16, so their cases add instead:
//  - keys: each R(u)-rotated component is two HFMA2 over fp16 L values, fp16 coefficients
//    (cos a, sin a with a = qa half_c) and an fp16 offset (from b = qa mid_c + qb): <= 4
//    roundings of terms bounded by S = |a_i| + |a_p| (|L| <= 1) and 3 of terms bounded by
//    |b_i| + |b_p|, so <= 2^-9 (M_i + M_p) per component with M_c = |a_c| + |b_c|; times
//    |q'_i| + |q'_p| <= sqrt(2) (|q_i| + |q_p|): sqrt(2) 2^-9 C with C = sum over pairs of
//    (|q_i| + |q_p|)(M_i + M_p). The test adds 2^-7 C (margin 2.8) on top of the 2^-9 B of the
//    query rounding. M_c = max over the slot's tokens |k'_c| (the frozen range's ends are
//    codes +-1 of the +-1-ended LUT, so some token dequantizes to b +- a), and with given
//    ranges also |qa| max(|lo|, |hi|) + |qb|.
//  - values: L (fp16) and p w_t with w_t = qa half_t (fp16), the m_t = qa mid_t + qb term in
//    fp32: 2^-10 sum p |w_t L| / l, and |w_t L| = |v - m_t| <= |v| + |m_t| <= 2 max|v| (m_t is
//    the mean of the token's dense extremes, codes +-1): 2^-9 max|v|; the test adds 2^-8
//    max|v| of the head (factor 2), and L 2^-24 for p w_t that fall into fp16 subnormals.
//  - key outliers (pass 1b, h65; KVQ_KVQ_KOUT=new, the default): R(j) = R(j0) R(u) with the
//    stage anchor R(j0) from setup (angle reduced in double, sincosf: <= 2^-22 per component)
//    and R(u), u = j - j0 <= 63, from sincosf of the fp32 angle u f (f = inv_freq <= 1 rounded
//    to fp32, 2^-24 relative, and the product rounded, 2^-24: angle error <= 63 2^-23 < 2^-17;
//    sincosf <= 2 ulp), composed by two fmaf (2 roundings of terms <= 1). An angle error d moves
//    (cos, sin) along the unit circle by <= |d| per component, so each of c, s is off by
//    e <= 2^-17.02 + 1.42 (2^-23 + 2^-22) + 2^-23 < 2^-16.9; the test uses e = 2^-16. The record's
//    correction scale (q_i c + q_p s) delta is then off by <= scale e (|q_i| + |q_p|) |delta|,
//    |delta| = |k_out - k_dense| <= 2 M_c (M_c bounds the outlier value and the dense value, as
//    above); summed over a token's outlier channels (at most one per channel and pair member):
//    <= 2 e C = 2^-15 C, added to delta for every token. (KVQ_KVQ_KOUT=old, anchor() per record
//    with the angle reduced in double, is <= 2^-22 per component: inside the same term.)
//  - KVQ_KVQ_STAGE=1 (h82): the same loaded values and arithmetic (cp.async staging only), so
//    the same bound; and bit-identical to 0 where no cross-warp fp32 atomic sum is order-
//    dependent (its own case below).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "kernels/kv_decode_kvquant.cuh"
#include "lib/codecs/codec.h"
#include "lib/cuda/packed_cache.h"
#include "lib/rope.h"
#include "tests/catch.h"
#include "tests/gpu/kv_test_support.h"
#include "tests/support/test_support.h"

namespace {

using namespace kvq;
using kvq_test::EnvGuard;
using kvq_test::make_rows;
using codecs::KvSide;

constexpr int kHd = 128;

struct Case {
  std::string spec;
  int H = 2, n_heads = 2;
  std::vector<std::vector<int>> pieces = {{200, 1, 1, 37, 61}, {129}, {7, 1, 1, 1}};
  const codecs::CodecParams* kg = nullptr;
  const codecs::CodecParams* vg = nullptr;
  bool outlier_channel = true;
  float qscale = 1.f;
  // > 0: value rows with this many planted outlier channels per head (every hd / n-th channel
  // from 5, x8), as kvq-kvbench plants 4: a warp step of tokens then holds its first value
  // records in several channels (several groups for warp_channel_add). 0: make_rows.
  int v_planted = 0;
};

// Rows as make_rows (N(0, 1), every third token on a 1/8 grid, token 2 constant) with n planted
// outlier channels x8 per head (channels 5 + k hd / n).
std::vector<float> make_rows_planted(std::mt19937_64& rng, int T, int dim, int hd, int n) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(T) * dim);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < dim; ++c) {
      float v = nd(rng);
      if ((c % hd) % (hd / n) == 5) v *= 8.f;
      if (t % 3 == 1) v = std::nearbyint(v * 8.f) / 8.f;
      if (t == 2) v = 0.75f;
      x[static_cast<size_t>(t) * dim + c] = v;
    }
  return x;
}

// Returns the worst error / tolerance over every output element. kernel: the
// KVQ_KV_DECODE value, "kvq-fold2" or "kvq-foldm" (the bound adds the fold's fp16 terms
// derived in the header comment).
double run_case(const Case& c, uint64_t seed, const char* kernel) {
  EnvGuard env("KVQ_KV_DECODE", kernel);
  std::mt19937_64 rng(seed);
  const codecs::KvShape ks{c.H, kHd, c.n_heads};
  auto kc = codecs::make_codec(codecs::parse_codec_spec(c.spec), KvSide::kKey, 0, ks, c.kg);
  auto vc = codecs::make_codec(codecs::parse_codec_spec(c.spec), KvSide::kValue, 0, ks, c.vg);
  const int dim = c.H * kHd;
  int max_tokens = 0;
  for (const auto& ps : c.pieces) {
    int T = 0;
    for (int n : ps) T += n;
    max_tokens = std::max(max_tokens, T);
  }
  RopeConfig rc;
  rc.theta = 10000.0;
  const std::vector<double> inv_freq = rope_inv_freq(rc, kHd);
  cuda::PackedKvCache gpu(*kc, *vc, 3, max_tokens, c.n_heads, inv_freq);
  std::vector<std::vector<float>> K(3), V(3);
  std::vector<std::unique_ptr<codecs::KvCache>> ck(3), cv(3);
  for (int slot = 0; slot < 3; ++slot) {
    int T = 0;
    for (int n : c.pieces[slot]) T += n;
    K[slot] = make_rows(rng, T, dim, kHd, c.outlier_channel);
    V[slot] = c.v_planted > 0 ? make_rows_planted(rng, T, dim, kHd, c.v_planted)
                              : make_rows(rng, T, dim, kHd, c.outlier_channel && slot != 1);
    ck[slot] = kc->make_cache();
    cv[slot] = vc->make_cache();
    int pos = 0;
    for (int n : c.pieces[slot]) {
      const float* kp = K[slot].data() + static_cast<size_t>(pos) * dim;
      const float* vp = V[slot].data() + static_cast<size_t>(pos) * dim;
      gpu.append_host(slot, kp, vp, n, dim);
      ck[slot]->append(ConstMatrixView{kp, n, dim, dim});
      cv[slot]->append(ConstMatrixView{vp, n, dim, dim});
      pos += n;
    }
  }
  const std::vector<int> rows = {0, 1, 2, 0};
  const int R = static_cast<int>(rows.size());
  gpu.prepare(rows);
  REQUIRE(gpu.decode_uses_kvquant_kernel());
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> qh(static_cast<size_t>(R) * c.n_heads * kHd);
  for (auto& h : qh) h = float_to_half(c.qscale * nd(rng));
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMemcpy(dq, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(dout, 0xFF, qh.size() * 2) == cudaSuccess);  // NaN poison
  gpu.decode(dq, dout);
  std::vector<uint16_t> oh(qh.size());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(oh.data(), dout, oh.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(dq);
  cudaFree(dout);

  const int G = c.n_heads / c.H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(kHd));
  // kvq-fold2 rounds the same terms or fewer (tests below): kvq-fold's bound.
  const bool fold = std::string(kernel).rfind("kvq-fold", 0) == 0;
  double worst = 0;
  for (int r = 0; r < R; ++r) {
    const int slot = rows[r];
    const int L = static_cast<int>(gpu.size(slot));
    std::vector<float> kd(static_cast<size_t>(L) * dim), vd(kd.size());
    ck[slot]->dequantize(0, L, MatrixView{kd.data(), L, dim, dim});
    cv[slot]->dequantize(0, L, MatrixView{vd.data(), L, dim, dim});
    std::vector<double> cs(static_cast<size_t>(L) * kHd);  // (cos, sin) of t * inv_freq[i]
    for (int t = 0; t < L; ++t)
      for (int i = 0; i < kHd / 2; ++i) {
        cs[(static_cast<size_t>(t) * kHd / 2 + i) * 2] = std::cos(t * inv_freq[i]);
        cs[(static_cast<size_t>(t) * kHd / 2 + i) * 2 + 1] = std::sin(t * inv_freq[i]);
      }
    std::vector<double> kr(kd.begin(), kd.end());
    for (int t = 0; t < L; ++t)
      for (int h = 0; h < c.H; ++h)
        for (int i = 0; i < kHd / 2; ++i) {
          double* a = &kr[static_cast<size_t>(t) * dim + h * kHd + i];
          double* b = a + kHd / 2;
          const double co = cs[(static_cast<size_t>(t) * kHd / 2 + i) * 2];
          const double sn = cs[(static_cast<size_t>(t) * kHd / 2 + i) * 2 + 1];
          const double x0 = *a, x1 = *b;
          *a = x0 * co - x1 * sn;
          *b = x1 * co + x0 * sn;
        }
    // kvq-fold: M_c (header comment) per channel of the slot.
    std::vector<double> M(dim, 0.0);
    for (int t = 0; t < L; ++t)
      for (int d = 0; d < dim; ++d) M[d] = std::max(M[d], static_cast<double>(std::fabs(kd[static_cast<size_t>(t) * dim + d])));
    if (c.kg && c.kg->tensor("k_lo")) {
      const double qa = c.kg->number("qnorm_scale", 1.0), qb = c.kg->number("qnorm_offset", 0.0);
      const auto& lo = *c.kg->tensor("k_lo");
      const auto& hi = *c.kg->tensor("k_hi");
      for (int d = 0; d < dim; ++d)
        M[d] = std::max(M[d], std::fabs(qa) * std::max(std::fabs(lo[d]), std::fabs(hi[d])) + std::fabs(qb));
    }
    for (int qi = 0; qi < c.n_heads; ++qi) {
      const int h = qi / G;
      double vmax_all = 0;  // the head's largest |v|: bounds |half_t lut| + |mid_t| of every token
      for (int t = 0; t < L; ++t)
        for (int d = 0; d < kHd; ++d)
          vmax_all = std::max(vmax_all, static_cast<double>(std::fabs(vd[static_cast<size_t>(t) * dim + h * kHd + d])));
      const uint16_t* qrow = qh.data() + (static_cast<size_t>(r) * c.n_heads + qi) * kHd;
      std::vector<double> sc(L);
      double m = -INFINITY, delta = 0;
      for (int t = 0; t < L; ++t) {
        double dot = 0, A = 0, Ar = 0, B = 0, C = 0;
        const size_t base = static_cast<size_t>(t) * dim + h * kHd;
        for (int i = 0; i < kHd; ++i) {
          const double qv = half_to_float(qrow[i]);
          dot += qv * kr[base + i];
          A += std::fabs(qv * kr[base + i]);
          const int partner = i < kHd / 2 ? i + kHd / 2 : i - kHd / 2;
          Ar += std::fabs(qv) * (std::fabs(kd[base + i]) + std::fabs(kd[base + partner]));
          if (i < kHd / 2) {
            B += (std::fabs(qv) + std::fabs(half_to_float(qrow[partner]))) *
                 (std::fabs(kd[base + i]) + std::fabs(kd[base + partner]));
            C += (std::fabs(qv) + std::fabs(half_to_float(qrow[partner]))) * (M[h * kHd + i] + M[h * kHd + partner]);
          }
        }
        sc[t] = dot * scale;
        m = std::max(m, sc[t]);
        delta = std::max(delta, scale * (A * kHd * std::ldexp(1.0, -24) + Ar * std::ldexp(1.0, -17) +
                                         B * std::ldexp(1.0, -9) +
                                         (fold ? C * (std::ldexp(1.0, -7) + std::ldexp(1.0, -15)) : 0.0)));
      }
      double l = 0;
      for (int t = 0; t < L; ++t) l += sc[t] = std::exp(sc[t] - m);
      for (int d = 0; d < kHd; ++d) {
        double o = 0, vmax = 0;
        for (int t = 0; t < L; ++t) {
          const double v = vd[static_cast<size_t>(t) * dim + h * kHd + d];
          o += sc[t] * v;
          vmax = std::max(vmax, std::fabs(v));
        }
        o /= l;
        const double got = half_to_float(oh[(static_cast<size_t>(r) * c.n_heads + qi) * kHd + d]);
        REQUIRE(std::isfinite(got));
        const double tol = std::ldexp(1.0, -11) * std::fabs(o) +
                           (2 * delta + (L + 64) * std::ldexp(1.0, -23)) * vmax +
                           std::ldexp(1.0, fold ? -8 : -9) * vmax_all + (fold ? L * std::ldexp(1.0, -24) : 0.0) + 1e-7;
        const double err = std::fabs(got - o);
        if (err > tol) {
          INFO(kernel << ": row " << r << " head " << qi << " dim " << d << ": got " << got << ", ref " << o << ", tol "
                      << tol << " (" << c.spec << ", kv heads " << c.H << ", heads " << c.n_heads << ")");
          REQUIRE(err <= tol);
        }
        worst = std::max(worst, err / tol);
      }
    }
  }
  return worst;
}

void report(const Case& c, uint64_t seed, double worst, const char* kernel) {
  std::printf("kvquant kernel (%s) %s, kv_heads %d, heads %d: decode max err %.2f of tolerance, seed %llu\n",
              kernel, c.spec.c_str(), c.H, c.n_heads, worst, static_cast<unsigned long long>(seed));
}

void basic_cases(const char* kernel) {
  const uint64_t seed = kvq_test::test_seed(4201);
  for (const std::string spec : {"kvquant:bits=4", "kvquant:bits=2", "kvquant:bits=4,outliers=0.05,sink=4",
                                 "kvquant:bits=2,outliers=0,sink=0"})
    for (const auto& hs : std::vector<std::pair<int, int>>{{2, 2}, {2, 4}, {1, 3}, {2, 8}, {1, 8}}) {
      Case c;
      c.spec = spec;
      c.H = hs.first;
      c.n_heads = hs.second;
      report(c, seed, run_case(c, seed, kernel), kernel);
    }
}

void calibrated_cases(const char* kernel) {
  const uint64_t seed = kvq_test::test_seed(4202);
  for (int bits : {4, 2}) {
    const int H = 2, n = 1 << bits;
    codecs::CodecParams kg, vg;
    std::vector<float> lut(n);
    for (int i = 0; i < n; ++i) {  // denser near 0: sign(u) |u|^1.5 of the uniform grid
      const double u = -1.0 + 2.0 * i / (n - 1);
      lut[i] = static_cast<float>((u < 0 ? -1 : 1) * std::pow(std::fabs(u), 1.5));
    }
    kg.tensors["lut"] = lut;
    vg.tensors["lut"] = lut;
    std::vector<float> lo(H * kHd), hi(H * kHd);
    for (int c = 0; c < H * kHd; ++c) {
      lo[c] = c % kHd == 5 ? -12.f : -2.2f;
      hi[c] = c % kHd == 5 ? 12.f : 2.5f;
    }
    kg.tensors["k_lo"] = lo;
    kg.tensors["k_hi"] = hi;
    kg.numbers["qnorm_scale"] = 1.03;
    kg.numbers["qnorm_offset"] = -0.01;
    vg.numbers["qnorm_scale"] = 0.98;
    vg.numbers["qnorm_offset"] = 0.002;
    for (int heads : {2, 8}) {
      Case c;
      c.spec = "kvquant:bits=" + std::to_string(bits);
      c.H = H;
      c.n_heads = heads;
      c.kg = &kg;
      c.vg = &vg;
      report(c, seed, run_case(c, seed, kernel), kernel);
    }
  }
}

void long_cases(const char* kernel) {
  // 8 kv heads x 4 rows: the plan gives chunks of > 1000 tokens on a GPU with <= 132 SMs, so
  // a lane walks > 64 recurrence steps (re-anchored every 32). No outlier channel and queries
  // x4 keep the bound meaningful over 20000 tokens (peaked softmax, output O(1)); sparse
  // outliers still occur (1% by the frozen ranges).
  const uint64_t seed = kvq_test::test_seed(4203);
  for (const std::string spec : {"kvquant:bits=4", "kvquant:bits=2,sink=3"}) {
    Case c;
    c.spec = spec;
    c.H = 8;
    c.n_heads = 8;
    c.pieces = {{4096, 4096, 4096, 4096, 3616}, {3000}, {1}};
    c.outlier_channel = false;
    c.qscale = 4.f;
    report(c, seed, run_case(c, seed, kernel), kernel);
  }
}

}  // namespace

// The folded builds (kernels/kv_decode_kvquant_fold.cu) with their bound (header comment). h51's
// kvq-fold had these three cases (H100, 2026-11-23, 28872d5: 69814 assertions, all 0.00 of the
// bound; the 2^-7 C key term is a worst case over 7 roundings); retired in session 7.
// kvq-fold2 (h54, run_fold2): n-tile nt anchored at j0 + 8 nt (anchor composed in fp32 from R(j0)
// and R(8 nt): ~2^-22 relative, inside the 2^-17 RoPE term), the lane's coefficients at u = gid,
// the offset (cos b_i - sin b_p, ...) an fp16 mma operand (one rounding, bounded by |b_i| + |b_p|),
// each B component hfma2(L', c', hmul2(L, c)): L, L', c, c' and the two results rounded, terms
// bounded by S = |a_i| + |a_p|. That is no more than the 4 roundings of S-terms and 3 of b-terms
// kvq-fold's 2^-7 C counts, so the same bound. Same cases (MHA and G = 2, 3, 4, 8: anchors per A
// group 8, 4, 2, 2, 1; partial n-tiles and stages at the slot ends).
TEST_CASE("kv kvquant fold2 kernel: 4/2 bits, outliers, sinks, MHA and GQA == simulated", "[gpu][kv][kvquant]") {
  basic_cases("kvq-fold2");
}
TEST_CASE("kv kvquant fold2 kernel: calibrated LUT, key ranges and Q-Norm == simulated", "[gpu][kv][kvquant]") {
  calibrated_cases("kvq-fold2");
}
TEST_CASE("kv kvquant fold2 kernel: long slot == simulated", "[gpu][kv][kvquant]") { long_cases("kvq-fold2"); }
// kvq-foldm (h56, run_foldm): kvq-fold's key pass transposed (tokens as the mma's M, the query
// heads as N): every A element is the fp16 value kvq-fold puts in its B (same records, same two
// HFMA2, same roundings) and B is kvq-fold's rotated query, so the products and their fp32 sums
// are the same terms (only the order of the mma's fp32 accumulation differs, inside the fp32
// term of the bound); the 4-bit value table is kvq-fold2's lane-private copy of the same fp16
// entries. So kvq-fold's bound. Same cases: MHA (only column 0 of the 8 N columns used), G = 2,
// 3 (heads 3 of 4 columns), 4, 8 (all columns); partial m-tiles and stages at the slot ends.
TEST_CASE("kv kvquant foldm kernel: 4/2 bits, outliers, sinks, MHA and GQA == simulated", "[gpu][kv][kvquant]") {
  basic_cases("kvq-foldm");
}
TEST_CASE("kv kvquant foldm kernel: calibrated LUT, key ranges and Q-Norm == simulated", "[gpu][kv][kvquant]") {
  calibrated_cases("kvq-foldm");
}
TEST_CASE("kv kvquant foldm kernel: long slot == simulated", "[gpu][kv][kvquant]") { long_cases("kvq-foldm"); }
// KVQ_KVQ_KOUT=old (h65): the key-outlier pass's per-record anchor() in double, the path before
// the stage-anchor composition; same cases and bound (header comment, key outliers) for both builds.
TEST_CASE("kv kvquant fold2/foldm kernels, KVQ_KVQ_KOUT=old: outliers, long slot == simulated", "[gpu][kv][kvquant]") {
  EnvGuard env("KVQ_KVQ_KOUT", "old");
  basic_cases("kvq-foldm");
  long_cases("kvq-foldm");
  long_cases("kvq-fold2");
}

namespace {

// Value outliers in several channels (h72): warp_channel_add sums the value-outlier corrections
// of lanes sharing a channel by one gather per warp step where that takes fewer shuffle levels,
// else by a butterfly per shared channel (the only path since h81; the butterfly-only build and
// its switch KVQ_KVQ_VSUM are last in f0c4e67). Each channel's sum has the same terms in another
// fp32 order (inside the bound's fp32 terms), so the same bound. Data for both branches:
// basic_cases' one x8 channel puts a warp step's first records in one channel (one group: the
// butterfly), its 5% outliers and the long slot (no planted channel) spread them (many small
// groups and singletons: the gather); the planted cases below put them in 2, 4 or 8 channels per
// head, as kvq-kvbench's data does (4).
void planted_cases(const char* kernel) {
  const uint64_t seed = kvq_test::test_seed(4204);
  for (const std::string spec : {"kvquant:bits=4", "kvquant:bits=2,sink=1", "kvquant:bits=4,outliers=0.03"})
    for (int planted : {2, 4, 8})
      for (const auto& hs : std::vector<std::pair<int, int>>{{2, 2}, {2, 4}, {1, 3}, {1, 8}}) {
        Case c;
        c.spec = spec;
        c.H = hs.first;
        c.n_heads = hs.second;
        c.v_planted = planted;
        c.pieces = {{300, 1, 1, 211, 64}, {129}, {33, 1}};
        report(c, seed, run_case(c, seed, kernel), kernel);
      }
}

}  // namespace

TEST_CASE("kv kvquant fold2/foldm kernels: value outliers in 2..8 planted channels == simulated", "[gpu][kv][kvquant]") {
  planted_cases("kvq-foldm");
  planted_cases("kvq-fold2");
}

// KVQ_KVQ_STAGE=1 (h82): the builds whose pass 1b key code words (and inv_freq as fp32) and pass
// 3 value tiles are copied into shared memory by cp.async (kernels/kv_decode_kvquant_fold.cu, VAR
// | kStage). Same loaded values, same arithmetic: the same bound. Built for 2 / 4 bits without
// Q-Norm at G = 1 (kvq-fold2) and G = 3, 4 (kvq-foldm); the other cases here (G = 2, 8; the
// calibrated ones, which have Q-Norm) run the default build under the switch. Basic and planted
// cases: chunks < 1024 tokens, so pass 3's second buffer sits at the end of the records' space;
// the long slot (chunks of ~1280 tokens on an H100) puts it in st0 at 4 bits and 2 bits. Key
// code words: staged in all of these (2 x records <= the records' space); the parity case below
// also takes the long slot at 5%, where they are read from global memory.
TEST_CASE("kv kvquant fold2/foldm kernels, KVQ_KVQ_STAGE=1: basic, long slot, planted channels == simulated",
          "[gpu][kv][kvquant]") {
  EnvGuard env("KVQ_KVQ_STAGE", "1");
  std::printf("KVQ_KVQ_STAGE=1:\n");
  for (const char* kernel : {"kvq-fold2", "kvq-foldm"}) {
    basic_cases(kernel);
    long_cases(kernel);
    planted_cases(kernel);
  }
}

namespace {

// Value rows as make_rows, then per (token, head) the extreme of smaller magnitude set to minus
// the other (a constant row: its next channel), so that every token's range is [-A, A]: the
// codec's mid 0.5f (max + min) is exactly 0.
std::vector<float> make_rows_centered(std::mt19937_64& rng, int T, int dim, int hd) {
  std::vector<float> x = make_rows(rng, T, dim, hd, true);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < dim / hd; ++h) {
      float* r = x.data() + static_cast<size_t>(t) * dim + h * hd;
      const int imax = static_cast<int>(std::max_element(r, r + hd) - r);
      const int imin = static_cast<int>(std::min_element(r, r + hd) - r);
      if (imax == imin)
        r[(imax + 1) % hd] = -r[imax];
      else if (r[imax] >= -r[imin])
        r[imin] = -r[imax];
      else
        r[imax] = -r[imin];
    }
  return x;
}

// Decodes one cache under KVQ_KVQ_STAGE=0 and 1 (kernel forced by KVQ_KV_DECODE) and returns
// the number of fp16 outputs that differ in any bit. Key spec `kspec` (outliers, sinks), value
// spec the same bits with no outliers and one sink, value rows centred (make_rows_centered).
int stage_parity(int bits, const char* kspec_tail, int H, int n_heads, const std::vector<std::vector<int>>& pieces,
                 const char* kernel, uint64_t seed) {
  EnvGuard dec("KVQ_KV_DECODE", kernel);
  std::mt19937_64 rng(seed);
  const codecs::KvShape ks{H, kHd, n_heads};
  const std::string b = "kvquant:bits=" + std::to_string(bits);
  auto kc = codecs::make_codec(codecs::parse_codec_spec(b + kspec_tail), KvSide::kKey, 0, ks);
  auto vc = codecs::make_codec(codecs::parse_codec_spec(b + ",outliers=0,sink=1"), KvSide::kValue, 0, ks);
  const int dim = H * kHd;
  const int S = static_cast<int>(pieces.size());
  int max_tokens = 0;
  for (const auto& ps : pieces) {
    int T = 0;
    for (int n : ps) T += n;
    max_tokens = std::max(max_tokens, T);
  }
  RopeConfig rc;
  rc.theta = 10000.0;
  cuda::PackedKvCache gpu(*kc, *vc, S, max_tokens, n_heads, rope_inv_freq(rc, kHd));
  for (int slot = 0; slot < S; ++slot) {
    int T = 0;
    for (int n : pieces[slot]) T += n;
    const std::vector<float> K = make_rows(rng, T, dim, kHd, true);
    const std::vector<float> V = make_rows_centered(rng, T, dim, kHd);
    int pos = 0;
    for (int n : pieces[slot]) {
      gpu.append_host(slot, K.data() + static_cast<size_t>(pos) * dim, V.data() + static_cast<size_t>(pos) * dim, n,
                      dim);
      pos += n;
    }
  }
  std::vector<int> rows;
  for (int slot = 0; slot < S; ++slot) rows.push_back(slot);
  rows.push_back(0);
  gpu.prepare(rows);
  REQUIRE(gpu.decode_uses_kvquant_kernel());
  const size_t n = rows.size() * static_cast<size_t>(n_heads) * kHd;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> qh(n);
  for (auto& h : qh) h = float_to_half(nd(rng));
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, n * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, n * 2) == cudaSuccess);
  REQUIRE(cudaMemcpy(dq, qh.data(), n * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  std::vector<uint16_t> out[2];
  for (int st = 0; st < 2; ++st) {
    EnvGuard env("KVQ_KVQ_STAGE", st ? "1" : "0");
    REQUIRE(cudaMemset(dout, 0xFF, n * 2) == cudaSuccess);  // NaN poison
    gpu.decode(dq, dout);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    out[st].resize(n);
    REQUIRE(cudaMemcpy(out[st].data(), dout, n * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  }
  cudaFree(dq);
  cudaFree(dout);
  int differ = 0, nan = 0;
  for (size_t i = 0; i < n; ++i) {
    differ += out[0][i] != out[1][i];
    nan += !std::isfinite(half_to_float(out[1][i]));
  }
  CHECK(nan == 0);
  std::printf("kvquant stage parity (%s) bits %d%s, kv_heads %d, heads %d: %d of %zu outputs differ, seed %llu\n",
              kernel, bits, kspec_tail, H, n_heads, differ, n, static_cast<unsigned long long>(seed));
  return differ;
}

}  // namespace

// KVQ_KVQ_STAGE=1 against 0 on the same cache, bit for bit. Why they must be equal: the staged
// build loads the same words (key code words, value codes and meta by cp.async instead of
// global loads, inv_freq converted to fp32 by the same static_cast) and keeps every operation
// and its order per thread, so each thread computes the same bits; the plan and grid are the
// same. What neither build orders: fp32 shared atomics from different warps (pass 3's sum p m
// per head, the value-outlier and multi-sink corrections), whose sum can round differently from
// run to run in either build. So these caches make them order-free: value rows with mid
// exactly 0 (each sum p m adds zeros), no value outliers, one sink (each correction element
// added once). The key side keeps its outliers and its sink: 1% and, in the small slots, 5%
// have the code words staged; the long slot at 5% (~8,200 records per 1280-token chunk, more
// than half the records' space) reads them from global memory. Small slots (chunks < 1024: pass 3's second
// buffer in the records' space) and a long slot (4 rows of 8 kv heads, as long_cases: chunks
// of 1280 tokens on a 132-SM GPU, G = 1 and 4, so the buffer is in st0); both
// KVQ_KVQ_KOUT paths; every shape here has a staged build (stage_built).
TEST_CASE("kv kvquant fold2/foldm kernels: KVQ_KVQ_STAGE=1 bit-identical to 0", "[gpu][kv][kvquant]") {
  const uint64_t seed = kvq_test::test_seed(4205);
  const std::vector<std::vector<int>> small = {{300, 1, 1, 211, 64}, {129}, {33, 1}};
  const std::vector<std::vector<int>> big = {{4096, 4096, 4096, 4096, 3616}, {3000}, {1}};
  for (const char* kout : {"new", "old"}) {
    EnvGuard env("KVQ_KVQ_KOUT", kout);
    for (int bits : {4, 2})
      for (const char* tail : {",outliers=0.01,sink=1", ",outliers=0.05,sink=1"})
        for (const auto& hs : std::vector<std::pair<int, int>>{{2, 2}, {2, 8}, {1, 3}}) {
          const bool foldm = hs.second != hs.first;
          const char* kernel = foldm ? "kvq-foldm" : "kvq-fold2";
          REQUIRE(kern::kvquant_decode::stage_built(bits, hs.second / hs.first, false, foldm));
          INFO("KVQ_KVQ_KOUT=" << kout);
          CHECK(stage_parity(bits, tail, hs.first, hs.second, small, kernel, seed) == 0);
        }
    for (int bits : {4, 2})
      for (const char* tail : {",outliers=0.01,sink=1", ",outliers=0.05,sink=1"}) {
        CHECK(stage_parity(bits, tail, 8, 8, big, "kvq-fold2", seed) == 0);
        CHECK(stage_parity(bits, tail, 8, 32, big, "kvq-foldm", seed) == 0);
      }
  }
  // Where no staged build exists the switch runs the default one (the same outputs trivially).
  CHECK_FALSE(kern::kvquant_decode::stage_built(3, 1, false, false));
  CHECK_FALSE(kern::kvquant_decode::stage_built(4, 1, true, false));
  CHECK_FALSE(kern::kvquant_decode::stage_built(4, 2, false, true));
  CHECK_FALSE(kern::kvquant_decode::stage_built(4, 8, false, true));
  CHECK_FALSE(kern::kvquant_decode::stage_built(4, 4, false, false));
}

// h42's CUDA-core kernel (KVQ_KV_DECODE=kvq-fast) had its own three cases here, retired with it
// after dfabb0b; h45's three-pass build (kvq-mma) three more and h47's one-pass build
// (kvq-stream) four more (one with KVQ_KVQ_STREAM_SPLITS=1), retired in session 7.

TEST_CASE("kv kvquant kernel: the default where it fits; 3 bits, bf16, KVQ_KV_DECODE=general keep the general one",
          "[gpu][kv][kvquant]") {
  const codecs::KvShape ks{2, kHd, 4};
  RopeConfig rc;
  rc.theta = 10000.0;
  const std::vector<double> inv_freq = rope_inv_freq(rc, kHd);
  std::vector<float> x(static_cast<size_t>(5) * 2 * kHd, 0.5f);
  for (const std::string spec : {"kvquant:bits=3", "kvquant:bits=4"}) {
    auto kc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kKey, 0, ks);
    auto vc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kValue, 0, ks);
    cuda::PackedKvCache gpu(*kc, *vc, 1, 8, 4, inv_freq);
    gpu.append_host(0, x.data(), x.data(), 5, 2 * kHd);
    gpu.prepare({0});
    for (const char* value : {"kvq-fold2", "kvq-foldm", "", static_cast<const char*>(nullptr)}) {
      EnvGuard env("KVQ_KV_DECODE", value);
      CHECK(gpu.decode_uses_kvquant_kernel() == (spec == "kvquant:bits=4"));
      CHECK_FALSE(gpu.decode_uses_kvquant_kernel(true));
    }
    EnvGuard env("KVQ_KV_DECODE", "general");
    CHECK_FALSE(gpu.decode_uses_kvquant_kernel());
  }
}

// The default routing is what packed_cache.cpp's header says (h62 noted that only forced builds
// were tested): unset KVQ_KV_DECODE gives kvq-fold2 at G = 1 and kvq-foldm at every G > 1, at 2
// and 4 bits; a forced build holds at every G; general keeps the general kernel. The name comes
// from the function decode() itself resolves the build with (packed_cache.cpp,
// resolve_kvquant_build). Also: KVQ_KVQ_KOUT accepts old / new / unset and KVQ_KVQ_STAGE 0 / 1 /
// unset, anything else is an InvalidArgument from decode() naming the value.
TEST_CASE("kv kvquant kernel: default build is kvq-fold2 at G = 1, kvq-foldm at G > 1", "[gpu][kv][kvquant]") {
  RopeConfig rc;
  rc.theta = 10000.0;
  const std::vector<double> inv_freq = rope_inv_freq(rc, kHd);
  for (const std::string spec : {"kvquant:bits=4", "kvquant:bits=2"})
    for (const auto& hs : std::vector<std::pair<int, int>>{{2, 2}, {1, 1}, {2, 4}, {1, 3}, {3, 15}, {2, 8}, {1, 8}}) {
      const codecs::KvShape ks{hs.first, kHd, hs.second};
      auto kc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kKey, 0, ks);
      auto vc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kValue, 0, ks);
      cuda::PackedKvCache gpu(*kc, *vc, 1, 8, hs.second, inv_freq);
      std::vector<float> x(static_cast<size_t>(5) * hs.first * kHd, 0.5f);
      gpu.append_host(0, x.data(), x.data(), 5, hs.first * kHd);
      gpu.prepare({0});
      const int G = hs.second / hs.first;
      INFO(spec << ", kv heads " << hs.first << ", heads " << hs.second);
      for (const char* value : {"", static_cast<const char*>(nullptr)}) {
        EnvGuard env("KVQ_KV_DECODE", value);
        CHECK(gpu.kvquant_decode_build() == (G == 1 ? "kvq-fold2" : "kvq-foldm"));
        CHECK(gpu.kvquant_decode_build(true).empty());  // bf16: the general kernel
      }
      for (const char* value : {"kvq-fold2", "kvq-foldm"}) {
        EnvGuard env("KVQ_KV_DECODE", value);
        CHECK(gpu.kvquant_decode_build() == value);
      }
      EnvGuard env("KVQ_KV_DECODE", "general");
      CHECK(gpu.kvquant_decode_build().empty());
    }
  const codecs::KvShape ks{2, kHd, 4};
  auto kc = codecs::make_codec(codecs::parse_codec_spec("kvquant:bits=4"), KvSide::kKey, 0, ks);
  auto vc = codecs::make_codec(codecs::parse_codec_spec("kvquant:bits=4"), KvSide::kValue, 0, ks);
  cuda::PackedKvCache gpu(*kc, *vc, 1, 8, 4, inv_freq);
  std::vector<float> x(static_cast<size_t>(5) * 2 * kHd, 0.5f);
  gpu.append_host(0, x.data(), x.data(), 5, 2 * kHd);
  gpu.prepare({0});
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, 4 * kHd * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, 4 * kHd * 2) == cudaSuccess);
  REQUIRE(cudaMemset(dq, 0, 4 * kHd * 2) == cudaSuccess);
  struct Switch {
    const char* name;
    std::vector<const char*> ok, bad;
  };
  const Switch switches[] = {{"KVQ_KVQ_KOUT", {"old", "new", "", nullptr}, {"OLD", "double", "1"}},
                             {"KVQ_KVQ_STAGE", {"0", "1", "", nullptr}, {"2", "on", "old"}}};
  for (const Switch& sw : switches) {
    for (const char* value : sw.ok) {
      EnvGuard env(sw.name, value);
      CHECK_NOTHROW(gpu.decode(dq, dout));
    }
    for (const char* value : sw.bad) {
      EnvGuard env(sw.name, value);
      bool threw = false;
      try {
        gpu.decode(dq, dout);
      } catch (const InvalidArgument& e) {
        threw = true;
        CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr(std::string(sw.name) + "=" + value));
      }
      CHECK(threw);
    }
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  cudaFree(dq);
  cudaFree(dout);
}

// The retired kernels' KVQ_KV_DECODE values (kvq-fast: h42's CUDA-core KVQuant kernel; kvq-fold2k:
// kvq-fold2's key pass alone, h54, slower than kvq-fold2 at 4 bits, identical at 2; kvq-fold,
// kvq-mma, kvq-stream: h51's key pass, h45's fp32 build and h47's one-pass build, slower than
// kvq-fold2 / kvq-foldm in session 7's A/Bs; mma, mma3,
// mma-hoist: version 3 of the tensor-core decode, kernels/kv_decode_mma.cu until dfabb0b) are a
// typed error from decode() naming a commit that still has the kernel, checked before any
// launch, for KVQuant and for int4 alike; the kept values decode.
TEST_CASE("kv kvquant kernel: retired KVQ_KV_DECODE values are an InvalidArgument", "[gpu][kv][kvquant]") {
  const codecs::KvShape ks{2, kHd, 4};
  RopeConfig rc;
  rc.theta = 10000.0;
  const std::vector<double> inv_freq = rope_inv_freq(rc, kHd);
  std::vector<float> x(static_cast<size_t>(5) * 2 * kHd, 0.5f);
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, 4 * kHd * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, 4 * kHd * 2) == cudaSuccess);
  REQUIRE(cudaMemset(dq, 0, 4 * kHd * 2) == cudaSuccess);
  for (const std::string spec : {"kvquant:bits=4", "int4"}) {
    auto kc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kKey, 0, ks);
    auto vc = codecs::make_codec(codecs::parse_codec_spec(spec), KvSide::kValue, 0, ks);
    std::vector<double> no_freq;
    cuda::PackedKvCache gpu(*kc, *vc, 1, 8, 4, spec == "int4" ? no_freq : inv_freq);
    gpu.append_host(0, x.data(), x.data(), 5, 2 * kHd);
    gpu.prepare({0});
    for (const char* value :
         {"kvq-fast", "kvq-fold2k", "kvq-fold", "kvq-mma", "kvq-stream", "mma", "mma3", "mma-hoist"}) {
      EnvGuard env("KVQ_KV_DECODE", value);
      INFO(spec << ", KVQ_KV_DECODE=" << value);
      bool threw = false;
      try {
        gpu.decode(dq, dout);
      } catch (const InvalidArgument& e) {
        threw = true;
        CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("retired"));
        CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr(value));
        CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("(last in "));
      }
      CHECK(threw);
    }
    for (const char* value : {"kvq-fold2", "kvq-foldm", "mma-stream", static_cast<const char*>(nullptr)}) {
      EnvGuard env("KVQ_KV_DECODE", value);
      INFO(spec << ", KVQ_KV_DECODE=" << (value ? value : "(unset)"));
      CHECK_NOTHROW(gpu.decode(dq, dout));
    }
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  }
  cudaFree(dq);
  cudaFree(dout);
}
