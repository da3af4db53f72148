// The shared packed-cache bookkeeping (chunks, fp16 window, static bytes) and the uniform
// group quantizers. See chunked.h.
#include "lib/codecs/chunked.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/dtype.h"
#include "formats/error.h"

namespace kvq::codecs {

using kvlayout::ScaleZero;

std::string codec_where(const Codec& c) {
  return "--kv " + c.describe() + " (layer " + std::to_string(c.layer()) + ", " +
         std::string(side_name(c.side())) + ")";
}

// ---- group quantizers ----

ScaleZero quantize_group_asym(const float* x, int64_t n, int64_t stride, int bits, uint32_t* q) {
  float mn = x[0], mx = x[0];
  for (int64_t i = 1; i < n; ++i) {
    mn = std::min(mn, x[i * stride]);
    mx = std::max(mx, x[i * stride]);
  }
  const float levels = static_cast<float>((1u << bits) - 1u);
  const float s = (mx - mn) / levels;
  ScaleZero sz{float_to_half(s), float_to_half(mn)};
  const float sf = half_to_float(sz.scale), zf = half_to_float(sz.zero);
  const float inv = kvlayout::safe_inverse(sf);
  for (int64_t i = 0; i < n; ++i) q[i] = kvlayout::quantize_asym(x[i * stride], zf, inv, bits);
  return sz;
}

void dequantize_group_asym(const uint32_t* q, int64_t n, ScaleZero sz, float* y, int64_t stride) {
  const float sf = half_to_float(sz.scale), zf = half_to_float(sz.zero);
  for (int64_t i = 0; i < n; ++i) y[i * stride] = kvlayout::dequantize_asym(q[i], sf, zf);
}

uint16_t quantize_group_sym(const float* x, int64_t n, int64_t stride, int bits, uint32_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i * stride]));
  const float s = amax / static_cast<float>((1 << (bits - 1)) - 1);
  const uint16_t sh = float_to_half(s);
  const float inv = kvlayout::safe_inverse(half_to_float(sh));
  for (int64_t i = 0; i < n; ++i) q[i] = kvlayout::quantize_sym(x[i * stride], inv, bits);
  return sh;
}

void dequantize_group_sym(const uint32_t* q, int64_t n, uint16_t scale, int bits, float* y,
                          int64_t stride) {
  const float sf = half_to_float(scale);
  for (int64_t i = 0; i < n; ++i) y[i * stride] = kvlayout::dequantize_sym(q[i], sf, bits);
}

int64_t token_group_words(const KvShape& shape, int bits) {
  return shape.n_kv_heads * kvlayout::packed_words(bits, shape.head_dim);
}
int64_t token_group_halves(const KvShape& shape, int group, bool sym) {
  return static_cast<int64_t>(shape.dim() / group) * (sym ? 1 : 2);
}

void encode_token_groups(const float* rows, int64_t n, const KvShape& shape, int group,
                         int bits, bool sym, std::vector<uint32_t>& codes,
                         std::vector<uint16_t>& halves) {
  const int hd = shape.head_dim, dim = shape.dim();
  const int64_t hw = kvlayout::packed_words(bits, hd);
  std::vector<uint32_t> q(hd);
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      const float* x = rows + t * dim + h * hd;
      for (int g = 0; g < hd; g += group) {
        if (sym) {
          halves.push_back(quantize_group_sym(x + g, group, 1, bits, q.data() + g));
        } else {
          const ScaleZero sz = quantize_group_asym(x + g, group, 1, bits, q.data() + g);
          halves.push_back(sz.scale);
          halves.push_back(sz.zero);
        }
      }
      const size_t base = codes.size();
      codes.resize(base + hw, 0u);
      for (int i = 0; i < hd; ++i) kvlayout::put_code(codes.data() + base, bits, i, q[i]);
    }
  }
}

void decode_token_groups(const uint32_t* codes, const uint16_t* halves, int64_t n,
                         const KvShape& shape, int group, int bits, bool sym, float* rows) {
  const int hd = shape.head_dim, dim = shape.dim();
  const int64_t hw = kvlayout::packed_words(bits, hd);
  std::vector<uint32_t> q(hd);
  for (int64_t t = 0; t < n; ++t) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      const uint32_t* w = codes + (t * shape.n_kv_heads + h) * hw;
      for (int i = 0; i < hd; ++i) q[i] = kvlayout::get_code(w, bits, i);
      float* y = rows + t * dim + h * hd;
      for (int g = 0; g < hd; g += group) {
        if (sym) {
          dequantize_group_sym(q.data() + g, group, *halves++, bits, y + g, 1);
        } else {
          const ScaleZero sz{halves[0], halves[1]};
          halves += 2;
          dequantize_group_asym(q.data() + g, group, sz, y + g, 1);
        }
      }
    }
  }
}

