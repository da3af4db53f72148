// Simulated KV quantization as a ForwardObserver; see sim_observer.h.
#include "lib/codecs/sim_observer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/error.h"

namespace kvq::codecs {

namespace {

const CodecParams* layer_params(const std::vector<CodecParams>& v, int layer) {
  return layer < static_cast<int>(v.size()) ? &v[layer] : nullptr;
}

}  // namespace

SimQuantObserver::SimQuantObserver(const ModelConfig& cfg, const CodecSpec& spec, SimOptions opt)
    : SimQuantObserver(cfg, spec, spec, std::move(opt)) {}

SimQuantObserver::SimQuantObserver(const ModelConfig& cfg, const CodecSpec& k_spec,
                                   const CodecSpec& v_spec, SimOptions opt)
    : cfg_(cfg), shape_{cfg.n_kv_heads, cfg.head_dim, cfg.n_heads} {
  past_only_ = opt.past_only;
  for (int l = 0; l < cfg.n_layers; ++l) {
    k_codecs_.push_back(make_codec(k_spec, KvSide::kKey, l, shape_, layer_params(opt.k_params, l)));
    v_codecs_.push_back(make_codec(v_spec, KvSide::kValue, l, shape_, layer_params(opt.v_params, l)));
    past_only_ = past_only_ || k_codecs_.back()->past_only() || v_codecs_.back()->past_only();
    need_importance_ = need_importance_ || k_codecs_.back()->needs_importance() ||
                       v_codecs_.back()->needs_importance();
  }
}

SimQuantObserver::SeqState& SimQuantObserver::state(int layer, int seq, int pos0) {
  SeqState& st = states_[{layer, seq}];
  if (pos0 == 0) {
    st.k.reset();
    st.v.reset();
    st.k_rot.clear();
    st.importance.clear();
  } else if (!st.k || st.k->size() != pos0) {
    throw InvalidArgument("sim-quant observer",
                          "layer " + std::to_string(layer) + ", sequence " + std::to_string(seq) +
                              ": chunk at position " + std::to_string(pos0) +
                              " does not continue the " +
                              std::to_string(st.k ? st.k->size() : 0) + " tokens seen");
  }
  return st;
}

void SimQuantObserver::apply(const Codec& codec, std::unique_ptr<KvCache>& cache, int pos0,
                             MatrixView rows, const AppendContext& ctx) {
  if (!cache) cache = codec.make_cache();
  cache->append(ConstMatrixView{rows.data, rows.rows, rows.cols, rows.stride}, ctx);
  cache->dequantize(pos0, pos0 + rows.rows, rows);
}

// The H2O importance costs O(T^2 head_dim) per head and layer: for the testbed's 1024-token
// windows it was 46% of a callgrind profile of the whole simulated window (MiKV's host
// time 3-4x KVQuant's). Computed here exactly as the plain loops (kept in
// tests/lib/codecs/sim_golden_test.cpp as the reference) compute it, only reordered where
// the order does not change a float operation:
//   scores: s_j = ((0 + q_0 k_j0) + q_1 k_j1) + ... in channel order, as the scalar dot
//     product, but with the channel loop outside and the keys (transposed per kv head,
//     [head_dim, T]) inside, so that the compiler vectorizes across keys;
//   softmax: per query row, in double, as before; rows run in parallel (OpenMP);
//   accumulation: importance[j] += w_ij over the query heads of the group, then queries,
//     in that order as before (one float sum per key, in registers, keys in parallel).
// The result does not depend on the thread count (the golden test runs 1, 2 and 3).
void SimQuantObserver::update_importance(SeqState& st, int pos0, ConstMatrixView q,
                                         ConstMatrixView k) {
  const int hd = cfg_.head_dim, H = cfg_.n_kv_heads, NH = cfg_.n_heads, KV = cfg_.kv_dim(),
            QD = cfg_.q_dim(), n = q.rows;
  const int total = pos0 + n;
  if (rope_.max_pos() < total) rope_ = RopeTable(cfg_.rope, hd, std::max(total, 2 * rope_.max_pos()));
  std::vector<float> qr(static_cast<size_t>(n) * QD);
  for (int i = 0; i < n; ++i) std::copy(q.row(i), q.row(i) + QD, qr.data() + static_cast<size_t>(i) * QD);
  rope_.apply(qr.data(), n, NH, QD, pos0);
  st.k_rot.resize(static_cast<size_t>(total) * KV);
  float* kn = st.k_rot.data() + static_cast<size_t>(pos0) * KV;
  for (int i = 0; i < n; ++i) std::copy(k.row(i), k.row(i) + KV, kn + static_cast<size_t>(i) * KV);
  rope_.apply(kn, n, H, KV, pos0);
  st.importance.resize(static_cast<size_t>(total) * H, 0.0f);
  const int grp = NH / H;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Softmax weights of a block of B query rows, [B, total] (zero beyond the diagonal):
  // at most 4M floats at a time.
  const int B = std::max(1, std::min(n, (1 << 22) / std::max(total, 1)));
  std::vector<float> kt(static_cast<size_t>(hd) * total), w(static_cast<size_t>(B) * total);
  for (int kh = 0; kh < H; ++kh) {
    for (int j = 0; j < total; ++j)
      for (int c = 0; c < hd; ++c)
        kt[static_cast<size_t>(c) * total + j] = st.k_rot[static_cast<size_t>(j) * KV + kh * hd + c];
    for (int qh = kh * grp; qh < (kh + 1) * grp; ++qh)
      for (int i0 = 0; i0 < n; i0 += B) {
        const int nb = std::min(B, n - i0);
#pragma omp parallel if (static_cast<int64_t>(nb) * total * hd > 65536)
        {
          std::vector<float> s(static_cast<size_t>(total));
          std::vector<double> p(static_cast<size_t>(total));
#pragma omp for schedule(dynamic, 4)
          for (int b = 0; b < nb; ++b) {
            const int i = i0 + b, t = pos0 + i;
            const float* qv = qr.data() + static_cast<size_t>(i) * QD + qh * hd;
            std::fill(s.begin(), s.begin() + t + 1, 0.0f);
            for (int c = 0; c < hd; ++c) {
              const float qc = qv[c];
              const float* kc = kt.data() + static_cast<size_t>(c) * total;
              for (int j = 0; j <= t; ++j) s[j] += qc * kc[j];
            }
            double mx = -INFINITY;
            for (int j = 0; j <= t; ++j) {
              p[j] = s[j] * scale;
              mx = std::max(mx, p[j]);
            }
            double sum = 0;
            for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
            float* wr = w.data() + static_cast<size_t>(b) * total;
            for (int j = 0; j <= t; ++j) wr[j] = static_cast<float>(p[j] / sum);
            std::fill(wr + t + 1, wr + total, 0.0f);  // + 0.0f leaves a sum of weights as is
          }
        }
        // Keys [0, pos0 + i0 + nb) received weight from this block; 64 keys per task.
        const int keys = pos0 + i0 + nb;
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(nb) * keys > 65536)
        for (int j0 = 0; j0 < keys; j0 += 64) {
          const int nj = std::min(64, keys - j0);
          float acc[64];
          for (int j = 0; j < nj; ++j) acc[j] = st.importance[static_cast<size_t>(j0 + j) * H + kh];
          for (int b = 0; b < nb; ++b) {
            const float* wr = w.data() + static_cast<size_t>(b) * total + j0;
            for (int j = 0; j < nj; ++j) acc[j] += wr[j];
          }
          for (int j = 0; j < nj; ++j) st.importance[static_cast<size_t>(j0 + j) * H + kh] = acc[j];
        }
      }
  }
}

