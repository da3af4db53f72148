#!/usr/bin/env bash
# Benchmark point 5 of issue 5 (a benchmark, not a test; GPU machine only): wall time and
# peak GPU memory of calibration -- Fisher information + outlier thresholds + Fisher-
# weighted NUQ signposts for 2, 3, 4 bits -- by kvq-calibrate --backend cuda and by the
# PyTorch + scikit-learn pipeline (scripts/bench/fisher_torch.py, KVQuant's settings), on
# the same tokens (kvq's sampled starts are passed to the PyTorch side), side by side.
# Also: the GPU Fisher information against PyTorch autograd (hf_oracle.py fisher).
#
#   bash scripts/bench/fisher_bench.sh oracle            # GPU Fisher vs hf_oracle.py, testbed 4 x 256
#   bash scripts/bench/fisher_bench.sh testbed [N] [L]   # testbed, default 8 x 1024
#   bash scripts/bench/fisher_bench.sh 7b [LAYERS] [N] [L]  # random-weight Llama-2-7B shape,
#                                                        # default 2 layers, 1 x 2048
# Environment: KVQ_BIN (folder with kvq-calibrate, default build-gpu/tools), KVQ_SHARED
# (default .carry/shared), CALIB (default $KVQ_SHARED/datasets/kvq-docs/calib.txt),
# OUT (results folder, default /tmp/kvq-out). Each run appends one JSON line per side to
# $OUT/fisher_bench.jsonl and prints a table row.
set -uo pipefail
OUT=${OUT:-/tmp/kvq-out}
mkdir -p "$OUT"
BIN=${KVQ_BIN:-$PWD/build-gpu/tools}
SHARED=${KVQ_SHARED:-$PWD/.carry/shared}
CALIB=${CALIB:-$SHARED/datasets/kvq-docs/calib.txt}
HERE=$(cd "$(dirname "$0")" && pwd)
testbed="$SHARED/models/kvq-testbed-llama2-23m"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1

# kvq-calibrate then fisher_torch.py on the same starts; one table row.
compare() {  # name model nseq seqlen
  local name=$1 model=$2 nseq=$3 seqlen=$4
  /usr/bin/time -f "%e %M" -o "$work/kvq.time" "$BIN/kvq-calibrate" --model "$model" --dataset "$CALIB" \
    --nseq "$nseq" --seqlen "$seqlen" --backend cuda -o "$work/$name.kvqc" --format json \
    > "$work/kvq.json" 2> "$work/kvq.err" || { tail -5 "$work/kvq.err"; return 1; }
  local starts
  starts=$(python3 -c "import json;print(','.join(map(str,json.load(open('$work/kvq.json'))['starts'])))")
  /usr/bin/time -f "%e %M" -o "$work/torch.time" python3 "$HERE/fisher_torch.py" --model "$model" --text "$CALIB" \
    --starts "$starts" --seqlen "$seqlen" > "$work/torch.json" 2> "$work/torch.err" || { tail -5 "$work/torch.err"; return 1; }
  python3 - "$name" "$work" "$OUT/fisher_bench.jsonl" <<'PY'
import json, sys
name, work, sink = sys.argv[1:4]
k = json.load(open(f"{work}/kvq.json"))
t = json.load(open(f"{work}/torch.json"))
kw, krss = open(f"{work}/kvq.time").read().split()
tw, trss = open(f"{work}/torch.time").read().split()
kp = k["capture_seconds"] + k["fit_seconds"]
tp = t["pipeline_seconds"]
row = {"bench": name, "sequences": k["sequences"], "seqlen": k["seqlen"],
       "kvq": {"capture_s": k["capture_seconds"], "fit_s": k["fit_seconds"], "pipeline_s": kp,
               "wall_s": float(kw), "gpu_peak_bytes": k["gpu_peak_bytes"], "max_rss_kib": int(krss),
               "mean_loss": k["mean_loss"], "backend": k["backend"]},
       "torch": {"fisher_s": t["fisher_seconds"], "fit_s": t["fit_seconds"], "pipeline_s": tp,
                 "load_s": t["load_seconds"], "wall_s": float(tw), "gpu_peak_bytes": t["gpu_peak_bytes"],
                 "max_rss_kib": int(trss), "mean_loss": t["mean_loss"], "dtype": t["dtype"],
                 "torch": t["torch"], "sklearn": t["sklearn"]},
       "speedup_pipeline": tp / kp, "speedup_wall": float(tw) / float(kw)}
with open(sink, "a") as f:
    f.write(json.dumps(row) + "\n")
G = 2.0 ** 30
print(f"{name}: {k['sequences']} x {k['seqlen']} tokens")
print(f"  kvq   : Fisher (capture) {k['capture_seconds']:.2f} s + fit {k['fit_seconds']:.2f} s = {kp:.2f} s; "
      f"wall {float(kw):.2f} s; GPU peak {k['gpu_peak_bytes']/G:.2f} GiB; loss {k['mean_loss']:.5f}")
print(f"  torch : Fisher {t['fisher_seconds']:.2f} s + fit {t['fit_seconds']:.2f} s = {tp:.2f} s; "
      f"wall {float(tw):.2f} s (load {t['load_seconds']:.2f} s); GPU peak {t['gpu_peak_bytes']/G:.2f} GiB; "
      f"loss {t['mean_loss']:.5f} ({t['dtype']})")
print(f"  speedup: pipeline {tp/kp:.2f}x, wall {float(tw)/float(kw):.2f}x")
PY
}

