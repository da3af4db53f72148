// make_packed_cache and the GPU packed caches of fp16, q8_0 / q4_0, fp8, intB axis=channel,
// hadamard and mikv: buffers, codec parameters -> kern::MoreSide, the host-side decisions
// (MiKV's high-precision tokens and balancer, from the same arithmetic as mikv.cpp), decode
// launches, byte counts and downloads in CPU chunk order. See packed_more.h.
#include "lib/cuda/packed_more.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "formats/dtype.h"
#include "formats/error.h"
#include "kernels/kv_more.cuh"
#include "lib/cuda/check.h"
#include "lib/cuda/packed_cache.h"

namespace kvq::cuda {

using codecs::Codec;
using codecs::KvSide;
using kern::MoreFormat;
using kern::MoreSide;

namespace {

bool is_uniform(const std::string& m) {
  return m.size() == 4 && m.rfind("int", 0) == 0 && m[3] >= '2' && m[3] <= '8';
}

// Empty when this file's caches serve the codec.
std::string more_reason(const Codec& c) {
  const std::string m = c.method();
  const int hd = c.shape().head_dim;
  if (hd > kern::kMaxHeadDim || hd < 8 || (hd & (hd - 1)))
    return "head_dim " + std::to_string(hd) + " (the GPU path needs a power of two in 8..128)";
  if (m == "fp16" || m == "fp8" || m == "hadamard" || m == "mikv") return {};
  if (m == "q8_0" || m == "q4_0")
    return hd % 32 == 0 ? std::string() : "q8_0/q4_0 on the GPU need head_dim a multiple of 32";
  if (is_uniform(m) && c.describe().find("axis=channel") != std::string::npos) return {};
  return "method " + m + " is not one of fp16, q8_0, q4_0, fp8, intB axis=channel, hadamard, mikv";
}

std::string where_of(const Codec& c) {
  return "--kv " + c.describe() + " (layer " + std::to_string(c.layer()) + ", " +
         std::string(codecs::side_name(c.side())) + ", cuda)";
}

struct Side {
  MoreSide d;
  std::vector<DeviceBuffer> bufs;
  std::string where;
  bool key = false;
  int wpr = 0;  // packed words per code record (kChannel, kHadamard, kMikv lo)
  // fp8
  bool scales_given = false;
  // mikv
  double budget = 0;
  int recent = 0, lo_bits = 0;
  bool balance = false;
  std::vector<std::vector<int64_t>> hi_count;  // [slot][head]
  DeviceBuffer flags;
  std::vector<char> frozen;  // per slot: fp8 scales / mikv balancer set

  void* alloc(size_t bytes, const char* what) {
    bufs.emplace_back(std::max<size_t>(bytes, 16), what);
    KVQ_CUDA_CHECK(cudaMemset(bufs.back().get(), 0, bufs.back().bytes()));
    return bufs.back().get();
  }
  int64_t target_hi(int64_t total) const {
    return static_cast<int64_t>(std::nearbyint(budget * static_cast<double>(total))) -
           std::min<int64_t>(recent, total);
  }
  int64_t quantized(int64_t L) const {
    if (d.format == MoreFormat::kChannel) return L / d.group * d.group;
    if (d.format == MoreFormat::kMikv) return std::max<int64_t>(0, L - recent);
    return L;
  }
  // Bytes of one MiKV record at `bits` (16: fp16), as mikv.cpp's head_bytes.
  int64_t mikv_record(int bits) const {
    return bits == 16 ? 2 * d.head_dim : 4 * kvlayout::packed_words(bits, d.head_dim) + 4;
  }
};

class MoreCache final : public PackedCache {
 public:
  MoreCache(const Codec& k, const Codec& v, int slots, int max_tokens, int n_heads, int device);

  void append(int slot, const float* k_dev, const float* v_dev, int n, int64_t ld,
              const PackedAppendExtras& extras) override;
  void append_host(int slot, const float* k, const float* v, int n, int64_t ld,
                   const PackedAppendExtras& extras) override;
  int64_t size(int slot) const override { return len_.at(slot); }
  int max_tokens() const override { return max_tokens_; }
  void prepare(const std::vector<int>& slots) override;
  void decode(const void* q_dev, void* out_dev, bool bf16, void* stream) override;
  double decode_bytes() const override;
  size_t slot_bytes(int slot) const override;
  codecs::Chunk download(bool key, int slot, int64_t t0, int64_t t1) const override;
  int64_t quantized_tokens(bool key, int slot) const override {
    return (key ? k_ : v_).quantized(len_.at(slot));
  }

