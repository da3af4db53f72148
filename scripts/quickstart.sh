#!/usr/bin/env bash
# The README's first command: installs missing packages, builds the three tools (Release),
# then runs the whole pipeline on the default model and prints the compare table:
#   1. kvq-calibrate  the model on kvq-docs calib.txt (small: 4 sequences x 512 tokens);
#   2. kvq-convert    KVQuant and MiKV (balancer) profiles at 4/3/2 bits from that
#                     calibration, and KIVI profiles (calibration-free) at 4/3/2 bits;
#   3. kvq-eval       one compare run over the tasks KVQ_QUICKSTART_TASKS (default ppl,kld:
#                     WikiText-2 test perplexity and KL divergence from the fp16 cache):
#                     fp16, the int4/3/2 baselines, KIVI, calibrated KVQuant, MiKV and
#                     WKVQuant (default smoothing: CRR is slow on a CPU, scripts/compare_all.sh
#                     runs it) at 4/3/2 bits, every row on the same windows, plus an SVG plot.
# On 2 busy CPU cores the pipeline takes about 8 minutes (the build comes first, once). It
# evaluates the first KVQ_QUICKSTART_WINDOWS (default 2) windows of 1024 tokens; the table
# header says so. KVQ_QUICKSTART_WINDOWS=-1 runs all 333 windows (the published protocol).
#   scripts/quickstart.sh
#   KVQ_MODEL=/path/to/hf-folder KVQ_DATA=/path/to/wiki.test.raw scripts/quickstart.sh
#   KVQ_BACKEND=cuda KVQ_QUICKSTART_WINDOWS=-1 scripts/quickstart.sh
# Outputs stay in KVQ_QUICKSTART_OUT (default quickstart-out/): calibration file, profiles,
# compare JSON, quickstart.svg. A second run reuses the finished calibration.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
build=${KVQ_BUILD_DIR:-build}
jobs=${KVQ_JOBS:-$(nproc)}
windows=${KVQ_QUICKSTART_WINDOWS:-2}
seqlen=${KVQ_QUICKSTART_SEQLEN:-1024}
nseq=${KVQ_QUICKSTART_NSEQ:-4}
calib_seqlen=${KVQ_QUICKSTART_CALIB_SEQLEN:-512}
backend=${KVQ_BACKEND:-auto}
tasks=${KVQ_QUICKSTART_TASKS:-ppl,kld}
out=${KVQ_QUICKSTART_OUT:-quickstart-out}

if [[ ${KVQ_QUICKSTART_NO_BUILD:-0} != 1 ]]; then
  echo "kvq: building (Release) in $build" >&2
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA="${KVQ_CUDA:-AUTO}" >/dev/null
  # Only the tools: the tests are built by scripts/test.sh.
  cmake --build "$build" -j "$jobs" --target kvq-calibrate kvq-convert kvq-eval
fi
bin=$build/tools

model=${KVQ_MODEL:-../shared/models/kvq-testbed-llama2-23m}
calib_data=${KVQ_CALIB_DATA:-../shared/datasets/kvq-docs/calib.txt}
if [[ ! -e $model ]]; then
  echo "kvq: no model at $model: set KVQ_MODEL to a Hugging Face folder" >&2
  exit 1
fi
if [[ ! -f $calib_data ]]; then
  echo "kvq: no calibration text at $calib_data: set KVQ_CALIB_DATA (never an evaluation split)" >&2
  exit 1
fi
mkdir -p "$out"
t0=$(date +%s)

# 1. Calibrate. --resume reuses a finished calibration (or continues an interrupted one);
#    when kvq-calibrate refuses (made with another model, data, settings or kvq revision),
#    calibrate afresh.
calib=$out/calib-n$nseq-s$calib_seqlen.kvqc
echo "kvq: [1/3] $bin/kvq-calibrate --model $model --dataset $calib_data --nseq $nseq --seqlen $calib_seqlen -o $calib" >&2
cal=("$bin/kvq-calibrate" --model "$model" --dataset "$calib_data" --nseq "$nseq" --seqlen "$calib_seqlen"
     --backend "$backend" -o "$calib")
set +e
"${cal[@]}" --resume 2>&1 > /dev/null | tee "$out/calibrate.err" >&2
rc=${PIPESTATUS[0]}
set -e
if ((rc != 0)); then
  grep -q ': cannot resume: ' "$out/calibrate.err" || exit "$rc"
  echo "kvq: $calib was made differently; calibrating afresh" >&2
  "${cal[@]}" > /dev/null
fi
t1=$(date +%s)

# 2. Profiles.
echo "kvq: [2/3] $bin/kvq-convert: kvquant and mikv (calibrated) and kivi profiles at 4/3/2 bits" >&2
"$bin/kvq-convert" --calib "$calib" --model "$model" --method kvquant,mikv --bits 4,3,2 -o "$out/{method}-{bits}.kvqp" > /dev/null
"$bin/kvq-convert" --model "$model" --method kivi --bits 4,3,2 -o "$out/kivi-{bits}.kvqp" > /dev/null

# 3. One compare run, grouped by bit width.
compare=()
for b in 4 3 2; do
  compare+=(--compare "int$b" --compare "$out/kivi-$b.kvqp" --compare "$out/kvquant-$b.kvqp" --compare "$out/mikv-$b.kvqp"
            --compare "wkvquant:bits=$b")
done
args=(--task "$tasks" --model "$model" --seqlen "$seqlen" --max-windows "$windows" --backend "$backend")
if [[ -n ${KVQ_DATA:-} ]]; then args+=(--dataset "$KVQ_DATA"); else args+=(--dataset wikitext2); fi
echo "kvq: [3/3] $bin/kvq-eval ${args[*]} --compare ... (16 rows) --plot $out/quickstart.svg" >&2
echo
"$bin/kvq-eval" "${args[@]}" "${compare[@]}" --plot "$out/quickstart.svg" | tee "$out/compare.txt"
t2=$(date +%s)
echo
echo "calibration: $nseq x $calib_seqlen tokens of $(basename "$calib_data") ($((t1 - t0)) s); evaluation $((t2 - t1)) s; plot: $out/quickstart.svg"
if [[ $windows != -1 ]]; then
  echo "(first $windows windows of $seqlen tokens only; KVQ_QUICKSTART_WINDOWS=-1 runs the full protocol)"
fi
