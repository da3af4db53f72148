#!/usr/bin/env bash
# kvq-convert refusals: each is one error line (plus an optional hint), exit 1 for bad
# inputs and 2 for bad usage, and never leaves an output file behind.
# common.bash: set -euo pipefail, the models' paths, a scratch $TMP removed on exit, fail().
source "$(dirname "$0")/common.bash"
bin="$KVQ_BIN/kvq-convert"
src="${KVQ_SOURCE_DIR:?}"
calib="$src/tests/data/profiles/stories260K-synthetic.kvqc"
model="$STORIES/stories260K.bin"
work="$TMP"

# expect RC MESSAGE -- ARGS...: exit code, a substring of the error line, no output file.
expect() {
  local want_rc="$1" want_msg="$2"; shift 3
  set +e
  "$bin" "$@" > "$work/out.txt" 2> "$work/err.txt"
  local rc=$?
  set -e
  [[ $rc -eq $want_rc ]] || fail "exit $rc (want $want_rc) for $*: $(cat "$work/err.txt")"
  grep -qF -- "$want_msg" "$work/err.txt" || fail "message for $*: $(cat "$work/err.txt"), want: $want_msg"
  [[ $(grep -c "error:" "$work/err.txt") -eq 1 ]] || fail "not one error line for $*"
  [[ ! -e "$work/x.kvqp" ]] || fail "output left behind for $*"
}

expect 2 "nothing to convert" -- --calib "$calib" -o "$work/x.kvqp"
expect 2 "-o/--output is required" -- --calib "$calib" --method kvquant --bits 3
expect 2 "unknown method 'gptq'" -- --calib "$calib" --method gptq -o "$work/x.kvqp"
expect 2 "option 'outliers' does not apply to kivi" -- --calib "$calib" --profile kivi:outliers=1% -o "$work/x.kvqp"
expect 2 "--outliers does not apply to any of the given methods" -- --model "$model" --method kivi --outliers 1% -o "$work/x.kvqp"
expect 2 "kvquant:bits=3 needs --calib FILE" -- --model "$model" --method kvquant --bits 3 -o "$work/x.kvqp"
expect 1 "5 bits: the calibration has signposts for 2, 3, 4 bits" -- --calib "$calib" --method kvquant --bits 5 -o "$work/x.kvqp"
expect 1 "outliers 3%: the calibration has key thresholds for 0.1%, 1%, 5% (and 0)" -- --calib "$calib" --method kvquant --bits 3 --outliers 3% -o "$work/x.kvqp"
expect 1 "calibration is for another model: layers: calibration has 5, model has 6" -- \
  --calib "$calib" --model "$TESTBED" --method kvquant --bits 3 -o "$work/x.kvqp"

# Damaged calibration files.
cp "$calib" "$work/bad.kvqc"
printf '\x55' | dd of="$work/bad.kvqc" bs=1 seek=$(( $(stat -c %s "$calib") - 3 )) conv=notrunc 2>/dev/null
expect 1 "tensor digest mismatch" -- --calib "$work/bad.kvqc" --method kvquant --bits 3 -o "$work/x.kvqp"
head -c 1000 "$calib" > "$work/short.kvqc"
expect 1 "short.kvqc" -- --calib "$work/short.kvqc" --method kvquant --bits 3 -o "$work/x.kvqp"
expect 1 "export-vllm" -- export-vllm --calib "$src/tests/data/profiles/tiny-partial.kvqc" -o "$work/x.kvqp"
expect 1 "calibration is for another model: layers: calibration has 3, model has 5" -- validate "$src/tests/data/profiles/tiny.kvqc" --model "$model"

# A corrupted profile: inspect refuses, --no-verify shows it.
"$bin" --calib "$calib" --method kvquant --bits 2 -o "$work/p.kvqp" > /dev/null 2>&1
size=$(stat -c %s "$work/p.kvqp")
printf '\x01' | dd of="$work/p.kvqp" bs=1 seek=$(( size - 8 )) conv=notrunc 2>/dev/null
expect 1 "tensor digest mismatch" -- inspect "$work/p.kvqp"
grep -q "not checked (--no-verify)" <<< "$("$bin" inspect --no-verify "$work/p.kvqp")" || fail "inspect --no-verify"
echo "ok"
