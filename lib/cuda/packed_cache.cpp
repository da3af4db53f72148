// The GPU packed KV cache: buffers, codec parameters -> kern::PackedSide, the KVQuant key
// freeze (host, once, from the first append that holds non-sink tokens: the same order
// statistics as lib/codecs/kvquant.cpp), decode launches, byte counts and the downloads in
// CPU chunk order that the bit-exact tests compare. See packed_cache.h.
#include "lib/cuda/packed_cache.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "formats/error.h"
#include "kernels/kv_decode_kvquant.cuh"
#include "kernels/kv_ops.cuh"
#include "lib/cuda/check.h"

namespace kvq::cuda {

using codecs::Codec;
using codecs::KvSide;
using kern::KvFormat;
using kern::PackedSide;

namespace {

int num(const codecs::CodecParams& p, const char* k, double fallback) {
  return static_cast<int>(p.number(k, fallback));
}

struct Side {
  PackedSide d;
  std::vector<DeviceBuffer> bufs;
  std::vector<float> lut, kmid, khalf, lo, hi;  // host copies of static parameters
  double frac = 0;
  std::vector<char> frozen;  // per slot; KVQuant keys without calibration: 0 until frozen
  bool key = false;
  std::string where;

  void* alloc(size_t bytes, const char* what, bool zero) {
    bufs.emplace_back(std::max<size_t>(bytes, 16), what);
    if (zero) KVQ_CUDA_CHECK(cudaMemset(bufs.back().get(), 0, bufs.back().bytes()));
    return bufs.back().get();
  }
  template <typename T>
  const T* upload(const std::vector<T>& v, const char* what) {
    void* p = alloc(v.size() * sizeof(T), what, false);
    KVQ_CUDA_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return static_cast<const T*>(p);
  }
};

std::string reason(const Codec& c) {
  const std::string m = c.method();
  const std::string d = c.describe();
  const int hd = c.shape().head_dim;
  if (hd > kern::kMaxHeadDim || hd < 8 || (hd & (hd - 1)))
    return "head_dim " + std::to_string(hd) + " (the GPU path needs a power of two in 8..128)";
  if (m.size() == 4 && m.rfind("int", 0) == 0) {
    if (d.find("axis=channel") != std::string::npos) return "intB axis=channel has no GPU path yet";
    if (num(c.params(), "group", hd) % 8 != 0) return "group must be a multiple of 8 on the GPU";
    return {};
  }
  if (m == "kivi") {
    const int g = num(c.params(), "group", 32);
    if (c.side() == KvSide::kValue && std::min(g, hd) % 8 != 0)
      return "kivi value group must be a multiple of 8 on the GPU";
    return {};
  }
  if (m == "kvquant") {
    const auto p = c.params();
    if (d.find("qnorm=1") != std::string::npos && !p.numbers.count("qnorm_fitted"))
      if (p.number("qnorm_scale", 1.0) == 1.0 && p.number("qnorm_offset", 0.0) == 0.0)
        return "kvquant qnorm=1 fits Q-Norm on the CPU; pass qnorm_scale/qnorm_offset from a profile";
    if (c.shape().dim() > 65535) return "outlier columns are uint16";
    return {};
  }
  if (m == "wkvquant") {
    if (num(c.params(), "group", hd) % 8 != 0) return "group must be a multiple of 8 on the GPU";
    return {};
  }
  return "method " + m + " has no GPU path yet (done: intB axis=token, kivi, kvquant, wkvquant)";
}

// KVQuant's own decode kernels, where kvquant_decode::fits() holds (2 or 4 bits, head_dim 128,
// rotate-half RoPE, G <= 8). KVQ_KV_DECODE picks a build, read at every call (one getenv) so
// that a test or `kvq-kvbench --ab` can run several builds in one process; any value that names
// no KVQuant build (general, mma-stream, ...) keeps kv_decode_attention's choice, the general
// kernel for KVQuant. Unset: kvq-fold2 at G = 1, kvq-foldm at G > 1 (both in
// kernels/kv_decode_kvquant_fold.cu), the fastest builds measured (H100, 2026-11-23;
// notes/s7/results-h62.md has the tables):
//  - G = 1: kvq-fold2 (h54: the lane's key coefficients in registers, lane-private 4-bit tables),
//    fastest in all 8 llama2-7b cells of the lead's one-process A/B of the five session-6 builds
//    (archive of b0add53: 0.85-1.00x fp16; the next, kvq-foldm, 0.75-0.93x).
//  - G > 1: kvq-foldm (h56: tokens as the key pass's mma M, the G heads as N, the lane-private
//    value table). In that A/B kvq-stream (one pass per stage) was fastest at llama3-8b batch 1;
//    after the value-outlier fix (warp_channel_add, 1ef91a2) kvq-foldm is faster than it in all 8
//    llama3-8b cells of one process (1.10-1.43x; b1 32K 4 bits 91.3 against 107.0 us).
// Each value forces its build at every G.
enum class KvqBuild { kDefault, kFold2, kFoldM, kNone };
KvqBuild kvquant_build() {
  const char* e = std::getenv("KVQ_KV_DECODE");
  if (!e || !*e) return KvqBuild::kDefault;
  const std::string_view v(e);
  return v == "kvq-fold2" ? KvqBuild::kFold2 : v == "kvq-foldm" ? KvqBuild::kFoldM : KvqBuild::kNone;
}
// The build decode() runs for KVQ_KV_DECODE's choice `b` (kvquant_build()) at n_heads / kv_heads:
// the one place that resolves kDefault, so kvquant_decode_build() reports what decode() launches.
KvqBuild resolve_kvquant_build(KvqBuild b, int n_heads, int kv_heads) {
  if (b != KvqBuild::kDefault) return b;
  return n_heads == kv_heads ? KvqBuild::kFold2 : KvqBuild::kFoldM;
}
// A two-valued switch read at every call (kvq-kvbench --ab): unset or empty gives `unset`,
// `off` false, `on` true; any other value is an InvalidArgument naming the variable.
bool env_choice(const char* name, const char* off, const char* on, bool unset, const std::string& where,
                const char* hint) {
  const char* e = std::getenv(name);
  if (!e || !*e) return unset;
  const std::string_view v(e);
  if (v != off && v != on)
    throw InvalidArgument(where, std::string(name) + "=" + std::string(v) + ": not " + off + " or " + on, hint);
  return v == on;
}
// KVQ_KVQ_KOUT (h65, read at every call like KVQ_KV_DECODE, for `kvq-kvbench --ab`): how the
// KVQuant builds' key-outlier pass gets R(j): "new" or unset = the stage anchor R(j0) composed
// with an fp32 R(j - j0); "old" = anchor() per record (the angle reduced in double). new is the
// default: faster in all 16 cells of one process (H100, 2026-11-23, archive of 2518e01; llama3-8b
// 1.01-1.02x, llama2-7b 1.02-1.05x; notes/s7/results-h65.md). Any other value is an InvalidArgument.
bool kvquant_kout_stage(const std::string& where) {
  return env_choice("KVQ_KVQ_KOUT", "old", "new", true, where,
                    "unset KVQ_KVQ_KOUT (new), or old for the per-record double-precision angle");
}
// KVQ_KVQ_STAGE (h82, read at every call, for `kvq-kvbench --ab KVQ_KVQ_STAGE=0,1`): "1" = the
// KVQuant builds whose pass 1b key code words and pass 3 value tiles are copied into shared
// memory by cp.async ahead of use (the loads ncu found exposed, H100 2026-11-23: 27% long-
// scoreboard stalls at llama2-7b b1 32K; kernels/kv_decode_kvquant_fold.cu), where such a build
// exists (kern::kvquant_decode::stage_built: 2 / 4 bits, no Q-Norm, G = 1 or 3..4), else the
// default one; outputs bit-identical either way. "0" or unset = the default build, as measured.
// Not yet run on a GPU: opt-in until its A/B. Any other value is an InvalidArgument.
bool kvquant_stage(const std::string& where) {
  return env_choice("KVQ_KVQ_STAGE", "0", "1", false, where,
                    "unset KVQ_KVQ_STAGE or 0 (the default build), or 1 for the staged loads");
}
// KVQ_KVQ_VSUM (h72, bfly|gather) is no longer read: the gather sum of the value-outlier
// corrections was faster in all 16 cells of its A/B and is the only path (h81; the switch is last
// in f0c4e67; figures at warp_channel_add, kernels/kv_decode_kvquant_common.cuh).
// Values naming retired kernels are an error rather than a silent alias, so that an A/B run
// written for them cannot report one kernel twice: KVQ_KV_DECODE=mma|mma3|mma-hoist (version 3
// of the tensor-core decode, slower than version 4 in every measured cell,
// notes/s4/results-h31.md) and kvq-fast (h42's CUDA-core KVQuant kernel, slower than kvq-mma in all 16 cells,
// 1.11-1.49x, notes/s5/results-h45.md). Both were removed after dfabb0b (notes/kv-cuda-perf.md).
// kvq-fold2k (h54: kvq-fold2's key pass with kvq-fold's shared value table, 1-14% slower than
// kvq-fold2 at 4 bits, the same kernel at 2 bits; H100 2026-11-23, notes/s6/results-h54.md) was
// removed after 8424090.
// kvq-fold (h51's key pass, heads as M) and kvq-mma (h45's fp32 three-pass build,
// kernels/kv_decode_kvquant_mma.cu) were removed after 5e9f6a3: fastest in none of the 16 cells of
// the session-7 A/B above (notes/s7/results-h62.md).
// kvq-stream (h47's one-pass build, kernels/kv_decode_kvquant_stream.cu) was removed after
// 1ef91a2: slower than kvq-foldm in all 8 llama3-8b cells once both had the value-outlier fix.
void reject_retired_decode(const std::string& where) {
  const char* e = std::getenv("KVQ_KV_DECODE");
  if (!e) return;
  const std::string v = e;
  if (v == "mma" || v == "mma3" || v == "mma-hoist")
    throw InvalidArgument(where, "KVQ_KV_DECODE=" + v + ": version 3 of the tensor-core decode was retired (last in dfabb0b)",
                          "unset KVQ_KV_DECODE (or mma-stream) for version 4");
  if (v == "kvq-fold2k")
    throw InvalidArgument(where, "KVQ_KV_DECODE=kvq-fold2k: kvq-fold2's key pass without its value table was retired (last in 8424090)",
                          "KVQ_KV_DECODE=kvq-fold2 (or unset at MHA) for the build with both tables");
  if (v == "kvq-stream")
    throw InvalidArgument(where, "KVQ_KV_DECODE=kvq-stream: the one-pass KVQuant build was retired (last in 1ef91a2)",
                          "unset KVQ_KV_DECODE for the fastest build, or kvq-fold2 / kvq-foldm");
  if (v == "kvq-fold" || v == "kvq-mma")
    throw InvalidArgument(where, "KVQ_KV_DECODE=" + v + ": this KVQuant build was retired (last in 5e9f6a3)",
                          "unset KVQ_KV_DECODE for the fastest build, or kvq-fold2 / kvq-foldm");
  if (v == "kvq-fast")
    throw InvalidArgument(where, "KVQ_KV_DECODE=kvq-fast: the CUDA-core KVQuant kernel was retired (last in dfabb0b)",
                          "unset KVQ_KV_DECODE for the tensor-core KVQuant kernels, kvq-fold2 / kvq-foldm for its builds");
}
}  // namespace

std::string packed_unsupported_reason(const Codec& codec) { return reason(codec); }

struct PackedKvCache::Impl {
  Side k, v;
  int slots = 0, max_tokens = 0, n_heads = 0, H = 0, hd = 0;
  std::vector<int64_t> len;
  DeviceBuffer scratch, rows_tmp;
  const double* inv_freq = nullptr;
  DeviceBuffer inv_freq_buf;
  bool interleaved = false;
  // prepared decode
  std::vector<int> rows_slots;
  DeviceBuffer d_slots, d_len, work;
  int max_len = 0;
  int sm_count = 0;