void encode_channel_group(const float* rows, int64_t n, const KvShape& shape, int bits,
                          bool sym, std::vector<uint32_t>& codes, std::vector<uint16_t>& halves) {
  const int dim = shape.dim(), hd = shape.head_dim;
  std::vector<uint32_t> q(static_cast<size_t>(n) * dim);
  for (int c = 0; c < dim; ++c) {
    if (sym) {
      halves.push_back(quantize_group_sym(rows + c, n, dim, bits, q.data() + c * n));
    } else {
      const ScaleZero sz = quantize_group_asym(rows + c, n, dim, bits, q.data() + c * n);
      halves.push_back(sz.scale);
      halves.push_back(sz.zero);
    }
  }
  const int64_t hw = kvlayout::packed_words(bits, hd);
  const size_t base = codes.size();
  codes.resize(base + n * shape.n_kv_heads * hw, 0u);
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      uint32_t* w = codes.data() + base + (t * shape.n_kv_heads + h) * hw;
      for (int i = 0; i < hd; ++i) kvlayout::put_code(w, bits, i, q[(h * hd + i) * n + t]);
    }
}

void decode_channel_group(const uint32_t* codes, const uint16_t* halves, int64_t n,
                          const KvShape& shape, int bits, bool sym, float* rows) {
  const int dim = shape.dim(), hd = shape.head_dim;
  const int64_t hw = kvlayout::packed_words(bits, hd);
  for (int64_t t = 0; t < n; ++t)
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      const uint32_t* w = codes + (t * shape.n_kv_heads + h) * hw;
      for (int i = 0; i < hd; ++i) {
        const int c = h * hd + i;
        const uint32_t q = kvlayout::get_code(w, bits, i);
        rows[t * dim + c] =
            sym ? kvlayout::dequantize_sym(q, half_to_float(halves[c]), bits)
                : kvlayout::dequantize_asym(q, half_to_float(halves[2 * c]),
                                            half_to_float(halves[2 * c + 1]));
      }
    }
}

// Element-wise, so split across threads for whole windows (a simulated 1024-token
// window converts 393K values per layer and side; per token the loop stays serial).
void rows_to_halves(const float* rows, int64_t count, std::vector<uint16_t>& out) {
  const size_t base = out.size();
  out.resize(base + count);
  uint16_t* o = out.data() + base;
#pragma omp parallel for schedule(static) if (count >= 65536)
  for (int64_t i = 0; i < count; ++i) o[i] = float_to_half(rows[i]);
}
void halves_to_rows(const uint16_t* h, int64_t count, float* rows) {
#pragma omp parallel for schedule(static) if (count >= 65536)
  for (int64_t i = 0; i < count; ++i) rows[i] = half_to_float(h[i]);
}

// ---- the cache ----

namespace {

class ChunkedCache final : public KvCache {
 public:
  explicit ChunkedCache(const ChunkedCodec& codec) : codec_(codec), state_(codec.new_state()) {}

