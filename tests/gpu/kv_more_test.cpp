// The GPU packed caches of lib/cuda/packed_more.h (fp16, q8_0 / q4_0, fp8, intB
// axis=channel, hadamard, mikv) against the CPU reference codecs (lib/codecs/), through
// make_packed_cache. Per codec pair, on random keys/values with a planted outlier channel,
// tied values (a 1/8 grid every third token, exact magnitude ties for q4_0's pick), a
// constant token and a zero token, 3 slots streamed in uneven appends (300 = 200+1+1+37+61,
// 129, 10 = 7+1+1+1 tokens), from a printed seed (KVQ_TEST_SEED replays):
//  1. the final bytes (codes, scales, fp8 / q8_0 / q4_0 blocks, MiKV flags and records)
//     equal the CPU reference's bit for bit, built from ChunkedCodec::freeze / encode on
//     the rows the CPU cache sees in the chunk sequence the cache makes;
//  2. slot_bytes() equals the CPU caches' bytes();
//  3. decode attention over the packed cache equals attention in fp64 over the CPU caches'
//     dequantized K/V within the tolerance derived in tolerance() below; outputs
//     poisoned with NaN bits first, GQA and MHA, batch 4 (a slot read twice), head_dim 32,
//     64 and 128.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/codec.h"
#include "lib/cuda/packed_cache.h"
#include "lib/cuda/packed_more.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

namespace {

using namespace kvq;
using codecs::KvSide;

struct Shape {
  int H, n_heads, hd;
};

const double kU = std::ldexp(1.0, -24);  // fp32 unit roundoff

// [T, dim]: N(0, 1); channel 5 of each head x8; every third token on a 1/8 grid; token 2
// constant 0.75; token 4 all zero.
std::vector<float> random_rows(std::mt19937_64& rng, int T, int dim, int hd) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(T) * dim);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < dim; ++c) {
      float v = nd(rng);
      if (c % hd == 5) v *= 8.f;
      if (t % 3 == 1) v = std::nearbyint(v * 8.f) / 8.f;
      if (t == 2) v = 0.75f;
      if (t == 4) v = 0.f;
      x[static_cast<size_t>(t) * dim + c] = v;
    }
  return x;
}

std::unique_ptr<codecs::Codec> make(const std::string& spec, KvSide side, const Shape& s,
                                    const codecs::CodecParams* given = nullptr) {
  return codecs::make_codec(codecs::parse_codec_spec(spec), side, 0,
                            codecs::KvShape{s.H, s.hd, s.n_heads}, given);
}

void append_chunk(codecs::Chunk& to, const codecs::Chunk& c) {
  to.codes.insert(to.codes.end(), c.codes.begin(), c.codes.end());
  to.halves.insert(to.halves.end(), c.halves.begin(), c.halves.end());
  to.raw.insert(to.raw.end(), c.raw.begin(), c.raw.end());
  to.n += c.n;
}

// The CPU reference's final bytes for one side of one slot: the chunk sequence its cache
// makes (fp16 window for windowed codecs, freeze at the first append, one encode per
// append of what leaves the window), concatenated, cut at the first `qn` tokens.
codecs::Chunk cpu_bytes(const codecs::Codec& c, const std::vector<float>& rows,
                        const std::vector<int>& pieces, int64_t qn, const float* importance,
                        const float* queries, int q_cols) {
  const auto& cc = dynamic_cast<const codecs::ChunkedCodec&>(c);
  const int dim = c.shape().dim();
  std::vector<float> x = rows;
  if (cc.uses_window())
    for (float& v : x) v = half_to_float(float_to_half(v));
  auto st = cc.new_state();
  bool frozen = false;
  int64_t size = 0, encoded = 0;
  codecs::Chunk all;
  for (int n : pieces) {
    codecs::AppendContext ctx;
    ctx.importance = importance;
    if (queries) ctx.queries = ConstMatrixView{queries + size * q_cols, n, q_cols, q_cols};
    if (!frozen) frozen = cc.freeze(*st, ConstMatrixView{x.data() + size * dim, n, dim, dim}, size, ctx);
    size += n;
    int64_t k = size - encoded;
    if (cc.uses_window()) k = std::min(k, cc.to_encode(k, size));
    if (k > 0) {
      codecs::Chunk ch;
      ch.pos0 = encoded;
      ch.n = k;
      cc.encode(*st, x.data() + encoded * dim, encoded, k, ctx, ch);
      append_chunk(all, ch);
      encoded += k;
    }
  }
  REQUIRE(qn <= encoded);
  // Cut to qn tokens: only MiKV leaves more encoded than final... every codec here encodes
  // exactly the final tokens, which the GPU reports as quantized_tokens.
  REQUIRE(qn == encoded);
  return all;
}

