// Decode attention over packed uniform per-token KV caches (intB axis=token, sym or asym,
// 2 or 4 bits, head_dim 128) and KIVI caches (G <= 2; G <= 4 with 32-channel value groups) with
// the dot products on the tensor
// cores (mma.sync m16n8k16, fp16 inputs, fp32 accumulation). This file: the design and error
// bound below, the pair selection (fits) and run(), which launches the one build, version 4
// in kv_decode_stream.cu (the chunk staged in shared memory with cp.async, online softmax over
// 256-token stages, KIVI; H100: int4 MHA 87-98% of copy from 32K at batch 8 / 64K at batch 1,
// 3.2-3.8x the fp16 kernel; figures there). Device helpers: kv_decode_mma_common.cuh.
// Version 3 (mma_decode_kernel: codes loaded into registers, three passes per 1024-token chunk;
// KVQ_KV_DECODE=mma|mma3|mma-hoist) was slower than version 4 in every measured cell (H100,
// notes/s4/results-h31.md, e.g. int4 MHA b8 128K 2955.7 vs 1596.1 us) and was removed; the
// last commit that has it is dfabb0b (notes/kv-cuda-perf.md, "Retired kernels").
// Why tensor cores: the CUDA-core kernels (kv_decode_packed.cu)
// spend ~5 instructions per element (shift, magic OR, FADD, dequant FFMA, dot FFMA) and
// stalled at 18-34% of copy bandwidth (notes/kv-cuda-perf.md); at 2990 GB/s the H100 issues
// 5.3 thread-instructions per int4 element and 2.8 per int2 element, so the kernel must do
// far less per element than the dequantize-then-fma form.
//
// The factorisation (per token t, channel group grp, per-token stored scale s and zero z):
//   keys:   score(g, t) = scale * sum_grp [ s_t * sum_{d in grp} q_gd c_td + z_t * sum_{d in grp} q_gd ]
//   values: out(g, d)   = (sum_t (p_gt s_t) c_td + sum_t p_gt z_t) / l_g
// (symmetric codes: z = -2^(b-1) s). The integer codes c go through the tensor cores
// unscaled; the scales are applied once per token (keys) or folded into the softmax
// weights (values).
//  - Codes -> fp16, exactly: (w & mask) | 0x6400 per half is 1024 + c * 2^k (one LOP3 for two
//    codes), then one HFMA2 by (2^-k, -1024 * 2^-k) gives c. A 32-bit word of 4-bit codes
//    becomes 4 fp16 pairs (codes j, j+4) with 1 shift + 4 LOP3 + 4 HFMA2; of 2-bit codes
//    8 pairs (j, j+8) with 1 + 8 + 8.
//  - Keys: A = codes [16 tokens x 16 channels] (row = token), B = q [16 channels x 8 columns],
//    column = (query head g, channel group grp): q masked to the group, so the groups of
//    a token come out as separate columns (G * 128/group <= 16 columns: 1 or 2 mmas per
//    A fragment). The k dimension (channels) may be permuted freely as long as A and B
//    agree: lane (gid, t) holds channels 32t .. 32t+31 of its two tokens (one 16-byte load
//    per token at 4 bits, 8 at 2 bits) and the k-slots are the fp16 pairs in the order the
//    magic conversion produces them. q is fp16 already, so B is exact.
//  - Values: A = codes transposed [16 channels x 16 tokens], B = weights [16 tokens x 8
//    columns], column = (g, value group, hi | lo). Lane (gid, t) loads channels
//    16 gid .. 16 gid + 15 of tokens 4t .. 4t+3 (8-byte loads at 4 bits), pairs two tokens'
//    codes of one channel with a byte permute (PRMT) before the magic conversion.
//    The weight w = p s is fp32; it is split into w_hi = fp16(w 2^E) and w_lo =
//    fp16(w 2^E - w_hi) (two B columns; the mma sums both), E per value group chosen from
//    the chunk's largest scale so that w 2^E < 2^15 (no overflow; p <= 1): the pair carries
//    22 bits, relative error <= 2^-22, and underflow of small weights costs at most
//    2^-25 * 2^-E absolute, below 2^-39 of the chunk's largest weight.
//  - The z terms (sum_g q per group, sum_t p z) are fp32 sums outside the tensor cores.
// Instruction count per element, predicted: keys 4 bits 9/8 conversion + 1/8 mma + ~0.3
// epilogue (scale/zero per token, 2 of 64 codes per lane) = ~1.55; values 4 bits 10/8
// (2 PRMT + 2 SHF + 8 LOP3 + 8 HFMA2 per 16 codes) + 1/8 mma + ~0.05 = ~1.4; 2 bits ~1.3
// each, against 5.3 (int4) / 2.8 (int2) issued per element at 100% of copy bandwidth.
// Measured in the SASS of version 3 (H100 run of 2026-11-22, notes/s3/results-h21.md): key
// loop 8.6, value loop 3.0 per element. The conversions and mmas were as predicted; the key
// pass's epilogue was not (run-time / and % by the key group count and per-column meta
// addresses inside the tile loop, codes held in registers): version 3 stopped at 50% of copy.
// Version 4 hoists the epilogue constants and stages the codes in shared memory.
// Error: the mma's fp32 accumulation aligns the 16 products and the accumulator to the
// largest exponent and truncates (Fasi et al., "Numerical behavior of NVIDIA tensor
// cores", 2021): per mma step at most 17 units of 2^-23 of the largest term. Over the
// 128/16 = 8 key steps that is <= 8 * 17 * 2^-23 <= 128 * 2^-23 of sum |q c| |s| + |z| sum|q|,
// i.e. the test's hd * 2^-23 bound with |s c| + |z| in place of |k| (tests/gpu/kv_packed_test.cpp).
// Softmax, sums and outputs in fp32; the output is rounded once to fp16.
#include "kernels/common.cuh"
#include "kernels/kv_decode_mma.cuh"
#include "kernels/kv_decode_mma_common.cuh"

namespace kvq::kern::mma_decode {
namespace {

bool side_fits(const PackedSide& s) {
  if (s.format != KvFormat::kTokenAsym && s.format != KvFormat::kTokenSym) return false;
  if (s.resid_cap > 0 || s.n_sink > 0 || s.outliers || s.inv_s || s.lut) return false;
  return s.head_dim == kD && (s.bits == 2 || s.bits == 4) && s.group >= 16 && s.group <= kD &&
         kD % s.group == 0;
}

}  // namespace

bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  if (act != Act::kF16 || a.inv_freq || k.bits != v.bits || k.kv_heads <= 0) return false;
  if (a.n_heads % k.kv_heads != 0) return false;
  const int G = a.n_heads / k.kv_heads;
  if (stream_kivi_fits(k, v, G)) return true;
  if (!side_fits(k) || !side_fits(v)) return false;
  return G <= kMaxGroup && G * (kD / k.group) <= kMaxCols && 2 * G * (kD / v.group) <= kMaxCols;
}

int max_splits(int max_len) { return stream_max_splits(max_len); }

cudaError_t run(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                int max_len, int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  if (!fits(act, k, v, a)) return cudaErrorInvalidValue;
  return stream_run(k, v, a, max_len, sm_count, part_o, part_ml, stream);
}

}  // namespace kvq::kern::mma_decode