 private:
  void build(Side& s, const Codec& c);
  void freeze_balancer(Side& s, int slot, const float* k_dev, int n, int64_t ld,
                       const float* queries);
  std::vector<uint8_t> choose_hi(Side& s, int slot, int64_t enc0, int64_t enc1,
                                 const float* importance);
  double side_bytes(const Side& s, int slot, bool with_static) const;

  Side k_, v_;
  int slots_ = 0, max_tokens_ = 0, n_heads_ = 0, H_ = 0, hd_ = 0, sm_count_ = 0;
  std::vector<int64_t> len_;
  DeviceBuffer rows_tmp_, d_slots_, d_len_, work_;
  std::vector<int> rows_slots_;
  int max_len_ = 0;
};

void MoreCache::build(Side& s, const Codec& c) {
  s.where = where_of(c);
  if (const std::string why = more_reason(c); !why.empty()) throw UnsupportedError(s.where, why);
  const codecs::CodecParams p = c.params();
  const std::string m = c.method();
  MoreSide& d = s.d;
  s.key = c.side() == KvSide::kKey;
  d.head_dim = hd_;
  d.kv_heads = H_;
  d.slots = slots_;
  d.max_tokens = max_tokens_;
  const int64_t sh = static_cast<int64_t>(slots_) * H_;
  if (m == "fp16") {
    d.format = MoreFormat::kF16;
    d.row_bytes = 2 * hd_;
  } else if (m == "q8_0" || m == "q4_0") {
    d.format = m == "q8_0" ? MoreFormat::kQ8_0 : MoreFormat::kQ4_0;
    d.bits = m == "q8_0" ? 8 : 4;
    d.row_bytes = m == "q8_0" ? hd_ : hd_ / 2;
    d.mpr = hd_ / 32;
  } else if (m == "fp8") {
    d.format = MoreFormat::kFp8;
    d.bits = 8;
    d.e5m2 = p.number("e4m3", 1) == 0;
    d.row_bytes = hd_;
    d.scale = static_cast<float*>(s.alloc(sh * 4, "fp8 scales"));
    d.inv_scale = static_cast<float*>(s.alloc(sh * 4, "fp8 inverse scales"));
    s.frozen.assign(slots_, 0);
    if (const auto* g = p.tensor("scale")) {  // the profile's scales, the same for every slot
      std::vector<float> sc, inv;
      for (int slot = 0; slot < slots_; ++slot)
        for (int h = 0; h < H_; ++h) {
          sc.push_back((*g)[h]);
          inv.push_back(1.0f / (*g)[h]);  // fp8.cpp: 1.0f / scale
        }
      KVQ_CUDA_CHECK(cudaMemcpy(d.scale, sc.data(), sc.size() * 4, cudaMemcpyHostToDevice));
      KVQ_CUDA_CHECK(cudaMemcpy(d.inv_scale, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
      s.scales_given = true;
    }
  } else if (m == "hadamard") {
    d.format = MoreFormat::kHadamard;
    d.bits = static_cast<int>(p.number("bits", 4));
    s.wpr = static_cast<int>(kvlayout::packed_words(d.bits, hd_));
    d.row_bytes = 4 * s.wpr;
    d.mpr = 2;
    const std::vector<float> signs = *p.tensor("signs");
    float* sg = static_cast<float*>(s.alloc(signs.size() * 4, "hadamard signs"));
    KVQ_CUDA_CHECK(cudaMemcpy(sg, signs.data(), signs.size() * 4, cudaMemcpyHostToDevice));
    d.signs = sg;
    d.norm = 1.0f / std::sqrt(static_cast<float>(hd_));  // hadamard.cpp's norm_
  } else if (m == "mikv") {
    d.format = MoreFormat::kMikv;
    d.hi_bits = static_cast<int>(p.number("hi_bits", 16));
    s.lo_bits = d.bits = static_cast<int>(p.number("lo_bits", 4));
    s.budget = p.number("budget", 0.2);
    s.recent = static_cast<int>(p.number("recent", 32));
    s.balance = p.number("balance", 0) != 0;
    s.wpr = static_cast<int>(kvlayout::packed_words(d.bits, hd_));
    const int64_t hi_rec = d.hi_bits == 16 ? 2 * hd_ : 4 * kvlayout::packed_words(d.hi_bits, hd_);
    d.row_bytes = static_cast<int>(std::max<int64_t>(hi_rec, 4 * s.wpr));
    d.mpr = 2;
    d.ring_cap = s.recent;
    if (s.recent > 0)
      d.ring = static_cast<uint16_t*>(s.alloc(sh * s.recent * hd_ * 2, "mikv fp16 window"));
    d.flag = static_cast<uint8_t*>(s.alloc(sh * max_tokens_, "mikv precision flags"));
    s.hi_count.assign(slots_, std::vector<int64_t>(H_, 0));
    s.frozen.assign(slots_, 0);
    if (s.balance) {
      d.b = static_cast<float*>(s.alloc(sh * hd_ * 4, "mikv balancer"));
      d.inv_b = static_cast<float*>(s.alloc(sh * hd_ * 4, "mikv inverse balancer"));
    }
  } else {  // intB axis=channel
    d.format = MoreFormat::kChannel;
    d.bits = static_cast<int>(p.number("bits", 4));
    d.group = static_cast<int>(p.number("group", 128));
    d.sym = p.number("sym", 0) != 0;
    d.max_tokens = static_cast<int>((static_cast<int64_t>(max_tokens_) + d.group - 1) / d.group * d.group);
    s.wpr = static_cast<int>(kvlayout::packed_words(d.bits, hd_));
    d.row_bytes = 4 * s.wpr;
    d.cmeta = static_cast<uint16_t*>(s.alloc(
        sh * (d.max_tokens / d.group) * hd_ * (d.sym ? 1 : 2) * 2, "channel scales"));
    d.ring = static_cast<uint16_t*>(s.alloc(sh * d.group * hd_ * 2, "channel fp16 window"));
  }
  const int64_t recs = sh * d.max_tokens;
  d.data = static_cast<uint8_t*>(s.alloc(recs * d.row_bytes + 16, "packed KV records"));
  if (d.mpr > 0) d.meta = static_cast<uint16_t*>(s.alloc(recs * d.mpr * 2, "packed KV scales"));
}

MoreCache::MoreCache(const Codec& k, const Codec& v, int slots, int max_tokens, int n_heads,
                     int device) {
  const auto& ks = k.shape();
  if (ks.n_kv_heads != v.shape().n_kv_heads || ks.head_dim != v.shape().head_dim ||
      k.side() != KvSide::kKey || v.side() != KvSide::kValue)
    throw InvalidArgument("make_packed_cache", "key and value codecs of different shapes or sides");
  if (slots <= 0 || max_tokens <= 0 || n_heads <= 0 || n_heads % ks.n_kv_heads != 0 ||
      n_heads / ks.n_kv_heads > kern::kMaxGroup)
    throw InvalidArgument("make_packed_cache", "slots " + std::to_string(slots) + ", max_tokens " +
                                                   std::to_string(max_tokens) + ", n_heads " +
                                                   std::to_string(n_heads) + ": GQA group must be 1..8");
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  KVQ_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  slots_ = slots;
  max_tokens_ = max_tokens;
  n_heads_ = n_heads;
  H_ = ks.n_kv_heads;
  hd_ = ks.head_dim;
  build(k_, k);
  build(v_, v);
  len_.assign(slots, 0);
}

// mikv.cpp's freeze: b_c = sqrt(max|Q_c| / max|K_c|) over the first append (keys as the
// window holds them, rounded to fp16; queries of the group's heads), 1 where either is 0.
void MoreCache::freeze_balancer(Side& s, int slot, const float* k_dev, int n, int64_t ld,
                                const float* queries) {
  const int dim = H_ * hd_;
  std::vector<float> b(dim, 1.0f), inv(dim);
  if (queries) {
    std::vector<float> x(static_cast<size_t>(n) * dim);
    KVQ_CUDA_CHECK(cudaMemcpy2D(x.data(), dim * 4, k_dev, ld * 4, dim * 4, n, cudaMemcpyDeviceToHost));
    const int grp = n_heads_ / H_;
    for (int c = 0; c < dim; ++c) {
      float kmax = 0, qmax = 0;
      for (int t = 0; t < n; ++t)
        kmax = std::max(kmax, std::fabs(half_to_float(float_to_half(x[static_cast<size_t>(t) * dim + c]))));
      const int kh = c / hd_, i = c % hd_;
      for (int t = 0; t < n; ++t)
        for (int g = 0; g < grp; ++g)
          qmax = std::max(qmax, std::fabs(queries[static_cast<size_t>(t) * n_heads_ * hd_ +
                                                  (kh * grp + g) * hd_ + i]));
      if (kmax > 0 && qmax > 0) b[c] = std::sqrt(qmax / kmax);
    }
  }
  for (int c = 0; c < dim; ++c) inv[c] = 1.0f / b[c];
  KVQ_CUDA_CHECK(cudaMemcpy(s.d.b + static_cast<size_t>(slot) * dim, b.data(), dim * 4,
                            cudaMemcpyHostToDevice));
  KVQ_CUDA_CHECK(cudaMemcpy(s.d.inv_b + static_cast<size_t>(slot) * dim, inv.data(), dim * 4,
                            cudaMemcpyHostToDevice));
}

// mikv.cpp's encode choice for the tokens [enc0, enc1) leaving the window: per head, the
// free high-precision places go to the most important of them (stable: older first).
std::vector<uint8_t> MoreCache::choose_hi(Side& s, int slot, int64_t enc0, int64_t enc1,
                                          const float* importance) {
  const int64_t n = enc1 - enc0;
  const int64_t total = enc1 + s.recent;
  std::vector<uint8_t> hi(static_cast<size_t>(n) * H_, 0);
  std::vector<int64_t> order(n);
  for (int h = 0; h < H_; ++h) {
    const int64_t quota = std::clamp<int64_t>(s.target_hi(total) - s.hi_count[slot][h], 0, n);
    std::iota(order.begin(), order.end(), 0);
    auto imp = [&](int64_t t) { return importance ? importance[(enc0 + t) * H_ + h] : 0.0f; };
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return imp(a) > imp(b); });
    for (int64_t j = 0; j < quota; ++j) hi[order[j] * H_ + h] = 1;
    s.hi_count[slot][h] += quota;
  }
  return hi;
}

void MoreCache::append(int slot, const float* k_dev, const float* v_dev, int n, int64_t ld,
                       const PackedAppendExtras& extras) {
  if (slot < 0 || slot >= slots_)
    throw InvalidArgument(k_.where, "slot " + std::to_string(slot) + " of " + std::to_string(slots_));
  const int64_t old = len_[slot];
  if (n < 0 || old + n > max_tokens_)
    throw InvalidArgument(k_.where, "append of " + std::to_string(n) + " tokens to a slot holding " +
                                        std::to_string(old) + " of max_tokens " +
                                        std::to_string(max_tokens_));
  if (n == 0) return;
  if (ld < H_ * hd_) throw InvalidArgument(k_.where, "row stride " + std::to_string(ld) + " < " +
                                                         std::to_string(H_ * hd_));
  for (Side* s : {&k_, &v_}) {
    const float* src = s == &k_ ? k_dev : v_dev;
    MoreSide& d = s->d;
    const uint8_t* flags = nullptr;
    int64_t enc0 = 0, enc1 = 0;
    if (d.format == MoreFormat::kFp8 && !s->scales_given && !s->frozen[slot]) {
      KVQ_CUDA_CHECK(kern::more_fp8_scales(d, slot, src, n, ld, nullptr));
      s->frozen[slot] = 1;
    }
    if (d.format == MoreFormat::kMikv) {
      if (s->balance && !s->frozen[slot]) {
        freeze_balancer(*s, slot, src, n, ld, extras.queries);
        s->frozen[slot] = 1;
      }
      enc0 = std::max<int64_t>(0, old - s->recent);
      enc1 = std::max<int64_t>(0, old + n - s->recent);
      if (enc1 > enc0) {
        const std::vector<uint8_t> hi = choose_hi(*s, slot, enc0, enc1, extras.importance);
        s->flags.reserve(hi.size(), "mikv append flags");
        KVQ_CUDA_CHECK(cudaMemcpy(s->flags.get(), hi.data(), hi.size(), cudaMemcpyHostToDevice));
        flags = s->flags.as<uint8_t>();
      }
    }
    KVQ_CUDA_CHECK(kern::more_append(d, slot, src, n, ld, old, flags, enc0, enc1, nullptr));
  }
  len_[slot] = old + n;
}

void MoreCache::append_host(int slot, const float* k, const float* v, int n, int64_t ld,
                            const PackedAppendExtras& extras) {
  if (n <= 0) return append(slot, nullptr, nullptr, n, ld, extras);
  const int dim = H_ * hd_;
  if (ld < dim) throw InvalidArgument(k_.where, "row stride " + std::to_string(ld) + " < " + std::to_string(dim));
  rows_tmp_.reserve(static_cast<size_t>(n) * dim * 2 * 4, "append upload");
  float* dk = rows_tmp_.as<float>();
  float* dv = dk + static_cast<size_t>(n) * dim;
  KVQ_CUDA_CHECK(cudaMemcpy2D(dk, dim * 4, k, ld * 4, dim * 4, n, cudaMemcpyHostToDevice));
  KVQ_CUDA_CHECK(cudaMemcpy2D(dv, dim * 4, v, ld * 4, dim * 4, n, cudaMemcpyHostToDevice));
  append(slot, dk, dv, n, dim, extras);
}

void MoreCache::prepare(const std::vector<int>& slots) {
  std::vector<int32_t> s(slots.begin(), slots.end()), l;
  max_len_ = 0;
  for (int x : slots) {
    if (x < 0 || x >= slots_) throw InvalidArgument(k_.where, "prepare: slot " + std::to_string(x));
    l.push_back(static_cast<int32_t>(len_[x]));
    max_len_ = std::max<int>(max_len_, static_cast<int>(len_[x]));
  }
  rows_slots_ = slots;
  d_slots_.reserve(s.size() * 4 + 4, "decode slots");
  d_len_.reserve(l.size() * 4 + 4, "decode lengths");
  if (!s.empty()) {
    KVQ_CUDA_CHECK(cudaMemcpy(d_slots_.get(), s.data(), s.size() * 4, cudaMemcpyHostToDevice));
    KVQ_CUDA_CHECK(cudaMemcpy(d_len_.get(), l.data(), l.size() * 4, cudaMemcpyHostToDevice));
  }
  kern::MoreDecodeArgs a;
  a.rows = static_cast<int>(slots.size());
  a.n_heads = n_heads_;
  work_.reserve(kern::more_decode_workspace(k_.d, a, std::max(1, max_len_), sm_count_) + 16,
                "decode workspace");
}

void MoreCache::decode(const void* q_dev, void* out_dev, bool bf16, void* stream) {
  if (rows_slots_.empty()) throw InvalidArgument(k_.where, "decode before prepare()");
  for (int x : rows_slots_)
    if (len_[x] == 0) throw InvalidArgument(k_.where, "decode over an empty slot " + std::to_string(x));
  kern::MoreDecodeArgs a;
  a.q = q_dev;
  a.out = out_dev;
  a.slot = d_slots_.as<int32_t>();
  a.len = d_len_.as<int32_t>();
  a.rows = static_cast<int>(rows_slots_.size());
  a.n_heads = n_heads_;
  a.scale = 1.0f / std::sqrt(static_cast<float>(hd_));
  KVQ_CUDA_CHECK(kern::more_decode_attention(bf16 ? kern::Act::kBF16 : kern::Act::kF16, k_.d, v_.d, a,
                                             max_len_, sm_count_, work_.get(), work_.bytes(),
                                             static_cast<cudaStream_t>(stream)));
}

// Bytes of one side of one slot: what decode reads (with_static = false) or what the CPU
// cache's bytes() counts (true: static parameters, and kChannel's incomplete group as fp16).
double MoreCache::side_bytes(const Side& s, int slot, bool with_static) const {
  const MoreSide& d = s.d;
  const double L = static_cast<double>(len_.at(slot));
  const double H = H_, hd = hd_;
  switch (d.format) {
    case MoreFormat::kF16:
      return L * H * hd * 2;
    case MoreFormat::kQ8_0:
    case MoreFormat::kQ4_0:
      return L * H * (d.row_bytes + 2.0 * d.mpr);
    case MoreFormat::kFp8:
      return L * H * hd + (with_static ? 4 * H : 0);
    case MoreFormat::kHadamard:
      return L * H * (d.row_bytes + 4.0);
    case MoreFormat::kChannel: {
      const int64_t Li = len_.at(slot), full = Li / d.group, rest = Li % d.group;
      const double per_group = static_cast<double>(d.group) * H * 4 * s.wpr + H * hd * 2 * (d.sym ? 1 : 2);
      if (with_static) return full * per_group + rest * H * hd * 2;
      return full * per_group + (rest > 0 ? rest * H * 4.0 * s.wpr + H * hd * 2 * (d.sym ? 1 : 2) : 0.0);
    }
    case MoreFormat::kMikv: {
      const int64_t Li = len_.at(slot), q = s.quantized(Li), w = Li - q;
      double b = static_cast<double>(w) * H * hd * 2 + (with_static && s.balance ? 4 * H * hd : 0);
      for (int h = 0; h < H_; ++h) {
        const int64_t hi = s.hi_count[slot][h];
        b += q + hi * s.mikv_record(d.hi_bits) + (q - hi) * s.mikv_record(s.lo_bits);
      }
      return b;
    }
  }
  return 0;
}

double MoreCache::decode_bytes() const {
  double total = 0;
  for (int slot : rows_slots_) total += side_bytes(k_, slot, false) + side_bytes(v_, slot, false);
  return total;
}

size_t MoreCache::slot_bytes(int slot) const {
  return static_cast<size_t>(side_bytes(k_, slot, true) + side_bytes(v_, slot, true));
}

codecs::Chunk MoreCache::download(bool key, int slot, int64_t t0, int64_t t1) const {
  const Side& s = key ? k_ : v_;
  const MoreSide& d = s.d;
  if (slot < 0 || slot >= slots_ || t0 < 0 || t1 > s.quantized(len_[slot]) || t0 > t1)
    throw InvalidArgument(s.where, "download of tokens [" + std::to_string(t0) + ", " +
                                       std::to_string(t1) + ") beyond the final ones");
  if (d.format == MoreFormat::kChannel && (t0 % d.group != 0 || t1 % d.group != 0))
    throw InvalidArgument(s.where, "download of a channel-grouped side must cover whole groups");
  const int H = H_, hd = hd_;
  const int64_t T = d.max_tokens;
  auto fetch = [&](const void* base, size_t per_slot) {
    std::vector<uint8_t> out(per_slot);
    KVQ_CUDA_CHECK(cudaMemcpy(out.data(), static_cast<const uint8_t*>(base) + slot * per_slot,
                              per_slot, cudaMemcpyDeviceToHost));
    return out;
  };
  const std::vector<uint8_t> data = fetch(d.data, static_cast<size_t>(H) * T * d.row_bytes);
  std::vector<uint8_t> meta8, cmeta8, flag;
  if (d.meta) meta8 = fetch(d.meta, static_cast<size_t>(H) * T * d.mpr * 2);
  if (d.cmeta) cmeta8 = fetch(d.cmeta, static_cast<size_t>(H) * (T / d.group) * hd * (d.sym ? 1 : 2) * 2);
  if (d.flag) flag = fetch(d.flag, static_cast<size_t>(H) * T);
  auto meta = [&](int64_t rec, int i) {
    uint16_t v;
    std::memcpy(&v, meta8.data() + (rec * d.mpr + i) * 2, 2);
    return v;
  };
  auto rec_ptr = [&](int h, int64_t t) { return data.data() + (h * T + t) * d.row_bytes; };
  auto push_words = [](codecs::Chunk& c, const uint8_t* p, int words) {
    const size_t b = c.codes.size();
    c.codes.resize(b + words);
    std::memcpy(c.codes.data() + b, p, static_cast<size_t>(words) * 4);
  };
  auto push_halves = [](codecs::Chunk& c, const uint8_t* p, int count) {
    const size_t b = c.halves.size();
    c.halves.resize(b + count);
    std::memcpy(c.halves.data() + b, p, static_cast<size_t>(count) * 2);
  };
  codecs::Chunk c;
  c.pos0 = t0;
  c.n = t1 - t0;
  for (int64_t t = t0; t < t1; ++t) {
    for (int h = 0; h < H; ++h) {
      const int64_t rec = h * T + t;
      const uint8_t* r = rec_ptr(h, t);
      switch (d.format) {
        case MoreFormat::kF16:
          push_halves(c, r, hd);
          break;
        case MoreFormat::kQ8_0:
        case MoreFormat::kQ4_0: {  // block_q8_0 / block_q4_0 bytes: d then qs
          const int qs = d.format == MoreFormat::kQ8_0 ? 32 : 16;
          for (int b = 0; b < hd / 32; ++b) {
            const uint16_t dv = meta(rec, b);
            c.raw.push_back(static_cast<uint8_t>(dv & 0xff));
            c.raw.push_back(static_cast<uint8_t>(dv >> 8));
            c.raw.insert(c.raw.end(), r + b * qs, r + (b + 1) * qs);
          }
          break;
        }
        case MoreFormat::kFp8:
          c.raw.insert(c.raw.end(), r, r + hd);
          break;
        case MoreFormat::kChannel:
          push_words(c, r, s.wpr);
          break;
        case MoreFormat::kHadamard:
          push_words(c, r, s.wpr);
          c.halves.push_back(meta(rec, 0));
          c.halves.push_back(meta(rec, 1));
          break;
        case MoreFormat::kMikv: {
          const bool hi = flag[rec] != 0;
          c.raw.push_back(hi ? 1 : 0);
          if (hi && d.hi_bits == 16) {
            push_halves(c, r, hd);
          } else {
            c.halves.push_back(meta(rec, 0));
            c.halves.push_back(meta(rec, 1));
            push_words(c, r, static_cast<int>(kvlayout::packed_words(hi ? d.hi_bits : s.lo_bits, hd)));
          }
          break;
        }
      }
    }
    if (d.format == MoreFormat::kChannel && (t + 1) % d.group == 0) {  // the group's ranges
      const int per = d.sym ? 1 : 2;
      const int64_t g = t / d.group;
      for (int h = 0; h < H; ++h)
        push_halves(c, cmeta8.data() + ((h * (T / d.group) + g) * hd) * per * 2, hd * per);
    }
  }
  return c;
}

// PackedKvCache behind the common interface (its codecs need no extras).
class KvAdapter final : public PackedCache {
 public:
  template <typename... A>
  explicit KvAdapter(A&&... a) : c_(std::forward<A>(a)...) {}
  void append(int slot, const float* k, const float* v, int n, int64_t ld,
              const PackedAppendExtras&) override {
    c_.append(slot, k, v, n, ld);
  }
  void append_host(int slot, const float* k, const float* v, int n, int64_t ld,
                   const PackedAppendExtras&) override {
    c_.append_host(slot, k, v, n, ld);
  }
  int64_t size(int slot) const override { return c_.size(slot); }
  int max_tokens() const override { return c_.max_tokens(); }
  void prepare(const std::vector<int>& slots) override { c_.prepare(slots); }
  void decode(const void* q, void* out, bool bf16, void* stream) override { c_.decode(q, out, bf16, stream); }
  double decode_bytes() const override { return c_.decode_bytes(); }
  size_t slot_bytes(int slot) const override { return c_.slot_bytes(slot); }
  codecs::Chunk download(bool key, int slot, int64_t t0, int64_t t1) const override {
    return c_.download(key, slot, t0, t1);
  }
  int64_t quantized_tokens(bool key, int slot) const override { return c_.quantized_tokens(key, slot); }

