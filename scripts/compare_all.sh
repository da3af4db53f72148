#!/usr/bin/env bash
# The issue-7 compare table: every method at 4/3/2 bits (8-bit baselines once), calibrated
# where the method calibrates (KVQuant signposts/ranges/thresholds, MiKV balancer, WKVQuant
# CRR smoothing, all from one kvq-calibrate --crr file), in one kvq-eval invocation over
# several tasks, with an SVG plot.
#   scripts/compare_all.sh CALIB.kvqc OUTDIR [kvq-eval options...]
# Environment: KVQ_BIN (default build/tools), KVQ_TASKS (default ppl,kld,passkey).
# Example: scripts/compare_all.sh testbed.kvqc out --model M --dataset wiki.test.raw \
#   --seqlen 1024 --max-windows 2 --trials 5 --backend cpu
set -euo pipefail
calib=${1:?usage: scripts/compare_all.sh CALIB.kvqc OUTDIR [kvq-eval options...]}
out=${2:?usage: scripts/compare_all.sh CALIB.kvqc OUTDIR [kvq-eval options...]}
shift 2
bin=${KVQ_BIN:-build/tools}
mkdir -p "$out"
"$bin/kvq-convert" --calib "$calib" --method kvquant,mikv,wkvquant --bits 4,3,2 -o "$out/{method}{bits}.kvqp" >&2
methods=(--compare int8 --compare q8_0 --compare fp8:e4m3 --compare q4_0)
for b in 4 3 2; do
  methods+=(--compare "int$b" --compare "kivi:bits=$b" --compare "$out/kvquant$b.kvqp"
            --compare "$out/wkvquant$b.kvqp" --compare "$out/mikv$b.kvqp" --compare "hadamard:bits=$b")
done
"$bin/kvq-eval" --task "${KVQ_TASKS:-ppl,kld,passkey}" "${methods[@]}" --plot "$out/compare.svg" "$@" \
  | tee "$out/compare.txt"