  void build(Side& s, const Codec& c);
  void freeze_keys(Side& s, int slot, const float* k_dev, int n, int64_t ld, int64_t pos0);
  std::vector<uint32_t> offsets(const Side& s, int slot, int h) const;
};

void PackedKvCache::Impl::build(Side& s, const Codec& c) {
  const std::string why = reason(c);
  s.where = "--kv " + c.describe() + " (layer " + std::to_string(c.layer()) + ", " +
            std::string(codecs::side_name(c.side())) + ", cuda)";
  if (!why.empty()) throw UnsupportedError(s.where, why);
  const codecs::CodecParams p = c.params();
  const std::string m = c.method();
  PackedSide& d = s.d;
  s.key = c.side() == KvSide::kKey;
  d.head_dim = hd;
  d.kv_heads = H;
  d.slots = slots;
  d.max_tokens = max_tokens;
  d.bits = c.bits();
  const int64_t sh = static_cast<int64_t>(slots) * H;
  if (m == "kivi") {
    const int g = num(p, "group", 32), R = num(p, "residual", 128);
    d.resid_cap = R;
    if (s.key) {
      d.format = KvFormat::kChannelAsym;
      d.group = g;
      d.max_tokens = max_tokens = (max_tokens + g - 1) / g * g;
    } else {
      d.format = KvFormat::kTokenAsym;
      d.group = std::min(g, hd);
      d.mpr = 2 * (hd / d.group);
    }
  } else if (m == "kvquant") {
    d.format = s.key ? KvFormat::kLutChannel : KvFormat::kLutToken;
    s.frac = p.number("outliers", 0.01);
    d.n_sink = num(p, "sink", 1);
    d.outliers = s.frac > 0;
    d.qa = static_cast<float>(p.number("qnorm_scale", 1.0));
    d.qb = static_cast<float>(p.number("qnorm_offset", 0.0));
    s.lut = *p.tensor("lut");
    d.lut = s.upload(s.lut, "kvquant lut");
    if (s.key) {
      if (const auto* lo = p.tensor("k_lo")) {
        s.lo = *lo;
        s.hi = *p.tensor("k_hi");
      } else {  // per-slot ranges, frozen from each sequence's first append
        s.frozen.assign(slots, 0);
        d.range_stride = static_cast<int64_t>(H) * hd;
        for (const float** a : {&d.lo, &d.hi, &d.kmid, &d.khalf})
          *a = static_cast<const float*>(s.alloc(sh * hd * 4, "key ranges", true));
      }
    } else {
      d.mpr = 2;
      d.topk = static_cast<int>(std::nearbyint(s.frac * hd));
    }
  } else {  // intB, wkvquant
    const bool sym = p.number("sym", 0) != 0;
    d.format = sym ? KvFormat::kTokenSym : KvFormat::kTokenAsym;
    d.group = num(p, "group", hd);
    if (d.group <= 0) d.group = hd;
    d.mpr = (hd / d.group) * (sym ? 1 : 2);
    if (m == "wkvquant") {
      const std::vector<float> delta = *p.tensor("delta"), sc = *p.tensor("s");
      std::vector<float> inv(sc.size());
      for (size_t i = 0; i < sc.size(); ++i) inv[i] = 1.0f / sc[i];  // as wkvquant.cpp
      d.delta = s.upload(delta, "wkvquant delta");
      d.s = s.upload(sc, "wkvquant s");
      d.inv_s = s.upload(inv, "wkvquant 1/s");
    }
  }
  d.wpr = static_cast<int>(kvlayout::packed_words(d.bits, hd));
  const int64_t rows = sh * d.max_tokens;
  d.codes = static_cast<uint32_t*>(s.alloc((rows * d.wpr + 1) * 4, "packed KV codes", true));
  if (d.mpr > 0) d.meta = static_cast<uint16_t*>(s.alloc(rows * d.mpr * 2, "packed KV scales", true));
  if (d.format == KvFormat::kChannelAsym)
    d.cmeta = static_cast<uint16_t*>(
        s.alloc(sh * (d.max_tokens / d.group) * hd * 2 * 2, "packed KV channel scales", true));
  if (d.resid_cap > 0)
    d.resid = static_cast<uint16_t*>(s.alloc(sh * d.resid_cap * hd * 2, "KV fp16 residual", true));
  if (d.n_sink > 0)
    d.sink = static_cast<uint16_t*>(
        s.alloc(sh * d.n_sink * hd * 2, "KV fp16 sinks", true));
  if (d.outliers) {
    d.off = static_cast<uint32_t*>(s.alloc(sh * (d.max_tokens + 1) * 4, "outlier offsets", true));
    // Capacity: values hold exactly topk per token; keys 4x the calibrated rate + 2 per
    // token (later tokens beyond the prefill's range may add more: overflow is checked).
    const int64_t per_tok = s.key ? static_cast<int64_t>(std::ceil(4 * s.frac * hd)) + 2 : d.topk;
    d.out_cap = std::max<int64_t>(1, per_tok * d.max_tokens);
    d.rec = static_cast<kvlayout::Outlier*>(s.alloc(sh * d.out_cap * 4, "outlier records", true));
    d.overflow = static_cast<int*>(s.alloc(4, "overflow flag", true));
  }
  if (!s.lo.empty()) {  // static key ranges given
    const int dim = H * hd;
    s.kmid.resize(dim);
    s.khalf.resize(dim);
    for (int c2 = 0; c2 < dim; ++c2) {
      s.kmid[c2] = 0.5f * (s.lo[c2] + s.hi[c2]);
      s.khalf[c2] = 0.5f * (s.hi[c2] - s.lo[c2]);
    }
    d.lo = s.upload(s.lo, "key lo");
    d.hi = s.upload(s.hi, "key hi");
    d.kmid = s.upload(s.kmid, "key mid");
    d.khalf = s.upload(s.khalf, "key half");
  }
}

// lib/codecs/kvquant.cpp's freeze for keys without calibration: order statistics
// v[k], v[n-1-k] per channel over the non-sink rows of this append, k = floor(n f / 2).
void PackedKvCache::Impl::freeze_keys(Side& s, int slot, const float* k_dev, int n, int64_t ld,
                                      int64_t pos0) {
  const int64_t first = std::max<int64_t>(0, s.d.n_sink - pos0);
  const int64_t m = n - first;
  if (m <= 0) return;
  const int dim = H * hd;
  std::vector<float> x(static_cast<size_t>(m) * dim);
  KVQ_CUDA_CHECK(cudaMemcpy2D(x.data(), dim * 4, k_dev + first * ld, ld * 4, dim * 4, m,
                              cudaMemcpyDeviceToHost));
  std::vector<float> lo(dim), hi(dim), mid(dim), half(dim);
  const int64_t k = static_cast<int64_t>(std::floor(static_cast<double>(m) * s.frac / 2));
  std::vector<float> v(m);
  for (int c = 0; c < dim; ++c) {
    for (int64_t t = 0; t < m; ++t) v[t] = x[t * dim + c];
    std::sort(v.begin(), v.end());
    lo[c] = v[k];
    hi[c] = v[m - 1 - k];
    mid[c] = 0.5f * (lo[c] + hi[c]);
    half[c] = 0.5f * (hi[c] - lo[c]);
  }
  const size_t off = static_cast<size_t>(slot) * dim;
  const std::vector<float>* src[] = {&lo, &hi, &mid, &half};
  const float* dst[] = {s.d.lo, s.d.hi, s.d.kmid, s.d.khalf};
  for (int i = 0; i < 4; ++i)
    KVQ_CUDA_CHECK(cudaMemcpy(const_cast<float*>(dst[i]) + off, src[i]->data(), dim * 4,
                              cudaMemcpyHostToDevice));
  s.frozen[slot] = 1;
}

PackedKvCache::PackedKvCache(const Codec& k, const Codec& v, int slots, int max_tokens,
                             int n_heads, std::vector<double> inv_freq, bool rope_interleaved,
                             int device)
    : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  const auto& ks = k.shape();
  if (ks.n_kv_heads != v.shape().n_kv_heads || ks.head_dim != v.shape().head_dim ||
      k.side() != KvSide::kKey || v.side() != KvSide::kValue)
    throw InvalidArgument("PackedKvCache", "key and value codecs of different shapes or sides");
  if (slots <= 0 || max_tokens <= 0 || n_heads <= 0 || n_heads % ks.n_kv_heads != 0 ||
      n_heads / ks.n_kv_heads > kern::kMaxGroup)
    throw InvalidArgument("PackedKvCache", "slots " + std::to_string(slots) + ", max_tokens " +
                                               std::to_string(max_tokens) + ", n_heads " +
                                               std::to_string(n_heads) + ": GQA group must be 1..8");
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  KVQ_CUDA_CHECK(cudaDeviceGetAttribute(&I.sm_count, cudaDevAttrMultiProcessorCount, device));
  I.slots = slots;
  I.n_heads = n_heads;
  I.H = ks.n_kv_heads;
  I.hd = ks.head_dim;
  I.max_tokens = max_tokens;
  I.build(I.k, k);
  I.max_tokens = max_tokens;  // kivi keys may round their own up
  I.build(I.v, v);
  I.len.assign(slots, 0);
  if (k.stage() == codecs::RopeStage::kPreRope) {
    if (static_cast<int>(inv_freq.size()) != I.hd / 2)
      throw InvalidArgument(I.k.where, "pre-RoPE keys need inv_freq of head_dim/2 = " +
                                           std::to_string(I.hd / 2) + " entries, got " +
                                           std::to_string(inv_freq.size()));
    I.inv_freq_buf = DeviceBuffer(inv_freq.size() * sizeof(double), "rope inv_freq");
    KVQ_CUDA_CHECK(cudaMemcpy(I.inv_freq_buf.get(), inv_freq.data(), inv_freq.size() * sizeof(double),
                              cudaMemcpyHostToDevice));
    I.inv_freq = I.inv_freq_buf.as<double>();
    I.interleaved = rope_interleaved;
  }
}