void SimQuantObserver::on_qkv(int layer, int seq, int pos0, ConstMatrixView q, MatrixView k,
                              MatrixView v) {
  SeqState& st = state(layer, seq, pos0);
  if (need_importance_) update_importance(st, pos0, q, ConstMatrixView{k.data, k.rows, k.cols, k.stride});
  AppendContext vctx;
  vctx.importance = st.importance.empty() ? nullptr : st.importance.data();
  const Codec& kc = *k_codecs_.at(layer);
  if (kc.stage() == RopeStage::kPreRope) {
    AppendContext kctx = vctx;
    kctx.queries = q;
    apply(kc, st.k, pos0, k, kctx);
  }
  apply(*v_codecs_.at(layer), st.v, pos0, v, vctx);
}

void SimQuantObserver::on_k_post_rope(int layer, int seq, int pos0, ConstMatrixView q,
                                      MatrixView k) {
  SeqState& st = states_.at({layer, seq});
  const Codec& kc = *k_codecs_.at(layer);
  if (kc.stage() == RopeStage::kPostRope) {
    AppendContext ctx;
    ctx.queries = q;
    ctx.importance = st.importance.empty() ? nullptr : st.importance.data();
    apply(kc, st.k, pos0, k, ctx);
  }
  // Account what this (layer, sequence) holds now, replacing its previous figure.
  const double bytes = static_cast<double>(st.k->bytes() + st.v->bytes());
  const double elems = 2.0 * static_cast<double>(st.k->size()) * shape_.dim();
  stats_.bytes += bytes - (pos0 == 0 ? 0.0 : st_bytes_[{layer, seq}]);
  stats_.elements += elems - (pos0 == 0 ? 0.0 : st_elems_[{layer, seq}]);
  st_bytes_[{layer, seq}] = bytes;
  st_elems_[{layer, seq}] = elems;
}

}  // namespace kvq::codecs