// CHECKs (not REQUIREs) so one call reports every codec and side that differs, with the
// first differing index of each array.
template <typename T>
void check_array(const std::vector<T>& cpu, const std::vector<T>& gpu, const char* name) {
  INFO(name << ": CPU " << cpu.size() << " entries, GPU " << gpu.size());
  CHECK(cpu.size() == gpu.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < std::min(cpu.size(), gpu.size()); ++i)
    if (cpu[i] != gpu[i] && bad++ == 0) first = i;
  INFO(name << ": " << bad << " differ, first at " << first << " (CPU "
            << (bad ? static_cast<long long>(cpu[first]) : 0) << ", GPU "
            << (bad ? static_cast<long long>(gpu[first]) : 0) << ")");
  CHECK(bad == 0);
}

void require_same(const codecs::Chunk& cpu, const codecs::Chunk& gpu, const std::string& what) {
  INFO(what);
  check_array(cpu.codes, gpu.codes, "codes");
  check_array(cpu.halves, gpu.halves, "halves");
  check_array(cpu.raw, gpu.raw, "raw");
}

// Tolerance of one output element (derivation). u = 2^-24.
//  Non-rotated sides: K', V' are the same fp32 values on both sides (same stored bytes and
//  the same kv_layout.h formulas); q is fp16-exact. The score s_j = scale * q . k_j in fp32
//  errs by at most hd * u * scale * sum_i |q_i k_ji| (8 sequential fmas per lane, then a
//  shuffle tree: < hd roundings).
//  Hadamard keys: the GPU scores the rotated query qr = fl(n H D q) against the stored
//  y'_j, the reference scores q against k_j = fl(D H y'_j n). An fp32 transform of
//  log2(hd) butterfly stages plus the products by n = fl(1/sqrt(hd)) errs per component by
//  <= c n ||x||_1 with c = (log2(hd) + 4) u, and n ||y'||_1 <= ||y'||_2 = ||k||_2, so
//  |err s_j| <= scale (2 c ||q||_1 ||k_j||_2 + hd u ||q||_2 ||k_j||_2).
//  With delta = max_j |err s_j|: softmax weights err by <= 2 delta + (L + 64) * 2 u
//  relative (fp32 exp and the chunked sums), so the output by that times max_j |v_jd|;
//  then one rounding to fp16: 2^-11 |o|.
//  Hadamard values: that weight error applies to the rotated output, whose components are
//  bounded by max_j ||v_j||_2; rotating back spreads it by at most sqrt(hd); the two fp32
//  transforms (the GPU's of the output, the reference's of each v_j) add 2 c max_j ||v_j||_2.
double tolerance(double ref, double delta, int L, double vmax, double vmax2, int hd, bool had_v) {
  const double w = 2 * delta + (L + 64) * 2 * kU;
  const double c = (std::log2(static_cast<double>(hd)) + 4) * kU;
  const double body = had_v ? (std::sqrt(static_cast<double>(hd)) * w + 2 * c) * vmax2 : w * vmax;
  return std::ldexp(1.0, -11) * std::fabs(ref) + body + 1e-7;
}

struct Result {
  double worst_ratio = 0, worst_err = 0;
  int64_t bad = 0;        // outputs beyond their tolerance
  std::string first_bad;  // the first of them
};