PackedKvCache::~PackedKvCache() = default;

int64_t PackedKvCache::size(int slot) const { return impl_->len.at(slot); }
int PackedKvCache::max_tokens() const { return impl_->max_tokens; }

void PackedKvCache::append(int slot, const float* k_dev, const float* v_dev, int n, int64_t ld,
                           bool check) {
  Impl& I = *impl_;
  if (slot < 0 || slot >= I.slots)
    throw InvalidArgument(I.k.where, "slot " + std::to_string(slot) + " of " + std::to_string(I.slots));
  const int64_t old = I.len[slot];
  if (old + n > I.max_tokens)
    throw InvalidArgument(I.k.where, "append of " + std::to_string(n) + " tokens to a slot holding " +
                                         std::to_string(old) + " of max_tokens " +
                                         std::to_string(I.max_tokens));
  if (n <= 0) return;
  if (!I.k.frozen.empty() && !I.k.frozen[slot]) I.freeze_keys(I.k, slot, k_dev, n, ld, old);
  I.scratch.reserve(static_cast<size_t>(n) * I.H * 4, "append scratch");
  for (Side* s : {&I.k, &I.v}) {
    const float* src = s == &I.k ? k_dev : v_dev;
    KVQ_CUDA_CHECK(kern::kv_append(s->d, slot, src, n, ld, old, I.scratch.get(), nullptr));
  }
  I.len[slot] = old + n;
  if (check) {
    for (Side* s : {&I.k, &I.v}) {
      if (!s->d.overflow) continue;
      int flag = 0;
      KVQ_CUDA_CHECK(cudaMemcpy(&flag, s->d.overflow, 4, cudaMemcpyDeviceToHost));
      if (flag)
        throw ResourceError(s->where, "sparse outlier records exceed their capacity of " +
                                          std::to_string(s->d.out_cap) + " per head",
                            "later tokens fall far outside the calibrated key ranges; recalibrate");
    }
  }
}

