// fp32 KV cache storage (see kv_cache.h).
#include "lib/kv_cache.h"

#include <new>
#include <string>

#include "formats/error.h"

namespace kvq {

void KvCache::reset(int layers, int batch, int max_tokens, int kv_dim) {
  if (layers <= 0 || batch <= 0 || max_tokens <= 0 || kv_dim <= 0)
    throw InvalidArgument("kv cache", "batch " + std::to_string(batch) + " and max_tokens " +
                                          std::to_string(max_tokens) + " must be positive");
  const size_t n = static_cast<size_t>(layers) * batch * static_cast<size_t>(max_tokens) * kv_dim;
  k_.clear();
  v_.clear();
  k_.shrink_to_fit();
  v_.shrink_to_fit();
  try {
    k_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
  } catch (const std::bad_alloc&) {
    k_.clear();
    v_.clear();
    throw ResourceError("kv cache", "cannot allocate " + std::to_string(2 * n * sizeof(float)) +
                                        " bytes of host memory for " + std::to_string(batch) +
                                        " x " + std::to_string(max_tokens) + " tokens",
                        "use a smaller batch or context");
  }
  layers_ = layers;
  batch_ = batch;
  max_tokens_ = max_tokens;
  kv_dim_ = kv_dim;
  len_.assign(static_cast<size_t>(batch), 0);
}

void KvCache::set_len(int slot, int len) {
  if (slot < 0 || slot >= batch_)
    throw InvalidArgument("kv cache", "slot " + std::to_string(slot) + " outside 0.." +
                                          std::to_string(batch_ - 1));
  if (len < 0 || len > max_tokens_)
    throw InvalidArgument("kv cache", "length " + std::to_string(len) + " outside 0.." +
                                          std::to_string(max_tokens_));
  len_[static_cast<size_t>(slot)] = len;
}

}  // namespace kvq