Result run_case(const std::string& kspec, const std::string& vspec, const Shape& s, uint64_t seed,
                const codecs::CodecParams* kgiven = nullptr, const codecs::CodecParams* vgiven = nullptr) {
  std::mt19937_64 rng(seed);
  auto kc = make(kspec, KvSide::kKey, s, kgiven);
  auto vc = make(vspec, KvSide::kValue, s, vgiven);
  const int dim = s.H * s.hd, qcols = s.n_heads * s.hd;
  const std::vector<std::vector<int>> pieces = {{200, 1, 1, 37, 61}, {129}, {7, 1, 1, 1}};
  REQUIRE(cuda::packed_cache_unsupported_reason(*kc, *vc).empty());
  auto gpu = cuda::make_packed_cache(*kc, *vc, 3, 320, s.n_heads);
  std::vector<std::vector<float>> K(3), V(3);
  std::vector<std::unique_ptr<codecs::KvCache>> ck(3), cv(3);
  std::uniform_int_distribution<int> quarter(0, 4);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int slot = 0; slot < 3; ++slot) {
    int T = 0;
    for (int n : pieces[slot]) T += n;
    K[slot] = random_rows(rng, T, dim, s.hd);
    V[slot] = random_rows(rng, T, dim, s.hd);
    // Importance on a 1/4 grid (many ties: the stable order decides) and queries with an
    // outlier channel (the MiKV balancer).
    std::vector<float> imp(static_cast<size_t>(T) * s.H), qs(static_cast<size_t>(T) * qcols);
    for (float& v : imp) v = 0.25f * static_cast<float>(quarter(rng));
    for (size_t i = 0; i < qs.size(); ++i) qs[i] = nd(rng) * ((i % s.hd) == 9 ? 6.f : 1.f);
    ck[slot] = kc->make_cache();
    cv[slot] = vc->make_cache();
    int pos = 0;
    for (int n : pieces[slot]) {
      const float* kp = K[slot].data() + static_cast<size_t>(pos) * dim;
      const float* vp = V[slot].data() + static_cast<size_t>(pos) * dim;
      cuda::PackedAppendExtras ex;
      ex.importance = imp.data();
      ex.queries = qs.data() + static_cast<size_t>(pos) * qcols;
      gpu->append_host(slot, kp, vp, n, dim, ex);
      codecs::AppendContext kctx, vctx;
      kctx.importance = vctx.importance = imp.data();
      kctx.queries = ConstMatrixView{ex.queries, n, qcols, qcols};
      ck[slot]->append(ConstMatrixView{kp, n, dim, dim}, kctx);
      cv[slot]->append(ConstMatrixView{vp, n, dim, dim}, vctx);
      pos += n;
    }
    REQUIRE(gpu->size(slot) == T);
    for (bool key : {true, false}) {
      const auto& codec = key ? *kc : *vc;
      const int64_t qn = gpu->quantized_tokens(key, slot);
      const auto cpu = cpu_bytes(codec, key ? K[slot] : V[slot], pieces[slot], qn, imp.data(),
                                 key ? qs.data() : nullptr, qcols);
      const auto dev = gpu->download(key, slot, 0, qn);
      require_same(cpu, dev, codec.describe() + (key ? " keys" : " values") + ", slot " +
                                 std::to_string(slot) + ", " + std::to_string(qn) + " final tokens");
    }
    INFO(kspec << " / " << vspec << " slot " << slot);
    CHECK(gpu->slot_bytes(slot) == ck[slot]->bytes() + cv[slot]->bytes());
  }

  // Decode: rows read slots {0, 1, 2, 0}.
  const std::vector<int> rows = {0, 1, 2, 0};
  const int R = static_cast<int>(rows.size());
  std::vector<uint16_t> qh(static_cast<size_t>(R) * qcols);
  for (auto& h : qh) h = float_to_half(nd(rng));
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMemcpy(dq, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(dout, 0xFF, qh.size() * 2) == cudaSuccess);  // NaN poison
  gpu->prepare(rows);
  REQUIRE(gpu->decode_bytes() > 0);
  gpu->decode(dq, dout, false, nullptr);
  std::vector<uint16_t> oh(qh.size());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(oh.data(), dout, oh.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(dq);
  cudaFree(dout);

  const bool had_k = kc->method() == "hadamard", had_v = vc->method() == "hadamard";
  const double c = (std::log2(static_cast<double>(s.hd)) + 4) * kU;
  Result res;
  const int G = s.n_heads / s.H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  for (int r = 0; r < R; ++r) {
    const int slot = rows[r];
    const int L = static_cast<int>(gpu->size(slot));
    std::vector<float> kd(static_cast<size_t>(L) * dim), vd(kd.size());
    ck[slot]->dequantize(0, L, MatrixView{kd.data(), L, dim, dim});
    cv[slot]->dequantize(0, L, MatrixView{vd.data(), L, dim, dim});
    for (int qi = 0; qi < s.n_heads; ++qi) {
      const int h = qi / G;
      const uint16_t* qrow = qh.data() + (static_cast<size_t>(r) * s.n_heads + qi) * s.hd;
      double q1 = 0, q2 = 0;
      for (int i = 0; i < s.hd; ++i) {
        q1 += std::fabs(half_to_float(qrow[i]));
        q2 += static_cast<double>(half_to_float(qrow[i])) * half_to_float(qrow[i]);
      }
      q2 = std::sqrt(q2);
      std::vector<double> sc(L);
      double m = -INFINITY, delta = 0, vmax2 = 0;
      for (int t = 0; t < L; ++t) {
        double dot = 0, A = 0, k2 = 0, v2 = 0;
        const size_t base = static_cast<size_t>(t) * dim + h * s.hd;
        for (int i = 0; i < s.hd; ++i) {
          const double qv = half_to_float(qrow[i]), kv = kd[base + i];
          dot += qv * kv;
          A += std::fabs(qv * kv);
          k2 += kv * kv;
          v2 += static_cast<double>(vd[base + i]) * vd[base + i];
        }
        sc[t] = dot * scale;
        m = std::max(m, sc[t]);
        const double e = had_k ? scale * (2 * c * q1 + s.hd * kU * q2) * std::sqrt(k2) * (1 + 1e-6)
                               : scale * A * s.hd * kU;
        delta = std::max(delta, e);
        vmax2 = std::max(vmax2, std::sqrt(v2) * (1 + 1e-6));
      }
      double l = 0;
      for (int t = 0; t < L; ++t) l += std::exp(sc[t] - m);
      for (int d = 0; d < s.hd; ++d) {
        double o = 0, vmax = 0;
        for (int t = 0; t < L; ++t) {
          const double v = vd[static_cast<size_t>(t) * dim + h * s.hd + d];
          o += std::exp(sc[t] - m) * v;
          vmax = std::max(vmax, std::fabs(v));
        }
        o /= l;
        const double got = half_to_float(oh[(static_cast<size_t>(r) * s.n_heads + qi) * s.hd + d]);
        const double tol = tolerance(o, delta, L, vmax, vmax2, s.hd, had_v);
        const double err = std::fabs(got - o);
        if ((!std::isfinite(got) || err > tol) && res.bad++ == 0)
          res.first_bad = "row " + std::to_string(r) + " head " + std::to_string(qi) + " dim " +
                          std::to_string(d) + ": got " + std::to_string(got) + ", ref " +
                          std::to_string(o) + ", tol " + std::to_string(tol);
        if (std::isfinite(got)) {
          res.worst_ratio = std::max(res.worst_ratio, err / tol);
          res.worst_err = std::max(res.worst_err, err);
        }
      }
    }
  }
  INFO(kspec << " / " << vspec << ", kv_heads " << s.H << ", head_dim " << s.hd << ": "
             << res.bad << " outputs beyond tolerance; first: " << res.first_bad);
  CHECK(res.bad == 0);
  return res;
}