void PackedKvCache::append_host(int slot, const float* k, const float* v, int n, int64_t ld) {
  Impl& I = *impl_;
  const int dim = I.H * I.hd;
  I.rows_tmp.reserve(static_cast<size_t>(n) * dim * 2 * 4, "append upload");
  float* dk = I.rows_tmp.as<float>();
  float* dv = dk + static_cast<size_t>(n) * dim;
  KVQ_CUDA_CHECK(cudaMemcpy2D(dk, dim * 4, k, ld * 4, dim * 4, n, cudaMemcpyHostToDevice));
  KVQ_CUDA_CHECK(cudaMemcpy2D(dv, dim * 4, v, ld * 4, dim * 4, n, cudaMemcpyHostToDevice));
  append(slot, dk, dv, n, dim);
}

void PackedKvCache::prepare(const std::vector<int>& slots) {
  Impl& I = *impl_;
  std::vector<int32_t> s(slots.begin(), slots.end()), l;
  I.max_len = 0;
  for (int x : slots) {
    if (x < 0 || x >= I.slots) throw InvalidArgument(I.k.where, "prepare: slot " + std::to_string(x));
    l.push_back(static_cast<int32_t>(I.len[x]));
    I.max_len = std::max<int>(I.max_len, static_cast<int>(I.len[x]));
  }
  I.rows_slots = slots;
  I.d_slots.reserve(s.size() * 4 + 4, "decode slots");
  I.d_len.reserve(l.size() * 4 + 4, "decode lengths");
  KVQ_CUDA_CHECK(cudaMemcpy(I.d_slots.get(), s.data(), s.size() * 4, cudaMemcpyHostToDevice));
  KVQ_CUDA_CHECK(cudaMemcpy(I.d_len.get(), l.data(), l.size() * 4, cudaMemcpyHostToDevice));
  kern::PackedDecodeArgs a;
  a.rows = static_cast<int>(slots.size());
  a.n_heads = I.n_heads;
  const size_t ws = std::max(kern::kv_decode_workspace(I.k.d, a, std::max(1, I.max_len), I.sm_count),
                             kern::kvquant_decode::workspace_fold(I.k.d, a, std::max(1, I.max_len), I.sm_count));
  I.work.reserve(ws + 16, "decode workspace");
}

