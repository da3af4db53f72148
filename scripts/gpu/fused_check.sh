#!/usr/bin/env bash
# On the GPU machine: the elementwise-fusion check of notes/cuda-perf.md ("Elementwise fusion
# (session 3)") in one call: the whole GPU test suite, then kvq-gpubench on synthetic
# llama2-7b with per-stage device times, fused (default) and KVQ_NO_FUSION=1 (the session-2
# kernels), same binary, same card, back to back, on the FA2 prefill attention; then fused
# with the wgmma attention (KVQ_PREFILL=sm90).
# Binaries: .carry/h23/bin.tar.xz (kvq_test_gpu + kvq-gpubench built on the CPU machine, sm_90)
# when present and runnable there, else built here in build-gpu-h23.
# Usage (device): bash scripts/gpu/fused_check.sh   (logs under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
CTX=${CTX:-4096,16384}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
T=/tmp/h23/kvq_test_gpu
G=/tmp/h23/kvq-gpubench
if [ -f .carry/h23/bin.tar.xz ]; then
  mkdir -p /tmp/h23 && tar -xJf .carry/h23/bin.tar.xz -C /tmp/h23
fi
# (Catch2's --list-* options exit with the number of tests listed: ldd decides instead.)
if [ ! -x "$T" ] || ldd "$T" "$G" 2>&1 | grep -q "not found"; then
  echo "carried binaries do not run here: building"
  ldd "$T" 2>&1 | grep "not found"
  cmake -S . -B build-gpu-h23 -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/configure.log" 2>&1
  cmake --build build-gpu-h23 --target kvq_test_gpu kvq-gpubench -j16 > "$OUT/build.log" 2>&1 ||
    { tail -40 "$OUT/build.log"; exit 1; }
  T=build-gpu-h23/tests/kvq_test_gpu
  G=build-gpu-h23/tools/kvq-gpubench
fi
# The tests run on the FA2 prefill kernel (validated in session 2), so that what changes
# here is only the elementwise path; the bench also times the wgmma kernel once.
export KVQ_PREFILL=fa2
timeout 180 "$T" "[gpu]" > "$OUT/gpu_tests.log" 2>&1
echo "gpu suite exit $?"
grep -E "^(rope_store|swiglu_act|gemm_act|rmsnorm_vec)" "$OUT/gpu_tests.log" | sort | uniq | head -60 | cut -c1-150
grep -E "test cases|\[testbed|\[stories|\[hd 128|FAILED|failed" "$OUT/gpu_tests.log" | head -40
for mode in fused unfused fused_sm90; do
  if [ $mode = unfused ]; then export KVQ_NO_FUSION=1; else unset KVQ_NO_FUSION; fi
  if [ $mode = fused_sm90 ]; then export KVQ_PREFILL=sm90; else export KVQ_PREFILL=fa2; fi
  KVQ_STAGE_TIMES=1 timeout 90 "$G" --synthetic llama2-7b --contexts "$CTX" --decode-steps 16 \
    --json "$OUT/bench_$mode.json" > "$OUT/bench_$mode.log" 2>&1
  echo "== $mode (exit $?)"
  grep -E "copy|^model|synthetic" "$OUT/bench_$mode.log"
  for c in ${CTX//,/ }; do grep "stage times for $c " "$OUT/bench_$mode.log" | tail -1; done
done
