#!/usr/bin/env bash
# kvq-calibrate's robust signpost weights on stories260K (CPU): --fisher-clip and
# --uniform-mix change the signposts but not the statistics, are recorded in the file
# (signpost_weighting) and the JSON summary, make the run deterministic (identical bytes
# twice), make --resume of a file made with other weights refuse with one error line (file
# untouched); --nseq 0 takes 16 x 2048 tokens' worth of sequences; out-of-range values are
# usage errors (exit 2, one line).
# common.bash: set -euo pipefail, the models' paths, a scratch $TMP removed on exit, fail().
source "$(dirname "$0")/common.bash"
bin="$KVQ_BIN"
model="$STORIES/stories260K.bin"
tok="$STORIES/tok512.bin"
data="$KVQ_SHARED/datasets/kvq-docs/calib.txt"
work="$TMP"
[[ -x "$bin/kvq-calibrate" ]] || fail "kvq-calibrate not built"

args=(--model "$model" --tokenizer "$tok" --dataset "$data" --nseq 3 --seqlen 64 --bits 2,3 --threads 2)
"$bin/kvq-calibrate" "${args[@]}" -o "$work/raw.kvqc" > /dev/null 2>&1
rob=(--fisher-clip 0.95 --uniform-mix 0.4)
"$bin/kvq-calibrate" "${args[@]}" "${rob[@]}" -o "$work/a.kvqc" --format json > "$work/a.json" 2> "$work/a.err"
"$bin/kvq-calibrate" "${args[@]}" "${rob[@]}" -o "$work/b.kvqc" > /dev/null 2>&1
cmp "$work/a.kvqc" "$work/b.kvqc" || fail "two robust runs differ"
grep -q '"fisher_clip": 0.95' "$work/a.json" || fail "summary lacks fisher_clip: $(cat "$work/a.json")"
grep -q '"uniform_mix": 0.4' "$work/a.json" || fail "summary lacks uniform_mix"
grep -q 'clipped at its 0.95 quantile, uniform mix 0.4' "$work/a.err" || fail "configuration line: $(cat "$work/a.err")"
grep -q 'signpost_weighting' "$work/a.kvqc" || fail "file does not record the weighting"
! grep -q 'signpost_weighting' "$work/raw.kvqc" || fail "default file records a weighting"
cmp -s "$work/raw.kvqc" "$work/a.kvqc" && fail "robust weights changed nothing"

# --resume of the robust file with raw weights: refused, file untouched.
cp "$work/a.kvqc" "$work/keep.kvqc"
set +e
"$bin/kvq-calibrate" "${args[@]}" -o "$work/a.kvqc" --resume > /dev/null 2> "$work/resume.err"
rc=$?
set -e
[[ $rc -ne 0 ]] || fail "resume with other weights accepted"
grep -q 'cannot resume' "$work/resume.err" || fail "resume error: $(cat "$work/resume.err")"
cmp "$work/a.kvqc" "$work/keep.kvqc" || fail "refused resume touched the file"

# --nseq 0: 16 x 2048 tokens' worth at the clamped seqlen (64 here: 512 sequences). Only the
# summary line is checked (--stop-after-layers 1 keeps it short).
"$bin/kvq-calibrate" --model "$model" --tokenizer "$tok" --dataset "$data" --nseq 0 --seqlen 256 --bits 2 \
  --threads 2 --stop-after-layers 1 -o "$work/n0.kvqc" --format json > "$work/n0.json" 2>/dev/null
grep -q '"sequences": 128' "$work/n0.json" || fail "--nseq 0 at seqlen 256: $(grep sequences "$work/n0.json")"

for bad in "--fisher-clip 0" "--fisher-clip 1.5" "--fisher-clip x" "--uniform-mix -0.1" "--uniform-mix 1"; do
  set +e
  # shellcheck disable=SC2086
  "$bin/kvq-calibrate" "${args[@]}" $bad -o "$work/x.kvqc" > /dev/null 2> "$work/bad.err"
  rc=$?
  set -e
  [[ $rc -eq 2 ]] || fail "$bad: exit $rc (usage errors exit 2)"
  [[ ! -e "$work/x.kvqc" ]] || fail "$bad wrote a file"
  grep -q 'kvq-calibrate: error' "$work/bad.err" || fail "$bad: $(cat "$work/bad.err")"
done
echo "ok"