void PackedKvCache::decode(const void* q_dev, void* out_dev, bool bf16, void* stream) {
  Impl& I = *impl_;
  if (I.rows_slots.empty()) throw InvalidArgument(I.k.where, "decode before prepare()");
  reject_retired_decode(I.k.where);
  for (int x : I.rows_slots)
    if (I.len[x] == 0) throw InvalidArgument(I.k.where, "decode over an empty slot " + std::to_string(x));
  kern::PackedDecodeArgs a;
  a.q = q_dev;
  a.out = out_dev;
  a.slot = I.d_slots.as<int32_t>();
  a.len = I.d_len.as<int32_t>();
  a.rows = static_cast<int>(I.rows_slots.size());
  a.n_heads = I.n_heads;
  a.scale = 1.0f / std::sqrt(static_cast<float>(I.hd));
  a.inv_freq = I.inv_freq;
  a.rope_interleaved = I.interleaved;
  KvqBuild build = kvquant_build();
  if (build != KvqBuild::kNone &&
      kern::kvquant_decode::fits(bf16 ? kern::Act::kBF16 : kern::Act::kF16, I.k.d, I.v.d, a)) {
    build = resolve_kvquant_build(build, a.n_heads, I.k.d.kv_heads);
    const auto run = build == KvqBuild::kFoldM ? kern::kvquant_decode::run_foldm : kern::kvquant_decode::run_fold2;
    const bool kout_stage = kvquant_kout_stage(I.k.where);
    const bool stage = kvquant_stage(I.k.where);
    KVQ_CUDA_CHECK(run(I.k.d, I.v.d, a, I.max_len, I.sm_count, I.work.get(), I.work.bytes(),
                       static_cast<cudaStream_t>(stream), kout_stage, stage));
    return;
  }
  // Benchmark knob (kvq-kvbench, notes/kv-cuda-perf.md; KVQuant: kvquant_build above):
  // KVQ_KV_DECODE=general|fast|fast-pf|mma-stream forces a decode kernel (mma-stream = the
  // tensor-core kernel, version 4, where it applies: the same as unset); unset = version 4
  // where it applies, else the fast kernel (no prefetch) where it applies, else the general one.
  static const int variant = [] {
    const char* e = std::getenv("KVQ_KV_DECODE");
    const std::string v = e ? e : "";
    return v == "general" ? 1 : v == "fast" ? 2 : v == "fast-pf" ? 3 : v == "mma-stream" ? 4 : 0;
  }();
  a.variant = variant;
  KVQ_CUDA_CHECK(kern::kv_decode_attention(bf16 ? kern::Act::kBF16 : kern::Act::kF16, I.k.d, I.v.d,
                                           a, I.max_len, I.sm_count, I.work.get(), I.work.bytes(),
                                           static_cast<cudaStream_t>(stream)));
}

