#!/usr/bin/env bash
# kvq-eval --task passkey / lines on the testbed model (CPU, a few seeded prompts): the
# same prompts for every method, accuracy per method in the compare table, and
# --min-passkey as a CI gate. Measured (4 prompts of ~231 tokens, seed 1234, kvq-docs
# valid.txt filler): fp16 4/4, int8 4/4, int2 0/4.
source "$(dirname "$0")/common.bash"
EVAL="$KVQ_BIN/kvq-eval"
[[ -f $TESTBED/config.json ]] || { echo "testbed model not found: skipped"; exit 77; }
FILLER="$KVQ_SHARED/datasets/kvq-docs/valid.txt"
common=(--model "$TESTBED" --dataset "$FILLER" --backend cpu --trials 4 --seed 1234)

run_tool "$TMP/pk.json" "$TMP/pk.err" "$EVAL" --task passkey "${common[@]}" --context 300 \
  --compare int8 --compare int2 --format json --min-passkey 0.75
[[ $RC -eq 3 ]] || fail "passkey: exit $RC, expected 3 (int2 below --min-passkey): $(tail -3 "$TMP/pk.err")"
python3 - "$TMP/pk.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
acc = {r["method"].split(":")[0]: r["passkey_acc"] for r in rows}
assert acc == {"fp16": 1.0, "int8": 1.0, "int2": 0.0}, acc
assert all(r["ppl"] is None for r in rows)
print("ok   passkey accuracy", acc)
PY
grep -q 'threshold failed: int2:.*: passkey 0 < 0.75' "$TMP/pk.err" || fail "failing metric not named"
[[ $(grep -c 'threshold failed' "$TMP/pk.err") -eq 1 ]] || fail "only int2 may fail"

# lines: runs for fp16 and one method on the same prompts; accuracy is a share of 4.
run_tool "$TMP/ln.json" "$TMP/ln.err" "$EVAL" --task lines "${common[@]}" --lines 5 --kv int8 --format json
[[ $RC -eq 0 ]] || fail "lines: exit $RC: $(tail -3 "$TMP/ln.err")"
python3 - "$TMP/ln.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
assert [r["method"].split(":")[0] for r in rows] == ["fp16", "int8"], rows
for r in rows:
    assert r["lines_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0), r
print("ok   lines accuracy", [(r["method"], r["lines_acc"]) for r in rows])
PY
echo "PASS"