 private:
  PackedKvCache c_;
};

}  // namespace

std::string packed_cache_unsupported_reason(const Codec& k, const Codec& v) {
  const std::string ka = packed_unsupported_reason(k), va = packed_unsupported_reason(v);
  const std::string kb = more_reason(k), vb = more_reason(v);
  if ((ka.empty() && va.empty()) || (kb.empty() && vb.empty())) return {};
  if (!ka.empty() && !kb.empty()) return "keys " + k.describe() + ": " + kb;
  if (!va.empty() && !vb.empty()) return "values " + v.describe() + ": " + vb;
  return "keys " + k.describe() + " and values " + v.describe() +
         " are served by different GPU cache implementations (lib/cuda/packed_cache.h and "
         "packed_more.h); give both sides codecs of one of them";
}

std::unique_ptr<PackedCache> make_packed_cache(const Codec& k, const Codec& v, int slots,
                                               int max_tokens, int n_heads,
                                               std::vector<double> inv_freq, bool rope_interleaved,
                                               int device) {
  if (packed_unsupported_reason(k).empty() && packed_unsupported_reason(v).empty())
    return std::make_unique<KvAdapter>(k, v, slots, max_tokens, n_heads, std::move(inv_freq),
                                       rope_interleaved, device);
  if (more_reason(k).empty() && more_reason(v).empty())
    return std::make_unique<MoreCache>(k, v, slots, max_tokens, n_heads, device);
  throw UnsupportedError(where_of(k), packed_cache_unsupported_reason(k, v));
}

}  // namespace kvq::cuda