void run_all(const std::string& kspec, const std::string& vspec, uint64_t fallback_seed,
             std::vector<Shape> shapes = {Shape{2, 8, 128}, Shape{3, 3, 64}, Shape{1, 2, 32}}) {
  const uint64_t seed = kvq_test::test_seed(fallback_seed);
  for (const Shape& s : shapes) {
    const Result r = run_case(kspec, vspec, s, seed);
    std::printf("kv more %s / %s, kv_heads %d, heads %d, head_dim %d: bytes equal; decode max err "
                "%.3g (%.2f of tolerance), seed %llu\n",
                kspec.c_str(), vspec.c_str(), s.H, s.n_heads, s.hd, r.worst_err, r.worst_ratio,
                static_cast<unsigned long long>(seed));
  }
}

}  // namespace

TEST_CASE("kv more: fp16 cache, GPU bytes == CPU bytes, decode == simulated", "[gpu][kv]") {
  run_all("fp16", "fp16", 1501, {Shape{2, 8, 128}, Shape{3, 3, 64}, Shape{1, 2, 32}, Shape{2, 4, 16}});
}

TEST_CASE("kv more: llama.cpp q8_0 and q4_0 blocks", "[gpu][kv]") {
  run_all("q8_0", "q8_0", 1502);
  run_all("q4_0", "q4_0", 1503);
  run_all("q4_0", "q8_0", 1504);
}

