#!/usr/bin/env bash
# Calibrated vs default KVQuant on WikiText-2 (issue 5, acceptance 4), as one command:
#   1. kvq-calibrate the model on kvq-docs calib.txt with the issue's defaults (16 sequences
#      of 2048 tokens, clamped to the model window: 1024 for the testbed model; seed 0);
#   2. kvq-convert the calibration file to KVQuant profiles at each bit width;
#   3. kvq-eval ppl on WikiText-2 test at --seqlen (1024), every window unless --windows,
#      in one compare run: fp16, the uncalibrated `kvquant:bits=B` (uniform signposts,
#      ranges from the window itself), the calibrated profile and the same with uniform
#      value codes (`nuq=keys`) per bit width, so every row sees the same windows;
#   4. prints a markdown table (stdout) with model, data, windows, device, date and commit.
# Logs and progress go to stderr; the calibration file, profiles and the compare JSON stay
# in --out (an interrupted run continues: kvq-calibrate --resume).
#
#   scripts/calib_table.sh                                   # the issue's protocol
#   scripts/calib_table.sh --windows 4 --nseq 2 --calib-seqlen 256 --backend cpu   # smoke run
#   scripts/calib_table.sh --qnorm                           # adds calibrated + Q-Norm rows
#   scripts/calib_table.sh --eval-data ../shared/datasets/kvq-docs/valid.txt --windows 8   # dev set
#   scripts/calib_table.sh --calib-args '--fisher-clip 0.99'   # extra kvq-calibrate options
#
# Never calibrate on the evaluation split: --calib-data must not be WikiText-2 test.
set -euo pipefail
cd "$(dirname "$0")/.."

model=../shared/models/kvq-testbed-llama2-23m
calib_data=../shared/datasets/kvq-docs/calib.txt
eval_data=wikitext2
nseq=16
calib_seqlen=2048
seed=0
seqlen=1024
windows=-1
backend=auto
bits=4,3,2
out=""
build=${KVQ_BUILD_DIR:-build}
do_build=1
qnorm=0
threads=0
calib_args=""

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
  case $1 in
    --model) model=$2; shift 2 ;;
    --calib-data) calib_data=$2; shift 2 ;;
    --eval-data) eval_data=$2; shift 2 ;;
    --nseq) nseq=$2; shift 2 ;;
    --calib-seqlen) calib_seqlen=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --seqlen) seqlen=$2; shift 2 ;;
    --windows) windows=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --bits) bits=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --qnorm) qnorm=1; shift ;;
    --threads) threads=$2; shift 2 ;;
    --calib-args) calib_args=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "calib_table.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
done
case $calib_data in
  *wiki.test.raw|*wikitext*test*) echo "calib_table.sh: refusing to calibrate on '$calib_data' (an evaluation split)" >&2; exit 2 ;;
esac
[[ -e $model ]] || { echo "calib_table.sh: no model at $model" >&2; exit 1; }
[[ -f $calib_data ]] || { echo "calib_table.sh: no calibration text at $calib_data" >&2; exit 1; }
name=$(basename "$model")
out=${out:-calib-table/$name-n$nseq-s$calib_seqlen-seed$seed}
mkdir -p "$out"
IFS=, read -r -a bit_list <<< "$bits"

if ((do_build)); then
  echo "calib_table.sh: building kvq-calibrate, kvq-convert, kvq-eval (Release) in $build" >&2
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA="${KVQ_CUDA:-AUTO}" > /dev/null
  cmake --build "$build" -j "${KVQ_JOBS:-$(nproc)}" --target kvq-calibrate kvq-convert kvq-eval >&2
fi
bin=$build/tools
for t in kvq-calibrate kvq-convert kvq-eval; do
  [[ -x $bin/$t ]] || { echo "calib_table.sh: $bin/$t not built" >&2; exit 1; }
done

# 1. Calibrate. --resume continues a run interrupted in the same --out (or reuses a finished
#    one); when kvq-calibrate refuses to resume (the file was made with other data, settings
#    or another kvq revision), calibrate afresh.
t0=$(date +%s)
echo "calib_table.sh: [1/3] kvq-calibrate -> $out/calib.kvqc" >&2
cal=("$bin/kvq-calibrate" --model "$model" --dataset "$calib_data" --nseq "$nseq" --seqlen "$calib_seqlen"
     --seed "$seed" --bits "$bits" --backend "$backend" --threads "$threads" -o "$out/calib.kvqc" --format json)
read -r -a extra <<< "$calib_args"
cal+=("${extra[@]}")
set +e
"${cal[@]}" --resume 2>&1 > "$out/calibrate.json" | tee "$out/calibrate.err" >&2
rc=${PIPESTATUS[0]}
set -e
if ((rc != 0)); then
  grep -q ': cannot resume: ' "$out/calibrate.err" || exit "$rc"
  echo "calib_table.sh: $out/calib.kvqc was made differently; calibrating afresh" >&2
  "${cal[@]}" > "$out/calibrate.json"
fi
t1=$(date +%s)

# 2. Profiles, one per bit width (the conversion's defaults: the calibration's 1% outliers
#    and sink, no Q-Norm; --qnorm adds a Q-Norm profile per bit width).
echo "calib_table.sh: [2/3] kvq-convert -> $out/kvquant-calibrated-B.kvqp" >&2
"$bin/kvq-convert" --calib "$out/calib.kvqc" --model "$model" --method kvquant --bits "$bits" \
  -o "$out/kvquant-calibrated-{bits}.kvqp" > /dev/null
