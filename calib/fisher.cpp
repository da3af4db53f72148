// Fisher information from the CPU backward pass (see fisher.h).
#include "calib/fisher.h"

#include <string>

#include "calib/rng.h"
#include "calib/serial_products.h"
#include "formats/error.h"
#include "formats/version.h"
#include "lib/backward/cpu_gradient.h"
#if KVQ_HAVE_CUDA
#include "lib/cuda/cuda_gradient.h"
#endif

namespace kvq::calib {

std::vector<int64_t> sample_starts(int64_t n_tokens, int seqlen, int nseq, uint64_t seed) {
  if (seqlen < 2) throw InvalidArgument("--seqlen", "need at least 2 tokens per sequence");
  if (nseq < 1) throw InvalidArgument("--nseq", "need at least 1 sequence");
  const int64_t range = n_tokens - seqlen - 1;
  if (range < 1) {
    throw InvalidArgument("--dataset", "the dataset has " + std::to_string(n_tokens) +
                                           " tokens, too few for sequences of " +
                                           std::to_string(seqlen) + " (need at least " +
                                           std::to_string(seqlen + 2) + ")",
                          "use a larger dataset or a smaller --seqlen");
  }
  SplitMix64 rng(seed);
  std::vector<int64_t> starts(static_cast<size_t>(nseq));
  for (int64_t& s : starts) s = static_cast<int64_t>(rng.below(static_cast<uint64_t>(range)));
  return starts;
}

FisherInfo fisher_information(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                              std::span<const int64_t> starts, int seqlen) {
  const CpuGradient<float> grad(model);
  const SerialEigenProducts serial;  // the same bytes for any thread count (serial_products.h)
  const ModelConfig& cfg = grad.config();
  const int kv = cfg.kv_dim();
  const size_t per_layer = static_cast<size_t>(seqlen) * kv;
  std::vector<std::vector<double>> ak(static_cast<size_t>(cfg.n_layers), std::vector<double>(per_layer, 0.0));
  std::vector<std::vector<double>> av = ak;
  FisherInfo out;
  out.seqlen = seqlen;
  out.kv_dim = kv;
  for (int64_t s : starts) {
    if (s < 0 || s + seqlen > static_cast<int64_t>(ids.size())) {
      throw InvalidArgument("starts", "sequence start " + std::to_string(s) + " + " +
                                          std::to_string(seqlen) + " outside the " +
                                          std::to_string(ids.size()) + " tokens");
    }
    const double loss = grad.backward(ids.subspan(static_cast<size_t>(s), static_cast<size_t>(seqlen)),
                                      [&](const CpuGradient<float>::LayerView& v) {
                                        std::vector<double>& k = ak[static_cast<size_t>(v.layer)];
                                        std::vector<double>& vv = av[static_cast<size_t>(v.layer)];
                                        const float* dk = v.dk_pre_rope->data();
                                        const float* dv = v.dv->data();
                                        for (size_t i = 0; i < per_layer; ++i) {
                                          k[i] += static_cast<double>(dk[i]) * dk[i];
                                          vv[i] += static_cast<double>(dv[i]) * dv[i];
                                        }
                                      });
    out.loss.push_back(loss);
  }
  for (int l = 0; l < cfg.n_layers; ++l) {
    out.k.emplace_back(ak[static_cast<size_t>(l)].begin(), ak[static_cast<size_t>(l)].end());
    out.v.emplace_back(av[static_cast<size_t>(l)].begin(), av[static_cast<size_t>(l)].end());
  }
  return out;
}

FisherInfo fisher_information(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                              std::span<const int64_t> starts, int seqlen, const std::string& backend) {
  if (backend == "cpu") return fisher_information(std::move(model), ids, starts, seqlen);
  if (backend != "cuda" && backend.rfind("cuda:", 0) != 0) {
    throw InvalidArgument("--backend", "unknown backend '" + backend + "'", "one of: cpu, cuda, cuda:N");
  }
#if KVQ_HAVE_CUDA
  CudaGradientOptions go;
  if (backend.size() > 5) {
    try {
      go.device = std::stoi(backend.substr(5));
    } catch (const std::exception&) {
      throw InvalidArgument("--backend", "'" + backend + "' is not cuda:N");
    }
  }
  CudaGradient grad(model, go);
  FisherInfo out;
  out.seqlen = seqlen;
  out.kv_dim = grad.config().kv_dim();
  for (int64_t s : starts) {
    if (s < 0 || s + seqlen > static_cast<int64_t>(ids.size())) {
      throw InvalidArgument("starts", "sequence start " + std::to_string(s) + " + " + std::to_string(seqlen) +
                                          " outside the " + std::to_string(ids.size()) + " tokens");
    }
    out.loss.push_back(grad.accumulate_fisher(ids.subspan(static_cast<size_t>(s), static_cast<size_t>(seqlen))));
  }
  grad.fisher(out.k, out.v);
  return out;
#else
  throw UnsupportedError("--backend", "this build of kvq has no CUDA backend", "use --backend cpu");
#endif
}

}  // namespace kvq::calib
