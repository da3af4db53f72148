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

void SimQuantObserver::update_importance(SeqState& st, int pos0, ConstMatrixView q,
                                         ConstMatrixView k) {
  const int hd = cfg_.head_dim, H = cfg_.n_kv_heads, NH = cfg_.n_heads, KV = cfg_.kv_dim(),
            QD = cfg_.q_dim(), n = q.rows;
  const int total = pos0 + n;
  if (rope_.max_pos() < total) rope_ = RopeTable(cfg_.rope, hd, std::max(total, 2 * rope_.max_pos()));
  std::vector<float> qr(static_cast<size_t>(n) * QD);
  for (int i = 0; i < n; ++i) std::copy(q.row(i), q.row(i) + QD, qr.data() + i * QD);
  rope_.apply(qr.data(), n, NH, QD, pos0);
  st.k_rot.resize(static_cast<size_t>(total) * KV);
  float* kn = st.k_rot.data() + static_cast<size_t>(pos0) * KV;
  for (int i = 0; i < n; ++i) std::copy(k.row(i), k.row(i) + KV, kn + i * KV);
  rope_.apply(kn, n, H, KV, pos0);
  st.importance.resize(static_cast<size_t>(total) * H, 0.0f);
  const int grp = NH / H;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<double> p(total);
  for (int qh = 0; qh < NH; ++qh) {
    const int kh = qh / grp;
    for (int i = 0; i < n; ++i) {
      const int t = pos0 + i;
      const float* qv = qr.data() + static_cast<size_t>(i) * QD + qh * hd;
      double mx = -INFINITY;
      for (int j = 0; j <= t; ++j) {
        const float* kv = st.k_rot.data() + static_cast<size_t>(j) * KV + kh * hd;
        float s = 0;
        for (int c = 0; c < hd; ++c) s += qv[c] * kv[c];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      double sum = 0;
      for (int j = 0; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int j = 0; j <= t; ++j)
        st.importance[static_cast<size_t>(j) * H + kh] += static_cast<float>(p[j] / sum);
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