# Calibrated key ranges and key signposts with uniform value codes (nuq=keys): the value
# signposts can transfer worse than the key ones to text unlike the calibration's.
for b in "${bit_list[@]}"; do
  "$bin/kvq-convert" --calib "$out/calib.kvqc" --model "$model" --profile "kvquant:bits=$b,nuq=keys" \
    -o "$out/kvquant-calibrated-keysnuq-$b.kvqp" > /dev/null
done
if ((qnorm)); then
  for b in "${bit_list[@]}"; do
    "$bin/kvq-convert" --calib "$out/calib.kvqc" --model "$model" --profile "kvquant:bits=$b,qnorm=1" \
      -o "$out/kvquant-calibrated-qnorm-$b.kvqp" > /dev/null
  done
fi

# 3. One compare run: every row on the same windows.
compare=()
for b in "${bit_list[@]}"; do
  compare+=(--compare "kvquant:bits=$b" --compare "$out/kvquant-calibrated-$b.kvqp" --compare "$out/kvquant-calibrated-keysnuq-$b.kvqp")
  if ((qnorm)); then compare+=(--compare "$out/kvquant-calibrated-qnorm-$b.kvqp"); fi
done
echo "calib_table.sh: [3/3] kvq-eval ppl, $eval_data, seqlen $seqlen, windows $windows, backend $backend" >&2
"$bin/kvq-eval" --task ppl --model "$model" --dataset "$eval_data" --seqlen "$seqlen" --max-windows "$windows" \
  --backend "$backend" --threads "$threads" "${compare[@]}" --format json > "$out/compare.json"
t2=$(date +%s)

# 4. The table.
PYTHONPATH=scripts python3 - "$out" "$bits" "$windows" "$qnorm" "$calib_data" "$nseq" "$calib_seqlen" "$seed" "$((t1 - t0))" "$((t2 - t1))" "$calib_args" <<'PY'
import datetime, json, math, os, sys
from paired_ppl import paired
out, bits, windows, qnorm = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3]), sys.argv[4] == "1"
calib_data, nseq, calib_seqlen, seed, t_cal, t_eval, calib_args = sys.argv[5:12]
c = json.load(open(os.path.join(out, "compare.json")))
cal = json.load(open(os.path.join(out, "calibrate.json")))
rows = {r["method"]: r for r in c["rows"]}
ref = next(r for r in c["rows"] if r.get("reference"))
def cell(r):
    return "%.3f (%+.2f%%)" % (r["ppl"], r["ppl_delta_pct"])
data_name = "WikiText-2 test" if "wiki" in c["data"].lower() else os.path.basename(c["data"])
print("### Calibrated vs default KVQuant, %s, %s, seqlen %d" % (c["model"], data_name, c["seqlen"]))
print()
print("Data: %s, windows of %d tokens%s. Device: %s. kvq %s. Date: %s." % (
    c["data"], c["seqlen"], "" if windows < 0 else " (the first %d only: not the full protocol)" % windows,
    c["device"], c["revision"],
    datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))
print("Calibration: %s, %d sequences x %d tokens (asked %s), seed %s, backend %s%s; %s s calibrate+convert, %s s eval." % (
    cal["dataset"], cal["sequences"], cal["seqlen"], calib_seqlen, seed, cal.get("backend", "?"),
    ", kvq-calibrate %s" % calib_args if calib_args else "", t_cal, t_eval))
print("fp16 KV: PPL %.3f. Cells: PPL (change vs fp16 KV); bits/elem include metadata. Default: uniform"
      " signposts, 1%% outliers and ranges from the window itself; calibrated: Fisher-weighted signposts,"
      " static per-channel key ranges from the calibration (the 1%% outlier budget allocated across channels"
      " by Fisher weight, docs/calibrate.md), 1 sink token; `nuq=keys`: the same with uniform value codes." % ref["ppl"])
print()
head = "| bits | default `kvquant:bits=B` | calibrated profile |"
sep = "|---:|---:|---:|"
if qnorm:
    head += " calibrated + Q-Norm |"
    sep += "---:|"
head += " calibrated, NUQ keys only (`nuq=keys`) | calibrated - default (+- paired se) | bits/elem default / calibrated |"
sep += "---:|---:|---:|"
print(head)
print(sep)
for b in bits:
    # kvq-eval labels a spec row with its full description (kvquant:bits=3,outliers=0.01,...).
    d = next(r for m, r in rows.items() if m == "kvquant:bits=%d" % b or m.startswith("kvquant:bits=%d," % b))
    k = rows["kvquant-calibrated-%d.kvqp" % b]
    line = "| %d | %s | %s |" % (b, cell(d), cell(k))
    if qnorm:
        line += " %s |" % cell(rows["kvquant-calibrated-qnorm-%d.kvqp" % b])
    line += " %s |" % cell(rows["kvquant-calibrated-keysnuq-%d.kvqp" % b])
    line += " %s | %.3f / %.3f |" % (paired(k, d), d["effective_bits"], k["effective_bits"])
    print(line)
PY
