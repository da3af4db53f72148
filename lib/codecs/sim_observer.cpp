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
  importance_batch_ = std::max<int64_t>(1, opt.importance_batch);
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
  st.k_rot.resize(static_cast<size_t>(total) * KV);
  float* kn = st.k_rot.data() + static_cast<size_t>(pos0) * KV;
  // Copies and RoPE by blocks of 64 rows in parallel (rows are independent).
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(n) * (QD + KV) >= 65536)
  for (int i0 = 0; i0 < n; i0 += 64) {
    const int m = std::min(64, n - i0);
    for (int i = i0; i < i0 + m; ++i) {
      std::copy(q.row(i), q.row(i) + QD, qr.data() + static_cast<size_t>(i) * QD);
      std::copy(k.row(i), k.row(i) + KV, kn + static_cast<size_t>(i) * KV);
    }
    rope_.apply(qr.data() + static_cast<size_t>(i0) * QD, m, NH, QD, pos0 + i0);
    rope_.apply(kn + static_cast<size_t>(i0) * KV, m, H, KV, pos0 + i0);
  }
  st.importance.resize(static_cast<size_t>(total) * H, 0.0f);
  if (n == 0) return;
  const int grp = NH / H;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Keys transposed per kv head, [H][hd][ldk], ldk = total rounded up to kJ (zero pad).
  constexpr int kJ = 16;
  const int ldk = (total + kJ - 1) / kJ * kJ;
  std::vector<float> kt(static_cast<size_t>(H) * hd * ldk);
#pragma omp parallel for schedule(static) if (static_cast<int64_t>(total) * KV >= 65536)
  for (int c = 0; c < KV; ++c) {  // row c of kt is channel c % hd of kv head c / hd
    float* row = kt.data() + static_cast<size_t>(c) * ldk;
    for (int j = 0; j < total; ++j) row[j] = st.k_rot[static_cast<size_t>(j) * KV + c];
    std::fill(row + total, row + ldk, 0.0f);
  }
  // Work units: (query head, block of query rows), in the order the sums must follow
  // (query head, then row). A batch of consecutive units (at most 8M weights) is computed
  // in one parallel loop over its rows, then accumulated in one parallel loop over
  // (kv head, block of keys), each task adding the batch's units of its kv head in unit
  // order: two barriers per batch (one batch per layer for the testbed's windows) rather
  // than per head, which matters when threads wait on a busy machine.
  const int64_t cap = importance_batch_;
  const int rows_per_unit = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, cap / total)));
  struct Unit {
    int qh, i0, nb;
    size_t w0;  // offset of its weights [nb, total] in w
  };
  std::vector<Unit> units;
  for (int qh = 0; qh < NH; ++qh)
    for (int i0 = 0; i0 < n; i0 += rows_per_unit) units.push_back({qh, i0, std::min(rows_per_unit, n - i0), 0});
  std::vector<float> w;
  size_t u0 = 0;
  while (u0 < units.size()) {
    size_t u1 = u0, used = 0;
    std::vector<std::pair<int, int>> rows;  // (unit, row within it)
    while (u1 < units.size() && (u1 == u0 || used + static_cast<size_t>(units[u1].nb) * total <= static_cast<size_t>(cap))) {
      units[u1].w0 = used;
      used += static_cast<size_t>(units[u1].nb) * total;
      for (int b = 0; b < units[u1].nb; ++b) rows.emplace_back(static_cast<int>(u1), b);
      ++u1;
    }
    w.resize(used);
    const int nrows = static_cast<int>(rows.size());
    int keys = 0;
    for (size_t u = u0; u < u1; ++u) keys = std::max(keys, pos0 + units[u].i0 + units[u].nb);
#pragma omp parallel if (static_cast<int64_t>(nrows) * total * hd > 65536)
    {
      std::vector<float> s(static_cast<size_t>(total));
      std::vector<double> p(static_cast<size_t>(total));
#pragma omp for schedule(dynamic, 4)
      for (int r = 0; r < nrows; ++r) {
        const Unit& un = units[static_cast<size_t>(rows[r].first)];
        const int b = rows[r].second, i = un.i0 + b, t = pos0 + i, kh = un.qh / grp;
        const float* qv = qr.data() + static_cast<size_t>(i) * QD + un.qh * hd;
        const float* kth = kt.data() + static_cast<size_t>(kh) * hd * ldk;
        // kJ keys at a time with their sums in registers across the channel loop (the
        // padded keys beyond t are computed and dropped).
        for (int j0 = 0; j0 <= t; j0 += kJ) {
          float acc[kJ];
          for (int jj = 0; jj < kJ; ++jj) acc[jj] = 0.0f;
          for (int c = 0; c < hd; ++c) {
            const float qc = qv[c];
            const float* kc = kth + static_cast<size_t>(c) * ldk + j0;
            for (int jj = 0; jj < kJ; ++jj) acc[jj] += qc * kc[jj];
          }
          const int nj = std::min(kJ, t + 1 - j0);
          for (int jj = 0; jj < nj; ++jj) s[j0 + jj] = acc[jj];
        }
        double mx = -INFINITY;
        for (int j = 0; j <= t; ++j) {
          p[j] = s[j] * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
        float* wr = w.data() + un.w0 + static_cast<size_t>(b) * total;
        for (int j = 0; j <= t; ++j) wr[j] = static_cast<float>(p[j] / sum);
        std::fill(wr + t + 1, wr + total, 0.0f);  // + 0.0f leaves a sum of weights as is
      }
      // Keys [0, keys) received weight from this batch; 64 keys per task.
      const int kb = (keys + 63) / 64;
#pragma omp for schedule(static)
      for (int task = 0; task < H * kb; ++task) {
        const int kh = task / kb, j0 = (task % kb) * 64, nj = std::min(64, keys - j0);
        float acc[64];
        for (int j = 0; j < nj; ++j) acc[j] = st.importance[static_cast<size_t>(j0 + j) * H + kh];
        for (size_t u = u0; u < u1; ++u) {
          if (units[u].qh / grp != kh) continue;
          for (int b = 0; b < units[u].nb; ++b) {
            const float* wr = w.data() + units[u].w0 + static_cast<size_t>(b) * total + j0;
            for (int j = 0; j < nj; ++j) acc[j] += wr[j];
          }
        }
        for (int j = 0; j < nj; ++j) st.importance[static_cast<size_t>(j0 + j) * H + kh] = acc[j];
      }
    }
    u0 = u1;
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