bool PackedKvCache::decode_uses_kvquant_kernel(bool bf16) const {
  const Impl& I = *impl_;
  kern::PackedDecodeArgs a;
  a.rows = static_cast<int>(I.rows_slots.size());
  a.n_heads = I.n_heads;
  a.inv_freq = I.inv_freq;
  a.rope_interleaved = I.interleaved;
  return a.rows > 0 && kvquant_build() != KvqBuild::kNone &&
         kern::kvquant_decode::fits(bf16 ? kern::Act::kBF16 : kern::Act::kF16, I.k.d, I.v.d, a);
}

std::string PackedKvCache::kvquant_decode_build(bool bf16) const {
  if (!decode_uses_kvquant_kernel(bf16)) return "";
  const KvqBuild b = resolve_kvquant_build(kvquant_build(), impl_->n_heads, impl_->k.d.kv_heads);
  return b == KvqBuild::kFoldM ? "kvq-foldm" : "kvq-fold2";
}

int64_t PackedKvCache::quantized_tokens(bool key, int slot) const {
  const Impl& I = *impl_;
  const PackedSide& d = (key ? I.k : I.v).d;
  const int64_t L = I.len.at(slot);
  if (d.resid_cap > 0)
    return d.format == KvFormat::kChannelAsym ? L / d.resid_cap * d.resid_cap
                                              : std::max<int64_t>(0, L - d.resid_cap);
  return L;
}

std::vector<uint32_t> PackedKvCache::Impl::offsets(const Side& s, int slot, int h) const {
  std::vector<uint32_t> off(s.d.max_tokens + 1);
  const int64_t sh = static_cast<int64_t>(slot) * H + h;
  KVQ_CUDA_CHECK(cudaMemcpy(off.data(), s.d.off + sh * (s.d.max_tokens + 1), off.size() * 4,
                            cudaMemcpyDeviceToHost));
  return off;
}

double PackedKvCache::decode_bytes() const {
  const Impl& I = *impl_;
  double total = 0;
  for (const Side* s : {&I.k, &I.v}) {
    const PackedSide& d = s->d;
    for (int slot : I.rows_slots) {
      const int64_t L = I.len[slot];
      const int64_t q = quantized_tokens(s == &I.k, slot);
      const int64_t sinks = std::min<int64_t>(L, d.n_sink);
      const int64_t coded = q - sinks;
      double b = static_cast<double>(coded) * d.wpr * 4 + static_cast<double>(coded) * d.mpr * 2 +
                 static_cast<double>(L - q + sinks) * I.hd * 2;
      if (d.format == KvFormat::kChannelAsym) b += static_cast<double>(q / d.group) * I.hd * 4;
      b *= I.H;
      if (d.outliers) {
        for (int h = 0; h < I.H; ++h) {
          const auto off = I.offsets(*s, slot, h);
          b += 4.0 * (coded + 1) + 4.0 * off[L];  // offsets (neighbours share one), records
        }
      }
      total += b;
    }
  }
  return total;
}