TEST_CASE("kv more: fp8 e4m3 and e5m2 with per-head scales", "[gpu][kv]") {
  run_all("fp8", "fp8:e5m2", 1505);
  run_all("fp8:e5m2", "fp8:e4m3", 1506);
  // Given (profile) scales, small enough that large values saturate.
  const Shape s{2, 8, 128};
  codecs::CodecParams g;
  g.tensors["scale"] = {0.004f, 0.01f};
  const uint64_t seed = kvq_test::test_seed(1507);
  const Result r = run_case("fp8", "fp8:e5m2", s, seed, &g, &g);
  std::printf("kv more fp8 with given scales (saturating): decode max err %.3g (%.2f of tolerance), "
              "seed %llu\n", r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
}

TEST_CASE("kv more: intB axis=channel, token groups with the incomplete group quantized", "[gpu][kv]") {
  run_all("int4:axis=channel", "int2:axis=channel,group=32,sym=1", 1508);
  run_all("int3:axis=channel,group=7", "int8:axis=channel,group=16", 1509);
}

TEST_CASE("kv more: randomized Hadamard rotation + int-b", "[gpu][kv]") {
  run_all("hadamard", "hadamard:bits=2,seed=5", 1510,
          {Shape{2, 8, 128}, Shape{3, 3, 64}, Shape{1, 2, 32}, Shape{2, 4, 16}});
  run_all("hadamard:bits=3", "hadamard:bits=8,seed=9", 1511);
  run_all("fp16", "hadamard:bits=4", 1512);
}

TEST_CASE("kv more: MiKV mixed precision by importance", "[gpu][kv]") {
  run_all("mikv", "mikv", 1513);
  run_all("mikv:hi=int8,lo=int2,budget=0.5,recent=16", "mikv:hi=int8,lo=int3,budget=0.3", 1514);
  run_all("mikv:lo=int3,recent=0,balance=0", "mikv:hi=int8,recent=0", 1515);
}

TEST_CASE("kv more: make_packed_cache serves the older codecs and refuses mixed families", "[gpu][kv]") {
  const Shape s{2, 4, 64};
  auto k = make("int4", KvSide::kKey, s);
  auto v = make("int4", KvSide::kValue, s);
  auto c = cuda::make_packed_cache(*k, *v, 1, 64, 4);  // PackedKvCache behind the interface
  std::vector<float> rows(40 * 128);
  std::mt19937_64 rng(kvq_test::test_seed(1516));
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& x : rows) x = nd(rng);
  c->append_host(0, rows.data(), rows.data(), 40, 128, {});
  REQUIRE(c->size(0) == 40);
  REQUIRE(c->quantized_tokens(true, 0) == 40);
  auto cpu = k->make_cache();
  cpu->append(ConstMatrixView{rows.data(), 40, 128, 128});
  REQUIRE(c->slot_bytes(0) == 2 * cpu->bytes());

  auto f8 = make("fp8", KvSide::kValue, s);
  REQUIRE_FALSE(cuda::packed_cache_unsupported_reason(*k, *f8).empty());
  REQUIRE_THROWS_AS(cuda::make_packed_cache(*k, *f8, 1, 16, 4), UnsupportedError);
  auto q8k = make("q8_0", KvSide::kKey, Shape{2, 4, 16});
  auto q8v = make("q8_0", KvSide::kValue, Shape{2, 4, 16});
  REQUIRE_THROWS_AS(cuda::make_packed_cache(*q8k, *q8v, 1, 16, 4), UnsupportedError);  // hd 16

  auto hk = make("hadamard", KvSide::kKey, s);
  auto hv = make("mikv", KvSide::kValue, s);
  auto m = cuda::make_packed_cache(*hk, *hv, 2, 16, 4);
  REQUIRE_THROWS_AS(m->append_host(0, rows.data(), rows.data(), 17, 128, {}), InvalidArgument);
  REQUIRE_THROWS_AS(m->append_host(2, rows.data(), rows.data(), 1, 128, {}), InvalidArgument);
  REQUIRE_THROWS_AS(m->decode(nullptr, nullptr, false, nullptr), InvalidArgument);  // no prepare
  m->prepare({1});
  REQUIRE_THROWS_AS(m->decode(nullptr, nullptr, false, nullptr), InvalidArgument);  // empty slot
  REQUIRE_THROWS_AS(m->download(true, 0, 0, 1), InvalidArgument);  // nothing final yet
}