  void append(ConstMatrixView rows, const AppendContext& ctx) override {
    const int dim = codec_.shape().dim();
    if (rows.cols != dim)
      throw InvalidArgument(codec_where(codec_), "append: rows have " + std::to_string(rows.cols) +
                                                     " columns, expected " + std::to_string(dim));
    const int64_t n = rows.rows;
    if (n == 0) return;
    std::vector<float> x(static_cast<size_t>(n) * dim);
    const bool window = codec_.uses_window();
    // Copy (and, for a window, round to fp16: every token is quantized from its fp16
    // value) in parallel over tokens; the first non-finite value in row-major order is
    // reported, whatever the thread count.
    std::vector<char> bad(static_cast<size_t>(n), 0);
#pragma omp parallel for schedule(static) if (n * dim >= 65536)
    for (int64_t t = 0; t < n; ++t) {
      const float* r = rows.row(static_cast<int>(t));
      float* xt = x.data() + t * dim;
      for (int c = 0; c < dim; ++c) {
        const float v = r[c];
        if (!std::isfinite(v)) bad[t] = 1;
        xt[c] = window ? half_to_float(float_to_half(v)) : v;
      }
    }
    for (int64_t t = 0; t < n; ++t)
      if (bad[t])
        for (int c = 0; c < dim; ++c)
          if (!std::isfinite(rows.at(static_cast<int>(t), c)))
            throw InvalidArgument(codec_where(codec_),
                                  "non-finite value at position " + std::to_string(size_ + t) +
                                      ", column " + std::to_string(c));
    if (!frozen_) {
      ConstMatrixView view{x.data(), static_cast<int>(n), dim, dim};
      frozen_ = codec_.freeze(*state_, view, size_, ctx);
    }
    if (!window) {
      encode_chunk(x.data(), encoded_, n, ctx);
      encoded_ += n;
      size_ += n;
      return;
    }
    rows_to_halves(x.data(), n * dim, pending_);
    size_ += n;
    const int64_t pending = size_ - encoded_;
    const int64_t k = std::min(pending, codec_.to_encode(pending, size_));
    if (k > 0) {
      std::vector<float> y(static_cast<size_t>(k) * dim);
      halves_to_rows(pending_.data(), k * dim, y.data());
      encode_chunk(y.data(), encoded_, k, ctx);
      pending_.erase(pending_.begin(), pending_.begin() + k * dim);
      encoded_ += k;
    }
  }

  int64_t size() const override { return size_; }

  void dequantize(int64_t t0, int64_t t1, MatrixView out) const override {
    const int dim = codec_.shape().dim();
    if (t0 < 0 || t1 > size_ || t0 > t1 || out.rows < t1 - t0 || out.cols != dim)
      throw InvalidArgument(codec_where(codec_),
                            "dequantize: range [" + std::to_string(t0) + ", " +
                                std::to_string(t1) + ") of a cache of " +
                                std::to_string(size_) + " tokens (or wrong output shape)");
    std::vector<float> buf;
    auto copy_out = [&](int64_t first, int64_t count, const float* src) {
      // src holds tokens [first, first + count)
      const int64_t a = std::max(first, t0), b = std::min(first + count, t1);
#pragma omp parallel for schedule(static) if ((b - a) * dim >= 65536)
      for (int64_t t = a; t < b; ++t)
        std::copy(src + (t - first) * dim, src + (t - first + 1) * dim,
                  out.row(static_cast<int>(t - t0)));
    };
    auto it = std::upper_bound(chunks_.begin(), chunks_.end(), t0,
                               [](int64_t t, const Chunk& c) { return t < c.pos0; });
    if (it != chunks_.begin()) --it;
    for (; it != chunks_.end() && it->pos0 < t1; ++it) {
      if (it->pos0 + it->n <= t0) continue;
      buf.assign(static_cast<size_t>(it->n) * dim, 0.0f);
      codec_.decode(*state_, *it, buf.data());
      copy_out(it->pos0, it->n, buf.data());
    }
    const int64_t pending = size_ - encoded_;
    if (pending > 0 && t1 > encoded_) {
      buf.assign(static_cast<size_t>(pending) * dim, 0.0f);
      halves_to_rows(pending_.data(), pending * dim, buf.data());
      if (codec_.quantize_window_on_read()) {
        Chunk c;
        c.pos0 = encoded_;
        c.n = pending;
        auto scratch = state_->clone();  // encode must not change the real state
        codec_.encode(*scratch, buf.data(), encoded_, pending, AppendContext{}, c);
        codec_.decode(*scratch, c, buf.data());
      }
      copy_out(encoded_, pending, buf.data());
    }
  }

  size_t bytes() const override {
    size_t b = state_->static_bytes + pending_.size() * 2;
    for (const Chunk& c : chunks_) b += c.nbytes();
    return b;
  }
  size_t static_bytes() const override { return state_->static_bytes; }

 private:
  void encode_chunk(const float* x, int64_t pos0, int64_t n, const AppendContext& ctx) {
    Chunk c;
    c.pos0 = pos0;
    c.n = n;
    codec_.encode(*state_, x, pos0, n, ctx, c);
    chunks_.push_back(std::move(c));
  }

  const ChunkedCodec& codec_;
  std::unique_ptr<CodecState> state_;
  bool frozen_ = false;
  int64_t size_ = 0;
  int64_t encoded_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<uint16_t> pending_;  // fp16 window, [size_ - encoded_, dim]
};

}  // namespace

std::unique_ptr<KvCache> ChunkedCodec::make_cache() const {
  return std::make_unique<ChunkedCache>(*this);
}

}  // namespace kvq::codecs
