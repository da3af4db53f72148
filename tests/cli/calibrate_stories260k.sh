#!/usr/bin/env bash
# kvq-calibrate end to end on stories260K (CPU): a short calibration twice gives
# identical bytes; a run stopped after 2 layers and resumed gives the same bytes again;
# the JSON summary is on stdout; kvq-convert accepts the file; bad usage is one error line.
# common.bash: set -euo pipefail, the models' paths, a scratch $TMP removed on exit, fail().
source "$(dirname "$0")/common.bash"
bin="$KVQ_BIN"
model="$STORIES/stories260K.bin"
tok="$STORIES/tok512.bin"
data="$KVQ_SHARED/datasets/kvq-docs/calib.txt"
work="$TMP"
[[ -x "$bin/kvq-calibrate" ]] || fail "kvq-calibrate not built"

args=(--model "$model" --tokenizer "$tok" --dataset "$data" --nseq 3 --seqlen 64 --bits 2,3,4 --threads 2)
"$bin/kvq-calibrate" "${args[@]}" -o "$work/a.kvqc" --format json > "$work/a.json" 2> "$work/a.err"
grep -q '"complete_layers": 5' "$work/a.json" || fail "summary: $(cat "$work/a.json")"
grep -q 'capture' "$work/a.err" || fail "no progress on stderr"
"$bin/kvq-calibrate" "${args[@]}" -o "$work/b.kvqc" > /dev/null 2>&1
cmp "$work/a.kvqc" "$work/b.kvqc" || fail "two runs differ"

"$bin/kvq-calibrate" "${args[@]}" -o "$work/c.kvqc" --stop-after-layers 2 > /dev/null 2>&1
[[ -d "$work/c.kvqc.work" ]] || fail "no work folder after a stop"
"$bin/kvq-calibrate" "${args[@]}" -o "$work/c.kvqc" --resume --format json > "$work/c.json" 2>/dev/null
grep -q '"resumed_layers": 2' "$work/c.json" || fail "resume: $(cat "$work/c.json")"
grep -q '"resumed_sequences": 3' "$work/c.json" || fail "resume: $(cat "$work/c.json")"
cmp "$work/a.kvqc" "$work/c.kvqc" || fail "resumed run differs"
[[ ! -e "$work/c.kvqc.work" ]] || fail "work folder left behind"

if [[ -x "$bin/kvq-convert" ]]; then
  "$bin/kvq-convert" --calib "$work/a.kvqc" --model "$model" --method kvquant --bits 3 -o "$work/p.kvqp" \
    > /dev/null 2>&1 || fail "kvq-convert refused the calibration file"
fi

set +e
"$bin/kvq-calibrate" --model "$model" --tokenizer "$tok" --dataset "$data" --bits 2,9 -o "$work/x.kvqc" \
  > /dev/null 2> "$work/err.txt"
rc=$?
set -e
# A bad value is a kvq::InvalidArgument: exit 1 with one error line (cli::run).
[[ $rc -eq 1 ]] || fail "--bits 2,9: exit $rc"
grep -q "kvq-calibrate: error: --bits: 9 outside 1..8" "$work/err.txt" || fail "--bits 9: $(cat "$work/err.txt")"
[[ ! -e "$work/x.kvqc" ]] || fail "output left behind"
echo "ok"
