// KVQuant decode (interface: kv_decode_kvquant.cuh): the cases its kernels serve, fits(), for
// the folded three-pass builds of kv_decode_kvquant_fold.cu (kvq-fold2, kvq-foldm).
// What fits() refuses (3 bits, head_dim 64, interleaved RoPE, bf16, ...) takes the general
// kernel of kv_decode_packed.cu, as does KVQ_KV_DECODE=general.
// This file held h42's CUDA-core kernel (KVQ_KV_DECODE=kvq-fast: 8 lanes per key token, RoPE
// by an angle-addition recurrence, three passes per chunk; 434 us at llama2-7b b1 32K 4 bits,
// 2.6-3x the general kernel). It served exactly fits() and was slower than the tensor-core
// build in all 16 measured cells (H100, notes/s5/results-h45.md run 2: 1.11-1.49x), so it was
// removed; the last commit that has it is dfabb0b (notes/kv-cuda-perf.md, "Retired kernels").
#include "kernels/kv_decode_kvquant.cuh"

namespace kvq::kern::kvquant_decode {
namespace {

constexpr int kD = 128;  // head_dim served

}  // namespace

bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  if (act != Act::kF16 || k.format != KvFormat::kLutChannel || v.format != KvFormat::kLutToken) return false;
  if (k.bits != v.bits || (k.bits != 2 && k.bits != 4)) return false;
  if (k.head_dim != kD || v.head_dim != kD || k.kv_heads != v.kv_heads || k.kv_heads <= 0) return false;
  if (!a.inv_freq || a.rope_interleaved || a.n_heads % k.kv_heads != 0) return false;
  const int G = a.n_heads / k.kv_heads;
  if (G < 1 || G > 8) return false;
  if (!k.lut || !v.lut || !k.kmid || !k.khalf || v.mpr != 2 || !v.meta) return false;
  if (k.wpr != 4 * k.bits || v.wpr != 4 * v.bits || k.resid_cap > 0 || v.resid_cap > 0) return false;
  if ((k.outliers && (!k.off || !k.rec)) || (v.outliers && (!v.off || !v.rec))) return false;
  return !k.inv_s && !v.inv_s;
}

}  // namespace kvq::kern::kvquant_decode
