// The GPU packed KV cache (lib/cuda/packed_cache.h) against the CPU reference codecs
// (lib/codecs/): per codec, on random keys/values with planted outlier channels, tied
// values and awkward lengths (1, 7, 129, 300 tokens, streamed in uneven appends), from a
// printed seed (KVQ_TEST_SEED replays):
//  1. the packed bytes (codes, scales/zeros, outlier records, per-token counts) equal the
//     CPU's bit for bit, via ChunkedCodec::freeze/encode on the rows the CPU cache sees;
//  2. decode attention over the packed cache equals attention in fp64 over the CPU
//     cache's dequantized (simulated) K/V, RoPE applied in fp64 for pre-RoPE keys, within
//     the tolerance derived in attention_tolerance() below; outputs poisoned with NaN
//     bits first, GQA (groups 2, 4, 8) and MHA, batch 3, head_dim 32, 64 and 128; uniform
//     per-token codes also through the tensor-core kernel (its own bound below).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "lib/codecs/chunked.h"
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

struct Shape {
  int H, n_heads, hd;
};

std::unique_ptr<codecs::Codec> make(const std::string& spec, KvSide side, const Shape& s,
                                    const codecs::CodecParams* given) {
  codecs::KvShape ks{s.H, s.hd, s.n_heads};
  return codecs::make_codec(codecs::parse_codec_spec(spec), side, 0, ks, given);
}

// The bytes the CPU reference holds for the first `qn` final tokens: the rows the CPU
// cache sees (fp16-rounded for windowed codecs), frozen on the first append(s) as the
// cache does, encoded at once (every codec's encoding is per token or per complete group,
// so one encode equals the cache's chunk sequence).
codecs::Chunk cpu_chunk(const codecs::Codec& c, const std::vector<float>& rows,
                        const std::vector<int>& pieces, int64_t qn) {
  const auto& cc = dynamic_cast<const codecs::ChunkedCodec&>(c);
  const int dim = c.shape().dim();
  std::vector<float> x = rows;
  if (cc.uses_window())
    for (float& v : x) v = half_to_float(float_to_half(v));
  auto st = cc.new_state();
  int64_t pos = 0;
  for (int n : pieces) {
    ConstMatrixView view{x.data() + pos * dim, n, dim, dim};
    if (cc.freeze(*st, view, pos, {})) break;
    pos += n;
  }
  codecs::Chunk ch;
  ch.pos0 = 0;
  ch.n = qn;
  if (qn > 0) cc.encode(*st, x.data(), 0, qn, {}, ch);
  return ch;
}

void require_same(const codecs::Chunk& cpu, const codecs::Chunk& gpu, const std::string& what) {
  INFO(what);
  REQUIRE(cpu.codes.size() == gpu.codes.size());
  REQUIRE(cpu.halves.size() == gpu.halves.size());
  REQUIRE(cpu.outliers.size() == gpu.outliers.size());
  REQUIRE(cpu.row_counts == gpu.row_counts);
  size_t bad = 0;
  for (size_t i = 0; i < cpu.codes.size(); ++i) bad += cpu.codes[i] != gpu.codes[i];
  for (size_t i = 0; i < cpu.halves.size(); ++i) bad += cpu.halves[i] != gpu.halves[i];
  for (size_t i = 0; i < cpu.outliers.size(); ++i)
    bad += cpu.outliers[i].index != gpu.outliers[i].index || cpu.outliers[i].value != gpu.outliers[i].value;
  REQUIRE(bad == 0);
}

// Tolerance of one output element (derivation):
//  - K', V' are the same fp32 values on both sides (same stored codes and scales, same
//    fma/multiply formulas from kv_layout.h), q is fp16-exact.
//  - Score s_j = scale * q . k_j in fp32: |err| <= hd * 2^-24 * A_j, A_j = scale * sum |q_i k_ji|
//    (sequential fma per lane, then a tree over lanes: at most hd roundings).
//    Pre-RoPE keys: the rotated key's components err by <= 2^-17 relative (angle reduced in
//    double then rounded to fp32: 2^-24 * 2pi; sincosf <= 2 ulp; the fp32 rotation
//    recurrence, <= 31 steps x 4 roundings of 2^-24 each: 7.4e-6 = 2^-17 total), so
//    A_j * 2^-17 * 2 more (the pair mixes two components).
//  - Softmax weights p_j = exp(s_j - m) / l: relative error <= 2 * max_j |err s_j| + the fp32
//    exp and sums, (L + 64) * 2^-24 for L keys summed in chunks then combined.
//  - o = sum p_j v_j: |err| <= (2 delta + (L + 64) 2^-23) * max_j |v_jd|, then the result is
//    rounded once to fp16: 2^-11 |o|.
double attention_tolerance(double ref, double delta, int L, double vmax) {
  return std::ldexp(1.0, -11) * std::fabs(ref) +
         (2 * delta + (L + 64) * std::ldexp(1.0, -23)) * vmax + 1e-7;
}

// Uniform per-token codes may be decoded by the tensor-core kernel
// (kernels/kv_decode_mma.cu), which never forms k' = fma(c, s, z): it computes
// s * sum q c + z * sum q (keys) and sum (p s) c + sum p z (values). Its bound:
//  - every term is now |s c| + |z| <= |k'| + 2|z| in size instead of |k'|, and |z| <= Zb:
//    asym z = fp16(group min) <= (1 + 2^-11) max|x|; sym z = -2^(b-1) s with
//    s = fp16(amax / (2^(b-1) - 1)): |z| <= 2 (1 + 2^-11) amax. Zb = 2.01 max|x| over the
//    (slot, head)'s original rows covers both (x: the rows appended).
//  - the mma's fp32 accumulation truncates after aligning 16 products to the largest
//    (Fasi et al. 2021): <= 17 * 2^-23 of the largest term per k=16 step, so the keys'
//    hd/16 steps stay under hd * 2^-23 (twice the CUDA-core factor) and the values' chain
//    of <= L/16 steps under (L + 64) * 2^-22, with the weights' fp16 hi/lo split (2^-22).
// So for these codecs: delta uses hd * 2^-23 * sum |q| (|k'| + 2 Zb_k), and the value term
// (2 delta + (L + 64) 2^-22) * (vmax + 2 Zb_v).
//
// Folded codes (version 4's default, kernels/kv_decode_mma_common.cuh pair_fold_at): the
// code of channel d enters the mma as off(d) + c, off(d) = 2^(8 - b (d mod 8/b)) (256, 64,
// 16, 4 at 2 bits; 256, 16 at 4), and the offset is removed once: keys start the mma from
// -sum_d q_d off(d) (an fp32 warp sum: <= (hd/32 + 5) 2^-24 of sum |q| off, under 1/16 of
// the chain's term below), values subtract off(d) * sum_t (w hi + lo)_t (fp32, summed per
// thread, warp, block and stage: <= (L + 64) 2^-24 relative, 1/4 of the chain's term).
// The chains' rounding now runs on terms s off(d) larger, so:
//  - keys: A gains 2 (1 + 1/16) |q_d| off(d) s_max (delta = scale A hd 2^-24);
//  - values, output channel d: (1 + 1/4 + 1/4) (L + 64) 2^-22 off(d) s_max, the last 1/4 for
//    the epilogue's adds of the warps' partials (4 + 2 roundings of 2^-24 each). No delta
//    term: the same fp16 weights go into the mma and into the subtracted sum.
//  s_max = Zb / (2^b - 2) bounds every scale: asym s = range / (2^b - 1) <= 2 max|x| / (2^b - 1),
//  sym s = amax / (2^(b-1) - 1), each with fp16 rounding (1 + 2^-11), and Zb = 2.01 max|x|.
double fold_offset(int bits, int d) { return std::ldexp(1.0, 8 - bits * (d % (8 / bits))); }
double fold_smax(double zb, int bits) { return zb / ((1 << bits) - 2); }

