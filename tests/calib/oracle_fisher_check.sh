#!/usr/bin/env bash
# On the GPU machine (device tool), not a ctest test: compares kvq's CPU Fisher information
# (lib/backward through kvq-calibrate --fisher-out) with PyTorch autograd
# (../shared/tools/hf_oracle.py fisher) on the testbed model, per layer for dL/dK and dL/dV,
# using the oracle's own sequence starts (torch.randint) passed to kvq with --starts; then
# times kvq-calibrate on the testbed (4 x 256 and the default 16 x 1024).
# Data: KVQ_SHARED (default .carry/shared) and the calibration text CALIB
# (default .carry/h8/calib.txt). Usage: bash tests/calib/oracle_fisher_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
export KVQ_SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
CALIB=${CALIB:-$PWD/.carry/h8/calib.txt}
model="$KVQ_SHARED/models/kvq-testbed-llama2-23m"
work=$(mktemp -d)
log="$OUT/oracle_fisher.log"
{
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
t0=$(date +%s)
cmake -S . -B build-h8dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA=OFF -DKVQ_TESTS=OFF > "$work/cfg.log" 2>&1 || tail -20 "$work/cfg.log"
cmake --build build-h8dev --target kvq-calibrate -j16 > "$work/build.log" 2>&1 || grep -E "error" -A4 "$work/build.log" | head -40
echo "build: $(( $(date +%s) - t0 )) s"
python3 "$KVQ_SHARED/tools/hf_oracle.py" fisher --model "$model" --text "$CALIB" --nseq 4 --seqlen 256 \
  --seed 0 --out "$work/oracle" 2>&1 | grep -v Warning | tail -2
starts=$(python3 -c "import json;print(','.join(map(str,json.load(open('$work/oracle/layer0.k_proj.fisher.f32.json'))['starts'])))")
echo "oracle starts: $starts"
/usr/bin/time -f "kvq-calibrate 4x256 (oracle starts, + Fisher dump): %e s wall, %M KiB max RSS" \
  build-h8dev/tools/kvq-calibrate --model "$model" --dataset "$CALIB" --seqlen 256 --starts "$starts" \
  --fisher-out "$work/kvq" -o "$work/o.kvqc" --format json 2>&1 | grep -E "seconds|mean_loss|wall"
python3 - "$work/oracle" "$work/kvq" <<'PY'
import sys, numpy as np
a, b = sys.argv[1], sys.argv[2]
worst = 0
for l in range(6):
    for n in ("k_proj", "v_proj"):
        o = np.fromfile(f"{a}/layer{l}.{n}.fisher.f32", "<f4").astype(np.float64)
        k = np.fromfile(f"{b}/layer{l}.{n}.fisher.f32", "<f4").astype(np.float64)
        # Fisher = squared gradients: compare the gradients' magnitudes sqrt(F) norm-wise.
        rel = np.linalg.norm(np.sqrt(k) - np.sqrt(o)) / np.linalg.norm(np.sqrt(o))
        relF = np.linalg.norm(k - o) / np.linalg.norm(o)
        big = o > 1e-3 * o.max()
        emax = np.max(np.abs(k[big] - o[big]) / o[big])
        worst = max(worst, relF)
        print(f"layer {l} {n}: |F_kvq - F_torch|/|F_torch| = {relF:.3e}, sqrt-F rel {rel:.3e}, "
              f"max elementwise rel (F > 1e-3 max) {emax:.3e}, sum F {k.sum():.6e} vs {o.sum():.6e}")
print(f"worst norm-wise relative error of F: {worst:.3e}")
PY
/usr/bin/time -f "kvq-calibrate 4x256 seed 0: %e s wall, %M KiB max RSS" build-h8dev/tools/kvq-calibrate \
  --model "$model" --dataset "$CALIB" --nseq 4 --seqlen 256 -o "$work/a.kvqc" --format json 2>&1 | grep -E "seconds|wall"
/usr/bin/time -f "kvq-calibrate 16x1024 seed 0 (defaults): %e s wall, %M KiB max RSS" timeout 400 build-h8dev/tools/kvq-calibrate \
  --model "$model" --dataset "$CALIB" -o "$work/d.kvqc" --format json 2>&1 | grep -E "seconds|mean_loss|wall"
} 2>&1 | tee "$log"
rm -rf "$work"