// Not a test (hidden tag, run with `kvq_test_gpu "[.kvmorebench]"`): decode attention time
// and effective bandwidth (decode_bytes() / time) of each codec's packed cache at one
// context length, Llama-2-7B head shape (32 x 128, MHA) and Llama-3-8B (32 / 8 x 128),
// batch 1 and 8, against the fp16 decode-attention kernel (Fp16DecodeBaseline) in the same
// run. Median of 20 timed decodes after 3 warm-ups (device events).
TEST_CASE("packed-more decode benchmark", "[.kvmorebench]") {
  const int T = 32768;
  struct BShape {
    const char* name;
    int H, n_heads;
  };
  const char* specs[] = {"fp16", "q8_0", "q4_0", "fp8", "fp8:e5m2", "int4:axis=channel",
                         "int2:axis=channel", "hadamard:bits=4", "hadamard:bits=2", "mikv",
                         "mikv:hi=int8,lo=int2"};
  for (const BShape& bs : {BShape{"llama2-7b", 32, 32}, BShape{"llama3-8b", 8, 32}}) {
    const Shape s{bs.H, bs.n_heads, 128};
    const int dim = s.H * s.hd;
    for (int batch : {1, 8}) {
      auto dk = cuda::device_alloc(static_cast<size_t>(T) * dim * 4, "bench keys");
      auto dv = cuda::device_alloc(static_cast<size_t>(T) * dim * 4, "bench values");
      cuda::fill_random_rows(static_cast<float*>(dk.get()), T, dim, 1, 1.f, 64, 8.f);
      cuda::fill_random_rows(static_cast<float*>(dv.get()), T, dim, 2, 1.f, 0, 1.f);
      auto q = cuda::device_alloc(static_cast<size_t>(batch) * s.n_heads * s.hd * 2, "bench q");
      auto o = cuda::device_alloc(static_cast<size_t>(batch) * s.n_heads * s.hd * 2, "bench out");
      std::vector<uint16_t> qh(static_cast<size_t>(batch) * s.n_heads * s.hd);
      std::mt19937_64 rng(7);
      std::normal_distribution<float> nd(0.f, 1.f);
      for (auto& h : qh) h = float_to_half(nd(rng));
      cuda::copy_to_device(q.get(), qh.data(), qh.size() * 2);
      std::vector<int> rows(batch);
      for (int r = 0; r < batch; ++r) rows[r] = r;
      double fp16_ms = 0;
      {
        cuda::Fp16DecodeBaseline base(batch, T, s.n_heads, s.H, s.hd, 3);
        base.prepare(rows, T);
        fp16_ms = cuda::time_device_ms([&] { base.decode(q.get(), o.get()); }, 3, 20);
        std::printf("bench %s batch %d ctx %d: fp16 baseline (attention_decode) %.4f ms, %.0f GB/s\n",
                    bs.name, batch, T, fp16_ms, base.decode_bytes() / fp16_ms * 1e-6);
      }
      std::vector<float> imp(static_cast<size_t>(T) * s.H);
      for (size_t i = 0; i < imp.size(); ++i) imp[i] = static_cast<float>((i * 2654435761u) % 1000);
      for (const char* spec : specs) {
        auto kc = make(spec, KvSide::kKey, s);
        auto vc = make(spec, KvSide::kValue, s);
        auto c = cuda::make_packed_cache(*kc, *vc, batch, T, s.n_heads);
        cuda::PackedAppendExtras ex;
        ex.importance = imp.data();
        for (int r = 0; r < batch; ++r)
          c->append(r, static_cast<float*>(dk.get()), static_cast<float*>(dv.get()), T, dim, ex);
        c->prepare(rows);
        const double ms = cuda::time_device_ms([&] { c->decode(q.get(), o.get(), false, nullptr); }, 3, 20);
        std::printf("bench %s batch %d ctx %d: %-22s %.4f ms, %.0f GB/s, %.2fx fp16 time\n", bs.name,
                    batch, T, spec, ms, c->decode_bytes() / ms * 1e-6, fp16_ms / ms);
      }
    }
  }
}