case "${1:-}" in
  oracle)
    python3 "$SHARED/tools/hf_oracle.py" fisher --model "$testbed" --text "$CALIB" --nseq 4 --seqlen 256 \
      --seed 0 --out "$work/oracle" 2>&1 | grep -v Warning | tail -2
    starts=$(python3 -c "import json;print(','.join(map(str,json.load(open('$work/oracle/layer0.k_proj.fisher.f32.json'))['starts'])))")
    echo "oracle starts: $starts"
    "$BIN/kvq-calibrate" --model "$testbed" --dataset "$CALIB" --seqlen 256 --starts "$starts" --backend cuda \
      --fisher-out "$work/kvq" -o "$work/o.kvqc" --format json > "$work/o.json" 2> "$work/o.err" || tail -5 "$work/o.err"
    python3 - "$work/oracle" "$work/kvq" <<'PY'
import sys, numpy as np
a, b = sys.argv[1], sys.argv[2]
worst = 0
for l in range(6):
    for n in ("k_proj", "v_proj"):
        o = np.fromfile(f"{a}/layer{l}.{n}.fisher.f32", "<f4").astype(np.float64)
        k = np.fromfile(f"{b}/layer{l}.{n}.fisher.f32", "<f4").astype(np.float64)
        rel = np.linalg.norm(k - o) / np.linalg.norm(o)
        g = np.linalg.norm(np.sqrt(k) - np.sqrt(o)) / np.linalg.norm(np.sqrt(o))
        big = o > 1e-3 * o.max()
        emax = np.max(np.abs(k[big] - o[big]) / o[big])
        worst = max(worst, rel)
        print(f"layer {l} {n}: |F_gpu - F_torch|/|F_torch| = {rel:.3e}, |sqrt F| rel {g:.3e}, "
              f"max elementwise rel (F > 1e-3 max) {emax:.3e}")
print(f"worst norm-wise relative error of F (kvq CUDA vs PyTorch autograd fp32): {worst:.3e}")
PY
    ;;
  testbed)
    compare testbed "$testbed" "${2:-8}" "${3:-1024}"
    ;;
  7b)
    layers=${2:-2}
    python3 "$HERE/fisher_torch.py" --make-synthetic "$work/llama2-7b-shape" --layers "$layers" \
      --tokenizer-from "$testbed" 2>&1 | grep -v Warning | tail -1
    compare "llama2-7b-shape-${layers}L" "$work/llama2-7b-shape" "${3:-1}" "${4:-2048}"
    ;;
  *)
    sed -n 2,17p "$0"
    exit 2
    ;;
esac