double attention_tolerance_factored(double ref, double delta, int L, double vmax, double zb, double fold_v) {
  return std::ldexp(1.0, -11) * std::fabs(ref) +
         (2 * delta + (L + 64) * std::ldexp(1.0, -22)) * (vmax + 2 * zb) +
         1.5 * (L + 64) * std::ldexp(1.0, -22) * fold_v + 1e-7;
}

// True when kv_decode_attention hands this pair to the tensor-core kernel: the conditions of
// mma_decode::fits() (kernels/kv_decode_mma.cuh) in codec terms (fp16 activations and no
// KVQ_KV_DECODE override, as in these tests). Only those cases take the factored bound;
// the others keep attention_tolerance().
// KIVI pairs the tensor-core kernel's version 4 serves (kivi_fits in kernels/kv_decode_stream.cu):
// head_dim 128, 2 or 4 bits, key groups of 16..256 tokens dividing 256, residual a multiple
// of the group (<= 4096), and G <= 2 with 2 G * 128 / value group <= 16 (value group = min(group,
// head_dim)) or G = 3..4 with 32-channel value groups (the KG build, unless KVQ_KV_KIVI=0). Its keys go through q' = q 2^-Eq (|q'| < 1, Eq <= ilogb(max|q|) + 1) and
// fp16 hi/lo of q' s: exact except where q' or lo are fp16 subnormals (<= 2^-25 each), so a
// score may err by a further scale * hd * (2^b - 1) * 2^Eq * 2^-25 * (1 + s), bounded with
// 2^Eq <= 2 max|q| and (2^b - 1) s <= range <= Zb by scale * hd * 2^-24 * max|q| * ((2^b - 1) + Zb).
bool kivi_gqa_on() {  // KVQ_KV_KIVI (kivi_gqa_on in kernels/kv_decode_stream.cu)
  const char* e = std::getenv("KVQ_KV_KIVI");
  return e == nullptr || std::string(e) != "0";
}
// KG's default unless KVQ_KV_KIVI=1 (kivi_key_fold in kernels/kv_decode_stream.cu, h64): its keys through the
// folded conversion, the mma started from -sum_d off(d) (q' s)_d by an 8-mma chain (a constant A)
// instead of the non-KIVI keys' fp32 warp sum: that chain's rounding is bounded like the tile
// chain's on the same terms, so the fold's A term below is 2 (1 + 1) |q_d| off(d) s_max
// (the non-KIVI keys: 2 (1 + 1/16)). The exact conversion's kivi_term stays (q' s hi/lo).
bool kivi_key_fold() {
  const char* e = std::getenv("KVQ_KV_KIVI");
  return e == nullptr || std::string(e) != "1";
}
bool kivi_tensor_core(const codecs::Codec& k, const codecs::Codec& v, const Shape& s) {
  if (s.hd != 128 || k.method() != "kivi" || v.method() != "kivi") return false;
  const codecs::CodecParams p = k.params();
  const int bits = static_cast<int>(p.number("bits", 0)), group = static_cast<int>(p.number("group", 0));
  const int resid = static_cast<int>(p.number("residual", 0));
  const int vgroup = std::min(group, s.hd), G = s.n_heads / s.H;
  return (bits == 2 || bits == 4) && group >= 16 && group % 16 == 0 && 256 % group == 0 && resid > 0 &&
         resid <= 4096 && resid % group == 0 && s.hd % vgroup == 0 &&
         ((G <= 2 && 2 * G * (s.hd / vgroup) <= 16) || (G <= 4 && vgroup == 32 && kivi_gqa_on()));
}

bool tensor_core_decode(const codecs::Codec& k, const codecs::Codec& v, const Shape& s) {
  if (kivi_tensor_core(k, v, s)) return true;
  if (s.hd != 128 || k.method() != v.method() || k.stage() == codecs::RopeStage::kPreRope) return false;
  int groups[2];
  for (int i = 0; i < 2; ++i) {
    const codecs::Codec& c = i == 0 ? k : v;
    if (c.method() != "int2" && c.method() != "int4") return false;
    const codecs::CodecParams p = c.params();
    groups[i] = static_cast<int>(p.number("group", 0));
    if (p.number("per_channel", 1) != 0 || groups[i] < 16 || s.hd % groups[i] != 0) return false;
  }
  const int G = s.n_heads / s.H;
  return G <= 8 && G * (s.hd / groups[0]) <= 16 && 2 * G * (s.hd / groups[1]) <= 16;
}

struct Result {
  double worst_ratio = 0, worst_err = 0;
};

// Long contexts (LongCase): slot 0 holds ten thousand tokens, so that a block of the
// streaming tensor-core kernel walks several 256-token stages (online softmax across stages,
// double-buffered copies) and the split-K combine merges many blocks. The data keep the
// derived bound meaningful there: no outlier channels (Zb and vmax ~4.5 instead of ~36) and
// queries x4 (scores with std ~4), so the softmax is peaked on a few dozen tokens spread over
// the stages and the output is O(1), not the ~0 mean of thousands of random rows.
struct LongCase {
  bool on = false;
  std::vector<std::vector<int>> pieces;
  bool qpos = false;  // queries |N(0, 16)|: every q_d off(d) of the folded key start adds up
};

// The random K/V rows of run_case's 3 slots and the generator's state after drawing them, for
// one (seed, dim, head_dim, long or not, slot lengths). The A/B cases re-run one seed's rows
// under several env switches, specs and head counts with the same dim: the long rows alone are
// 20M normals (~0.3-0.6 s) per call, 34 calls of the [kv] cases. A hit returns exactly what the
// draws would give (same generator, same seed, same sequence) and the state to draw the
// queries from, so every case sees the data it saw before (h66). The last 8 kept (~170 MB at
// most: one 10,003-token entry is 82 MB).
struct GeneratedRows {
  uint64_t seed = 0;
  int dim = 0, hd = 0;
  bool on = false;
  std::vector<int> lens;
  std::vector<std::vector<float>> K, V;
  std::mt19937_64 rng_after;
};

std::shared_ptr<const GeneratedRows> generated_rows(uint64_t seed, int dim, int hd, bool on, const std::vector<int>& lens) {
  static std::vector<std::shared_ptr<const GeneratedRows>> memo;
  for (size_t i = 0; i < memo.size(); ++i) {
    const auto g = memo[i];
    if (g->seed == seed && g->dim == dim && g->hd == hd && g->on == on && g->lens == lens) {
      memo.erase(memo.begin() + static_cast<std::ptrdiff_t>(i));
      memo.push_back(g);  // most recent last
      return g;
    }
  }
  auto g = std::make_shared<GeneratedRows>();
  g->seed = seed;
  g->dim = dim;
  g->hd = hd;
  g->on = on;
  g->lens = lens;
  std::mt19937_64 rng(seed);
  for (size_t slot = 0; slot < lens.size(); ++slot) {
    g->K.push_back(make_rows(rng, lens[slot], dim, hd, !on));
    g->V.push_back(make_rows(rng, lens[slot], dim, hd, !on && slot != 1));
  }
  g->rng_after = rng;
  if (memo.size() >= 8) memo.erase(memo.begin());
  memo.push_back(g);
  return g;
}