size_t PackedKvCache::slot_bytes(int slot) const {
  const Impl& I = *impl_;
  size_t total = 0;
  for (const Side* s : {&I.k, &I.v}) {
    const PackedSide& d = s->d;
    const int64_t L = I.len.at(slot);
    const int64_t q = quantized_tokens(s == &I.k, slot);
    const int64_t sinks = std::min<int64_t>(L, d.n_sink);
    size_t b = (q - sinks) * (d.wpr * 4 + d.mpr * 2) + (L - q + sinks) * I.hd * 2;
    if (d.format == KvFormat::kChannelAsym) b += (q / d.group) * I.hd * 4;
    b *= I.H;
    if (d.outliers)
      for (int h = 0; h < I.H; ++h) b += 4 * (L + 1) + 4 * I.offsets(*s, slot, h)[L];
    total += b;
  }
  return total;
}

codecs::Chunk PackedKvCache::download(bool key, int slot, int64_t t0, int64_t t1) const {
  const Impl& I = *impl_;
  const Side& s = key ? I.k : I.v;
  const PackedSide& d = s.d;
  if (t0 < 0 || t1 > quantized_tokens(key, slot) || t0 > t1)
    throw InvalidArgument(s.where, "download of tokens [" + std::to_string(t0) + ", " +
                                       std::to_string(t1) + ") beyond the quantized ones");
  const int H = I.H, hd = I.hd;
  const int64_t T = d.max_tokens;
  auto fetch = [&](const void* base, size_t elem, int64_t count) {
    std::vector<uint8_t> out(count * elem);
    const size_t off = static_cast<size_t>(slot) * count * elem;  // count: one slot's elements
    KVQ_CUDA_CHECK(cudaMemcpy(out.data(), static_cast<const uint8_t*>(base) + off, out.size(),
                              cudaMemcpyDeviceToHost));
    return out;
  };
  const auto codes8 = fetch(d.codes, 4, static_cast<int64_t>(H) * T * d.wpr);
  const uint32_t* codes = reinterpret_cast<const uint32_t*>(codes8.data());
  std::vector<uint8_t> meta8, cmeta8, sink8, rec8;
  if (d.meta) meta8 = fetch(d.meta, 2, static_cast<int64_t>(H) * T * d.mpr);
  if (d.cmeta) cmeta8 = fetch(d.cmeta, 2, static_cast<int64_t>(H) * (T / d.group) * hd * 2);
  if (d.sink) sink8 = fetch(d.sink, 2, static_cast<int64_t>(H) * d.n_sink * hd);
  if (d.rec) rec8 = fetch(d.rec, 4, static_cast<int64_t>(H) * d.out_cap);
  const uint16_t* meta = reinterpret_cast<const uint16_t*>(meta8.data());
  const uint16_t* cmeta = reinterpret_cast<const uint16_t*>(cmeta8.data());
  const uint16_t* sink = reinterpret_cast<const uint16_t*>(sink8.data());
  const kvlayout::Outlier* rec = reinterpret_cast<const kvlayout::Outlier*>(rec8.data());
  std::vector<std::vector<uint32_t>> off;
  if (d.outliers)
    for (int h = 0; h < H; ++h) off.push_back(I.offsets(s, slot, h));

  codecs::Chunk c;
  c.pos0 = t0;
  c.n = t1 - t0;
  for (int64_t t = t0; t < t1; ++t) {
    if (t < d.n_sink) {
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < hd; ++i) c.halves.push_back(sink[(h * d.n_sink + t) * hd + i]);
      continue;
    }
    uint32_t count = 0;
    for (int h = 0; h < H; ++h) {
      const int64_t row = h * T + t;
      c.codes.insert(c.codes.end(), codes + row * d.wpr, codes + (row + 1) * d.wpr);
      if (d.meta) c.halves.insert(c.halves.end(), meta + row * d.mpr, meta + (row + 1) * d.mpr);
      if (d.outliers) {
        for (uint32_t r = off[h][t]; r < off[h][t + 1]; ++r) c.outliers.push_back(rec[h * d.out_cap + r]);
        count += off[h][t + 1] - off[h][t];
      }
    }
    if (d.outliers) c.row_counts.push_back(count);
    if (d.cmeta && (t + 1) % d.group == 0) {  // after each complete token group: per channel
      const int64_t g = t / d.group;
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < hd; ++i) {
          const uint16_t* e = cmeta + ((h * (T / d.group) + g) * hd + i) * 2;
          c.halves.push_back(e[0]);
          c.halves.push_back(e[1]);
        }
    }
  }
  return c;
}

// ---- benchmark helpers ----

void fill_random_rows(float* dst, int64_t rows, int cols, uint64_t seed, float scale, int period,
                      float outlier) {
  KVQ_CUDA_CHECK(kern::kv_fill_random(dst, rows, cols, seed, scale, period, outlier, nullptr));
}

void DeviceFree::operator()(void* p) const { cudaFree(p); }

