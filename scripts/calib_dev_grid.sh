#!/usr/bin/env bash
# Calibration variants compared on DEVELOPMENT texts only (issue 5, acceptance 4): how
# kvq-calibrate's options (token budget, robust signpost weights) were chosen without
# looking at the evaluation split. For each variant: kvq-calibrate (kvq-docs calib.txt),
# kvq-convert to KVQuant profiles per bit width; then, per dev text, ONE kvq-eval compare
# run with fp16, the uncalibrated `kvquant:bits=B` and every variant's profiles (all rows
# on the same windows), and a markdown table with each row's PPL, its difference from the
# default and from the first variant (the baseline), each with the standard error paired
# over windows (stdout). Logs go to stderr; everything else stays in --out.
#
#   scripts/calib_dev_grid.sh --dev valid.txt:48 --dev licenses.txt:48 \
#       --variant 'n16=--nseq 16' --variant 'n32=--nseq 32' --variant 'n16-mix0.1=--nseq 16 --uniform-mix 0.1'
#
# Options: --model DIR, --calib-data FILE, --bits 3,2, --seqlen 1024 (eval windows),
# --calib-seqlen 2048 (clamped to the window), --seed 0, --backend auto|cpu|cuda,
# --threads N, --bin DIR (kvq tools, default build/tools), --out DIR, --stage calib|eval|all.
# --dev FILE:W (W windows, -1 all) and --variant NAME=ARGS may repeat. Refuses WikiText-2
# test, as calibration data and as a dev text.
set -euo pipefail
cd "$(dirname "$0")/.."

model=../shared/models/kvq-testbed-llama2-23m
calib_data=../shared/datasets/kvq-docs/calib.txt
bits=3,2
seqlen=1024
calib_seqlen=2048
seed=0
backend=auto
threads=0
bin=${KVQ_BIN:-build/tools}
out=calib-dev-grid
stage=all
devs=()
variants=()

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case $1 in
    --model) model=$2; shift 2 ;;
    --calib-data) calib_data=$2; shift 2 ;;
    --bits) bits=$2; shift 2 ;;
    --seqlen) seqlen=$2; shift 2 ;;
    --calib-seqlen) calib_seqlen=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --dev) devs+=("$2"); shift 2 ;;
    --variant) variants+=("$2"); shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "calib_dev_grid.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
done
is_test_split() { case $1 in *wiki.test*|*wikitext*test*|wikitext2) return 0 ;; esac; return 1; }
is_test_split "$calib_data" && { echo "calib_dev_grid.sh: refusing to calibrate on '$calib_data'" >&2; exit 2; }
for d in "${devs[@]}"; do
  is_test_split "${d%:*}" && { echo "calib_dev_grid.sh: '${d%:*}' is the evaluation split, not a dev text" >&2; exit 2; }
done
((${#variants[@]})) || { echo "calib_dev_grid.sh: no --variant" >&2; exit 2; }
mkdir -p "$out"
IFS=, read -r -a bit_list <<< "$bits"

if [[ $stage == all || $stage == calib ]]; then
  for v in "${variants[@]}"; do
    name=${v%%=*}
    read -r -a args <<< "${v#*=}"
    t0=$(date +%s)
    echo "calib_dev_grid.sh: calibrate $name: ${args[*]}" >&2
    "$bin/kvq-calibrate" --model "$model" --dataset "$calib_data" --seqlen "$calib_seqlen" --seed "$seed" \
      --bits "$bits" --backend "$backend" --threads "$threads" "${args[@]}" -o "$out/$name.kvqc" --format json \
      > "$out/$name.calibrate.json" 2> "$out/$name.calibrate.err"
    "$bin/kvq-convert" --calib "$out/$name.kvqc" --model "$model" --method kvquant --bits "$bits" \
      -o "$out/$name-{bits}.kvqp" > /dev/null
    echo "calib_dev_grid.sh: $name: $(( $(date +%s) - t0 )) s" >&2
  done
fi

if [[ $stage == all || $stage == eval ]]; then
  for d in "${devs[@]}"; do
    file=${d%:*}
    windows=${d##*:}
    tag=$(basename "$file" .txt)
    compare=()
    for b in "${bit_list[@]}"; do
      compare+=(--compare "kvquant:bits=$b")
      for v in "${variants[@]}"; do compare+=(--compare "$out/${v%%=*}-$b.kvqp"); done
    done
    t0=$(date +%s)
    echo "calib_dev_grid.sh: eval $file, $windows windows" >&2
    "$bin/kvq-eval" --task ppl --model "$model" --dataset "$file" --seqlen "$seqlen" --max-windows "$windows" \
      --backend "$backend" --threads "$threads" "${compare[@]}" --format json > "$out/eval-$tag.json"
    echo "calib_dev_grid.sh: eval $tag: $(( $(date +%s) - t0 )) s" >&2
  done
fi

PYTHONPATH=scripts python3 - "$out" "$bits" "${variants[@]%%=*}" <<'PY'
import glob, json, math, os, sys
from paired_ppl import paired
out, bits, names = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], sys.argv[3:]
for path in sorted(glob.glob(os.path.join(out, "eval-*.json"))):
    c = json.load(open(path))
    rows = {os.path.basename(r["method"]): r for r in c["rows"]}
    ref = next(r for r in c["rows"] if r.get("reference"))
    n = len(ref.get("window_nll") or [])
    print("### %s: %d windows of %d tokens, fp16 KV PPL %.3f (%s, kvq %s)" % (
        os.path.basename(c["data"]), n, c["seqlen"], ref["ppl"], c["device"], c["revision"]))
    print()
    print("| bits | row | PPL | - default (+- se) | - %s (+- se) | bits/elem |" % names[0])
    print("|---:|---|---:|---:|---:|---:|")
    for b in bits:
        d = next(r for m, r in rows.items() if m == "kvquant:bits=%d" % b or m.startswith("kvquant:bits=%d," % b))
        base = rows["%s-%d.kvqp" % (names[0], b)]
        print("| %d | default | %.3f | | | %.3f |" % (b, d["ppl"], d["effective_bits"]))
        for nm in names:
            r = rows["%s-%d.kvqp" % (nm, b)]
            print("| %d | %s | %.3f | %s | %s | %.3f |" % (b, nm, r["ppl"], paired(r, d),
                  "" if nm == names[0] else paired(r, base), r["effective_bits"]))
    print()
PY