// One codec (key and value specs) on one shape: 3 slots streamed in uneven appends.
Result run_case(const std::string& kspec, const std::string& vspec, const Shape& s, uint64_t seed,
                const codecs::CodecParams* kgiven = nullptr, const codecs::CodecParams* vgiven = nullptr,
                const LongCase& lc = {}) {
  auto kc = make(kspec, KvSide::kKey, s, kgiven);
  auto vc = make(vspec, KvSide::kValue, s, vgiven);
  const int dim = s.H * s.hd;
  const std::vector<std::vector<int>> pieces =
      lc.on ? lc.pieces : std::vector<std::vector<int>>{{200, 1, 1, 37, 61}, {129}, {7, 1, 1, 1}};
  int max_tokens = 320;
  for (const auto& ps : pieces) {
    int T = 0;
    for (int n : ps) T += n;
    max_tokens = std::max(max_tokens, T);
  }
  RopeConfig rc;
  rc.theta = 10000.0;
  const std::vector<double> inv_freq = rope_inv_freq(rc, s.hd);
  const bool pre = kc->stage() == codecs::RopeStage::kPreRope;
  cuda::PackedKvCache gpu(*kc, *vc, 3, max_tokens, s.n_heads, pre ? inv_freq : std::vector<double>{});
  std::vector<int> lens(3, 0);
  for (int slot = 0; slot < 3; ++slot)
    for (int n : pieces[slot]) lens[slot] += n;
  // Rows drawn slot by slot (keys, then values) from `seed`, the queries after them.
  const std::shared_ptr<const GeneratedRows> rows_drawn = generated_rows(seed, dim, s.hd, lc.on, lens);
  const std::vector<std::vector<float>>& K = rows_drawn->K;
  const std::vector<std::vector<float>>& V = rows_drawn->V;
  std::mt19937_64 rng = rows_drawn->rng_after;
  std::vector<std::unique_ptr<codecs::KvCache>> ck(3), cv(3);
  for (int slot = 0; slot < 3; ++slot) {
    const int T = lens[slot];
    ck[slot] = kc->make_cache();
    cv[slot] = vc->make_cache();
    int pos = 0;
    for (int n : pieces[slot]) {
      const float* kp = K[slot].data() + static_cast<size_t>(pos) * dim;
      const float* vp = V[slot].data() + static_cast<size_t>(pos) * dim;
      gpu.append_host(slot, kp, vp, n, dim);
      ck[slot]->append(ConstMatrixView{kp, n, dim, dim});
      cv[slot]->append(ConstMatrixView{vp, n, dim, dim});
      pos += n;
    }
    REQUIRE(gpu.size(slot) == T);
    // 1. Bit-exact packed bytes.
    for (bool key : {true, false}) {
      const auto& codec = key ? *kc : *vc;
      const int64_t qn = gpu.quantized_tokens(key, slot);
      const auto cpu = cpu_chunk(codec, key ? K[slot] : V[slot], pieces[slot], qn);
      const auto dev = gpu.download(key, slot, 0, qn);
      require_same(cpu, dev, codec.describe() + (key ? " keys" : " values") + ", slot " +
                                 std::to_string(slot) + ", " + std::to_string(qn) + " final tokens");
    }
  }

  // 2. Decode attention: rows read slots {0, 1, 2, 0} (a slot twice: batch rows are independent).
  const std::vector<int> rows = {0, 1, 2, 0};
  const int R = static_cast<int>(rows.size());
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<uint16_t> qh(static_cast<size_t>(R) * s.n_heads * s.hd);
  for (auto& h : qh) h = float_to_half((lc.on ? 4.f : 1.f) * (lc.qpos ? std::fabs(nd(rng)) : nd(rng)));
  void* dq = nullptr;
  void* dout = nullptr;
  REQUIRE(cudaMalloc(&dq, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&dout, qh.size() * 2) == cudaSuccess);
  REQUIRE(cudaMemcpy(dq, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(dout, 0xFF, qh.size() * 2) == cudaSuccess);  // NaN poison
  gpu.prepare(rows);
  gpu.decode(dq, dout);
  std::vector<uint16_t> oh(qh.size());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(oh.data(), dout, oh.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  cudaFree(dq);
  cudaFree(dout);

  Result res;
  const int G = s.n_heads / s.H;
  const bool factored = tensor_core_decode(*kc, *vc, s);
  const bool kivi_tc = kivi_tensor_core(*kc, *vc, s);
  const bool kfold = factored && (!kivi_tc || (G > 2 && kivi_key_fold()));  // folded key codes
  const double kfold_c = kivi_tc ? 2 * (1 + 1.0) : 2 * (1 + 1.0 / 16);     // kivi_key_fold()'s comment
  const int kbits = static_cast<int>(kc->params().number("bits", 0));
  const int vbits = static_cast<int>(vc->params().number("bits", 0));
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  // The fp64 reference below costs ~L * hd * 10 flops per (row, query head): at 10,003 tokens
  // and 32 heads ~1e9 per call, seconds on one thread, the most of these cases' time (h66).
  // So: each slot's dequantized (and rotated) K/V and each kv head's Zb once, not once per
  // row and query head; the (row, query head) pairs, independent, in parallel (OpenMP) into
  // per-element arrays; then the checks in the original order on this thread (Catch2's
  // assertions are not thread-safe). Every element is the same sequence of fp64 operations as
  // the serial loops before (sums over t in order t = 0..L-1 per output channel; max is exact
  // in any order), so the figures are bit-identical to them.
  std::vector<std::vector<float>> kd(3), vd(3);
  std::vector<std::vector<double>> kr(3);
  std::vector<std::vector<double>> zbk(3, std::vector<double>(s.H, 0.0)), zbv = zbk;
  std::vector<int> slot_len(3);
  for (int slot = 0; slot < 3; ++slot) {
    slot_len[slot] = static_cast<int>(gpu.size(slot));
    if (std::find(rows.begin(), rows.end(), slot) == rows.end()) continue;
    const int L = slot_len[slot];
    kd[slot].resize(static_cast<size_t>(L) * dim);
    vd[slot].resize(kd[slot].size());
    ck[slot]->dequantize(0, L, MatrixView{kd[slot].data(), L, dim, dim});
    cv[slot]->dequantize(0, L, MatrixView{vd[slot].data(), L, dim, dim});
    kr[slot].assign(kd[slot].begin(), kd[slot].end());
    double* krs = kr[slot].data();
    if (pre) {  // RoPE in fp64 (rotate-half), position = token index
#pragma omp parallel for schedule(static)
      for (int t = 0; t < L; ++t)
        for (int h = 0; h < s.H; ++h)
          for (int i = 0; i < s.hd / 2; ++i) {
            double* a = &krs[static_cast<size_t>(t) * dim + h * s.hd + i];
            double* b = a + s.hd / 2;
            const double ang = t * inv_freq[i], c = std::cos(ang), sn = std::sin(ang);
            const double x0 = *a, x1 = *b;
            *a = x0 * c - x1 * sn;
            *b = x1 * c + x0 * sn;
          }
    }
    // Zb of the factored bound: 2.01 max |x| of the head's rows (heads in parallel: each
    // writes its own element).
    std::vector<double>& zk_s = zbk[slot];
    std::vector<double>& zv_s = zbv[slot];
    const std::vector<float>& Ks = K[slot];
    const std::vector<float>& Vs = V[slot];
#pragma omp parallel for schedule(static)
    for (int h = 0; h < s.H; ++h)
      for (int t = 0; t < L; ++t)
        for (int i = 0; i < s.hd; ++i) {
          zk_s[h] = std::max(zk_s[h], 2.01 * std::fabs(Ks[static_cast<size_t>(t) * dim + h * s.hd + i]));
          zv_s[h] = std::max(zv_s[h], 2.01 * std::fabs(Vs[static_cast<size_t>(t) * dim + h * s.hd + i]));
        }
  }
  std::vector<double> koff(s.hd), voff(s.hd);  // fold_offset(bits, i), the same values, once
  for (int i = 0; i < s.hd; ++i) {
    koff[i] = kfold ? fold_offset(kbits, i) : 0.0;
    voff[i] = factored ? fold_offset(vbits, i) : 0.0;
  }
  const size_t nout = static_cast<size_t>(R) * s.n_heads * s.hd;
  std::vector<double> ref_o(nout), ref_got(nout), ref_tol(nout), ref_err(nout);
  const int pairs = R * s.n_heads;
#pragma omp parallel for schedule(dynamic, 1)
  for (int pr = 0; pr < pairs; ++pr) {
    const int r = pr / s.n_heads, qh_i = pr % s.n_heads;
    const int slot = rows[r];
    const int L = slot_len[slot];
    const int h = qh_i / G;
    const double zk = zbk[slot][h], zv = zbv[slot][h];
    const float* kds = kd[slot].data();
    const float* vds = vd[slot].data();
    const double* krs = kr[slot].data();
    const uint16_t* qrow = qh.data() + (static_cast<size_t>(r) * s.n_heads + qh_i) * s.hd;
    double qmax = 0;
    for (int i = 0; i < s.hd; ++i) qmax = std::max(qmax, std::fabs(static_cast<double>(half_to_float(qrow[i]))));
    const double kivi_term =  // kivi_tensor_core() above
        kivi_tc ? scale * s.hd * std::ldexp(1.0, -24) * qmax * (((1 << kbits) - 1) + zk) : 0.0;
    const double ksmax = kfold ? fold_smax(zk, kbits) : 0.0;
    std::vector<double> sc(L);
    double m = -INFINITY, delta = 0;
    for (int t = 0; t < L; ++t) {
      double dot = 0, A = 0, Ar = 0;
      const size_t base = static_cast<size_t>(t) * dim + h * s.hd;
      for (int i = 0; i < s.hd; ++i) {
        const double qv = half_to_float(qrow[i]), kv = krs[base + i];
        dot += qv * kv;
        A += factored ? 2 * std::fabs(qv) * (std::fabs(kv) + 2 * zk) : std::fabs(qv) * std::fabs(kv);
        if (kfold)  // folded key codes (attention_tolerance_factored's comment)
          A += kfold_c * std::fabs(qv) * koff[i] * ksmax;
        // RoPE error of component i: <= 2^-17 (|a| + |b|) of its unrotated pair (a, b).
        const int partner = i < s.hd / 2 ? i + s.hd / 2 : i - s.hd / 2;
        Ar += std::fabs(qv) * (std::fabs(kds[base + i]) + std::fabs(kds[base + partner]));
      }
      sc[t] = dot * scale;
      m = std::max(m, sc[t]);
      delta = std::max(delta, scale * (A * s.hd * std::ldexp(1.0, -24) +
                                       (pre ? Ar * std::ldexp(1.0, -17) : 0.0)) + kivi_term);
    }
    double l = 0;
    std::vector<double> ew(L);  // exp(s_t - m), once per key (the long cases have 40K keys)
    for (int t = 0; t < L; ++t) l += ew[t] = std::exp(sc[t] - m);
    // Token-major (contiguous channels): per channel d the same sums in the same order.
    std::vector<double> o(s.hd, 0.0), vmax(s.hd, 0.0);
    for (int t = 0; t < L; ++t) {
      const float* vt = vds + static_cast<size_t>(t) * dim + h * s.hd;
      for (int d = 0; d < s.hd; ++d) {
        const double v = vt[d];
        o[d] += ew[t] * v;
        vmax[d] = std::max(vmax[d], std::fabs(v));
      }
    }
    for (int d = 0; d < s.hd; ++d) {
      const size_t e = (static_cast<size_t>(r) * s.n_heads + qh_i) * s.hd + d;
      const double od = o[d] / l;
      const double got = half_to_float(oh[e]);
      const double fold_v = factored ? voff[d] * fold_smax(zv, vbits) : 0.0;
      ref_o[e] = od;
      ref_got[e] = got;
      ref_tol[e] = factored ? attention_tolerance_factored(od, delta, L, vmax[d], zv, fold_v)
                            : attention_tolerance(od, delta, L, vmax[d]);
      ref_err[e] = std::fabs(got - od);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int qh_i = 0; qh_i < s.n_heads; ++qh_i)
      for (int d = 0; d < s.hd; ++d) {
        const size_t e = (static_cast<size_t>(r) * s.n_heads + qh_i) * s.hd + d;
        const double got = ref_got[e], tol = ref_tol[e], err = ref_err[e];
        REQUIRE(std::isfinite(got));
        if (err > tol) {
          INFO("row " << r << " head " << qh_i << " dim " << d << ": got " << got << ", ref " << ref_o[e]
                      << ", tol " << tol << " (" << kspec << " / " << vspec << ")");
          REQUIRE(err <= tol);
        }
        res.worst_ratio = std::max(res.worst_ratio, err / tol);
        res.worst_err = std::max(res.worst_err, err);
      }
  return res;
}

void run_all(const std::string& kspec, const std::string& vspec, uint64_t fallback_seed,
             const codecs::CodecParams* kgiven = nullptr, const codecs::CodecParams* vgiven = nullptr,
             std::vector<Shape> shapes = {Shape{2, 8, 128}, Shape{3, 3, 64}, Shape{1, 2, 32},
                                          Shape{1, 8, 64}}) {
  const uint64_t seed = kvq_test::test_seed(fallback_seed);
  for (const Shape& s : shapes) {
    const Result r = run_case(kspec, vspec, s, seed, kgiven, vgiven);
    std::printf("kv packed %s / %s, kv_heads %d, heads %d, head_dim %d: bytes equal; decode max err %.3g "
                "(%.2f of tolerance), seed %llu\n",
                kspec.c_str(), vspec.c_str(), s.H, s.n_heads, s.hd, r.worst_err, r.worst_ratio,
                static_cast<unsigned long long>(seed));
  }
}

}  // namespace

TEST_CASE("kv packed: uniform int-b per token, GPU bytes == CPU bytes, decode == simulated", "[gpu][kv]") {
  run_all("int4", "int4", 901);
  run_all("int2:group=32,sym=1", "int2:group=32", 902);
  run_all("int3:group=32", "int3:sym=1", 903);
  run_all("int8:group=16", "int8:group=8", 904);
}

// head_dim 128, 2 and 4 bits, per-token groups of 16..128 channels: the tensor-core kernel
// (kernels/kv_decode_mma.cu) serves these (fp16, G * 128/key group <= 16 and
// 2 G * 128/value group <= 16); the other pairs fall back to the CUDA-core kernel. MHA, G = 2,
// 3 (a head bound of 4 with one unused), 4 and 8; lengths 10, 129 (a partial 16-token tile)
// and 300 (two 256-token stages or chunks).
TEST_CASE("kv packed: tensor-core decode (int2/int4 per token, head_dim 128) == simulated", "[gpu][kv]") {
  const std::vector<Shape> shapes = {Shape{3, 3, 128}, Shape{2, 4, 128}, Shape{2, 8, 128},
                                     Shape{1, 8, 128}, Shape{2, 6, 128}};  // G = 1, 2, 4, 8, 3
  run_all("int4", "int4", 905, nullptr, nullptr, shapes);
  run_all("int2", "int2", 906, nullptr, nullptr, shapes);
  run_all("int4:sym=1", "int4:group=64,sym=1", 908, nullptr, nullptr, shapes);
  run_all("int2:group=32", "int2:group=16", 909, nullptr, nullptr, {Shape{3, 3, 128}});
  run_all("int4:group=16", "int4:group=64", 910, nullptr, nullptr, {Shape{3, 3, 128}, Shape{2, 4, 128}});
}

// The tensor-core kernel over long contexts: slot 0 has 10,003 tokens (appended in pieces of
// 4,000 + 1 + 2 + 6,000, so the stages see tokens of several appends), slots 1 and 2 short
// ones in the same batch (their blocks past the end write empty partials). With 8 kv heads x
// 4 rows a device of <= 132 SMs gets several 256-token stages per block (the plan minimises
// waves x tokens per block: on the H100, 4 blocks per SM, 14 splits of 3 stages); MHA and
// G = 4 (KIVI: G = 2 and 4), 4 and 2 bits, int-b and KIVI. (40,003 tokens, 10 stages per block,
// passed at d52849a but took 105 s of the [kv] suite's 110, mostly the CPU reference.)
// KVQ_KV_SPAN (read per call; h67): "stage", whole-stage blocks; unset or "64", 64-token grains
// (int4 at G = 4, 3 blocks per SM on the H100: 16 splits of 640 tokens, so blocks start off the
// 256-token stage grid and end on a partial stage); the int-b specs under both, KIVI (whole
// stages always) once.
TEST_CASE("kv packed: tensor-core decode over long contexts (several stages per block) == simulated",
          "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{4000, 1, 2, 6000}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(912);
  for (const char* grain : {"stage", "64"}) {
    const EnvGuard env("KVQ_KV_SPAN", grain);
    for (const char* spec : {"int4", "int2", "kivi:bits=4", "kivi:bits=2"}) {
      const bool kivi = std::string(spec).rfind("kivi", 0) == 0;
      if (kivi && std::string(grain) != "stage") continue;
      const std::vector<Shape> shapes = kivi ? std::vector<Shape>{Shape{8, 8, 128}, Shape{8, 16, 128}, Shape{8, 32, 128}}
                                             : std::vector<Shape>{Shape{8, 8, 128}, Shape{8, 32, 128}};
      for (const Shape& s : shapes) {
        const Result r = run_case(spec, spec, s, seed, nullptr, nullptr, lc);
        std::printf("kv packed long KVQ_KV_SPAN=%s %s, kv_heads %d, heads %d: bytes "
                    "equal; decode max err %.3g (%.3f of tolerance), seed %llu\n",
                    grain, spec, s.H, s.n_heads, r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
      }
    }
  }
}

// Stage lengths of the 2-bit per-token builds (KVQ_KV_STAGE=256|384|512, read by the decode
// on every call): each over the long context (10,003 tokens in slot 0, so blocks walk several
// stages and the last one is partial; 129 and 10 in the other rows), MHA and G = 4, asym and
// sym codes. The decode must match the simulation within the same derived bound at every
// stage length (only the blocking of the online softmax changes, not the arithmetic's terms).
TEST_CASE("kv packed: tensor-core decode, 2-bit stages of 256/384/512 tokens == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{4000, 1, 2, 6000}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(921);
  for (const char* stage : {"256", "384", "512"}) {
    const EnvGuard env("KVQ_KV_STAGE", stage);
    for (const char* spec : {"int2", "int2:sym=1"})
      for (const Shape& s : {Shape{8, 8, 128}, Shape{8, 32, 128}}) {
        const Result r = run_case(spec, spec, s, seed, nullptr, nullptr, lc);
        std::printf("kv packed stage %s %s, kv_heads %d, heads %d: bytes equal; decode max err %.3g (%.3f of "
                    "tolerance), seed %llu\n",
                    stage, spec, s.H, s.n_heads, r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
      }
  }
}

// The A/B builds of the 4-bit G <= 4 kernel (KVQ_KV_OPT=0|1|2|3: without / with the unrolled
// staging copies, bit 0, and the merged warp reductions, bit 1; default 1; the 2-bit build
// takes 1 or its default 3): every one matches
// the simulation on G = 4 (and G = 3 through the same build), asym and sym, over the default
// uneven appends (200 + 1 + 1 + 37 + 61 / 129 / 10 tokens) and a 1,333-token row (6 stages).
TEST_CASE("kv packed: tensor-core decode, G <= 4 build variants (KVQ_KV_OPT) == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(922);
  for (const char* opt : {"0", "1", "2", "3"}) {
    const EnvGuard env("KVQ_KV_OPT", opt);
    // int2: the 2-bit G <= 4 build reads KVQ_KV_OPT=1 (else its default), at 256-token stages here.
    for (const char* spec : {"int4", "int4:sym=1", "int2"})
      for (const Shape& s : {Shape{2, 8, 128}, Shape{3, 9, 128}}) {
        const Result a = run_case(spec, spec, s, seed);
        const Result b = run_case(spec, spec, s, seed + 1, nullptr, nullptr, lc);
        std::printf("kv packed KVQ_KV_OPT=%s %s, kv_heads %d, heads %d: bytes equal; decode max err %.3g / %.3g "
                    "(%.3f / %.3f of tolerance; short / 1,333 tokens), seed %llu\n",
                    opt, spec, s.H, s.n_heads, a.worst_err, b.worst_err, a.worst_ratio, b.worst_ratio,
                    static_cast<unsigned long long>(seed));
      }
  }
}

// The key-pass builds of the per-token kernels at G = 1 and G <= 4 (KVQ_KV_ILP=0|2|3, read per
// call; 3 is the default, so the other cases test it too): 2 splits each tile's 8 mma k-steps
// into two chains added at the end (one more fp32 rounding per score, ~2^-24 relative, far
// inside the bound), 3 also unrolls the key tile loop by two (the odd tile count of a partial
// last stage takes the remainder path), 0 is neither (the builds before). Each must
// pass the same derived bound: MHA, G = 4 and G = 3 (the G <= 4 build), int2 / int4, sym and
// asym, the default uneven appends and a 1,333-token row (6 stages, a partial last one).
TEST_CASE("kv packed: tensor-core decode, key-pass ILP builds (KVQ_KV_ILP) == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(924);
  for (const char* ilp : {"0", "2", "3"}) {
    const EnvGuard env("KVQ_KV_ILP", ilp);
    for (const char* spec : {"int2", "int2:sym=1", "int4", "int4:sym=1"})
      for (const Shape& s : {Shape{8, 8, 128}, Shape{2, 8, 128}, Shape{3, 9, 128}}) {
        const Result a = run_case(spec, spec, s, seed);
        const Result b = run_case(spec, spec, s, seed + 1, nullptr, nullptr, lc);
        std::printf("kv packed KVQ_KV_ILP=%s %s, kv_heads %d, heads %d: bytes equal; decode max err %.3g / %.3g "
                    "(%.3f / %.3f of tolerance; short / 1,333 tokens), seed %llu\n",
                    ilp, spec, s.H, s.n_heads, a.worst_err, b.worst_err, a.worst_ratio, b.worst_ratio,
                    static_cast<unsigned long long>(seed));
      }
  }
}

// The per-warp softmax builds of the G <= 4 per-token kernels (KVQ_KV_WSM, read per call; h55;
// unset = 1, the default, and 0 = the block-wide softmax builds before, both run here):
// each warp keeps its own running max, weights' exponent and sums over its own key tiles and
// the warps are merged once per block, so besides the derived bound this exercises warps that
// see no token for several stages (rows of 10 and 129 tokens: one block with 1-9 tiles, a
// partial last tile) and warps whose maxima differ from the block's. G = 4 and G = 3 (the same
// build), int2 / int4, sym and asym, the default uneven appends and a 1,333-token row (6 stages,
// a partial last one), the 2-bit builds at 256- and 384-token stages (KVQ_KV_STAGE), and the
// 10,003-token row (several splits of several stages per head).
TEST_CASE("kv packed: tensor-core decode, per-warp softmax builds (KVQ_KV_WSM) == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  LongCase ll;
  ll.on = true;
  ll.pieces = {{4000, 1, 2, 6000}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(925);
  for (const char* wsm : {"1", "0"}) {
    for (const char* stage : {"256", "384"}) {
      const EnvGuard env("KVQ_KV_WSM", wsm);
      const EnvGuard st("KVQ_KV_STAGE", stage);  // 2-bit builds only; the 4-bit ones are 256 always
      for (const char* spec : {"int2", "int2:sym=1", "int4", "int4:sym=1"}) {
        if (std::string(stage) == "384" && std::string(spec).rfind("int4", 0) == 0) continue;
        for (const Shape& s : {Shape{2, 8, 128}, Shape{3, 9, 128}}) {
          const Result a = run_case(spec, spec, s, seed);
          const Result b = run_case(spec, spec, s, seed + 1, nullptr, nullptr, lc);
          std::printf("kv packed KVQ_KV_WSM=%s stage %s %s, kv_heads %d, heads %d: bytes equal; decode max err %.3g / "
                      "%.3g (%.3f / %.3f of tolerance; short / 1,333 tokens), seed %llu\n",
                      wsm, stage, spec, s.H, s.n_heads, a.worst_err, b.worst_err, a.worst_ratio, b.worst_ratio,
                      static_cast<unsigned long long>(seed));
        }
        const Shape s{8, 32, 128};
        const Result c = run_case(spec, spec, s, seed + 2, nullptr, nullptr, ll);
        std::printf("kv packed KVQ_KV_WSM=%s stage %s %s, kv_heads %d, heads %d: decode max err %.3g (%.3f of "
                    "tolerance; 10,003 tokens), seed %llu\n",
                    wsm, stage, spec, s.H, s.n_heads, c.worst_err, c.worst_ratio,
                    static_cast<unsigned long long>(seed));
      }
    }
  }
}

// The split-K combine's launches (kernels/kv_decode_stream.cu, KVQ_KV_COMBINE read per call):
// unset (the default) and "pdl" launch it with programmatic stream serialization (its blocks
// wait in griddepcontrol.wait for the attention grid), "1" the ordinary way: the same
// arithmetic in the same order, so besides passing the derived bound on every output
// (NaN-poisoned first) each launch must give exactly the errors of the ordinary one on the
// same seed. int2 / int4 (G = 1 and 4) and KIVI (G = 1 and 2: its tail kernel runs between
// the attention kernel and the combine), the default uneven appends and a 1,333-token row
// (several splits per head). Before compute capability 9 every mode is the ordinary launch
// and the equality is trivially met.
TEST_CASE("kv packed: tensor-core decode, combine launched with PDL == ordinary launch == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(923);
  for (const char* spec : {"int2", "int4", "kivi:bits=2"}) {
    const bool kivi = std::string(spec).rfind("kivi", 0) == 0;
    for (const Shape& s : {Shape{3, 3, 128}, kivi ? Shape{4, 8, 128} : Shape{2, 8, 128}}) {
      Result res[3][2];  // ordinary, pdl, default x short, 1,333 tokens
      const char* modes[3] = {"1", "pdl", nullptr};
      for (int m = 0; m < 3; ++m) {
        const EnvGuard env("KVQ_KV_COMBINE", modes[m]);  // null: unset
        res[m][0] = run_case(spec, spec, s, seed);
        res[m][1] = run_case(spec, spec, s, seed + 1, nullptr, nullptr, lc);
        std::printf("kv packed KVQ_KV_COMBINE=%s %s, kv_heads %d, heads %d: decode max err %.3g / %.3g (%.3f / "
                    "%.3f of tolerance; short / 1,333 tokens), seed %llu\n",
                    modes[m] ? modes[m] : "(unset)", spec, s.H, s.n_heads, res[m][0].worst_err, res[m][1].worst_err,
                    res[m][0].worst_ratio, res[m][1].worst_ratio, static_cast<unsigned long long>(seed));
      }
      for (int m = 1; m < 3; ++m)
        for (int c = 0; c < 2; ++c) {
          CHECK(res[m][c].worst_err == res[0][c].worst_err);
          CHECK(res[m][c].worst_ratio == res[0][c].worst_ratio);
        }
    }
  }
}

// The folded code conversion at its largest cancellation: same-sign queries x4 (sum_d q_d off(d)
// ~ 4 * 0.8 * 128 * 85 = 35K at 2 bits against dot products of a few hundred code units),
// 2 and 4 bits, sym and asym, MHA and G = 4; lengths 1,333 (6 stages), 129, 10.
TEST_CASE("kv packed: tensor-core decode, folded codes with same-sign queries == simulated", "[gpu][kv]") {
  LongCase lc;
  lc.on = true;
  lc.qpos = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(918);
  for (const char* spec : {"int2", "int4", "int2:sym=1", "int4:sym=1"})
    for (const Shape& s : {Shape{4, 4, 128}, Shape{2, 8, 128}}) {
      const Result r = run_case(spec, spec, s, seed, nullptr, nullptr, lc);
      std::printf("kv packed folded %s, same-sign q, kv_heads %d, heads %d: bytes equal; decode max err %.3g "
                  "(%.3f of tolerance), seed %llu\n",
                  spec, s.H, s.n_heads, r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
    }
}

// KIVI through the tensor-core kernel (G <= 2, head_dim 128): the quantized tokens in the
// staged kernel, the last R tokens (mixed quantized / residual keys, residual values) in its
// tail kernel. Lengths 300 / 129 / 10 with R = 128 give a row with one partial stage plus a
// tail of quantized and residual keys, a row with one streamed token, and a row that is all
// tail; R = 64 and key groups of 64 and 16 vary the group staging (value groups of 32 take
// the build with 4 value groups at compile time, 16 and 64 the run-time one).
TEST_CASE("kv packed: KIVI on the tensor cores (G <= 2, head_dim 128) == simulated", "[gpu][kv]") {
  const std::vector<Shape> shapes = {Shape{3, 3, 128}, Shape{2, 4, 128}};
  run_all("kivi:bits=4", "kivi:bits=4", 913, nullptr, nullptr, shapes);
  run_all("kivi:bits=2", "kivi:bits=2", 914, nullptr, nullptr, shapes);
  run_all("kivi:bits=2,group=32,residual=64", "kivi:bits=2,group=32,residual=64", 915, nullptr, nullptr, shapes);
  run_all("kivi:bits=4,group=64,residual=128", "kivi:bits=4,group=64,residual=128", 916, nullptr, nullptr,
          {Shape{3, 3, 128}});
  // group 16: value groups of 16 channels, so G = 1 takes two value n-tiles and G = 2 falls
  // back to the CUDA-core kernel (2 G * 8 > 16).
  run_all("kivi:bits=4,group=16,residual=32", "kivi:bits=4,group=16,residual=32", 917, nullptr, nullptr, shapes);
}

// KIVI's tail kernel (kernels/kv_decode_stream.cu: rows staged by cp.async in 128-token
// chunks) on long residuals, G = 1, 2 and 4: R = 256 and 1,024 put the 300-token row's tail in
// two and three chunks (R = 1,024 at G = 4 also needs more than 48 KB of shared memory: the
// launch's opt-in attribute), R = 4,096 at G = 4 (99 KB). Passed on the H100 (2026-11-23,
// f0c4e67) under both tail kernels of that commit. The launch order: these shapes (a few tail
// blocks, fewer than the device's SMs) take the tail grid first (the attention grid beside it as its programmatic
// dependent, waiting for it at its end), where R = 1,024 makes the tail the longer grid, so a
// combine that did not wait for it would read stale partials; KVQ_KV_TAILFIRST=0 forces the
// order after (the default where the tail grid has more blocks than the device has SMs).
TEST_CASE("kv packed: KIVI tail kernel (long residuals, both launch orders) == simulated", "[gpu][kv]") {
  const std::vector<Shape> shapes = {Shape{3, 3, 128}, Shape{2, 4, 128}, Shape{2, 8, 128}};  // G = 1, 2, 4
  run_all("kivi:bits=4,group=32,residual=256", "kivi:bits=4,group=32,residual=256", 945, nullptr, nullptr, shapes);
  run_all("kivi:bits=2,group=32,residual=1024", "kivi:bits=2,group=32,residual=1024", 946, nullptr, nullptr,
          {Shape{2, 8, 128}});
  run_all("kivi:bits=4,group=32,residual=4096", "kivi:bits=4,group=32,residual=4096", 947, nullptr, nullptr,
          {Shape{2, 8, 128}});
  const EnvGuard env("KVQ_KV_TAILFIRST", "0");
  run_all("kivi:bits=4", "kivi:bits=4", 948, nullptr, nullptr, shapes);
  run_all("kivi:bits=2,group=32,residual=1024", "kivi:bits=2,group=32,residual=1024", 949, nullptr, nullptr,
          {Shape{2, 8, 128}, Shape{2, 6, 128}});
}

// KIVI on GQA (G = 3 and 4, KIVI's 32-channel value groups): the KG build of the tensor-core
// kernel (a value n-tile per value group, each 16-channel m-tile taking its group's B fragment;
// the value codes staged with the words of a row permuted), its tail kernel at G = 4, on the
// same derived bound as the G <= 2 builds (the arithmetic's terms are the same: keys through
// q' s hi/lo per key group, values through p s 2^E hi/lo per value group). Lengths 300 / 129 /
// 10 with R = 128 (a partial stage, one streamed token, all tail) and R = 64 (quantized tokens
// past the last whole key group in the tail); G = 4 with one kv head too. KVQ_KV_KIVI=0 sends
// the same pairs to the CUDA-core kernels (the path before), on their own bound. Passed on the
// H100 (2026-11-23, archives of feb5e15 .. 446d5c7): KG cases 0.00-0.004 of the bound.
TEST_CASE("kv packed: KIVI on the tensor cores at G = 3, 4 (32-channel value groups) == simulated", "[gpu][kv]") {
  const std::vector<Shape> shapes = {Shape{2, 6, 128}, Shape{2, 8, 128}, Shape{1, 4, 128}};  // G = 3, 4, 4
  run_all("kivi:bits=4", "kivi:bits=4", 931, nullptr, nullptr, shapes);
  run_all("kivi:bits=2", "kivi:bits=2", 932, nullptr, nullptr, shapes);
  run_all("kivi:bits=2,group=32,residual=64", "kivi:bits=2,group=32,residual=64", 933, nullptr, nullptr, shapes);
  run_all("kivi:bits=4,group=32,residual=64", "kivi:bits=4,group=32,residual=64", 934, nullptr, nullptr, shapes);
  {
    const EnvGuard env("KVQ_KV_KIVI", "0");
    run_all("kivi:bits=4", "kivi:bits=4", 935, nullptr, nullptr, {Shape{2, 8, 128}});
  }
  {  // KVQ_KV_KIVI=1: KG with the exact key conversion (the build before h64's folded default);
     // residuals 128 and 64 (key groups 32)
    const EnvGuard env("KVQ_KV_KIVI", "1");
    run_all("kivi:bits=4", "kivi:bits=4", 937, nullptr, nullptr, shapes);
    run_all("kivi:bits=2,group=32,residual=64", "kivi:bits=2,group=32,residual=64", 938, nullptr, nullptr, shapes);
  }
  // A 1,333-token row next to short ones (6 splits of one stage each, the last partial; several
  // stages per block, i.e. the rescale across stages: the long-context case at G = 4).
  LongCase lc;
  lc.on = true;
  lc.pieces = {{1000, 1, 332}, {129}, {7, 1, 1, 1}};
  const uint64_t seed = kvq_test::test_seed(936);
  for (const char* spec : {"kivi:bits=4", "kivi:bits=2"})
    for (const Shape& s : {Shape{2, 8, 128}, Shape{2, 6, 128}}) {
      const Result r = run_case(spec, spec, s, seed, nullptr, nullptr, lc);
      std::printf("kv packed %s, kv_heads %d, heads %d, 1,333 tokens: decode max err %.3g (%.3f of tolerance), "
                  "seed %llu\n",
                  spec, s.H, s.n_heads, r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
    }
  // The folded keys (KG's default) at the fold's largest cancellation: same-sign queries x4
  // (sum_d q'_d s_d off(d) adds up), G = 4, several stages per block.
  lc.qpos = true;
  for (const char* spec : {"kivi:bits=4", "kivi:bits=2"}) {
    const Result r = run_case(spec, spec, Shape{2, 8, 128}, seed, nullptr, nullptr, lc);
    std::printf("kv packed KG folded keys %s, same-sign q, kv_heads 2, heads 8, 1,333 tokens: decode max err %.3g "
                "(%.3f of tolerance), seed %llu\n",
                spec, r.worst_err, r.worst_ratio, static_cast<unsigned long long>(seed));
  }
}

TEST_CASE("kv packed: KIVI channel-grouped keys + fp16 residual, per-token values", "[gpu][kv]") {
  run_all("kivi:bits=2,group=32,residual=64", "kivi:bits=2,group=32,residual=64", 911);
  run_all("kivi:bits=4,group=16,residual=32", "kivi:bits=4,group=16,residual=32", 912);
}

TEST_CASE("kv packed: KVQuant pre-RoPE LUT keys, outliers, sinks, dynamic values", "[gpu][kv]") {
  // The general kernel (fp32 throughout), whose error this test's bound describes. KVQuant's
  // tensor-core builds (kvq-fold2 / kvq-foldm, the defaults where they fit) round keys,
  // values and weights to fp16, terms this bound does not have: tests/gpu/kv_kvquant_test.cpp
  // checks each of them against the simulated cache with those terms derived.
  const EnvGuard env("KVQ_KV_DECODE", "general");
  run_all("kvquant:bits=4", "kvquant:bits=4", 921);
  run_all("kvquant:bits=3,outliers=0.05,sink=4", "kvquant:bits=3,outliers=0.05,sink=4", 922);
  run_all("kvquant:bits=2,outliers=0", "kvquant:bits=2,outliers=0,sink=0", 923);
  // Calibrated parameters: a non-uniform LUT, given key ranges and Q-Norm.
  for (int hd : {128}) {
    const Shape s{2, 8, hd};
    codecs::CodecParams kg, vg;
    kg.tensors["lut"] = {-1.f, -0.6f, -0.35f, -0.2f, -0.1f, -0.05f, -0.02f, 0.f,
                         0.01f, 0.04f, 0.09f, 0.18f, 0.3f, 0.5f, 0.75f, 1.f};
    vg.tensors["lut"] = kg.tensors["lut"];
    std::vector<float> lo(s.H * hd), hi(s.H * hd);
    for (int c = 0; c < s.H * hd; ++c) {
      lo[c] = c % hd == 5 ? -12.f : -2.2f;
      hi[c] = c % hd == 5 ? 12.f : 2.5f;
    }
    kg.tensors["k_lo"] = lo;
    kg.tensors["k_hi"] = hi;
    kg.numbers["qnorm_scale"] = 1.03;
    kg.numbers["qnorm_offset"] = -0.01;
    vg.numbers["qnorm_scale"] = 0.98;
    vg.numbers["qnorm_offset"] = 0.002;
    const uint64_t seed = kvq_test::test_seed(924);
    const Result r = run_case("kvquant:bits=4", "kvquant:bits=4", s, seed, &kg, &vg);
    std::printf("kv packed kvquant calibrated (LUT, ranges, Q-Norm): decode max err %.3g (%.2f of "
                "tolerance), seed %llu\n", r.worst_err, r.worst_ratio, (unsigned long long)seed);
  }
}

TEST_CASE("kv packed: WKVQuant smoothing + per-token groups", "[gpu][kv]") {
  const uint64_t seed = kvq_test::test_seed(931);
  std::mt19937_64 rng(seed);
  for (const Shape& s : {Shape{2, 8, 128}, Shape{3, 3, 64}}) {
    codecs::CodecParams g;
    std::uniform_real_distribution<float> ud(0.25f, 4.f), dd(-1.f, 1.f);
    std::vector<float> delta(s.H * s.hd), sc(s.H * s.hd);
    for (auto& v : delta) v = dd(rng);
    for (auto& v : sc) v = ud(rng);
    g.tensors["delta"] = delta;
    g.tensors["s"] = sc;
    const Result r = run_case("wkvquant:bits=4,group=32", "wkvquant:bits=3", s, seed, &g, &g);
    std::printf("kv packed wkvquant, kv_heads %d, head_dim %d: decode max err %.3g (%.2f of tolerance), seed %llu\n",
                s.H, s.hd, r.worst_err, r.worst_ratio, (unsigned long long)seed);
  }
}

// Regression (the one int8 mismatch of the first device run): a group whose minimum is a
// zero holding +0 before -0. The CPU's std::min keeps the first of equal values, so the
// stored fp16 zero point is +0 (0x0000); the GPU used fminf, which returns -0 (0x8000).
// Rows here plant every order of signed zeros at a group's minimum and maximum, per token
// (groups of 8 channels), per channel (KIVI groups of 8 tokens) and per KVQuant value row.
std::vector<float> signed_zero_rows(int T, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> ud(0.25f, 2.f);
  std::vector<float> x(static_cast<size_t>(T) * dim);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < dim; ++c) {
      const int pat = (t + c / 8) % 6;
      float v = ud(rng);
      const int k = c % 8;
      if (pat == 0) v = k == 0 ? 0.f : (k == 1 ? -0.f : v);       // +0 then -0 at the min
      if (pat == 1) v = k == 0 ? -0.f : (k == 1 ? 0.f : v);       // -0 then +0 at the min
      if (pat == 2) v = k == 0 ? 0.f : (k == 1 ? -0.f : -v);      // +0 then -0 at the max
      if (pat == 3) v = k == 0 ? -0.f : (k == 1 ? 0.f : -v);      // -0 then +0 at the max
      if (pat == 4) v = (k % 2) ? -0.f : 0.f;                     // all zeros, mixed signs
      if (pat == 5 && t % 2) v = -0.f;                            // per-channel zeros over tokens
      if (pat == 5 && t % 2 == 0 && c % 3 == 0) v = 0.f;
      x[static_cast<size_t>(t) * dim + c] = v;
    }
  return x;
}

TEST_CASE("kv packed: signed zeros at a group's min/max give the CPU's bytes (int8 regression)", "[gpu][kv]") {
  const uint64_t seed = kvq_test::test_seed(941);
  const Shape s{2, 4, 32};
  const int dim = s.H * s.hd, T = 36;
  RopeConfig rc;
  rc.theta = 10000.0;
  for (const char* spec : {"int8:group=8", "int4:group=8", "int2:group=16,sym=1",
                           "kivi:bits=2,group=8,residual=16", "kvquant:bits=4,outliers=0.05,sink=0",
                           "kvquant:bits=2,outliers=0,sink=2"}) {
    auto kc = make(spec, KvSide::kKey, s, nullptr);
    auto vc = make(spec, KvSide::kValue, s, nullptr);
    const bool pre = kc->stage() == codecs::RopeStage::kPreRope;
    cuda::PackedKvCache gpu(*kc, *vc, 1, 64, s.n_heads,
                            pre ? rope_inv_freq(rc, s.hd) : std::vector<double>{});
    const std::vector<float> K = signed_zero_rows(T, dim, seed), V = signed_zero_rows(T, dim, seed + 1);
    gpu.append_host(0, K.data(), V.data(), T, dim);
    for (bool key : {true, false}) {
      const auto& codec = key ? *kc : *vc;
      const int64_t qn = gpu.quantized_tokens(key, 0);
      REQUIRE(qn > 0);
      const auto cpu = cpu_chunk(codec, key ? K : V, {T}, qn);
      const auto dev = gpu.download(key, 0, 0, qn);
      require_same(cpu, dev, codec.describe() + (key ? " keys" : " values") + " (signed zeros)");
    }
    std::printf("kv packed signed zeros %s: bytes equal, seed %llu\n", spec,
                static_cast<unsigned long long>(seed));
  }
}

TEST_CASE("kv packed: codecs without a GPU path and bad use are typed errors", "[gpu][kv]") {
  const Shape s{2, 4, 64};
  auto k = make("fp8", KvSide::kKey, s, nullptr);
  auto v = make("int4", KvSide::kValue, s, nullptr);
  REQUIRE_THROWS_AS(cuda::PackedKvCache(*k, *v, 1, 16, 4), UnsupportedError);
  auto k2 = make("int4:axis=channel", KvSide::kKey, s, nullptr);
  REQUIRE_THROWS_AS(cuda::PackedKvCache(*k2, *v, 1, 16, 4), UnsupportedError);
  auto k3 = make("int4", KvSide::kKey, s, nullptr);
  cuda::PackedKvCache c(*k3, *v, 1, 16, 4);
  std::vector<float> rows(17 * 128, 0.5f);
  REQUIRE_THROWS_AS(c.append_host(0, rows.data(), rows.data(), 17, 128), InvalidArgument);
  REQUIRE_THROWS_AS(c.decode(nullptr, nullptr), InvalidArgument);  // before prepare
  auto kq = make("kvquant", KvSide::kKey, s, nullptr);
  auto vq = make("kvquant", KvSide::kValue, s, nullptr);
  REQUIRE_THROWS_AS(cuda::PackedKvCache(*kq, *vq, 1, 16, 4), InvalidArgument);  // no inv_freq
}