DeviceMemory device_alloc(size_t bytes, const char* what) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(bytes, 16)) != cudaSuccess) {
    cudaGetLastError();
    throw ResourceError("cuda", "out of GPU memory: asked " + std::to_string(bytes) + " bytes for " + what);
  }
  return DeviceMemory(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  KVQ_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

struct Fp16DecodeBaseline::State {
  int slots, max_tokens, n_heads, kv_heads, head_dim, len = 0, sm = 0;
  DeviceBuffer k, v, slot, pos0, work;
  std::vector<int> rows;
};

Fp16DecodeBaseline::Fp16DecodeBaseline(int slots, int max_tokens, int n_heads, int kv_heads,
                                       int head_dim, uint64_t seed, int device)
    : st_(std::make_unique<State>()) {
  State& s = *st_;
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  KVQ_CUDA_CHECK(cudaDeviceGetAttribute(&s.sm, cudaDevAttrMultiProcessorCount, device));
  s.slots = slots;
  s.max_tokens = max_tokens;
  s.n_heads = n_heads;
  s.kv_heads = kv_heads;
  s.head_dim = head_dim;
  const size_t count = static_cast<size_t>(slots) * kv_heads * max_tokens * head_dim;
  s.k = DeviceBuffer(count * 2, "fp16 K cache");
  s.v = DeviceBuffer(count * 2, "fp16 V cache");
  KVQ_CUDA_CHECK(kern::fill_uniform(kern::Act::kF16, s.k.get(), count, 1.0f, seed, nullptr));
  KVQ_CUDA_CHECK(kern::fill_uniform(kern::Act::kF16, s.v.get(), count, 1.0f, seed + 1, nullptr));
}

Fp16DecodeBaseline::~Fp16DecodeBaseline() = default;

void Fp16DecodeBaseline::prepare(const std::vector<int>& slots, int len) {
  State& s = *st_;
  if (len <= 0 || len > s.max_tokens) throw InvalidArgument("fp16 baseline", "bad length");
  s.rows = slots;
  s.len = len;
  std::vector<int32_t> sl(slots.begin(), slots.end()), p0(slots.size(), len - 1);
  s.slot.reserve(sl.size() * 4 + 4, "baseline slots");
  s.pos0.reserve(sl.size() * 4 + 4, "baseline pos0");
  KVQ_CUDA_CHECK(cudaMemcpy(s.slot.get(), sl.data(), sl.size() * 4, cudaMemcpyHostToDevice));
  KVQ_CUDA_CHECK(cudaMemcpy(s.pos0.get(), p0.data(), p0.size() * 4, cudaMemcpyHostToDevice));
  kern::AttentionArgs a;
  a.rows = static_cast<int>(slots.size());
  a.n = 1;
  a.n_heads = s.n_heads;
  a.kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  s.work.reserve(kern::attention_decode_workspace(a, len, s.sm) + 16, "baseline workspace");
}

void Fp16DecodeBaseline::decode(const void* q_dev, void* out_dev, void* stream) {
  State& s = *st_;
  kern::AttentionArgs a;
  a.q = q_dev;
  a.k_cache = s.k.get();
  a.v_cache = s.v.get();
  a.slot = s.slot.as<int32_t>();
  a.pos0 = s.pos0.as<int32_t>();
  a.out = out_dev;
  a.rows = static_cast<int>(s.rows.size());
  a.n = 1;
  a.n_heads = s.n_heads;
  a.kv_heads = s.kv_heads;
  a.head_dim = s.head_dim;
  a.max_tokens = s.max_tokens;
  a.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  KVQ_CUDA_CHECK(kern::attention_decode(kern::Act::kF16, a, s.len, s.sm, s.work.get(), s.work.bytes(),
                                        static_cast<cudaStream_t>(stream)));
}

double Fp16DecodeBaseline::decode_bytes() const {
  const State& s = *st_;
  return 2.0 * 2.0 * s.rows.size() * s.kv_heads * static_cast<double>(s.len) * s.head_dim;
}

L2Scrubber::L2Scrubber(int device) {
  const DeviceInfo info = select_device(device);
  bytes_ = std::max<size_t>(4 * static_cast<size_t>(info.l2_bytes), size_t{256} << 20);
  probe_.reserve(bytes_);
}

void L2Scrubber::operator()() const { probe_.read(bytes_); }

void ReadProbe::reserve(size_t bytes) {
  if (bytes <= cap_) return;
  buf_.reset();
  cap_ = 0;
  buf_ = device_alloc(bytes + 16, "the read probe");
  KVQ_CUDA_CHECK(cudaMemset(buf_.get(), 0, bytes + 16));
  cap_ = bytes;
}

void ReadProbe::read(size_t bytes) const {
  if (bytes > cap_)
    throw InvalidArgument("ReadProbe", "read of " + std::to_string(bytes) + " bytes, reserved " +
                          std::to_string(cap_), "call reserve() first");
  unsigned* sink = reinterpret_cast<unsigned*>(static_cast<char*>(buf_.get()) + cap_);
  KVQ_CUDA_CHECK(kern::kv_l2_scrub(buf_.get(), bytes / 16 * 16, sink, nullptr));
}

double time_device_ms(const std::function<void()>& fn, int warmup, int reps,
                      const std::function<void()>& before) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t a, b;
  KVQ_CUDA_CHECK(cudaEventCreate(&a));
  KVQ_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    if (before) before();
    KVQ_CUDA_CHECK(cudaEventRecord(a));
    fn();
    KVQ_CUDA_CHECK(cudaEventRecord(b));
    KVQ_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    KVQ_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace kvq::cuda
